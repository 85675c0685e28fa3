"""A pure-numpy float32 BERT encoder with sentence-transformers mean pooling.

Why it exists: the suite compares the embedding vectors of every runtime (llama.cpp on a
converted GGUF, and others) against something that shares no code with any of them. This
oracle reads the original ``model.safetensors`` (through the converter's small reader, so
the format is parsed in one place only) and runs the textbook BERT forward pass:
word + position + token-type embeddings, LayerNorm, then per layer self-attention and a
GELU (erf) feed-forward block, each with a residual and a post-LayerNorm, and finally the
mean of the token vectors under the attention mask. Tokenization is not its job: tests pass
token ids, usually the runtime's own, so a tokenizer difference cannot hide in the vectors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from localllm.models.convert_bert import read_safetensors

F32 = npt.NDArray[np.float32]


def _erf(x: F32) -> F32:
    """erf to about 1e-7 (Abramowitz & Stegun 7.1.26), below float32 rounding here.

    numpy has no erf and scipy is not a core dependency; math.erf element by element
    would be slow.
    """
    sign = np.sign(x)
    a = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741
                                                       + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: F32) -> F32:
    """GELU in its exact (erf) form, which BERT's ``hidden_act: gelu`` means."""
    return (0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))).astype(np.float32)


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray((x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias, np.float32)


class BertOracle:
    """Reference vectors for a sentence-transformers BERT folder (mean pooling)."""

    def __init__(self, source_dir: Path) -> None:
        source_dir = Path(source_dir)
        cfg = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.hidden = int(cfg["hidden_size"])
        self.eps = float(cfg["layer_norm_eps"])
        self.max_positions = int(cfg["max_position_embeddings"])
        raw = read_safetensors(source_dir / "model.safetensors")
        self.w: dict[str, F32] = {
            name.removeprefix("bert."): np.asarray(array, dtype=np.float32)
            for name, array in raw.items() if array.dtype.kind == "f"}

    def _dense(self, x: F32, prefix: str) -> F32:
        """``x @ W.T + b``: torch's Linear, whose weight is (out_features, in_features)."""
        return (x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]).astype(np.float32)

    def embed(self, token_ids: list[list[int]]) -> npt.NDArray[np.float32]:
        """Mean-pooled, un-normalised vectors, shape (len(token_ids), hidden_size).

        Sequences of different lengths are padded with id 0 and masked out of both the
        attention (keys) and the pooling, as sentence-transformers does in a batch.
        """
        if not token_ids or any(not ids for ids in token_ids):
            raise ValueError("token_ids must be a non-empty list of non-empty id lists")
        n, t = len(token_ids), max(len(ids) for ids in token_ids)
        if t > self.max_positions:
            raise ValueError(f"a sequence has {t} tokens; the model takes {self.max_positions}")
        ids = np.zeros((n, t), dtype=np.int64)
        mask = np.zeros((n, t), dtype=np.float32)
        for i, seq in enumerate(token_ids):
            ids[i, :len(seq)] = seq
            mask[i, :len(seq)] = 1.0

        x = (self.w["embeddings.word_embeddings.weight"][ids]
             + self.w["embeddings.position_embeddings.weight"][np.arange(t)][None]
             + self.w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = _layer_norm(x.astype(np.float32), self.w["embeddings.LayerNorm.weight"],
                        self.w["embeddings.LayerNorm.bias"], self.eps)

        head_dim = self.hidden // self.n_heads
        scale = np.float32(1.0 / np.sqrt(head_dim))
        key_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]  # (n, 1, 1, t)
        for layer in range(self.n_layers):
            p = f"encoder.layer.{layer}"

            def heads(y: F32) -> F32:  # (n, t, hidden) -> (n, heads, t, head_dim)
                return y.reshape(n, t, self.n_heads, head_dim).transpose(0, 2, 1, 3)

            q = heads(self._dense(x, f"{p}.attention.self.query"))
            k = heads(self._dense(x, f"{p}.attention.self.key"))
            v = heads(self._dense(x, f"{p}.attention.self.value"))
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + key_bias
            scores = scores - scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs = (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(n, t, self.hidden)
            attn = self._dense(context, f"{p}.attention.output.dense")
            x = _layer_norm(x + attn, self.w[f"{p}.attention.output.LayerNorm.weight"],
                            self.w[f"{p}.attention.output.LayerNorm.bias"], self.eps)
            ffn = self._dense(_gelu(self._dense(x, f"{p}.intermediate.dense")),
                              f"{p}.output.dense")
            x = _layer_norm(x + ffn, self.w[f"{p}.output.LayerNorm.weight"],
                            self.w[f"{p}.output.LayerNorm.bias"], self.eps)

        summed = (x * mask[:, :, None]).sum(axis=1)
        return np.asarray(summed / mask.sum(axis=1, keepdims=True), dtype=np.float32)
