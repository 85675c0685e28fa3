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


def _random(seed: int) -> tuple[int, Any]:
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return len(vocabulary()), rand


def make_weights(seed: int = 0, *, starcoder: bool = False) -> dict[str, np.ndarray]:
    """GPT-2 weights; ``starcoder``: plus a separate output matrix ``model/lm_head`` (the
    GGML StarCoder layout: its converter expands the shared K/V head to every head, so
    the attention weights are shaped as in GPT-2)."""
    n_vocab, rand = _random(seed)
    qkv = 3 * E

    w = {"model/ln_f/g": 1 + rand(E), "model/ln_f/b": rand(E), "model/wte": rand(n_vocab, E),
         "model/wpe": rand(CTX, E)}
    for i in range(LAYERS):
        p = f"model/h{i}/"
        w |= {p + "ln_1/g": 1 + rand(E), p + "ln_1/b": rand(E), p + "ln_2/g": 1 + rand(E),
              p + "ln_2/b": rand(E), p + "attn/c_attn/w": rand(qkv, E),
              p + "attn/c_attn/b": rand(qkv), p + "attn/c_proj/w": rand(E, E),
              p + "attn/c_proj/b": rand(E), p + "mlp/c_fc/w": rand(4 * E, E),
              p + "mlp/c_fc/b": rand(4 * E), p + "mlp/c_proj/w": rand(E, 4 * E),
              p + "mlp/c_proj/b": rand(E)}
    if starcoder:
        w["model/lm_head"] = rand(n_vocab, E)
    return w


def write_ggml(path: Path, hparams: tuple[int, ...], weights: dict[str, np.ndarray],
               *, counted_vocab: bool, vocab: list[bytes] | None = None) -> Path:
    """Magic, int32 hyper-parameters, the vocabulary (preceded by its size again when
    ``counted_vocab``), then each f32 tensor: dims, name length, type, shape, name, data."""
    vocab = vocab or vocabulary()
    with open(path, "wb") as f:
        f.write(struct.pack("<I", 0x67676D6C))
        f.write(struct.pack(f"<{len(hparams)}i", *hparams))
        if counted_vocab:
            f.write(struct.pack("<i", len(vocab)))
        for piece in vocab:
            f.write(struct.pack("<I", len(piece)) + piece)
        for name, data in weights.items():
            encoded = name.encode()
            f.write(struct.pack("<3i", data.ndim, len(encoded), 0))
            for dim in reversed(data.shape):  # ggml lists ne0 (the fastest dimension) first
                f.write(struct.pack("<i", dim))
            f.write(encoded)
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
    n_vocab, rand = _random(seed)

    w = {"gpt_neox.embed_in.weight": rand(n_vocab, E)}
    for i in range(LAYERS):
        p = f"gpt_neox.layers.{i}."
        w |= {p + "input_layernorm.weight": 1 + rand(E), p + "input_layernorm.bias": rand(E),
              p + "attention.query_key_value.weight": rand(3 * E, E),
              p + "attention.query_key_value.bias": rand(3 * E),
              p + "attention.dense.weight": rand(E, E), p + "attention.dense.bias": rand(E),
              p + "post_attention_layernorm.weight": 1 + rand(E),
              p + "post_attention_layernorm.bias": rand(E),
              p + "mlp.dense_h_to_4h.weight": rand(4 * E, E),
              p + "mlp.dense_h_to_4h.bias": rand(4 * E),
              p + "mlp.dense_4h_to_h.weight": rand(E, 4 * E),
              p + "mlp.dense_4h_to_h.bias": rand(E)}
    w |= {"gpt_neox.final_layer_norm.weight": 1 + rand(E),
          "gpt_neox.final_layer_norm.bias": rand(E), "embed_out.weight": rand(n_vocab, E)}
    return w


def write_neox_ggml(path: Path, weights: dict[str, np.ndarray], par_res: int = 1) -> Path:
    """hparams n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot, par_res, ftype; then the
    vocabulary (no count before it, unlike GPT-2) and the tensors."""
    return write_ggml(path, (len(vocabulary()), CTX, E, HEADS, LAYERS, N_ROT, par_res, 0),
                      weights, counted_vocab=False)


