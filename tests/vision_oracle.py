"""A LLaVA-1.5 image encoder in float64 numpy, a synthetic projector GGUF, and libmtmd's answer.

Why it exists: llama.cpp's multimodal library (libmtmd, through ``llama_cpp.mtmd_cpp``) turns
an image into the rows a language model reads in place of tokens. To show that it computes
the LLaVA-1.5 architecture, this module writes a small seeded projector file ("mmproj", the
layout llama.cpp's converters produce for LLaVA-1.5) and runs the same weights through a
numpy forward pass written from the architecture's definition, which shares no code with
ggml:

* CLIP ViT (``openai/clip-vit-large-patch14-336`` in LLaVA-1.5, here shrunk): pixels scaled to
  [0, 1] and standardised per RGB channel with CLIP's mean/std; a non-overlapping P×P patch
  convolution; learned position embeddings; a pre-LayerNorm; pre-norm encoder blocks with
  multi-head self-attention (no mask) and a quick-GELU MLP (``hidden_act: quick_gelu``).
* LLaVA-1.5 reads the encoder's second-to-last hidden state (``mm_vision_select_layer: -2``),
  i.e. the output of all blocks but the last, with no post-LayerNorm (that norm is applied
  only after the last block, which LLaVA discards); it keeps patch tokens only.
* The projector ``mlp2x_gelu``: Linear(D→H), GELU, Linear(H→T), T the text model's width.

Deliberate choices, each explained where it is made: no class token (llama.cpp's llava graph
appends it last while its positions assume it first, upstream bug #25814, so a file without
it is the one on which the definition and llama.cpp can agree exactly); the last block is
written but not run (LLaVA's select layer -2; llama.cpp runs ``block_count - 1`` blocks when
``clip.vision.feature_layer`` is absent); feed-forward width differs from the embedding width
(the loader swaps ``ffn_up``/``ffn_down`` when ``ffn_down`` has ne[0] == n_embd).

llama.cpp rounds the patch convolution's inputs and kernel and every GELU output to float16;
the reference does not emulate that, so the two agree to float16 precision, not to float32
(the test states the measured error and its tolerance).
"""

from __future__ import annotations

import ctypes
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

#: CLIP's pixel statistics (OpenAI CLIP preprocessing, used unchanged by LLaVA-1.5).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: The text that stands for one image in libmtmd's prompt (its default media marker).
MEDIA_MARKER = "<__media__>"


@dataclass(frozen=True)
class VisionConfig:
    """A shrunk CLIP ViT + LLaVA-1.5 projector.

    ``ffn`` must differ from ``width``: with equal sizes llama.cpp's loader cannot tell
    ``ffn_up`` from ``ffn_down`` by shape and swaps them. ``text_width`` is the language
    model's embedding width (SmolLM2-135M: 576); LLaVA's projector hidden width equals it.
    """

    image_size: int = 32
    patch_size: int = 8
    width: int = 32
    heads: int = 4
    ffn: int = 48
    blocks: int = 3
    eps: float = 1e-5
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    text_width: int = 576

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mm_hidden(self) -> int:
        return self.text_width

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.width % self.heads:
            raise ValueError("width must be a multiple of heads")
        if self.ffn == self.width:
            raise ValueError("ffn == width makes llama.cpp swap ffn_up and ffn_down")
        if self.blocks < 2:
            raise ValueError("LLaVA reads the second-to-last layer: write at least 2 blocks")


# --------------------------------------------------------------------------- the file


def make_weights(config: VisionConfig, seed: int = 0) -> dict[str, F32]:
    """Seeded float32 weights in torch layout (Linear: (out, in); conv: (out, in, kh, kw)),
    keyed by their GGUF tensor names.

    Scales keep every activation O(1) and away from saturation: matrices have standard
    deviation 1/sqrt(fan_in), LayerNorm weights 1 ± 0.1, biases 0.1 (nonzero, so a dropped
    bias shows), position embeddings 0.3 (comparable to the patch embeddings).
    """
    c = config
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> F32:
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    def linear(prefix: str, n_out: int, n_in: int) -> None:
        w[f"{prefix}.weight"] = normal((n_out, n_in), 1.0 / math.sqrt(n_in))
        w[f"{prefix}.bias"] = normal((n_out,), 0.1)

    def norm(prefix: str) -> None:
        w[f"{prefix}.weight"] = normal((c.width,), 0.1, mean=1.0)
        w[f"{prefix}.bias"] = normal((c.width,), 0.1)

    w: dict[str, F32] = {}
    fan_in = 3 * c.patch_size * c.patch_size
    w["v.patch_embd.weight"] = normal((c.width, 3, c.patch_size, c.patch_size),
                                      1.0 / math.sqrt(fan_in))
    w["v.patch_embd.bias"] = normal((c.width,), 0.1)
    w["v.position_embd.weight"] = normal((c.n_patches, c.width), 0.3)
    norm("v.pre_ln")
    for i in range(c.blocks):
        p = f"v.blk.{i}"
        norm(f"{p}.ln1")
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            linear(f"{p}.{name}", c.width, c.width)
        norm(f"{p}.ln2")
        linear(f"{p}.ffn_up", c.ffn, c.width)    # torch fc1
        linear(f"{p}.ffn_down", c.width, c.ffn)  # torch fc2
    linear("mm.0", c.mm_hidden, c.width)
    linear("mm.2", c.text_width, c.mm_hidden)
    return w


