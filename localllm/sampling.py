"""Runtime-independent sampling: a chain of pure numpy logits processors.

The chain follows llama.cpp's order and semantics — logit bias, penalties, top-k,
typical-p, top-p, min-p, temperature, then a seeded draw — so a backend that exposes
logits samples exactly as llama.cpp would. Every processor returns a new array and never
mutates its input. Users add their own through :class:`LogitsProcessor`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ._types import SamplingParams

__all__ = [
    "LogitBias", "LogitsProcessor", "MinP", "Penalties", "Sampler", "Temperature", "TopK",
    "TopP", "TypicalP", "softmax",
]

Logits = npt.NDArray[np.float32]
NEG_INF = np.float32(-np.inf)


@runtime_checkable
class LogitsProcessor(Protocol):
    """``(previous token ids, logits row) -> new logits row``; must not mutate its input.

    Set a logit to ``-inf`` to forbid a token. Example — ban a word::

        banned = model.tokenizer.encode(" however", add_special=False)[0]
        def no_however(ids, logits):
            out = logits.copy()
            out[banned] = -np.inf
            return out
        model.complete(prompt, logits_processors=[no_however])
    """

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits: ...


def softmax(logits: Logits) -> npt.NDArray[np.float64]:
    """Probabilities of a logits row; ``-inf`` entries get exactly 0."""
    finite = logits[np.isfinite(logits)]
    if finite.size == 0:
        raise ValueError("every token is masked (all logits are -inf)")
    z: npt.NDArray[np.float64] = np.exp(logits.astype(np.float64) - float(finite.max()))
    return z / float(z.sum())


class LogitBias:
    def __init__(self, bias: dict[int, float]) -> None:
        self.ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self.values = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        out = logits.copy()
        self.apply_inplace(input_ids, out)
        return out

    def apply_inplace(self, input_ids: Sequence[int], out: Logits) -> None:
        out[self.ids] += self.values


class Penalties:
    """llama.cpp's repetition (multiplicative), frequency and presence penalties."""

    def __init__(self, repeat: float, frequency: float, presence: float, last_n: int) -> None:
        self.repeat, self.frequency, self.presence, self.last_n = (
            repeat, frequency, presence, last_n)

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        out = logits.copy()
        self.apply_inplace(input_ids, out)
        return out

    def apply_inplace(self, input_ids: Sequence[int], out: Logits) -> None:
        # image rows stand in the history as negative ids: they are no tokens to penalise
        window = [t for t in input_ids[-self.last_n:] if t >= 0] if self.last_n > 0 else []
        if not window:
            return
        counts = Counter(window)
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        sel = out[ids]
        sel = np.where(sel <= 0, sel * self.repeat, sel / self.repeat)
        out[ids] = sel - n * self.frequency - self.presence


class TopK:
    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        if self.k <= 0 or self.k >= logits.size:
            return logits
        keep = np.argpartition(-logits, self.k - 1)[: self.k]
        out = np.full_like(logits, NEG_INF)
        out[keep] = logits[keep]
        return out


def _keep_sorted_prefix(logits: Logits, order: npt.NDArray[np.int64], n: int) -> Logits:
    out = np.full_like(logits, NEG_INF)
    keep = order[:n]
    out[keep] = logits[keep]
    return out


def _keep_until_mass(logits: Logits, probs: npt.NDArray[np.float64],
                     order: npt.NDArray[np.int64], p: float, min_keep: int,
                     strictly_over: bool) -> Logits:
    """Keep tokens in ``order`` until their probability mass reaches (or passes) ``p``."""
    cum = np.cumsum(probs[order])
    hits = np.nonzero(cum > p if strictly_over else cum >= p)[0]
    n_live = int((probs > 0).sum())
    n = int(hits[0]) + 1 if hits.size else n_live
    return _keep_sorted_prefix(logits, order, min(max(n, min_keep), n_live))


class TopP:
    """Smallest set of most likely tokens whose probability reaches ``p``."""

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p, self.min_keep = p, min_keep

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        if self.p >= 1.0:
            return logits
        order = np.argsort(-logits, kind="stable")
        return _keep_until_mass(logits, softmax(logits), order, self.p, self.min_keep,
                                strictly_over=False)


class MinP:
    """Tokens whose probability is at least ``p`` times the top token's."""

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p, self.min_keep = p, min_keep

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        if self.p <= 0.0:
            return logits
        threshold = float(np.max(logits)) + float(np.log(self.p))
        keep = logits >= threshold
        if int(keep.sum()) < self.min_keep:
            order = np.argsort(-logits, kind="stable")
            return _keep_sorted_prefix(logits, order, self.min_keep)
        return np.where(keep, logits, NEG_INF).astype(np.float32)


