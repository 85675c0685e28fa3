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

from .._errors import ConfigError

MODES = ("ngram",)
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
    """How a request drafts: the mode, the n-gram sizes tried (longest first) and the
    most tokens one step drafts."""

    mode: str = "ngram"
    ngram_max: int = 12
    ngram_min: int = 4
    draft_max: int = 48

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"speculative={self.mode!r} is not one of {', '.join(MODES)} "
                              "(or None for no speculation)")
        if not 1 <= self.ngram_min <= self.ngram_max <= 16:
            raise ConfigError(f"n-gram sizes {self.ngram_min}..{self.ngram_max} must be "
                              "within 1..16, smallest first")
        if not 1 <= self.draft_max <= 64:
            raise ConfigError(f"draft_max={self.draft_max} must be within 1..64")


def speculation_of(value: str | Speculation | None) -> Speculation | None:
    """``load(speculative=...)`` or a request's override, checked."""
    if value is None or isinstance(value, Speculation):
        return value
    if isinstance(value, str):
        return Speculation(mode=value)
    raise ConfigError(f"speculative must be 'ngram', a Speculation or None, not "
                      f"{type(value).__name__}")


class NgramDrafter:
    """Prompt-lookup drafts for one request: an index from each n-gram of the text so far
    to where it last started, kept up to date as tokens come, so a draft costs a dict
    lookup per n-gram size whatever the length of the text."""

    def __init__(self, spec: Speculation, tokens: list[int]) -> None:
        self.spec = spec
        self.tokens: list[int] = []
        self._seen: list[dict[tuple[int, ...], int]] = [
            {} for _ in range(spec.ngram_max + 1)]
        self._misses = 0
        self._paused = 0
        self._length = min(FIRST_DRAFT, spec.draft_max)
        self.drafted = 0
        self.accepted = 0
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
        if self._paused:
            self._paused -= 1
            return []
        text, limit = self.tokens, min(limit, self._length)
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