def write_projector(path: Path, config: VisionConfig, seed: int = 0) -> dict[str, F32]:
    """Write an mmproj GGUF for ``config`` (all tensors float32); return its weights.

    Key types are the ones llama.cpp's loader asserts (a wrong one aborts the process):
    uint32 sizes, float32 epsilon, bool flags, float32 arrays for mean/std. Not written, on
    purpose: ``v.class_embd`` (see the module docstring), ``v.post_ln`` (LLaVA discards the
    last layer's output, the only place CLIP applies it), ``clip.use_gelu`` (absent means
    CLIP's quick-GELU), ``clip.vision.feature_layer`` and ``image_grid_pinpoints`` (LLaVA-1.6),
    and any ``mm.3`` tensor (it would turn the projector into ``mlp_norm``).
    """
    c = config
    weights = make_weights(c, seed)
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_name("vision-oracle synthetic LLaVA-1.5 projector")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_uint32("clip.vision.image_size", c.image_size)
    writer.add_uint32("clip.vision.patch_size", c.patch_size)
    writer.add_uint32("clip.vision.embedding_length", c.width)
    writer.add_uint32("clip.vision.feed_forward_length", c.ffn)
    writer.add_uint32("clip.vision.block_count", c.blocks)
    writer.add_uint32("clip.vision.attention.head_count", c.heads)
    writer.add_uint32("clip.vision.projection_dim", c.text_width)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", c.eps)
    writer.add_array("clip.vision.image_mean", [float(v) for v in c.image_mean])
    writer.add_array("clip.vision.image_std", [float(v) for v in c.image_std])
    for name, array in weights.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


# --------------------------------------------------------------------------- the reference


