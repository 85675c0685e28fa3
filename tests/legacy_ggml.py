"""Tiny GPT-2 / StarCoder, GPT-J and GPT-NeoX models in the legacy GGML file layouts of
ggml's examples, plus numpy forward passes: the oracles for ctransformers' legacy path."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

E, HEADS, LAYERS, CTX = 64, 4, 2, 128


def vocabulary() -> list[bytes]:
    pieces = [bytes([b]) for b in range(256)]
    pieces += [w.encode() for w in (" the", " fox", " dog", "ing", " and", " a", "he", "in")]
    return [*pieces, b"<|endoftext|>"]


V = -1  # stands for the vocabulary size in the weight tables below


def random_weights(seed: int, outer: dict[str, tuple[int, ...]], layer_prefix: str,
                   layer: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Random f32 weights from a table of names and shapes (``{i}`` in ``layer_prefix`` is
    the layer index). 1-D ``…weight`` / ``…/g`` tensors are norm gains, centred on 1."""
    rng = np.random.default_rng(seed)
    n_vocab = len(vocabulary())
    w: dict[str, np.ndarray] = {}
    tables = [(name, shape) for name, shape in outer.items()] + [
        (layer_prefix.format(i=i) + name, shape) for i in range(LAYERS)
        for name, shape in layer.items()]
    for name, shape in tables:
        dims = tuple(n_vocab if d == V else d for d in shape)
        data = (rng.standard_normal(dims) * 0.1).astype(np.float32)
        gain = len(dims) == 1 and (name.endswith("weight") or name.endswith("/g"))
        w[name] = data + np.float32(gain)
    return w


def make_weights(seed: int = 0, *, starcoder: bool = False) -> dict[str, np.ndarray]:
    """GPT-2 weights; ``starcoder``: plus a separate output matrix ``model/lm_head`` (the
    GGML StarCoder layout: its converter expands the shared K/V head to every head, so
    the attention weights are shaped as in GPT-2)."""
    outer = {"model/ln_f/g": (E,), "model/ln_f/b": (E,), "model/wte": (V, E),
             "model/wpe": (CTX, E)} | ({"model/lm_head": (V, E)} if starcoder else {})
    return random_weights(seed, outer, "model/h{i}/", {
        "ln_1/g": (E,), "ln_1/b": (E,), "ln_2/g": (E,), "ln_2/b": (E,),
        "attn/c_attn/w": (3 * E, E), "attn/c_attn/b": (3 * E,), "attn/c_proj/w": (E, E),
        "attn/c_proj/b": (E,), "mlp/c_fc/w": (4 * E, E), "mlp/c_fc/b": (4 * E,),
        "mlp/c_proj/w": (E, 4 * E), "mlp/c_proj/b": (E,)})


def write_ggml(path: Path, hparams: tuple[int, ...], weights: dict[str, np.ndarray],
               *, counted_vocab: bool, vocab: list[bytes] | None = None,
               scored: bool = False, ggjt: bool = False) -> Path:
    """Magic, int32 hyper-parameters, the vocabulary (preceded by its size again when
    ``counted_vocab``; each token followed by a float32 score when ``scored``), then each
    f32 tensor: dims, name length, type, shape, name, data. ``ggjt``: the versioned
    ggjt v3 magic, and tensor data aligned to 32 bytes."""
    vocab = vocab or vocabulary()
    with open(path, "wb") as f:
        f.write(struct.pack("<II", 0x67676A74, 3) if ggjt else struct.pack("<I", 0x67676D6C))
        f.write(struct.pack(f"<{len(hparams)}i", *hparams))
        if counted_vocab:
            f.write(struct.pack("<i", len(vocab)))
        for piece in vocab:
            f.write(struct.pack("<I", len(piece)) + piece + struct.pack("<f", -1.0) * scored)
        for name, data in weights.items():
            encoded = name.encode()
            f.write(struct.pack("<3i", data.ndim, len(encoded), 0))
            for dim in reversed(data.shape):  # ggml lists ne0 (the fastest dimension) first
                f.write(struct.pack("<i", dim))
            f.write(encoded)
            f.write(b"\0" * (-f.tell() % 32 if ggjt else 0))
            f.write(np.ascontiguousarray(data, dtype=np.float32).tobytes())
    return path