class TypicalP:
    """Locally typical sampling: tokens whose surprise is closest to the entropy."""

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p, self.min_keep = p, min_keep

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        if self.p >= 1.0:
            return logits
        probs = softmax(logits)
        live = probs > 0
        logp = np.where(live, np.log(np.where(live, probs, 1.0)), 0.0)
        entropy = -float(np.sum(probs * logp))
        shifted = np.where(live, np.abs(-logp - entropy), np.inf)
        order = np.argsort(shifted, kind="stable")
        return _keep_until_mass(logits, probs, order, self.p, self.min_keep,
                                strictly_over=True)


class Temperature:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        if self.t <= 0:
            best = int(np.argmax(logits))
            out = np.full_like(logits, NEG_INF)
            out[best] = logits[best]
            return out
        return (logits / np.float32(self.t)).astype(np.float32)


def _top_k_ids(logits: Logits, k: int) -> npt.NDArray[np.int64]:
    """Ids of the ``k`` largest finite logits (all finite ones when ``k <= 0``).

    A strided sample's k-th largest value is a lower bound for the row's, so one
    comparison pass shrinks the row to a few hundred survivors before the exact
    partition — the same result as partitioning the whole row, several times faster.
    """
    if k > 0:
        stride = max(1, logits.size // 4096)
        sample = logits[::stride]
        if sample.size > k:
            bound = np.partition(sample, sample.size - k)[sample.size - k]
            if np.isfinite(bound):
                survivors = np.flatnonzero(logits >= bound)
                if survivors.size > k:
                    part = np.argpartition(-logits[survivors], k - 1)[:k]
                    return survivors[part]
                return survivors
    live = np.flatnonzero(np.isfinite(logits))
    if live.size == 0:
        raise ValueError("every token is masked (all logits are -inf)")
    if 0 < k < live.size:
        return live[np.argpartition(-logits[live], k - 1)[:k]]
    return live


class Sampler:
    """The full chain for one request; :meth:`sample` picks the next token id.

    Rows are processed whole until top-k; the later stages run on the surviving
    candidates only, which is what keeps a 152k-token row well under a millisecond.
    """

    def __init__(self, params: SamplingParams, seed: int,
                 processors: Sequence[LogitsProcessor] = ()) -> None:
        self.greedy = params.temperature == 0.0
        self.bias = LogitBias(params.logit_bias) if params.logit_bias else None
        self.user = list(processors)
        self.penalties = None
        if params.repeat_last_n and (params.repeat_penalty != 1.0 or
                                     params.frequency_penalty or params.presence_penalty):
            self.penalties = Penalties(params.repeat_penalty, params.frequency_penalty,
                                       params.presence_penalty, params.repeat_last_n)
        self.top_k = params.top_k
        self.candidates: list[LogitsProcessor] = [
            TypicalP(params.typical_p), TopP(params.top_p), MinP(params.min_p),
            Temperature(params.temperature)]
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _full_row(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        """Bias, user processors, penalties: one private copy, modified in place."""
        if self.bias is not None:
            logits = logits.copy()
            self.bias.apply_inplace(input_ids, logits)
        for proc in self.user:
            logits = proc(input_ids, logits)
        if self.penalties is not None:
            if self.bias is None and not self.user:
                logits = logits.copy()
            self.penalties.apply_inplace(input_ids, logits)
        return logits

    def _candidates(self, input_ids: Sequence[int], logits: Logits
                    ) -> tuple[npt.NDArray[np.int64], Logits]:
        logits = self._full_row(input_ids, logits)
        ids = _top_k_ids(logits, self.top_k)
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        cand = logits[ids]
        for proc in self.candidates:
            cand = proc(input_ids, cand)
        return ids, cand

    def process(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        """The final logits row (``-inf`` for every token that can no longer be drawn)."""
        if self.greedy:
            return Temperature(0.0)(input_ids, self._full_row(input_ids, logits))
        ids, cand = self._candidates(input_ids, logits)
        out = np.full_like(logits, NEG_INF)
        out[ids] = cand
        return out

    def probabilities(self, input_ids: Sequence[int], logits: Logits
                      ) -> npt.NDArray[np.float64]:
        """The distribution the next draw comes from (one-hot when greedy)."""
        return softmax(self.process(input_ids, logits))

    def sample(self, input_ids: Sequence[int], logits: Logits) -> int:
        if self.greedy:
            return int(np.argmax(self._full_row(input_ids, logits)))
        ids, cand = self._candidates(input_ids, logits)
        cdf = np.cumsum(softmax(cand))
        pick = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(pick, ids.size - 1)])