def _layer_norm(x: F64, weight: F32, bias: F32, eps: float) -> F64:
    """torch.nn.LayerNorm: population variance, eps inside the square root."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _linear(x: F64, w: dict[str, F32], prefix: str) -> F64:
    """torch.nn.Linear: ``x @ W.T + b`` with W of shape (out, in)."""
    return x @ w[f"{prefix}.weight"].astype(np.float64).T + w[f"{prefix}.bias"]


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _activation(x: F64, kind: str) -> F64:
    if kind == "quick_gelu":  # CLIP's QuickGELUActivation
        return x / (1.0 + np.exp(-1.702 * x))
    if kind == "gelu_tanh":  # the tanh approximation (torch approximate="tanh", ggml_gelu)
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if kind == "gelu_erf":  # exact GELU (torch.nn.GELU())
        return np.asarray(0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))))
    raise ValueError(f"unknown activation {kind!r}")


def normalize(rgb: U8, config: VisionConfig) -> F64:
    """CLIP's preprocessing of an image already at the model's size: ``u8 / 255`` (the
    processor's ``rescale_factor``), then ``(x - mean) / std`` per RGB channel. Returns the
    planar (3, H, W) tensor a torch conv reads."""
    x = np.asarray(rgb, dtype=np.float64) / 255.0
    x = (x - np.asarray(config.image_mean)) / np.asarray(config.image_std)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def encode(weights: dict[str, F32], config: VisionConfig, rgb: U8, *,
           layers: int | None = None, encoder_act: str = "quick_gelu",
           projector_act: str = "gelu_tanh") -> F64:
    """LLaVA-1.5's image features for ``rgb`` (uint8, (S, S, 3)): (n_patches, text_width).

    The keyword arguments exist for the test's sensitivity checks; their defaults are the
    definition. ``layers`` is how many encoder blocks run (default ``blocks - 1``: LLaVA-1.5
    takes ``hidden_states[-2]``, where ``hidden_states[0]`` is the pre-LayerNorm output, so
    with B blocks it is the output of block B-2, after B-1 blocks). ``projector_act`` is the
    GELU between the two projector layers: LLaVA's ``nn.GELU()`` is the exact (erf) form;
    llama.cpp's projector uses ``ggml_gelu``, the tanh form, which differs from it by at
    most 5e-4 (below float16 rounding of O(1) values); the tanh form is the default here.
    """
    c = config
    w = weights
    if rgb.shape != (c.image_size, c.image_size, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 ({c.image_size}, {c.image_size}, 3), "
                         f"got {rgb.dtype} {rgb.shape}")
    n_layers = c.blocks - 1 if layers is None else layers

    # Patch embedding: Conv2d(3, D, kernel=P, stride=P) = each patch's (c, ky, kx) values
    # dotted with the kernel; patches in row-major order (the flatten(2) of the conv output).
    x = normalize(rgb, c)
    g, p = c.grid, c.patch_size
    patches = x.reshape(3, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(c.n_patches, 3 * p * p)
    kernel = w["v.patch_embd.weight"].astype(np.float64).reshape(c.width, 3 * p * p)
    h = patches @ kernel.T + w["v.patch_embd.bias"]
    h = h + w["v.position_embd.weight"]  # position i for patch i (no class token)
    h = _layer_norm(h, w["v.pre_ln.weight"], w["v.pre_ln.bias"], c.eps)

    n, dh = c.n_patches, c.head_dim
    for i in range(n_layers):
        b = f"v.blk.{i}"
        y = _layer_norm(h, w[f"{b}.ln1.weight"], w[f"{b}.ln1.bias"], c.eps)
        q, k, v = (_linear(y, w, f"{b}.{name}").reshape(n, c.heads, dh).transpose(1, 0, 2)
                   for name in ("attn_q", "attn_k", "attn_v"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh)  # (heads, n, n), no mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        context = (probs @ v).transpose(1, 0, 2).reshape(n, c.width)
        h = h + _linear(context, w, f"{b}.attn_out")
        y = _layer_norm(h, w[f"{b}.ln2.weight"], w[f"{b}.ln2.bias"], c.eps)
        h = h + _linear(_activation(_linear(y, w, f"{b}.ffn_up"), encoder_act), w,
                        f"{b}.ffn_down")

    return _linear(_activation(_linear(h, w, "mm.0"), projector_act), w, "mm.2")


# --------------------------------------------------------------------------- images


def draw_images(size: int) -> dict[str, U8]:
    """Three (size, size, 3) uint8 RGB images: smooth ramps, seeded noise, a drawn scene."""
    t = np.linspace(0.0, 1.0, size)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    gradient = np.stack([xx, yy, 1.0 - 0.5 * (xx + yy)], axis=-1)

    noise = np.random.default_rng(1234).integers(0, 256, (size, size, 3), dtype=np.uint8)

    rows, cols = np.mgrid[0:size, 0:size] / size  # fractions of the height / width
    scene = np.empty((size, size, 3))
    scene[...] = np.stack([0.35 + 0.4 * rows, 0.55 + 0.35 * rows, np.full_like(rows, 0.95)],
                          axis=-1)                                   # sky, lighter downwards
    scene[(rows - 0.2) ** 2 + (cols - 0.78) ** 2 < 0.12 ** 2] = (1.0, 0.85, 0.2)   # sun
    ground = rows >= 0.68
    scene[ground] = np.stack([0.2 + 0.1 * cols, 0.55 - 0.2 * rows, 0.15 + 0 * rows],
                             axis=-1)[ground]                          # grass
    wall = (rows >= 0.45) & (rows < 0.8) & (cols >= 0.15) & (cols < 0.55)
    scene[wall] = (0.75, 0.45, 0.3)
    roof = (rows >= 0.25) & (rows < 0.45) & (np.abs(cols - 0.35) < (rows - 0.25) + 0.02)
    scene[roof] = (0.6, 0.1, 0.1)
    scene[(rows >= 0.6) & (rows < 0.8) & (cols >= 0.3) & (cols < 0.4)] = (0.3, 0.18, 0.1)  # door

    def u8(a: F64) -> U8:
        return np.asarray(np.clip(np.rint(a * 255.0), 0, 255), dtype=np.uint8)

    return {"gradient": u8(gradient), "noise": noise, "picture": u8(scene)}


# --------------------------------------------------------------------------- libmtmd

#: libmtmd's recent log lines (quoted in errors); its callback must outlive every call.
MTMD_LOG: deque[str] = deque(maxlen=60)
_log_callback: Any = None


def _on_mtmd_log(_level: int, text: bytes, _user: Any) -> None:
    line = (text or b"").decode("utf-8", errors="replace").rstrip("\n")
    if line:
        MTMD_LOG.append(line)


def _runtime() -> tuple[Any, Any]:
    """(llama_cpp, llama_cpp.mtmd_cpp), llama.cpp's log routed into ``logging`` the way
    localllm does it and libmtmd's kept in ``MTMD_LOG`` instead of stderr."""
    global _log_callback
    from localllm.engines.llamacpp import _Runtime

    lib = _Runtime.get()  # imports llama_cpp, sets its log callback, llama_backend_init()
    import llama_cpp.mtmd_cpp as mtmd  # FileNotFoundError when libmtmd.so was not built

    if _log_callback is None:
        _log_callback = lib.llama_log_callback(_on_mtmd_log)
        mtmd.mtmd_helper_log_set(_log_callback, ctypes.c_void_p(0))
    return lib, mtmd


def _failed(what: str) -> RuntimeError:
    tail = "\n".join(list(MTMD_LOG)[-15:])
    return RuntimeError(f"libmtmd: {what}\n--- recent libmtmd log ---\n{tail}")


def mtmd_embeddings(mmproj_path: Path, text_model_path: Path,
                    images: Sequence[U8]) -> list[F32]:
    """libmtmd's embedding of each image, each (n_image_tokens, text model width), float32.

    One text model and one mtmd context serve all images. The context runs on the CPU with
    2 threads and flash attention disabled: llama.cpp's CPU flash attention casts K/V to
    float16 and accumulates in float16, which the plain attention path does not.
    """
    lib, mtmd = _runtime()
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = lib.llama_model_load_from_file(str(text_model_path).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {text_model_path}")
    ctx = None
    try:
        n_embd = int(lib.llama_model_n_embd(model))
        cparams = mtmd.mtmd_context_params_default()
        cparams.use_gpu = False
        cparams.n_threads = 2
        cparams.print_timings = False
        cparams.warmup = False
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), model, cparams)
        if not ctx:
            raise _failed(f"mtmd_init_from_file({mmproj_path}) failed")
        if not mtmd.mtmd_support_vision(ctx):
            raise _failed("the projector has no vision encoder")
        return [_encode_one(mtmd, ctx, rgb, n_embd) for rgb in images]
    finally:
        if ctx:
            mtmd.mtmd_free(ctx)
        lib.llama_model_free(model)