def write_gpt2_ggml(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """hparams n_vocab, n_ctx, n_embd, n_head, n_layer, ftype (0: f32)."""
    return write_ggml(path, (len(vocabulary()), CTX, E, HEADS, LAYERS, 0), weights,
                      counted_vocab=True)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: Any = 0.0) -> np.ndarray:
    """Causal softmax attention over [positions, heads, head_dim] → [positions, heads·dim];
    ``bias`` is added to the scaled scores [heads, queries, keys] (ALiBi)."""
    n, _, hd = q.shape
    s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + bias
    s = s + np.triu(np.full((n, n), -np.inf), 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("hqk,khd->qhd", s / s.sum(-1, keepdims=True), v).reshape(n, -1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def gpt2_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits of the last position (float64); StarCoder weights (see make_weights) use
    ``model/lm_head`` for the output."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd = len(ids), E // HEADS
    x = w64["model/wte"][ids] + w64["model/wpe"][:n]
    for i in range(LAYERS):
        p = f"model/h{i}/"
        h = _layer_norm(x, w64[p + "ln_1/g"], w64[p + "ln_1/b"])
        qkv = h @ w64[p + "attn/c_attn/w"].T + w64[p + "attn/c_attn/b"]
        q, k, v = (qkv[:, j * E:(j + 1) * E].reshape(n, HEADS, hd) for j in range(3))
        a = _attention(q, k, v)
        x = x + a @ w64[p + "attn/c_proj/w"].T + w64[p + "attn/c_proj/b"]
        h = _layer_norm(x, w64[p + "ln_2/g"], w64[p + "ln_2/b"])
        h = _gelu(h @ w64[p + "mlp/c_fc/w"].T + w64[p + "mlp/c_fc/b"])
        x = x + h @ w64[p + "mlp/c_proj/w"].T + w64[p + "mlp/c_proj/b"]
    x = _layer_norm(x, w64["model/ln_f/g"], w64["model/ln_f/b"])
    return np.asarray(x[-1] @ w64.get("model/lm_head", w64["model/wte"]).T)


# -- GPT-NeoX (Pythia, Dolly v2, StableLM-alpha) in ggml's gpt-neox layout ------------------

N_ROT = (E // HEADS) // 2  # partial rotary: the first half of each head's dimensions


def make_neox_weights(seed: int = 0) -> dict[str, np.ndarray]:
    return random_weights(seed, {
        "gpt_neox.embed_in.weight": (V, E), "gpt_neox.final_layer_norm.weight": (E,),
        "gpt_neox.final_layer_norm.bias": (E,), "embed_out.weight": (V, E)},
        "gpt_neox.layers.{i}.", {
        "input_layernorm.weight": (E,), "input_layernorm.bias": (E,),
        "attention.query_key_value.weight": (3 * E, E),
        "attention.query_key_value.bias": (3 * E,), "attention.dense.weight": (E, E),
        "attention.dense.bias": (E,), "post_attention_layernorm.weight": (E,),
        "post_attention_layernorm.bias": (E,), "mlp.dense_h_to_4h.weight": (4 * E, E),
        "mlp.dense_h_to_4h.bias": (4 * E,), "mlp.dense_4h_to_h.weight": (E, 4 * E),
        "mlp.dense_4h_to_h.bias": (E,)})


def write_neox_ggml(path: Path, weights: dict[str, np.ndarray], par_res: int = 1) -> Path:
    """hparams n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot, par_res, ftype; then the
    vocabulary (no count before it, unlike GPT-2) and the tensors."""
    return write_ggml(path, (len(vocabulary()), CTX, E, HEADS, LAYERS, N_ROT, par_res, 0),
                      weights, counted_vocab=False)


def _rope(x: np.ndarray, positions: np.ndarray, *, adjacent: bool,
          n_rot: int = N_ROT) -> np.ndarray:
    """Rotate the first ``n_rot`` dims of each head: GPT-J pairs adjacent dims (2i, 2i + 1),
    GPT-NeoX and Falcon pair the halves (i, i + n_rot/2)."""
    theta = positions[:, None] * 10000.0 ** (-np.arange(n_rot // 2) * 2 / n_rot)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    first, second = (slice(0, n_rot, 2), slice(1, n_rot, 2)) if adjacent else \
        (slice(0, n_rot // 2), slice(n_rot // 2, n_rot))
    out = x.copy()
    a, b = x[..., first], x[..., second]
    out[..., first] = a * cos - b * sin
    out[..., second] = a * sin + b * cos
    return out


def _start(w: dict[str, np.ndarray], ids: list[int], embedding: str
           ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """float64 weights, the embedded tokens and their positions."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    return w64, w64[embedding][ids], np.arange(len(ids), dtype=np.float64)


def neox_forward(w: dict[str, np.ndarray], ids: list[int], par_res: int = 1) -> np.ndarray:
    """Logits of the last position (float64)."""
    w64, x, pos = _start(w, ids, "gpt_neox.embed_in.weight")
    n, hd = len(ids), E // HEADS
    for i in range(LAYERS):
        p = f"gpt_neox.layers.{i}."
        h = _layer_norm(x, w64[p + "input_layernorm.weight"], w64[p + "input_layernorm.bias"])
        qkv = (h @ w64[p + "attention.query_key_value.weight"].T
               + w64[p + "attention.query_key_value.bias"]).reshape(n, HEADS, 3, hd)
        q, k, v = (_rope(qkv[:, :, 0], pos, adjacent=False),
                   _rope(qkv[:, :, 1], pos, adjacent=False), qkv[:, :, 2])
        a = _attention(q, k, v)
        attn = a @ w64[p + "attention.dense.weight"].T + w64[p + "attention.dense.bias"]

        def ff(inp: np.ndarray, p: str = p) -> np.ndarray:
            h = _layer_norm(inp, w64[p + "post_attention_layernorm.weight"],
                            w64[p + "post_attention_layernorm.bias"])
            h = _gelu(h @ w64[p + "mlp.dense_h_to_4h.weight"].T + w64[p + "mlp.dense_h_to_4h.bias"])
            return h @ w64[p + "mlp.dense_4h_to_h.weight"].T + w64[p + "mlp.dense_4h_to_h.bias"]

        x = x + attn + ff(x) if par_res else (x + attn) + ff(x + attn)
    x = _layer_norm(x, w64["gpt_neox.final_layer_norm.weight"],
                    w64["gpt_neox.final_layer_norm.bias"])
    return np.asarray(x[-1] @ w64["embed_out.weight"].T)


# -- GPT-J (GPT4All-J) in ggml's gpt-j layout -----------------------------------------------

def make_gptj_weights(seed: int = 0) -> dict[str, np.ndarray]:
    return random_weights(seed, {
        "transformer.wte.weight": (V, E), "transformer.ln_f.weight": (E,),
        "transformer.ln_f.bias": (E,), "lm_head.weight": (V, E), "lm_head.bias": (V,)},
        "transformer.h.{i}.", {
        "ln_1.weight": (E,), "ln_1.bias": (E,), "attn.q_proj.weight": (E, E),
        "attn.k_proj.weight": (E, E), "attn.v_proj.weight": (E, E),
        "attn.out_proj.weight": (E, E), "mlp.fc_in.weight": (4 * E, E),
        "mlp.fc_in.bias": (4 * E,), "mlp.fc_out.weight": (E, 4 * E), "mlp.fc_out.bias": (E,)})


def write_gptj_ggml(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """hparams n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot, ftype; the vocabulary
    preceded by its count (as in GPT-2); then the tensors."""
    return write_ggml(path, (len(vocabulary()), CTX, E, HEADS, LAYERS, N_ROT, 0), weights,
                      counted_vocab=True)


def gptj_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits of the last position (float64): attention and MLP in parallel off ln_1."""
    w64, x, pos = _start(w, ids, "transformer.wte.weight")
    n, hd = len(ids), E // HEADS
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        h = _layer_norm(x, w64[p + "ln_1.weight"], w64[p + "ln_1.bias"])
        q, k, v = ((h @ w64[p + f"attn.{m}_proj.weight"].T).reshape(n, HEADS, hd)
                   for m in "qkv")
        q, k = _rope(q, pos, adjacent=True), _rope(k, pos, adjacent=True)
        a = _attention(q, k, v)
        ff = _gelu(h @ w64[p + "mlp.fc_in.weight"].T + w64[p + "mlp.fc_in.bias"])
        x = x + a @ w64[p + "attn.out_proj.weight"].T + ff @ w64[p + "mlp.fc_out.weight"].T \
            + w64[p + "mlp.fc_out.bias"]
    x = _layer_norm(x, w64["transformer.ln_f.weight"], w64["transformer.ln_f.bias"])
    return np.asarray(x[-1] @ w64["lm_head.weight"].T + w64["lm_head.bias"])


# -- MPT (MosaicML) in ggml's mpt layout ----------------------------------------------------

ALIBI_BIAS_MAX = 8.0


def make_mpt_weights(seed: int = 0) -> dict[str, np.ndarray]:
    return random_weights(seed, {
        "transformer.wte.weight": (V, E), "transformer.norm_f.weight": (E,)},
        "transformer.blocks.{i}.", {
        "norm_1.weight": (E,), "attn.Wqkv.weight": (3 * E, E), "attn.out_proj.weight": (E, E),
        "norm_2.weight": (E,), "ffn.up_proj.weight": (4 * E, E),
        "ffn.down_proj.weight": (E, 4 * E)})


def write_mpt_ggml(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """hparams d_model, max_seq_len, n_heads, n_layers, n_vocab, alibi_bias_max (f32),
    clip_qkv (f32), ftype; the vocabulary without a count; the tensors."""
    raw = struct.pack("<5i2fi", E, CTX, HEADS, LAYERS, len(vocabulary()), ALIBI_BIAS_MAX,
                      0.0, 0)
    # its loader converts every token to a wide string: bytes that are not UTF-8 abort it,
    # so lone high bytes are spelled as characters, as byte-level BPE vocabularies do
    vocab = [p if p[0] < 0x80 or len(p) > 1 else chr(0x100 + p[0]).encode()
             for p in vocabulary()]
    return write_ggml(path, struct.unpack("<8i", raw), weights, counted_vocab=False,
                      vocab=vocab)


def write_replit_ggml(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """Replit's code model: MPT's architecture (ALiBi, bias max 8) and tensor names, hparams
    d_model, max_seq_len, n_heads, n_layers, n_vocab, ftype, and a SentencePiece vocabulary
    with scores (spaces spelled U+2581)."""
    vocab = [p.replace(b" ", "\u2581".encode()) for p in vocabulary()]
    return write_ggml(path, (E, CTX, HEADS, LAYERS, len(vocab), 0), weights,
                      counted_vocab=False, vocab=vocab, scored=True)


def mpt_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits of the last position (float64): bias-free layer norms, ALiBi attention, the
    embedding matrix as the output head."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd = len(ids), E // HEADS
    zero = np.zeros(E)
    slopes = 2.0 ** (-ALIBI_BIAS_MAX * np.arange(1, HEADS + 1) / HEADS)
    alibi = slopes[:, None, None] * np.arange(n)[None, None, :]  # per key position
    x = w64["transformer.wte.weight"][ids]
    for i in range(LAYERS):
        p = f"transformer.blocks.{i}."
        h = _layer_norm(x, w64[p + "norm_1.weight"], zero)
        qkv = h @ w64[p + "attn.Wqkv.weight"].T
        q, k, v = (qkv[:, j * E:(j + 1) * E].reshape(n, HEADS, hd) for j in range(3))
        x = x + _attention(q, k, v, bias=alibi) @ w64[p + "attn.out_proj.weight"].T
        h = _layer_norm(x, w64[p + "norm_2.weight"], zero)
        x = x + _gelu(h @ w64[p + "ffn.up_proj.weight"].T) @ w64[p + "ffn.down_proj.weight"].T
    x = _layer_norm(x, w64["transformer.norm_f.weight"], zero)
    return np.asarray(x[-1] @ w64["transformer.wte.weight"].T)


# -- Falcon 7B-style (multi-query attention) in ggllm.cpp's ggjt v3 layout -------------------

def make_falcon_weights(seed: int = 0) -> dict[str, np.ndarray]:
    hd = E // HEADS
    return random_weights(seed, {
        "transformer.word_embeddings.weight": (V, E), "transformer.ln_f.weight": (E,),
        "transformer.ln_f.bias": (E,), "lm_head.weight": (V, E)}, "transformer.h.{i}.", {
        "input_layernorm.weight": (E,), "input_layernorm.bias": (E,),
        "self_attention.query_key_value.weight": (E + 2 * hd, E),
        "self_attention.dense.weight": (E, E), "mlp.dense_h_to_4h.weight": (4 * E, E),
        "mlp.dense_4h_to_h.weight": (E, 4 * E)})


def write_falcon_ggjt(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """hparams n_vocab, n_embd, n_head, n_head_kv (1), n_layer, version (7: the 7B
    layout), ftype; scored vocabulary; 32-byte-aligned tensors."""
    return write_ggml(path, (len(vocabulary()), E, HEADS, 1, LAYERS, 7, 0), weights,
                      counted_vocab=False, scored=True, ggjt=True)


def falcon_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits of the last position (float64): one K/V head shared by all query heads,
    rotary over the whole head, attention and MLP in parallel off one layer norm."""
    w64, x, pos = _start(w, ids, "transformer.word_embeddings.weight")
    n, hd = len(ids), E // HEADS
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        h = _layer_norm(x, w64[p + "input_layernorm.weight"], w64[p + "input_layernorm.bias"])
        qkv = h @ w64[p + "self_attention.query_key_value.weight"].T
        q = _rope(qkv[:, :E].reshape(n, HEADS, hd), pos, adjacent=False, n_rot=hd)
        k = _rope(qkv[:, E:E + hd].reshape(n, 1, hd), pos, adjacent=False, n_rot=hd)
        v = qkv[:, E + hd:].reshape(n, 1, hd)
        a = _attention(q, np.repeat(k, HEADS, 1), np.repeat(v, HEADS, 1))
        m = _gelu(h @ w64[p + "mlp.dense_h_to_4h.weight"].T) @ w64[p + "mlp.dense_4h_to_h.weight"].T
        x = x + a @ w64[p + "self_attention.dense.weight"].T + m
    x = _layer_norm(x, w64["transformer.ln_f.weight"], w64["transformer.ln_f.bias"])
    return np.asarray(x[-1] @ w64["lm_head.weight"].T)
