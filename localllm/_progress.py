"""A small progress display for downloads and extraction, written to stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressCallback = Callable[[int, int], None]  # (done bytes, total bytes or 0)


class ProgressBar:
    """Redraws one line on a terminal; prints a line every few seconds otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 unit: str = "MB") -> None:
        """``unit``: "MB" when counting bytes, or a name for counted items ("tensors")."""
        self.label = label
        self.total = total
        self.unit = unit
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.tty = self.stream.isatty()

    def __call__(self, done: int, total: int = 0) -> None:
        total = total or self.total
        now = time.monotonic()
        interval = 0.1 if self.tty else 5.0
        if now - self.last_draw < interval and done < total:
            return
        self.last_draw = now
        rate = done / max(now - self.start, 1e-6)
        if self.unit != "MB":  # counted items
            amount = f"{done}/{total} {self.unit}" if total else f"{done} {self.unit}"
            speed = f"{rate:6.1f} {self.unit}/s"
        elif total:
            amount, speed = f"{done / 1e6:7.1f}/{total / 1e6:.1f} MB", f"{rate / 1e6:6.1f} MB/s"
        else:
            amount, speed = f"{done / 1e6:7.1f} MB", f"{rate / 1e6:6.1f} MB/s"
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "█" * filled + "·" * (width - filled)
            text = f"{self.label} {bar} {amount} {speed}"
        else:
            text = f"{self.label} {amount} {speed}"
        end = "\r" if self.tty and done < total else "\n"
        print(text, end=end, file=self.stream, flush=True)
