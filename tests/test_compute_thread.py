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


def test_steps_run_in_bursts_that_yield_to_other_computations(
        default_model_path: Path) -> None:
    """A stream's steps reach the compute thread in bursts (not one hand-off per token,
    which cost about 170 us a step), yet an embed asked for mid-stream, or a second
    model's stream, runs between two steps instead of waiting for the stream's end."""
    handoffs: list[Any] = []
    real_run = LLAMA_CPP.run

    def run(fn: Any, *args: Any) -> Any:
        if threading.current_thread().name != LLAMA_CPP.name:
            handoffs.append(fn)
        return real_run(fn, *args)

    with localllm.load(default_model_path, context_length=512, threads=2) as model, \
            localllm.load(default_model_path, context_length=512, threads=2) as other, \
            localllm.load("all-minilm-l6-v2", threads=2) as embedder:
        engine = model._generator.engine
        no_end = {t: -100.0 for t in range(model.info.vocab_size)
                                if engine.is_end_of_generation(t)}
        model.complete("Warm up", max_tokens=2, temperature=0)
        LLAMA_CPP.run = run  # type: ignore[method-assign]
        try:
            text = model.complete("Count to a hundred:", max_tokens=40, temperature=0,
                                  logit_bias=no_end).text
        finally:
            del LLAMA_CPP.run
        assert text and len(handoffs) <= 3, f"{len(handoffs)} hand-offs for 40 tokens"

        steps = model._generator.scheduler
        other_first: list[int] = []  # the first model's steps when each chunk came

        def second() -> None:
            for _ in other.stream("Tell me about rivers.", max_tokens=5, temperature=0,
                                  logit_bias=no_end):
                other_first.append(steps.steps)
        helper = threading.Thread(target=second)
        for index, _ in enumerate(model.stream("Tell me a long story.", max_tokens=200,
                                               temperature=0, logit_bias=no_end)):
            if index == 4:
                start = steps.steps
                vectors = embedder.embed(["asked for in the middle of a stream"])
                embedded_after = steps.steps - start
                helper.start()
        helper.join(timeout=120)
        total = steps.steps - start
    # the embed waited a step or two, not for the rest of the 200-token stream
    assert len(vectors) == 1 and embedded_after < 50 and total > 150, (embedded_after, total)
    # the second model's five tokens (and its closing chunk) came while the first stream
    # still had most of its 200 steps to go
    assert len(other_first) >= 5 and other_first[-1] - start < 100, (start, other_first)
