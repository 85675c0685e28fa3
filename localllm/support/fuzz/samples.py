"""Tiny valid model files, built field by field, that know where each field lies.

The fuzzer's seeds and the malformed-file corpus both start from these. A seed has to be
valid, or mutation never gets past the first check; a malformed file is a valid one with
one field damaged or cut, so the builder records the byte span of every field it writes.
Nothing here comes from a real model: every value is chosen to keep the files a few
hundred bytes long.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# GGUF metadata value type ids, as in the specification
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FORMATS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
            U64: "Q", I64: "q", F64: "d"}
F32_TYPE, F16_TYPE, Q4_0_TYPE = 0, 1, 2  # ggml tensor type ids


@dataclass(frozen=True)
class Span:
    """Where one field of a built file lies: ``data[start:end]``."""

    name: str
    start: int
    end: int


@dataclass
class Built:
    """A file's bytes and the spans of its fields, in file order."""

    data: bytearray = field(default_factory=bytearray)
    spans: list[Span] = field(default_factory=list)

    def put(self, name: str, raw: bytes) -> None:
        self.spans.append(Span(name, len(self.data), len(self.data) + len(raw)))
        self.data += raw

    def span(self, name: str) -> Span:
        return next(s for s in self.spans if s.name == name)


@dataclass(frozen=True)
class KV:
    """One metadata entry. ``value`` is raw bytes for an already-encoded value (to write
    what no valid file holds); ``item_type`` makes it an array of that item type."""

    key: bytes
    type_id: int
    value: Any
    item_type: int | None = None


@dataclass(frozen=True)
class Tensor:
    name: bytes
    shape: tuple[int, ...]
    type_id: int = F32_TYPE
    offset: int | None = None  # None: right after the previous tensor, aligned
    n_bytes: int | None = None  # None: computed from the shape (F32, F16 and Q4_0 only)


_BLOCK = {F32_TYPE: (1, 4), F16_TYPE: (1, 2), Q4_0_TYPE: (32, 18)}


def tensor_bytes(t: Tensor) -> int:
    if t.n_bytes is not None:
        return t.n_bytes
    block, size = _BLOCK[t.type_id]
    n = 1
    for d in t.shape:
        n *= d
    return n // block * size


def _value(b: Built, name: str, type_id: int, value: Any, length: str) -> None:
    if isinstance(value, bytes) and type_id != STRING:
        b.put(name, value)
    elif type_id == STRING:
        raw = value if isinstance(value, bytes) else str(value).encode()
        b.put(f"{name} length", struct.pack("<" + length, len(raw)))
        b.put(name, raw)
    else:
        b.put(name, struct.pack("<" + _FORMATS[type_id], value))


def gguf(kvs: Sequence[KV], tensors: Sequence[Tensor], *, version: int = 3,
         alignment: int = 32, fill: int = 0x3C) -> Built:
    """A GGUF file: header, metadata, tensor table, padding, tensor data.

    ``alignment`` pads the data section (write ``general.alignment`` yourself when it is
    not 32); tensor data bytes are ``fill``, which as F32 is a small positive number."""
    length = "I" if version == 1 else "Q"
    b = Built()
    b.put("magic", b"GGUF")
    b.put("version", struct.pack("<I", version))
    b.put("tensor count", struct.pack("<" + length, len(tensors)))
    b.put("kv count", struct.pack("<" + length, len(kvs)))
    for i, kv in enumerate(kvs):
        b.put(f"kv[{i}] key length", struct.pack("<" + length, len(kv.key)))
        b.put(f"kv[{i}] key", kv.key)
        b.put(f"kv[{i}] value type", struct.pack("<I", kv.type_id))
        if kv.item_type is None:
            _value(b, f"kv[{i}] value", kv.type_id, kv.value, length)
            continue
        b.put(f"kv[{i}] array item type", struct.pack("<I", kv.item_type))
        b.put(f"kv[{i}] array length", struct.pack("<" + length, len(kv.value)))
        for j, item in enumerate(kv.value):
            _value(b, f"kv[{i}] item[{j}]", kv.item_type, item, length)
    offsets, at = [], 0
    for t in tensors:
        offset = at if t.offset is None else t.offset
        offsets.append(offset)
        at = offset + tensor_bytes(t)
        at += -at % alignment
    for i, (t, offset) in enumerate(zip(tensors, offsets, strict=True)):
        b.put(f"tensor[{i}] name length", struct.pack("<" + length, len(t.name)))
        b.put(f"tensor[{i}] name", t.name)
        b.put(f"tensor[{i}] n_dims", struct.pack("<I", len(t.shape)))
        for k, d in enumerate(t.shape):
            b.put(f"tensor[{i}] dim[{k}]", struct.pack("<" + length, d))
        b.put(f"tensor[{i}] type", struct.pack("<I", t.type_id))
        b.put(f"tensor[{i}] offset", struct.pack("<Q", offset))
    b.put("padding", b"\0" * (-len(b.data) % alignment))
    start = len(b.data)
    for i, (t, offset) in enumerate(zip(tensors, offsets, strict=True)):
        gap = start + offset - len(b.data)
        if gap > 1 << 20:  # an absurd offset: that tensor's data is not written
            continue
        if gap > 0:
            b.put(f"tensor[{i}] padding", b"\0" * gap)
        b.put(f"tensor[{i}] data", bytes([fill]) * min(tensor_bytes(t), 1 << 20))
    return b


