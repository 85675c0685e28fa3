"""Every llama.cpp computation of the process runs on one thread, whoever asks for it.

Why it matters: libgomp keeps an OpenMP worker pool per calling thread, and with a
second pool it stops spinning at barriers, which halved generation speed for the rest of
the process after one embed() on another thread (benchmarks/bench_compute_thread.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import localllm
from localllm.engines._compute import LLAMA_CPP, ComputeThread


def test_a_call_runs_on_the_thread_and_hands_back_its_outcome() -> None:
    worker = ComputeThread("test-compute")
    assert worker.run(lambda a, b: (a + b, threading.current_thread().name), 2, 3) == (
        5, "test-compute")

    def fails() -> None:
        raise ValueError("from the compute thread")

    with pytest.raises(ValueError, match="from the compute thread"):
        worker.run(fails)
    # a call made on the compute thread itself runs at once (no hand-off to itself)
    assert worker.run(lambda: worker.run(lambda: threading.current_thread().name)) == \
        "test-compute"
    results: list[int] = []
    callers = [threading.Thread(target=lambda i=i: results.append(worker.run(lambda: i)))
               for i in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=30)
    assert sorted(results) == list(range(8))


def test_generation_and_embedding_from_other_threads_compute_on_one(
        default_model_path: Path) -> None:
    import llama_cpp

    seen: set[str] = set()
    real = llama_cpp.llama_decode

    def decode(*args: Any) -> Any:
        seen.add(threading.current_thread().name)
        return real(*args)

    with localllm.load(default_model_path, context_length=512, threads=2) as model, \
            localllm.load("all-minilm-l6-v2", threads=2) as embedder:
        llama_cpp.llama_decode = decode
        try:
            model.complete("Hello", max_tokens=4, temperature=0)  # the scheduler thread
            embedder.embed(["from the main thread"])
            other = threading.Thread(target=lambda: embedder.embed(["from another"]))
            other.start()
            other.join(timeout=60)
        finally:
            llama_cpp.llama_decode = real
    assert seen == {LLAMA_CPP.name}