def _rope_neox(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rotate the first N_ROT dims of each head as halves (i, i + N_ROT/2)."""
    half = N_ROT // 2
    theta = positions[:, None] * 10000.0 ** (-np.arange(half) * 2 / N_ROT)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    out = x.copy()
    a, b = x[..., :half], x[..., half:N_ROT]
    out[..., :half] = a * cos - b * sin
    out[..., half:N_ROT] = a * sin + b * cos
    return out


def neox_forward(w: dict[str, np.ndarray], ids: list[int], par_res: int = 1) -> np.ndarray:
    """Logits of the last position (float64)."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd = len(ids), E // HEADS
    x = w64["gpt_neox.embed_in.weight"][ids]
    pos = np.arange(n, dtype=np.float64)
    for i in range(LAYERS):
        p = f"gpt_neox.layers.{i}."
        h = _layer_norm(x, w64[p + "input_layernorm.weight"], w64[p + "input_layernorm.bias"])
        qkv = (h @ w64[p + "attention.query_key_value.weight"].T
               + w64[p + "attention.query_key_value.bias"]).reshape(n, HEADS, 3, hd)
        q, k, v = _rope_neox(qkv[:, :, 0], pos), _rope_neox(qkv[:, :, 1], pos), qkv[:, :, 2]
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
    n_vocab, rand = _random(seed)

    w = {"transformer.wte.weight": rand(n_vocab, E)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        w |= {p + "ln_1.weight": 1 + rand(E), p + "ln_1.bias": rand(E),
              p + "attn.q_proj.weight": rand(E, E), p + "attn.k_proj.weight": rand(E, E),
              p + "attn.v_proj.weight": rand(E, E), p + "attn.out_proj.weight": rand(E, E),
              p + "mlp.fc_in.weight": rand(4 * E, E), p + "mlp.fc_in.bias": rand(4 * E),
              p + "mlp.fc_out.weight": rand(E, 4 * E), p + "mlp.fc_out.bias": rand(E)}
    w |= {"transformer.ln_f.weight": 1 + rand(E), "transformer.ln_f.bias": rand(E),
          "lm_head.weight": rand(n_vocab, E), "lm_head.bias": rand(n_vocab)}
    return w


def write_gptj_ggml(path: Path, weights: dict[str, np.ndarray]) -> Path:
    """hparams n_vocab, n_ctx, n_embd, n_head, n_layer, n_rot, ftype; the vocabulary
    preceded by its count (as in GPT-2); then the tensors."""
    return write_ggml(path, (len(vocabulary()), CTX, E, HEADS, LAYERS, N_ROT, 0), weights,
                      counted_vocab=True)


def _rope_gptj(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i + 1) within the first N_ROT dims of each head."""
    theta = positions[:, None] * 10000.0 ** (-np.arange(N_ROT // 2) * 2 / N_ROT)
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    out = x.copy()
    a, b = x[..., 0:N_ROT:2], x[..., 1:N_ROT:2]
    out[..., 0:N_ROT:2] = a * cos - b * sin
    out[..., 1:N_ROT:2] = a * sin + b * cos
    return out


def gptj_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits of the last position (float64): attention and MLP in parallel off ln_1."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd = len(ids), E // HEADS
    x = w64["transformer.wte.weight"][ids]
    pos = np.arange(n, dtype=np.float64)
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        h = _layer_norm(x, w64[p + "ln_1.weight"], w64[p + "ln_1.bias"])
        q, k, v = ((h @ w64[p + f"attn.{m}_proj.weight"].T).reshape(n, HEADS, hd)
                   for m in "qkv")
        q, k = _rope_gptj(q, pos), _rope_gptj(k, pos)
        a = _attention(q, k, v)
        ff = _gelu(h @ w64[p + "mlp.fc_in.weight"].T + w64[p + "mlp.fc_in.bias"])
        x = x + a @ w64[p + "attn.out_proj.weight"].T + ff @ w64[p + "mlp.fc_out.weight"].T \
            + w64[p + "mlp.fc_out.bias"]
    x = _layer_norm(x, w64["transformer.ln_f.weight"], w64["transformer.ln_f.bias"])
    return np.asarray(x[-1] @ w64["lm_head.weight"].T + w64["lm_head.bias"])


# -- MPT (MosaicML) in ggml's mpt layout ----------------------------------------------------

ALIBI_BIAS_MAX = 8.0


def make_mpt_weights(seed: int = 0) -> dict[str, np.ndarray]:
    n_vocab, rand = _random(seed)
    w = {"transformer.wte.weight": rand(n_vocab, E)}
    for i in range(LAYERS):
        p = f"transformer.blocks.{i}."
        w |= {p + "norm_1.weight": 1 + rand(E), p + "attn.Wqkv.weight": rand(3 * E, E),
              p + "attn.out_proj.weight": rand(E, E), p + "norm_2.weight": 1 + rand(E),
              p + "ffn.up_proj.weight": rand(4 * E, E), p + "ffn.down_proj.weight": rand(E, 4 * E)}
    w["transformer.norm_f.weight"] = 1 + rand(E)
    return w


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
