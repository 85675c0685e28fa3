"""A tiny GPT-2 in the legacy GGML file layout (ggml's gpt-2 example), plus its numpy
forward pass: the oracle for ctransformers' legacy path."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

E, HEADS, LAYERS, CTX = 64, 4, 2, 128


def vocabulary() -> list[bytes]:
    pieces = [bytes([b]) for b in range(256)]
    pieces += [w.encode() for w in (" the", " fox", " dog", "ing", " and", " a", "he", "in")]
    return [*pieces, b"<|endoftext|>"]


def make_weights(seed: int = 0, *, starcoder: bool = False) -> dict[str, np.ndarray]:
    """GPT-2 weights; ``starcoder``: plus a separate output matrix ``model/lm_head`` (the
    GGML StarCoder layout: its converter expands the shared K/V head to every head, so
    the attention weights are shaped as in GPT-2)."""
    rng = np.random.default_rng(seed)
    n_vocab = len(vocabulary())
    qkv = 3 * E

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

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


def write_gpt2_ggml(path: Path, weights: dict[str, np.ndarray]) -> Path:
    vocab = vocabulary()
    with open(path, "wb") as f:
        f.write(struct.pack("<I", 0x67676D6C))
        f.write(struct.pack("<6i", len(vocab), CTX, E, HEADS, LAYERS, 0))  # ftype 0: f32
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


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def gpt2_forward(w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Logits of the last position (float64); StarCoder weights (see make_weights) use
    ``model/lm_head`` for the output."""
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd = len(ids), E // HEADS
    x = w64["model/wte"][ids] + w64["model/wpe"][:n]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(LAYERS):
        p = f"model/h{i}/"
        h = _layer_norm(x, w64[p + "ln_1/g"], w64[p + "ln_1/b"])
        qkv = h @ w64[p + "attn/c_attn/w"].T + w64[p + "attn/c_attn/b"]
        q, k, v = (qkv[:, j * E:(j + 1) * E].reshape(n, HEADS, hd) for j in range(3))
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = np.einsum("hqk,khd->qhd", s / s.sum(-1, keepdims=True), v).reshape(n, E)
        x = x + a @ w64[p + "attn/c_proj/w"].T + w64[p + "attn/c_proj/b"]
        h = _layer_norm(x, w64[p + "ln_2/g"], w64[p + "ln_2/b"])
        h = _gelu(h @ w64[p + "mlp/c_fc/w"].T + w64[p + "mlp/c_fc/b"])
        x = x + h @ w64[p + "mlp/c_proj/w"].T + w64[p + "mlp/c_proj/b"]
    x = _layer_norm(x, w64["model/ln_f/g"], w64["model/ln_f/b"])
    return np.asarray(x[-1] @ w64.get("model/lm_head", w64["model/wte"]).T)
