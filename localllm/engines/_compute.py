"""One thread runs every llama.cpp computation of the process.

llama.cpp's CPU backend spreads each step over its threads with OpenMP, and libgomp
keeps a separate pool of worker threads for every thread that starts parallel work.
Once there are two pools (a model's scheduler thread, and the thread that embedded a
question or ran an image encoder, say), libgomp counts more threads than cores and stops
spinning at its barriers, so every later step of every model in the process is slower:
on 2 cores the default model fell from 88 to 24-63 tokens/s after one ``embed()`` call
on the main thread, for good. Handing each ``llama_decode`` (and image encode) to one
long-lived thread keeps a single pool. A model's scheduler runs its steps there in
bursts (``Engine.on_compute_thread``): waking one thread and then the other costs about
170 microseconds on a 2-core machine, too much to pay on every step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Call:
    """One computation handed over, and its outcome; ``done`` is released when it ran."""

    __slots__ = ("args", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()


class ComputeThread:
    """The process's one thread for runtime computations (started on first use, and
    again in a forked child, where threads do not survive)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the compute thread; its result, or its exception raised here."""
        thread = self._thread
        if thread is threading.current_thread():
            return fn(*args)
        if thread is None or not thread.is_alive():
            self._start()
        call = _Call(fn, args)
        self._calls.put(call)
        call.done.acquire()
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[no-any-return]

    def waiting(self) -> bool:
        """Whether a computation waits for the thread (a burst of steps running there
        yields to it between two steps)."""
        return not self._calls.empty()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._calls = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._serve, args=(self._calls,),
                                                name=self.name, daemon=True)
                self._thread.start()

    @staticmethod
    def _serve(calls: queue.SimpleQueue[_Call]) -> None:
        while True:
            call = calls.get()
            try:
                call.result = call.fn(*call.args)
            except BaseException as exc:  # handed back to the caller, who raises it
                call.error = exc
            call.done.release()


#: llama.cpp's (and its image encoder's) computations, for every model in the process
LLAMA_CPP = ComputeThread("localllm-llama.cpp")
