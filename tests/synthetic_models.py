"""Random-weight llama-architecture GGUF files of chosen shapes, written with ``gguf``.

They load in llama.cpp like real models, so memory and shape-dependent behaviour can be
measured on several architectures without downloading anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class Shape:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    dtype: str = "f16"  # f32, f16 or q8_0
    n_ctx_train: int = 8192
    rms_eps: float = 1e-5


SHAPES = [
    Shape("tiny-f32", n_layer=4, n_embd=256, n_head=4, n_head_kv=4, n_ff=704, n_vocab=2000,
          dtype="f32"),
    Shape("mid-gqa-f16", n_layer=8, n_embd=768, n_head=12, n_head_kv=4, n_ff=2048,
          n_vocab=32000),
    Shape("deep-mqa-q8", n_layer=16, n_embd=512, n_head=8, n_head_kv=1, n_ff=1536,
          n_vocab=8000, dtype="q8_0"),
]


def _vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    # the word-boundary piece and printable ASCII, as every SentencePiece vocabulary has
    for piece in ["\u2581", *(chr(c) for c in range(33, 127))]:
        tokens.append(piece)
        types.append(1)
    i = 0
    while len(tokens) < n:
        tokens.append(f"\u2581w{i}")
        types.append(1)
        i += 1
    scores = [0.0] * 259 + [-float(k) for k in range(len(tokens) - 259)]
    return tokens, scores, types


def _add(w: gguf.GGUFWriter, name: str, shape: tuple[int, ...], dtype: str,
         rng: np.random.Generator, *, f16_norms: bool = False) -> None:
    data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    if len(shape) == 1:
        w.add_tensor(name, np.ones(shape, dtype=np.float16 if f16_norms else np.float32))
    elif dtype == "f32":
        w.add_tensor(name, data)
    elif dtype == "f16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def write_model(shape: Shape, path: Path, seed: int = 0, *, f16_attn_norms: bool = False
                ) -> Path:
    """``f16_attn_norms`` stores the attention norms as F16: a well-formed file that
    llama.cpp's CPU backend aborts on (it has no F32 x F16 multiply there)."""
    rng = np.random.default_rng(seed)
    head_dim = shape.n_embd // shape.n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(shape.name)
    w.add_context_length(shape.n_ctx_train)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_layer_norm_rms_eps(shape.rms_eps)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_file_type({"f32": 0, "f16": 1, "q8_0": 7}[shape.dtype])
    tokens, scores, types = _vocab(shape.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    kv = shape.n_head_kv * head_dim
    _add(w, "token_embd.weight", (shape.n_vocab, shape.n_embd), shape.dtype, rng)
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        _add(w, p + "attn_norm.weight", (shape.n_embd,), shape.dtype, rng,
             f16_norms=f16_attn_norms)
        _add(w, p + "attn_q.weight", (shape.n_embd, shape.n_embd), shape.dtype, rng)
        _add(w, p + "attn_k.weight", (kv, shape.n_embd), shape.dtype, rng)
        _add(w, p + "attn_v.weight", (kv, shape.n_embd), shape.dtype, rng)
        _add(w, p + "attn_output.weight", (shape.n_embd, shape.n_embd), shape.dtype, rng)
        _add(w, p + "ffn_norm.weight", (shape.n_embd,), shape.dtype, rng)
        _add(w, p + "ffn_gate.weight", (shape.n_ff, shape.n_embd), shape.dtype, rng)
        _add(w, p + "ffn_up.weight", (shape.n_ff, shape.n_embd), shape.dtype, rng)
        _add(w, p + "ffn_down.weight", (shape.n_embd, shape.n_ff), shape.dtype, rng)
    _add(w, "output_norm.weight", (shape.n_embd,), shape.dtype, rng)
    _add(w, "output.weight", (shape.n_vocab, shape.n_embd), shape.dtype, rng)
    _finish(w)
    return path


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf_v1_copy(source: Path, dest: Path) -> Path:
    """The same model in the GGUF version 1 layout (August 2023): 32-bit counts and string
    lengths, 32-bit tensor dimensions; current llama.cpp no longer reads it."""
    import struct

    reader = gguf.GGUFReader(str(source))
    scalar = {gguf.GGUFValueType.UINT8: "B", gguf.GGUFValueType.INT8: "b",
              gguf.GGUFValueType.UINT16: "H", gguf.GGUFValueType.INT16: "h",
              gguf.GGUFValueType.UINT32: "I", gguf.GGUFValueType.INT32: "i",
              gguf.GGUFValueType.FLOAT32: "f", gguf.GGUFValueType.BOOL: "?",
              gguf.GGUFValueType.UINT64: "Q", gguf.GGUFValueType.INT64: "q",
              gguf.GGUFValueType.FLOAT64: "d"}

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<I", len(raw)) + raw

    def item(kind: gguf.GGUFValueType, value: object) -> bytes:
        return text(str(value)) if kind == gguf.GGUFValueType.STRING else \
            struct.pack("<" + scalar[kind], value)

    fields = [(n, f) for n, f in reader.fields.items() if not n.startswith("GGUF.")]
    out = bytearray(b"GGUF" + struct.pack("<III", 1, len(reader.tensors), len(fields)))
    for name, field in fields:
        kind = field.types[0]
        out += text(name) + struct.pack("<I", int(kind))
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            values = field.contents()
            out += struct.pack("<II", int(sub), len(values))
            out += b"".join(item(sub, v) for v in values)
        else:
            out += item(kind, field.contents())
    data_start = min(int(t.data_offset) for t in reader.tensors)
    for t in reader.tensors:
        out += text(t.name) + struct.pack("<I", len(t.shape))
        out += b"".join(struct.pack("<I", int(d)) for d in t.shape)
        out += struct.pack("<IQ", int(t.tensor_type), int(t.data_offset) - data_start)
    alignment = int(reader.fields["general.alignment"].contents()) \
        if "general.alignment" in reader.fields else 32
    out += b"\0" * (-len(out) % alignment)
    with open(source, "rb") as handle:
        handle.seek(data_start)
        dest.write_bytes(bytes(out) + handle.read())
    return dest


_GGJT_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output",
               "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
               "attn_output": "attention.wo", "attn_norm": "attention_norm",
               "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
               "ffn_up": "feed_forward.w3", "ffn_norm": "ffn_norm"}


