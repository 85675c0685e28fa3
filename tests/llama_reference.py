"""An independent numpy forward pass of a llama-architecture GGUF (f32/f16 weights).

It is the oracle for runtimes' logits: RMSNorm, rotary embeddings on adjacent pairs (the
layout of llama GGUF files), grouped-query causal attention and a SwiGLU feed-forward.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def load_weights(path: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    reader = gguf.GGUFReader(str(path))
    weights = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                                  dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
               for t in reader.tensors}
    weights.setdefault("output.weight", weights["token_embd.weight"])  # tied embeddings
    fields = reader.fields

    def scalar(key: str) -> float:
        field = fields[key]
        return float(field.parts[field.data[0]][0])

    hp = {k: scalar(f"llama.{k}") for k in (
        "block_count", "embedding_length", "attention.head_count",
        "attention.head_count_kv", "attention.layer_norm_rms_epsilon")}
    hp["rope_base"] = scalar("llama.rope.freq_base") if "llama.rope.freq_base" in fields \
        else 10000.0
    return weights, hp


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, base: float) -> np.ndarray:
    """x: (seq, heads, dim); rotates (x[2i], x[2i+1]) by pos * base^(-2i/dim)."""
    seq, _, dim = x.shape
    inv = base ** (-np.arange(0, dim, 2) / dim)
    ang = np.arange(seq)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def forward(path: Path, ids: list[int]) -> np.ndarray:
    """Logits of the last position, float64 arithmetic on the file's weights."""
    w, hp = load_weights(path)
    n_layer, n_embd = int(hp["block_count"]), int(hp["embedding_length"])
    n_head, n_kv = int(hp["attention.head_count"]), int(hp["attention.head_count_kv"])
    eps, hd = hp["attention.layer_norm_rms_epsilon"], n_embd // n_head
    x = w["token_embd.weight"][ids].astype(np.float64)
    seq = len(ids)
    mask = np.triu(np.full((seq, seq), -np.inf), 1)
    for i in range(n_layer):
        p = f"blk.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = _rope((h @ w[p + "attn_q.weight"].T).reshape(seq, n_head, hd), hp["rope_base"])
        k = _rope((h @ w[p + "attn_k.weight"].T).reshape(seq, n_kv, hd), hp["rope_base"])
        v = (h @ w[p + "attn_v.weight"].T).reshape(seq, n_kv, hd)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = scores / scores.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", att, v).reshape(seq, n_embd)
        x = x + out @ w[p + "attn_output.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "ffn_up.weight"].T)) @ \
            w[p + "ffn_down.weight"].T
    x = _rms(x, w["output_norm.weight"], eps)
    return np.asarray(x[-1] @ w["output.weight"].T)
