"""Legacy GGML and GGJT files (before GGUF), inspected and validated in Python like GGUF
files are (``models.gguf``): the header, vocabulary and tensor table checked against the
file size, described as a :class:`GGMLFile` (a ``ModelFile`` in GGUF's metadata names) so
the rest of localllm sees one shape. Only ctransformers runs them.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .._errors import ModelFormatError, UnsupportedModelError
from .gguf import GGML_TYPES, ModelFile, TensorInfo, _Reader


class GGMLFile(ModelFile):
    """A legacy GGML/GGJT file's header (``version`` 0: the loaders' versions differ)."""

    format: ClassVar[str] = "ggml"


GGML_MAGIC = b"lmgg"  # uint32 0x67676d6c ('ggml') little-endian: the unversioned format
GGJT_MAGIC = b"tjgg"  # 'ggjt': llama.cpp's own format before GGUF (versions 1-3)
@dataclass(frozen=True)
class _GGMLLayout:
    """How one family of unversioned GGML files lays out its header (they carry no
    architecture name: the layout is recognised by parsing it and by its tensor names)."""

    architecture: str
    hparams: tuple[str, ...]
    counted_vocab: bool  # the vocabulary is preceded by its size again
    tensor_prefix: str  # every tensor name of the family starts with it
    scored_vocab: bool = False  # each token is followed by a float32 score (SentencePiece)


_GGML_LAYOUTS = (
    _GGMLLayout("gpt2", ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "ftype"), True,
                "model/"),
    _GGMLLayout("gptj", ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "n_rot", "ftype"),
                True, "transformer."),
    _GGMLLayout("gpt_neox", ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "n_rot",
                             "par_res", "ftype"), False, "gpt_neox."),
    # alibi_bias_max and clip_qkv are float32s, read here as their bit patterns
    _GGMLLayout("mpt", ("n_embd", "n_ctx", "n_head", "n_layer", "n_vocab", "alibi_bias_max",
                        "clip_qkv", "ftype"), False, "transformer."),
    _GGMLLayout("replit", ("n_embd", "n_ctx", "n_head", "n_layer", "n_vocab", "ftype"), False,
                "transformer.", scored_vocab=True),
)
LEGACY_GGML_ARCHITECTURES = ("gpt2", "starcoder", "gptj", "gpt_neox", "mpt", "replit", "llama",
                             "falcon")
_GGJT_HPARAMS = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
_FALCON_HPARAMS = ("n_vocab", "n_embd", "n_head", "n_head_kv", "n_layer", "version", "ftype")


def read_ggml(path: str | os.PathLike[str]) -> GGMLFile:
    """Read a pre-GGUF file (unversioned GGML of GPT-2, StarCoder, GPT-J, GPT-NeoX, MPT or
    Replit layout; llama.cpp's ggjt v3) into the description a GGUF header gives:
    hyper-parameters as ``<arch>.*`` metadata, the vocabulary, and the tensor table
    (walked header by header; data is skipped)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if bytes(mm[0:4]) == GGJT_MAGIC:
            return _read_ggjt(_Reader(mm, path, "ggjt"), path, size)
        if bytes(mm[0:4]) != GGML_MAGIC:
            raise ModelFormatError(f"{path} is not an unversioned GGML file")
        for layout in _GGML_LAYOUTS:
            r = _Reader(mm, path, "GGML")
            parsed = _ggml_header(r, layout, size)
            if parsed is not None:
                hp, tokens = parsed
                tensors = _ggml_tensors(r, path, size)
                _check_legacy_hparams(r, hp, tensors)
                break
        else:
            raise UnsupportedModelError(
                f"{path} is a legacy GGML file whose header matches none of the layouts "
                f"localllm reads ({', '.join(LEGACY_GGML_ARCHITECTURES)}), or is truncated; "
                "convert it to GGUF")
    arch = layout.architecture
    # GGML StarCoder files share GPT-2's layout (their converter expands the multi-query
    # K/V head to every head); they add an output matrix and fill-in-the-middle tokens
    if arch == "gpt2" and ("model/lm_head" in {t.name for t in tensors}
                           or "<fim_prefix>" in tokens):
        arch = "starcoder"
    metadata: dict[str, Any] = {
        "general.architecture": arch, "general.name": path.stem,
        f"{arch}.context_length": hp["n_ctx"], f"{arch}.block_count": hp["n_layer"],
        f"{arch}.embedding_length": hp["n_embd"], f"{arch}.attention.head_count": hp["n_head"],
        f"{arch}.feed_forward_length": 4 * hp["n_embd"], "general.file_type": hp["ftype"] % 1000,
        "tokenizer.ggml.model": "ggml-legacy", "tokenizer.ggml.tokens": tokens,
    }
    if "n_rot" in hp:
        metadata[f"{arch}.rope.dimension_count"] = hp["n_rot"]
    return GGMLFile(path, 0, metadata, tuple(tensors), 0, size)


def _ggml_header(r: _Reader, layout: _GGMLLayout, size: int
                 ) -> tuple[dict[str, int], list[str]] | None:
    """Hyper-parameters and vocabulary if the file follows ``layout``, else None."""
    r.pos = 4
    try:
        hp = {name: int(r.unpack("i")) for name in layout.hparams}
        n_vocab = hp["n_vocab"]
        if not 0 < n_vocab < 10_000_000 or min(hp["n_embd"], hp["n_head"], hp["n_layer"]) <= 0:
            return None
        if layout.counted_vocab and int(r.unpack("i")) != n_vocab:
            return None
        raw, _ = _ggml_vocab(r, n_vocab, size, scored=layout.scored_vocab)
        tokens = [t.decode("latin-1") for t in raw]
        start = r.pos
        n_dims, name_len = int(r.unpack("i")), int(r.unpack("i"))
        r.unpack("i")
        if not 1 <= n_dims <= 2 or not 0 < name_len < 512:
            return None
        r.pos += 4 * n_dims
        name = bytes(r.buf[r.pos:r.pos + name_len]).decode("utf-8", errors="replace")
    except ModelFormatError:
        return None
    r.pos = start
    return (hp, tokens) if name.startswith(layout.tensor_prefix) else None


def _ggml_vocab(r: _Reader, n_vocab: int, size: int, *, scored: bool
                ) -> tuple[list[bytes], list[float]]:
    """``n_vocab`` length-prefixed tokens, each followed by a float32 score when ``scored``."""
    raw, scores = [], []
    for _ in range(n_vocab):
        n = int(r.unpack("I"))
        if r.pos + n > size:
            raise r.fail("vocabulary runs past the end of the file")
        raw.append(bytes(r.buf[r.pos:r.pos + n]))
        r.pos += n
        if scored:
            scores.append(float(r.unpack("f")))
    return raw, scores


def _read_ggjt(r: _Reader, path: Path, size: int) -> GGMLFile:
    """A ggjt v3 file (mid-2023): llama.cpp's llama models, or ggllm.cpp's Falcon ones —
    seven hyper-parameters, a vocabulary with scores, tensors with 32-byte-aligned data,
    told apart by the first tensor's name. No context length is stored (2048, what both
    families were trained on, is assumed) and no token types (llama's are inferred from
    SentencePiece conventions)."""
    r.pos = 4
    version = int(r.unpack("I"))
    if version != 3:
        raise UnsupportedModelError(
            f"{path} is a ggjt v{version} file; its quantization formats were dropped "
            "before ggjt v3, the only version still read (by ctransformers): convert the "
            "original model to GGUF")
    values = [int(r.unpack("i")) for _ in range(7)]
    n_vocab = values[0]
    if not 0 < n_vocab < 10_000_000:
        raise r.fail(f"absurd vocabulary size {n_vocab}")
    raw, scores = _ggml_vocab(r, n_vocab, size, scored=True)
    tensors = _ggml_tensors(r, path, size, align=32)
    if tensors and tensors[0].name.startswith("transformer.word_embeddings."):
        hp = dict(zip(_FALCON_HPARAMS, values, strict=True))
        _check_legacy_hparams(r, hp, tensors)
        return GGMLFile(path, 0, {
            "general.architecture": "falcon", "general.name": path.stem,
            "falcon.context_length": 2048, "falcon.block_count": hp["n_layer"],
            "falcon.embedding_length": hp["n_embd"], "falcon.attention.head_count": hp["n_head"],
            "falcon.attention.head_count_kv": hp["n_head_kv"],
            "falcon.feed_forward_length": 4 * hp["n_embd"], "general.file_type": hp["ftype"],
            "tokenizer.ggml.model": "ggml-legacy",
            "tokenizer.ggml.tokens": [t.decode("latin-1") for t in raw],
        }, tuple(tensors), 0, size)
    hp = dict(zip(_GGJT_HPARAMS, values, strict=True))
    _check_legacy_hparams(r, hp, tensors)
    tokens = [t.decode("utf-8", errors="replace") for t in raw]
    n_embd, n_mult = hp["n_embd"], max(1, hp["n_mult"])
    types = [2 if i == 0 else 3 if i in (1, 2) else
             6 if len(t) == 6 and t.startswith("<0x") and t.endswith(">") else 1
             for i, t in enumerate(tokens)]
    metadata: dict[str, Any] = {
        "general.architecture": "llama", "general.name": path.stem,
        "llama.context_length": 2048, "llama.block_count": hp["n_layer"],
        "llama.embedding_length": n_embd, "llama.attention.head_count": hp["n_head"],
        "llama.attention.head_count_kv": hp["n_head"], "llama.rope.dimension_count": hp["n_rot"],
        "llama.feed_forward_length": (2 * 4 * n_embd // 3 + n_mult - 1) // n_mult * n_mult,
        "general.file_type": hp["ftype"], "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0,
    }
    return GGMLFile(path, 0, metadata, tuple(tensors), 0, size)


def _check_legacy_hparams(r: _Reader, hp: dict[str, int], tensors: list[TensorInfo]) -> None:
    """The sizes planning reads must be positive, with no more layers than tensors (the
    plan allocates per layer; every layer has its own tensors)."""
    for name in ("n_ctx", "n_embd", "n_head", "n_head_kv", "n_layer"):
        if hp.get(name, 1) <= 0:
            raise r.fail(f"hyper-parameter {name} is {hp[name]}")
    if hp["n_layer"] > len(tensors):
        raise r.fail(f"n_layer {hp['n_layer']} is more than its {len(tensors)} tensors")


def _ggml_tensors(r: _Reader, path: Path, size: int, align: int = 1) -> list[TensorInfo]:
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    while r.pos < size:
        n_dims, name_len, type_id = (int(r.unpack("i")) for _ in range(3))
        if not 1 <= n_dims <= 2 or type_id not in GGML_TYPES or not 0 < name_len < 512:
            raise r.fail(f"bad tensor header (dims {n_dims}, type {type_id})")
        shape = tuple(int(r.unpack("i")) for _ in range(n_dims))
        if min(shape) <= 0:  # a negative size would walk backwards, maybe forever
            raise r.fail(f"tensor with a non-positive dimension in {shape}")
        name = bytes(r.buf[r.pos:r.pos + name_len]).decode("utf-8", errors="replace")
        if name in names:
            raise r.fail(f"tensor name {name!r} appears twice")
        names.add(name)
        r.pos += name_len
        r.pos += -r.pos % align
        info = TensorInfo(name, shape, type_id, r.pos)
        if r.pos + info.n_bytes > size:
            raise ModelFormatError(f"{path} is truncated: tensor {name!r} runs past the end")
        tensors.append(info)
        r.pos += info.n_bytes
    return tensors