def mtmd_embedding(mmproj_path: Path, text_model_path: Path, rgb: U8) -> F32:
    """libmtmd's embedding of one uint8 RGB image: (n_image_tokens, text model width)."""
    return mtmd_embeddings(mmproj_path, text_model_path, [rgb])[0]


def _encode_one(mtmd: Any, ctx: Any, rgb: U8, n_embd: int) -> F32:
    """Bitmap → tokenize ``"<__media__>"`` (one image chunk) → encode → copy the rows."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, channels = rgb.shape
    if channels != 3:
        raise ValueError("expected an RGB image")
    data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
    bitmap = mtmd.mtmd_bitmap_init(width, height, data)  # copies the pixels
    if not bitmap:
        raise _failed("mtmd_bitmap_init failed")
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        marker = MEDIA_MARKER.encode()
        text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False,
                                    parse_special=True)
        rc = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text),
                                (ctypes.c_void_p * 1)(bitmap), 1)
        if rc != 0:
            raise _failed(f"mtmd_tokenize returned {rc}")
        n_chunks = mtmd.mtmd_input_chunks_size(chunks)
        if n_chunks != 1:
            raise _failed(f"{MEDIA_MARKER!r} gave {n_chunks} chunks, expected one image")
        chunk = mtmd.mtmd_input_chunks_get(chunks, 0)
        if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            raise _failed("the chunk is not an image chunk")
        n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
        rc = mtmd.mtmd_encode_chunk(ctx, chunk)
        if rc != 0:
            raise _failed(f"mtmd_encode_chunk returned {rc}")
        out = mtmd.mtmd_get_output_embd(ctx)  # valid until the next encode
        if not out:
            raise _failed("mtmd_get_output_embd returned NULL")
        return np.ctypeslib.as_array(out, shape=(n_tokens, n_embd)).astype(np.float32,
                                                                            copy=True)
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
