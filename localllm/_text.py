"""Turning generated token bytes into text safely, and finding stop strings in it.

Tokens carry bytes, not characters: one emoji can span three tokens. Text is decoded
incrementally so a partial UTF-8 sequence waits for its continuation instead of being
emitted as U+FFFD, and text that might be the start of a stop string is held back until
it is known not to be, so stop text never leaks into the output.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import AnyStr


class IncrementalDetokenizer:
    """Bytes in, complete characters out; invalid bytes become U+FFFD only when final."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data, final=False)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Streams text through, cutting at the first stop string, even across pieces."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self._pending = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Return the text that is safe to emit now; set ``matched`` on a stop."""
        if self.matched is not None:
            return ""
        if not self.stops:
            return text
        self._pending += text
        hit_at, hit = -1, None
        for stop in self.stops:
            at = self._pending.find(stop)
            if at != -1 and (hit_at == -1 or at < hit_at):
                hit_at, hit = at, stop
        if hit is not None:
            self.matched = hit
            out, self._pending = self._pending[:hit_at], ""
            return out
        keep = self._held_back_length()
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """At the end of generation, held-back text that never became a stop is output."""
        out, self._pending = self._pending, ""
        return "" if self.matched is not None else out

    def _held_back_length(self) -> int:
        """Length of the longest suffix of pending text that begins some stop string."""
        return max((partial_tail(self._pending, stop) for stop in self.stops), default=0)


def partial_tail(text: AnyStr, marker: AnyStr) -> int:
    """Length of the longest suffix of ``text`` that begins ``marker`` (and is shorter
    than it): the text to hold back while it may still become the marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