def write_ggjt_copy(source: Path, dest: Path, n_mult: int = 32) -> Path:
    """An f32 llama GGUF (no grouped-query attention) in llama.cpp's pre-GGUF ``ggjt`` v3
    layout: hparams n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype; tokens with
    scores; tensors with their data aligned to 32 bytes; llama.cpp's old tensor names."""
    import struct

    reader = gguf.GGUFReader(str(source))

    def value(key: str) -> int:
        return int(reader.fields[key].contents())

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    n_embd, n_head = value("llama.embedding_length"), value("llama.attention.head_count")
    out = bytearray(struct.pack("<II", 0x67676A74, 3))
    out += struct.pack("<7i", len(tokens), n_embd, n_mult, n_head,
                       value("llama.block_count"), n_embd // n_head, 0)
    for token, score in zip(tokens, scores, strict=True):
        raw = token.encode()
        out += struct.pack("<I", len(raw)) + raw + struct.pack("<f", score)
    for tensor in reader.tensors:
        base, _, suffix = tensor.name.rpartition(".")
        parts = base.split(".")
        name = (f"layers.{parts[1]}.{_GGJT_NAMES[parts[2]]}" if parts[0] == "blk"
                else _GGJT_NAMES[base]) + f".{suffix}"
        encoded = name.encode()
        out += struct.pack("<3i", len(tensor.shape), len(encoded), 0)
        out += b"".join(struct.pack("<i", int(d)) for d in tensor.shape) + encoded
        out += b"\0" * (-len(out) % 32)
        out += np.asarray(tensor.data, dtype=np.float32).tobytes()
    dest.write_bytes(bytes(out))
    return dest