TOKENS = ("<s>", "</s>", "a", "b")


def tiny_kvs(changes: Mapping[str, KV | None] | None = None) -> list[KV]:
    """The metadata of a tiny llama-architecture model; ``changes`` replace entries by key
    (in place, or at the end for a new key) or, mapped to None, drop them."""
    kvs: dict[str, KV | None] = {
        "general.architecture": KV(b"general.architecture", STRING, "llama"),
        "general.name": KV(b"general.name", STRING, "tiny"),
        "general.alignment": KV(b"general.alignment", U32, 32),
        "general.file_type": KV(b"general.file_type", U32, 0),
        "llama.context_length": KV(b"llama.context_length", U32, 64),
        "llama.block_count": KV(b"llama.block_count", U32, 1),
        "llama.embedding_length": KV(b"llama.embedding_length", U32, 8),
        "llama.attention.head_count": KV(b"llama.attention.head_count", U32, 2),
        "tokenizer.ggml.model": KV(b"tokenizer.ggml.model", STRING, "llama"),
        "tokenizer.ggml.tokens": KV(b"tokenizer.ggml.tokens", ARRAY, list(TOKENS), STRING),
        "tokenizer.ggml.scores": KV(b"tokenizer.ggml.scores", ARRAY, [0.0] * len(TOKENS), F32),
        "tokenizer.ggml.bos_token_id": KV(b"tokenizer.ggml.bos_token_id", U32, 0),
        "tokenizer.ggml.eos_token_id": KV(b"tokenizer.ggml.eos_token_id", U32, 1),
    }
    kvs.update(changes or {})
    return [kv for kv in kvs.values() if kv is not None]


def tiny_tensors() -> list[Tensor]:
    return [Tensor(b"token_embd.weight", (8, 4)), Tensor(b"output_norm.weight", (8,))]


def tiny_gguf(changes: Mapping[str, KV | None] | None = None) -> Built:
    """A valid GGUF v3 (about 700 bytes) of a one-block llama with four tokens."""
    return gguf(tiny_kvs(changes), tiny_tensors())


# -- legacy GGML / ggjt ---------------------------------------------------------------

def ggml(magic: bytes, hparams: Sequence[int], vocab: Sequence[bytes],
         tensors: Sequence[Tensor], *, counted_vocab: bool = False, scored: bool = False,
         version: int | None = None, align: int = 1) -> Built:
    """An unversioned GGML file (``magic`` b"lmgg") or a versioned one (b"tjgg" with
    ``version``): int32 hyper-parameters, the vocabulary (its size again first when
    ``counted_vocab``, a float32 score after each token when ``scored``), then each
    tensor's header (n_dims, name length, type, dims), name and ``align``-ed data."""
    b = Built()
    b.put("magic", magic)
    if version is not None:
        b.put("version", struct.pack("<I", version))
    for i, value in enumerate(hparams):
        b.put(f"hparam[{i}]", struct.pack("<i", value))
    if counted_vocab:
        b.put("vocab count", struct.pack("<i", len(vocab)))
    for i, token in enumerate(vocab):
        b.put(f"token[{i}] length", struct.pack("<I", len(token)))
        b.put(f"token[{i}]", token)
        if scored:
            b.put(f"token[{i}] score", struct.pack("<f", 0.0))
    for i, t in enumerate(tensors):
        b.put(f"tensor[{i}] n_dims", struct.pack("<i", len(t.shape)))
        b.put(f"tensor[{i}] name length", struct.pack("<i", len(t.name)))
        b.put(f"tensor[{i}] type", struct.pack("<i", t.type_id))
        for k, d in enumerate(t.shape):
            b.put(f"tensor[{i}] dim[{k}]", struct.pack("<i", d))
        b.put(f"tensor[{i}] name", t.name)
        b.put(f"tensor[{i}] padding", b"\0" * (-len(b.data) % align))
        b.put(f"tensor[{i}] data", b"\x3c" * tensor_bytes(t))
    return b


