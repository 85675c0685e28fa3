"""Speculative decoding: guess the next tokens cheaply, check them all in one decode step.

On a CPU one decode step of one stream is bound by reading the weights; checking eight
tokens in that step costs little more than one. Prompt-lookup (n-gram) drafting guesses
by finding the text's last few tokens earlier in the prompt or the answer and proposing
what followed them there: free, and often right when an answer copies from its input
(quoting a document, editing code, echoing values into JSON).

Exactness: each drafted position is sampled from the model's own distribution, in order,
with the request's sampler, and a draft token is kept only when the sampled token equals
it; the first sampled token that differs ends the step (it is kept, the rest dropped and
the KV cache rolled back). For a deterministic draft this is the standard speculative
rejection rule (accept with probability p(draft), else sample from p without the draft),
so the output distribution is the model's, and the sampler draws exactly the random
numbers it would draw without speculation: a seeded run gives the same tokens with and
without it, up to the float differences of a batched step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from .engine import Engine, SeqInput

#: "ngram": prompt lookup; "draft": a smaller model with the same vocabulary
MODES = ("ngram", "draft")
#: generating sequences beyond which a step is compute-bound: drafting would only add work
MAX_STREAMS = 4
#: a draft's length starts here and doubles while drafts are taken whole, halves when
#: most of one is refused: long drafts pay where the answer copies, short ones cost little
#: where it does not
FIRST_DRAFT = 8
SHORTEST_DRAFT = 2
#: steps without drafting after a draft of which nothing was accepted: doubles with each
#: such miss in a row, up to the most
PAUSE_STEPS = 4
LONGEST_PAUSE = 128


@dataclass(frozen=True)
class Speculation:
    """How a request drafts: the mode, the n-gram sizes tried (longest first), the most
    tokens one step drafts, and (draft model) the probability below which the draft
    model stops guessing."""

    mode: str = "ngram"
    ngram_max: int = 12
    #: shorter matches (4, 5 tokens) are common in prose by chance and mostly refused;
    #: 6 keeps the matches of text being copied (see benchmarks/bench_speculative.py)
    ngram_min: int = 6
    #: a refused tail costs its rows in the verify step (on a CPU about half a step per
    #: row for small models): 32 bounds what one miss can waste
    draft_max: int = 32
    p_min: float = 0.75

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"speculative={self.mode!r} is not one of {', '.join(MODES)} "
                              "(or None for no speculation)")
        if not 1 <= self.ngram_min <= self.ngram_max <= 16:
            raise ConfigError(f"n-gram sizes {self.ngram_min}..{self.ngram_max} must be "
                              "within 1..16, smallest first")
        if not 1 <= self.draft_max <= 64:
            raise ConfigError(f"draft_max={self.draft_max} must be within 1..64")
        if not 0.0 <= self.p_min < 1.0:
            raise ConfigError(f"p_min={self.p_min} must be within [0, 1)")


def speculation_of(value: str | Speculation | None) -> Speculation | None:
    """``load(speculative=...)`` or a request's override, checked."""
    if value is None or isinstance(value, Speculation):
        return value
    if isinstance(value, str):
        return Speculation(mode=value)
    raise ConfigError(f"speculative must be 'ngram', 'draft', a Speculation or None, not "
                      f"{type(value).__name__}")


