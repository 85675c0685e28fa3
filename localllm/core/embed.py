"""Sentence embeddings: ``Model.embed`` for every backend that has an embedding model.

Validation, the length check, opt-in truncation (reported, never silent), usage and the
L2 normalisation are done here once; an engine only turns whole token sequences into
pooled vectors (``Engine.embed_batch``), packing them into runs as its runtime likes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, ContextOverflowError, UnsupportedFeatureError
from .._types import OverflowPolicy, Truncation, Usage
from .engine import Engine

EMBED_OVERFLOW = ("error", "truncate_right", "truncate_left")


@dataclass(frozen=True)
class Embeddings:
    """Vectors of ``embed()``'s inputs, in input order.

    ``vectors`` is a float32 array of shape ``(n, dim)``, unit length when normalised.
    ``truncated`` maps the index of every input an overflow policy cut to what was cut;
    it is empty unless a policy was passed."""

    vectors: Any
    usage: Usage
    pooling: str
    normalized: bool
    truncated: Mapping[int, Truncation] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def embed(engine: Engine, texts: str | Sequence[str], *, normalize: bool,
          overflow: str) -> Embeddings:
    """Tokenize, check or cut each input to the model's limit, embed, normalise."""
    import numpy as np

    if engine.pooling is None:
        raise UnsupportedFeatureError(
            engine.backend_name, "embed() with a generative model",
            "load an embedding model (e.g. localllm.load('all-minilm-l6-v2')), or load a "
            "decoder GGUF with pooling='last' or 'mean'")
    if overflow not in EMBED_OVERFLOW:
        raise ConfigError(f"overflow={overflow!r} is not one of {', '.join(EMBED_OVERFLOW)}")
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, Sequence):
        raise ConfigError(f"texts must be a str or a list of str, not {type(texts).__name__}")
    limit = engine.context_length
    sequences: list[list[int]] = []
    truncated: dict[int, Truncation] = {}
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"texts[{i}] must be str, not {type(text).__name__}")
        ids = engine.tokenize(text, add_special=True, parse_special=False)
        if not ids:
            raise ConfigError(f"texts[{i}] is empty and the model adds no tokens of its own; "
                              "an empty input has no embedding")
        if len(ids) > limit:
            if overflow == "error":
                raise ContextOverflowError(
                    len(ids), 0, limit,
                    f"texts[{i}] has {len(ids)} tokens but the model embeds at most {limit}; "
                    "split it (localllm.Index chunks documents for you), or pass "
                    "overflow='truncate_right' (keep the start) or 'truncate_left' (keep "
                    "the end) to cut it, reported in Embeddings.truncated")
            ids, truncated[i] = _cut(engine, text, ids, limit,
                                     "truncate_right" if overflow == "truncate_right"
                                     else "truncate_left")
        sequences.append(ids)
    dim = engine.embedding_dim
    vectors = engine.embed_batch(sequences) if sequences else np.zeros((0, dim), np.float32)
    n = sum(len(s) for s in sequences)
    return Embeddings(vectors=normalized(vectors, normalize),
                      usage=Usage(prompt_tokens=n, completion_tokens=0, total_tokens=n),
                      pooling=engine.pooling, normalized=normalize, truncated=truncated)


def normalized(rows: Any, normalize: bool) -> Any:
    """Rows as a contiguous float32 array, L2-normalised when asked (zero rows stay zero)."""
    import numpy as np

    vectors = np.ascontiguousarray(rows, dtype=np.float32)
    if normalize and vectors.size:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0))
    return vectors


def _cut(engine: Engine, text: str, ids: list[int], limit: int, policy: OverflowPolicy
         ) -> tuple[list[int], Truncation]:
    """Cut the text's own tokens to fit, keeping the model's special tokens around them
    (BERT's [CLS] ... [SEP]), and say what went."""
    body = engine.tokenize(text, add_special=False, parse_special=False)
    head = next((p for p in range(len(ids) - len(body) + 1)
                 if ids[p:p + len(body)] == body), 0)
    before, after = ids[:head], ids[head + len(body):]
    room = limit - len(before) - len(after)
    if room <= 0:
        raise ConfigError(f"the model's {len(before) + len(after)} special tokens leave no "
                          f"room in its {limit}-token limit")
    if policy == "truncate_right":
        kept, dropped = body[:room], body[room:]
    else:
        kept, dropped = body[len(body) - room:], body[:len(body) - room]
    return [*before, *kept, *after], Truncation(
        policy=policy, dropped_tokens=len(dropped), dropped_text=engine.decode(dropped))