VOCAB = tuple(t.encode() for t in TOKENS)


def tiny_ggjt(hparams: Sequence[int] = (4, 8, 32, 2, 1, 4, 0),
              tensors: Sequence[Tensor] | None = None) -> Built:
    """A llama ggjt v3 file: n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype."""
    tensors = tensors if tensors is not None else [
        Tensor(b"tok_embeddings.weight", (8, 4)), Tensor(b"norm.weight", (8,))]
    return ggml(b"tjgg", hparams, VOCAB, tensors, scored=True, version=3, align=32)


def tiny_gpt2_ggml(tensors: Sequence[Tensor] | None = None) -> Built:
    """An unversioned GPT-2 GGML file: n_vocab, n_ctx, n_embd, n_head, n_layer, ftype."""
    tensors = tensors if tensors is not None else [
        Tensor(b"model/wte", (8, 4)), Tensor(b"model/ln_f/g", (8,))]
    return ggml(b"lmgg", (4, 64, 8, 2, 1, 0), VOCAB, tensors, counted_vocab=True)


# -- ONNX model folders -----------------------------------------------------------------

#: the files of an ONNX model folder, in the order a fuzz input lists them
FOLDER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.onnx",
                "model.onnx.data")
#: between two files in a fuzz input; a separator, not length prefixes, so that mutating
#: one file's bytes does not shift where the next one starts
SEPARATOR = b"\n\x00--8<--\x00\n"


def join_folder(files: dict[str, bytes]) -> bytes:
    """One fuzz input from a folder's files; a missing file ends the list early."""
    parts = []
    for name in FOLDER_FILES:
        if name not in files:
            break
        parts.append(files[name])
    return SEPARATOR.join(parts)


def split_folder(data: bytes) -> dict[str, bytes]:
    """The inverse of :func:`join_folder`: file name → content, for the files present."""
    return dict(zip(FOLDER_FILES, data.split(SEPARATOR, len(FOLDER_FILES) - 1),
                    strict=False))


def tiny_onnx_model(*, external: bool = False) -> bytes:
    """A serialized ONNX decoder stub (Gather of an 8×4 embedding by ``input_ids``); with
    ``external``, its initializer lives in ``model.onnx.data``. Needs the onnx package."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("embed", TensorProto.FLOAT, (8, 4), [0.5] * 32)
    if external:
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "model.onnx.data"), ("offset", "0"),
                           ("length", "128")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embed", "input_ids"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, (1, "n")),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, (1, "n"))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, (1, "n", 4))],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def tiny_folder(*, external: bool = False) -> dict[str, bytes]:
    """The files of a tiny ONNX decoder folder in the Optimum layout."""
    import json

    vocab = {t: i for i, t in enumerate(TOKENS)}
    files = {
        "config.json": json.dumps({
            "model_type": "llama", "max_position_embeddings": 64, "num_hidden_layers": 1,
            "hidden_size": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
            "intermediate_size": 16, "vocab_size": 8}).encode(),
        "tokenizer.json": json.dumps({
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
            "added_tokens": [{"id": 4, "content": "<|im_start|>", "special": True},
                             {"id": 5, "content": "<|im_end|>", "special": True}]}).encode(),
        "tokenizer_config.json": json.dumps({
            "bos_token": "<s>", "eos_token": {"content": "<|im_end|>"},
            "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}).encode(),
        "model.onnx": tiny_onnx_model(external=external),
    }
    if external:
        files["model.onnx.data"] = struct.pack("<32f", *([0.5] * 32))
    return files
