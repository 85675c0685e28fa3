"""Vision projectors (``mmproj*.gguf``): found beside a model, checked before llama.cpp.

A projector is the image half of a LLaVA-style model: a vision transformer (CLIP's) that
turns an image into patch features, and a small MLP that maps them into the language
model's embedding space. llama.cpp's ``libmtmd`` reads it, and like the rest of llama.cpp
it trusts the file: a key of the wrong type aborts the process (``GGML_ASSERT``), a tensor
of the wrong shape aborts it while the graph is built, a missing ``mm.2.weight``
dereferences NULL. So every key and tensor libmtmd reads for the projector kind it runs
(``clip.projector_type = "mlp"``, LLaVA 1.5) is checked here first, and a projector whose
output width is not the model's embedding width is refused by name.

Other projector kinds (Qwen-VL, Gemma 3, SmolVLM...) have their own tensors and
preprocessing that this check does not cover; they are refused rather than run unchecked.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigError, ModelFormatError, UnsupportedModelError
from .gguf import ModelFile, read_gguf

#: projector kinds whose every read is checked (LLaVA 1.5's two-layer MLP)
VERIFIED_KINDS = ("mlp",)
OLLAMA_PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
_U32, _I32, _F32, _BOOL, _STR, _ARR = 4, 5, 6, 7, 8, 9
_TYPE_NAMES = {_U32: "uint32", _I32: "int32", _F32: "float32", _BOOL: "bool",
               _STR: "string", _ARR: "array"}
#: key -> (GGUF type, required): every key libmtmd reads for an "mlp" projector
_KEYS = {
    "clip.has_vision_encoder": (_BOOL, True),
    "clip.projector_type": (_STR, True),
    "clip.vision.embedding_length": (_U32, True),
    "clip.vision.attention.head_count": (_U32, True),
    "clip.vision.feed_forward_length": (_U32, True),
    "clip.vision.block_count": (_U32, True),
    "clip.vision.projection_dim": (_U32, True),
    "clip.vision.attention.layer_norm_epsilon": (_F32, True),
    "clip.vision.image_size": (_U32, True),
    "clip.vision.patch_size": (_U32, True),
    "clip.vision.image_mean": (_ARR, True),
    "clip.vision.image_std": (_ARR, True),
    "clip.vision.attention.head_dim": (_U32, False),
    "clip.vision.attention.head_count_kv": (_U32, False),
    "clip.vision.feature_layer": (_ARR, False),
    "clip.vision.image_grid_pinpoints": (_ARR, False),
    "clip.vision.mm_patch_merge_type": (_STR, False),
    "clip.use_gelu": (_BOOL, False),
    "clip.use_silu": (_BOOL, False),
    "clip.has_text_encoder": (_BOOL, False),
    "clip.has_audio_encoder": (_BOOL, False),
    "clip.has_llava_projector": (_BOOL, False),
    "clip.minicpmv_version": (_I32, False),
}


@dataclass(frozen=True)
class Projector:
    """A checked projector file and the facts planning and prompts need."""

    path: Path
    kind: str
    image_size: int          # pixels a side the encoder sees (images are scaled to it)
    patch_size: int
    embedding_length: int    # the language model's width it writes
    n_bytes: int             # its weights, for the memory plan

    @property
    def tokens_per_image(self) -> int:
        """Prompt tokens one image takes (LLaVA 1.5: one per patch)."""
        return (self.image_size // self.patch_size) ** 2


def check_projector(path: str | Path, text_width: int | None = None) -> Projector:
    """Read and check a projector file; ``text_width`` is the model's embedding width."""
    gguf = read_gguf(path)
    md, types = gguf.metadata, gguf.value_types
    name = gguf.path.name

    def bad(what: str) -> ModelFormatError:
        return ModelFormatError(f"{name} is not a usable vision projector: {what}; "
                                "download the mmproj file that belongs to the model again")

    if md.get("general.architecture") not in (None, "clip") or not any(
            k.startswith("clip.") for k in md):
        raise ConfigError(f"{name} is not a vision projector (no clip.* keys; its "
                          f"architecture is {md.get('general.architecture')!r}); pass the "
                          "model's mmproj*.gguf as projector=")
    for key, (gguf_type, required) in _KEYS.items():
        if key not in md:
            if required:
                raise bad(f"metadata {key!r} is missing")
            continue
        if types.get(key) != gguf_type:
            raise bad(f"metadata {key!r} is a {_TYPE_NAMES.get(types.get(key, -1), 'value')} "
                      f"but must be a {_TYPE_NAMES[gguf_type]}")
    kind = str(md["clip.projector_type"])
    if kind not in VERIFIED_KINDS:
        raise UnsupportedModelError(
            f"{name} is a {kind!r} projector; localllm checks and runs LLaVA-style "
            f"projectors ({', '.join(VERIFIED_KINDS)}) only")
    if not md["clip.has_vision_encoder"]:
        raise bad("clip.has_vision_encoder is false")
    if md.get("clip.use_gelu") and md.get("clip.use_silu"):
        raise bad("clip.use_gelu and clip.use_silu are both set")
    if "clip.vision.image_grid_pinpoints" in md:
        raise UnsupportedModelError(f"{name} is a LLaVA 1.6 projector (image grid "
                                    "pinpoints); localllm runs LLaVA 1.5-style ones")
    for key in ("clip.vision.image_mean", "clip.vision.image_std"):
        values = md[key]
        if len(values) < 3 or not all(type(v) is float and math.isfinite(v) for v in values):
            raise bad(f"{key} must hold three finite floats (red, green, blue)")
    if any(v == 0 for v in md["clip.vision.image_std"][:3]):
        raise bad("clip.vision.image_std has a zero (pixels would be divided by it)")
    width = int(md["clip.vision.embedding_length"])
    heads = int(md["clip.vision.attention.head_count"])
    ff = int(md["clip.vision.feed_forward_length"])
    blocks = int(md["clip.vision.block_count"])
    size, patch = int(md["clip.vision.image_size"]), int(md["clip.vision.patch_size"])
    eps = float(md["clip.vision.attention.layer_norm_epsilon"])
    if not (0 < width <= 1 << 16 and 0 < heads <= width and width % heads == 0):
        raise bad(f"an embedding width of {width} is not split evenly into {heads} heads")
    if md.get("clip.vision.attention.head_dim", width // heads) != width // heads or \
            md.get("clip.vision.attention.head_count_kv", heads) != heads:
        raise bad("grouped or resized attention heads are not part of a LLaVA projector")
    if not (0 < ff <= 1 << 18 and 0 < blocks <= 256 and math.isfinite(eps) and eps > 0):
        raise bad(f"feed-forward {ff}, {blocks} blocks or layer-norm epsilon {eps} is out "
                  "of range")
    if not (0 < patch <= size <= 8192 and size % patch == 0):
        raise bad(f"an image size of {size} is not a whole number of {patch}-pixel patches")
    if (size // patch) ** 2 > 1 << 16:
        raise bad(f"{(size // patch) ** 2} patches an image is more than localllm handles")
    layers = md.get("clip.vision.feature_layer")
    if layers is not None and not (layers and all(type(v) is int and 0 <= v <= blocks
                                                  for v in layers)):
        raise bad(f"clip.vision.feature_layer {layers!r} must name layers 0 to {blocks}")
    out_width = _check_tensors(gguf, bad, width, ff, blocks, size, patch,
                               width * (len(layers) if layers else 1))
    if text_width is not None and out_width != text_width:
        raise ConfigError(
            f"{name} writes {out_width}-wide embeddings but the model's width is "
            f"{text_width}: this projector belongs to another model; use the mmproj file "
            "published with this model")
    return Projector(gguf.path, kind, size, patch, out_width,
                     sum(t.n_bytes for t in gguf.tensors))


def _check_tensors(gguf: ModelFile, bad: Any, width: int, ff: int, blocks: int, size: int,
                   patch: int, mm_in: int) -> int:
    """Every tensor the LLaVA graph multiplies, with the shape it multiplies it as (ggml
    order: the fastest-moving dimension first). Returns the output width."""
    shapes = {t.name: t.shape for t in gguf.tensors}
    types = {t.name: t.type_name for t in gguf.tensors}

    def need(name: str, shape: tuple[int | None, ...], required: bool = True) -> tuple[int, ...]:
        got = shapes.get(name)
        if got is None:
            if required:
                raise bad(f"tensor {name!r} is missing")
            return ()
        if len(got) != len(shape) or any(
                s is not None and s != g for s, g in zip(shape, got, strict=True)):
            shown = tuple("any" if s is None else s for s in shape)
            raise bad(f"tensor {name!r} has shape {got}, expected {shown}")
        return got

    n_patches = (size // patch) ** 2
    need("v.patch_embd.weight", (patch, patch, 3, width))
    need("v.patch_embd.bias", (width,), False)
    cls = need("v.class_embd", (width,), False)
    if cls and types["v.class_embd"] != "F32":
        raise bad("tensor 'v.class_embd' must be F32")
    positions = need("v.position_embd.weight", (width, None))
    if positions[1] < n_patches + (1 if cls else 0):
        raise bad(f"v.position_embd.weight has {positions[1]} positions for {n_patches} "
                  "patches")
    for prefix in ("v.pre_ln", "v.post_ln"):
        need(f"{prefix}.weight", (width,), False)
        need(f"{prefix}.bias", (width,), False)
    for i in range(blocks):
        blk = f"v.blk.{i}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            need(f"{blk}.{part}.weight", (width, width))
            need(f"{blk}.{part}.bias", (width,), False)
        for part in ("ln1", "ln2"):
            need(f"{blk}.{part}.weight", (width,), False)
            need(f"{blk}.{part}.bias", (width,), False)
        # llama.cpp swaps up and down when their shapes say they were written swapped
        up = shapes.get(f"{blk}.ffn_up.weight")
        swapped = up == (ff, width) and ff != width
        need(f"{blk}.ffn_up.weight", (ff, width) if swapped else (width, ff))
        need(f"{blk}.ffn_down.weight", (width, ff) if swapped else (ff, width))
        need(f"{blk}.ffn_up.bias", (width if swapped else ff,), False)
        need(f"{blk}.ffn_down.bias", (ff if swapped else width,), False)
    hidden = need("mm.0.weight", (mm_in, None))[1]
    need("mm.0.bias", (hidden,), False)
    out_width = need("mm.2.weight", (hidden, None))[1]
    need("mm.2.bias", (out_width,), False)
    if "mm.3.weight" in shapes:
        raise bad("it has an mm.3 tensor, which makes llama.cpp read it as another kind")
    return out_width


def find_projector(model_path: Path) -> Path | None:
    """The projector that goes with a model file, where people keep one: an
    ``mmproj*.gguf`` beside it (LM Studio's folders, a Hugging Face snapshot), or the
    projector layer of the Ollama manifest whose model blob this is. None when there is
    none, or when several are beside it and none is named after the model."""
    model_path = Path(model_path)
    if model_path.parent.name == "blobs":
        return _ollama_projector(model_path)
    try:
        beside = sorted(p for p in model_path.parent.iterdir() if p.is_file()
                        and p.name.lower().startswith("mmproj")
                        and p.suffix.lower() == ".gguf")
    except OSError:
        return None
    if len(beside) == 1:
        return beside[0]
    stem = model_path.stem.lower().split("-")[0]
    named = [p for p in beside if stem and stem in p.name.lower()]
    return named[0] if len(named) == 1 else None


def _ollama_projector(blob: Path) -> Path | None:
    root = blob.parent.parent
    digest = "sha256:" + blob.name.removeprefix("sha256-")
    manifests = root / "manifests"
    if not manifests.is_dir():
        return None
    for manifest in manifests.rglob("*"):
        if not manifest.is_file() or manifest.stat().st_size > 1 << 20:
            continue
        try:
            layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers") or []
        except (OSError, ValueError, AttributeError):
            continue
        kinds = {layer.get("mediaType"): str(layer.get("digest", "")) for layer in layers
                 if isinstance(layer, dict)}
        if digest in kinds.values() and kinds.get(OLLAMA_PROJECTOR_LAYER, "").startswith(
                "sha256:"):
            found = root / "blobs" / ("sha256-" + kinds[OLLAMA_PROJECTOR_LAYER][7:])
            return found if found.is_file() else None
    return None