class Drafter:
    """One request's drafting budget: how long the next draft may be and whether drafting
    pauses, adapted to how the last drafts fared (the same rule for every kind of draft)."""

    def __init__(self, spec: Speculation) -> None:
        self.spec = spec
        self._misses = 0
        self._paused = 0
        self._length = min(FIRST_DRAFT, spec.draft_max)
        self.drafted = 0
        self.accepted = 0

    def allowed(self, limit: int) -> int:
        """How many tokens the next draft may have (0 while paused: the pause counts down)."""
        if self._paused:
            self._paused -= 1
            return 0
        return max(0, min(limit, self._length))

    def extend(self, tokens: list[int]) -> None:
        """Tokens were accepted into the text (an n-gram index keeps up; a model needs not:
        it reads the request's history when it drafts)."""

    def record(self, drafted: int, accepted: int) -> None:
        """How a draft fared: the next one is longer after a draft taken whole, shorter
        after one mostly refused, and none for a while after one refused at once (the
        pause doubling with each such miss in a row)."""
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self._length = min(self._length * 2, self.spec.draft_max)
        elif accepted * 2 < drafted:
            self._length = max(self._length // 2, SHORTEST_DRAFT)
        if accepted:
            self._misses = 0
            return
        self._misses += 1
        self._paused = min(PAUSE_STEPS << (self._misses - 1), LONGEST_PAUSE)


class NgramDrafter(Drafter):
    """Prompt-lookup drafts for one request: an index from each n-gram of the text so far
    to where it last started, kept up to date as tokens come, so a draft costs a dict
    lookup per n-gram size whatever the length of the text."""

    def __init__(self, spec: Speculation, tokens: list[int]) -> None:
        super().__init__(spec)
        self.tokens: list[int] = []
        self._seen: list[dict[tuple[int, ...], int]] = [
            {} for _ in range(spec.ngram_max + 1)]
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        """Append tokens (image placeholders break the text: no n-gram spans them)."""
        spec, seen, text = self.spec, self._seen, self.tokens
        for token in tokens:
            text.append(token)
            end = len(text)
            for n in range(spec.ngram_min, spec.ngram_max + 1):
                if end - 1 >= n:  # index the n-gram that ends just before this token
                    key = tuple(text[end - 1 - n:end - 1])
                    if min(key) >= 0:
                        seen[n][key] = end - 1 - n

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens that followed the longest earlier match of the text's
        last n tokens; none while paused after repeated misses."""
        text, limit = self.tokens, self.allowed(limit)
        if limit <= 0:
            return []
        for n in range(self.spec.ngram_max, self.spec.ngram_min - 1, -1):
            if len(text) <= n:
                continue
            start = self._seen[n].get(tuple(text[-n:]))
            if start is not None:
                follow = text[start + n:start + n + limit]
                if follow and min(follow) >= 0:
                    return follow
        return []


class DraftModel:
    """A smaller model with the target's vocabulary that drafts by greedy decoding: each
    generating sequence has the same sequence id in the draft model's own KV cache, kept
    up to its history between steps, and all sequences draft together, one batched draft
    step per drafted position. A sequence stops guessing once the draft model's top token
    is less likely than ``p_min`` (a guess that unsure is mostly refused, and each costs a
    draft step and a verified row)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        #: per sequence id, the tokens whose KV entries the draft model holds
        self._cached: dict[int, list[int]] = {}

    def close(self) -> None:
        self.engine.close()

    def clear(self) -> None:
        """Forget every cached sequence (the target's cache was cleared or failed)."""
        for seq in list(self._cached):
            self.engine.seq_remove(seq, 0)
        self._cached.clear()

    def draft(self, wants: list[tuple[int, list[int], int, float]]) -> list[list[int]]:
        """For each (sequence, history, most tokens, p_min) the tokens the draft model
        would write next, greedily, while its confidence stays at p_min or above."""
        drafts: list[list[int]] = [[] for _ in wants]
        rows = self._catch_up([(i, seq, history) for i, (seq, history, limit, _)
                               in enumerate(wants) if limit > 0])
        while rows:
            inputs: list[SeqInput] = []
            owners: list[int] = []
            for i, row in rows.items():
                token, p = _top(row)
                if p < wants[i][3]:
                    continue
                drafts[i].append(token)
                if len(drafts[i]) < wants[i][2]:
                    cached = self._cached[wants[i][0]]
                    inputs.append(SeqInput(wants[i][0], [token], len(cached), True))
                    owners.append(i)
                    cached.append(token)
            rows = dict(zip(owners, self.engine.decode_batch(inputs), strict=True)) \
                if inputs else {}
        return drafts

    def _catch_up(self, wants: list[tuple[int, int, list[int]]]) -> dict[int, Any]:
        """Bring each sequence's draft KV up to its history (what it holds already is
        kept as far as it agrees) and return the next-token logits after it, decoding
        the missing tokens of all sequences together in batches the engine takes."""
        engine = self.engine
        pieces: list[tuple[int, SeqInput]] = []
        for i, seq, history in wants:
            cached = self._cached.get(seq, [])
            keep = engine.reusable_prefix(seq, min(common_prefix(cached, history),
                                                   len(history) - 1))
            engine.seq_remove(seq, keep)
            self._make_room(seq, len(history) - keep, {s for _, s, _ in wants})
            self._cached[seq] = list(history)
            size = engine.batch_size
            for start in range(keep, len(history), size):
                chunk = history[start:start + size]
                pieces.append((i, SeqInput(seq, chunk, start,
                                           start + len(chunk) == len(history))))
        rows: dict[int, Any] = {}
        while pieces:
            batch, room = [], engine.batch_size
            while pieces and len(pieces[0][1].tokens) <= room:
                room -= len(pieces[0][1].tokens)
                batch.append(pieces.pop(0))
            for (i, inp), out in zip(batch, engine.decode_batch([p for _, p in batch]),
                                     strict=True):
                if inp.output:
                    rows[i] = out
        return rows

    def _make_room(self, seq: int, need: int, drafting: set[int]) -> None:
        """Drop other sequences' cached tokens (idle ones first) until ``need`` more fit."""
        held = sum(len(t) for t in self._cached.values())
        for other in sorted(self._cached, key=lambda s: (s in drafting, -len(self._cached[s]))):
            if held + need <= self.engine.kv_capacity:
                return
            if other != seq:
                held -= len(self._cached[other])
                self.engine.seq_remove(other, 0)
                self._cached[other] = []


def _top(logits: Any) -> tuple[int, float]:
    """The most likely token of a logits row and its probability."""
    import numpy as np

    token = int(np.argmax(logits))
    top = float(logits[token])
    return token, 1.0 / float(np.exp(logits - top).sum())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
