"""Many requests on one model: continuous batching, async, cancellation, admission.

Real default model through llama.cpp with several sequences in one context. What is
asserted holds on every CPU: greedy outputs equal their solo runs up to a step where the
solo run's top-2 margin is small (another float path may pick the other token there),
seeded runs repeat within one process, and every sequence is freed whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import localllm
from localllm.testing import assert_batched_agrees, greedy_trace

PROMPTS = [
    "The capital of France is", "Once upon a time", "1, 2, 3,", "def main():",
    "My favourite food is", "In 1969, the first", "The best way to learn", "Water boils at",
    "The opposite of hot is", "A haiku about the sea:", "import numpy as np\n",
    "Monday, Tuesday,", "The three primary colours are", "Dear Sir or Madam,",
    "SELECT * FROM", "The quick brown fox",
]


@pytest.fixture(scope="module")
def batched(default_model_path: Path) -> Iterator[localllm.Model]:
    with localllm.load(default_model_path, context_length=512, threads=2, parallel=8,
                       max_queue=2000) as model:
        yield model


def wait_idle(model: localllm.Model) -> None:
    """Wait (bounded) until the scheduler has ended every request, cancelled ones too."""
    scheduler = model._scheduler
    deadline = time.monotonic() + 30
    while (scheduler._active or scheduler._waiting or scheduler.active_sequences) and \
            time.monotonic() < deadline:
        time.sleep(0.01)


def assert_all_sequences_free(model: localllm.Model) -> None:
    """No request is left running or queued and the KV cache holds exactly the cached
    prefixes the scheduler knows of: evicting them leaves every cell free."""
    scheduler = model._scheduler
    wait_idle(model)
    assert not scheduler._active and not scheduler._waiting
    assert scheduler.active_sequences == 0
    engine = model._engine
    assert engine is not None
    lib, memory = engine._lib, engine._memory
    for slot in scheduler._slots:
        assert lib.llama_memory_seq_pos_max(memory, slot.seq) + 1 == len(slot.tokens)
    scheduler.clear_cache()
    for slot in scheduler._slots:
        assert lib.llama_memory_seq_pos_max(memory, slot.seq) == -1


def test_batched_greedy_equals_solo_up_to_near_ties(batched: localllm.Model) -> None:
    """16 prompts, run 8 at a time, against their solo greedy runs: equal, or the first
    divergence is at a near-tied step of the solo run. The count and margins are printed
    for the record (pytest -s)."""
    solo = {p: greedy_trace(batched, p, 24) for p in PROMPTS}
    results: dict[str, tuple[int, ...]] = {}

    def run(prompt: str) -> None:
        results[prompt] = batched.complete(prompt, max_tokens=24, temperature=0).token_ids

    for wave in (PROMPTS[:8], PROMPTS[8:]):
        threads = [threading.Thread(target=run, args=(p,)) for p in wave]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert len(results) == len(PROMPTS)
    diverged = []
    for prompt, ids in results.items():
        at = assert_batched_agrees(solo[prompt], ids)
        if at is not None:
            diverged.append((prompt, at, round(solo[prompt].margins[at], 3)))
    print(f"\nbatched vs solo: {len(diverged)}/{len(PROMPTS)} diverged: {diverged}")
    assert_all_sequences_free(batched)


def test_seeded_requests_repeat(batched: localllm.Model) -> None:
    """A seeded request run alone twice, each from the same (empty) cache, gives the same
    text: CPU flash attention sums in cache-cell order, so the same history is what makes
    the float path the same. Inside a batch the agreement is reported, not asserted."""
    params = {"max_tokens": 24, "temperature": 0.9, "seed": 7}
    alone = []
    for _ in range(2):
        wait_idle(batched)
        batched.clear_cache()
        alone.append(batched.complete("Once upon a time", **params).text)
    assert alone[0] == alone[1]
    texts: list[str] = []

    def run() -> None:
        texts.append(batched.complete("Once upon a time", **params).text)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    print(f"\nseeded in a batch of 4: {sum(t == alone[0] for t in texts)}/4 equal the solo run")


def test_no_interference_under_load(batched: localllm.Model) -> None:
    """About 1,000 requests (``LOCALLLM_CANCEL_REQUESTS``; ``make soak`` runs 5,000), 32
    in flight, sync and async mixed, mixed lengths, about one in five cancelled at a random
    point. Nothing hangs, every completed greedy output matches its own prompt's solo run
    (up to near ties), every sequence ends free and no thread is left behind."""
    per_worker = max(1, int(os.environ.get("LOCALLLM_CANCEL_REQUESTS", "992")) // 32)
    rng = random.Random(1234)
    refs = {p: greedy_trace(batched, p, 16) for p in PROMPTS}
    threads_before = threading.active_count()  # the model's scheduler runs by now
    errors: list[BaseException] = []
    done: list[int] = []

    def check(prompt: str, ids: tuple[int, ...]) -> None:
        assert_batched_agrees(refs[prompt], ids)

    def sync_worker(jobs: list[tuple[str, int, int]]) -> None:
        try:
            for prompt, n, cancel_at in jobs:
                if cancel_at < 0:
                    check(prompt, batched.complete(prompt, max_tokens=n,
                                                   temperature=0).token_ids)
                else:
                    stream = batched.stream(prompt, max_tokens=n, temperature=0)
                    for i, _ in enumerate(stream):
                        if i >= cancel_at:
                            break
                    stream.close()  # type: ignore[attr-defined]
                done.append(1)
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    async def async_worker(jobs: list[tuple[str, int, int]]) -> None:
        for prompt, n, cancel_at in jobs:
            if cancel_at < 0:
                result = await batched.acomplete(prompt, max_tokens=n, temperature=0)
                check(prompt, result.token_ids)
            else:
                task = asyncio.ensure_future(batched.acomplete(prompt, max_tokens=n,
                                                               temperature=0))
                await asyncio.sleep(0.002 * cancel_at)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            done.append(1)

    def make_jobs(count: int) -> list[tuple[str, int, int]]:
        return [(rng.choice(PROMPTS), rng.randint(1, 16),
                 rng.randint(0, 8) if rng.random() < 0.2 else -1) for _ in range(count)]

    sync_jobs = [make_jobs(per_worker) for _ in range(16)]
    async_jobs = [make_jobs(per_worker) for _ in range(16)]

    def run_async() -> None:
        async def main() -> None:
            await asyncio.gather(*(async_worker(j) for j in async_jobs))

        try:
            asyncio.run(main())
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=sync_worker, args=(j,)) for j in sync_jobs]
    threads.append(threading.Thread(target=run_async))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert not errors, errors[:3]
    assert len(done) == 32 * per_worker
    assert_all_sequences_free(batched)
    assert threading.active_count() == threads_before


def test_cancelling_frees_the_sequence_within_a_step(batched: localllm.Model) -> None:
    """Breaking out of a sync stream, leaving an async for, or cancelling the task: the
    sequence is free before the scheduler has run two more decode steps."""
    scheduler = batched._scheduler

    def freed_within_one_step(cancel: object) -> None:
        steps = scheduler.steps
        deadline = time.monotonic() + 10
        while scheduler.active_sequences and time.monotonic() < deadline:
            time.sleep(0.001)
        assert scheduler.active_sequences == 0, cancel
        assert scheduler.steps - steps <= 2, cancel

    stream = batched.stream("Once upon a time", max_tokens=200,
                            logit_bias={eos: float("-inf") for eos in eog_ids(batched)})
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    freed_within_one_step("sync close")

    async def leave_async_for() -> None:
        async for _ in batched.astream("Once upon a time", max_tokens=200):
            break

    async def cancel_task() -> None:
        task = asyncio.ensure_future(batched.acomplete("Once upon a time", max_tokens=200))
        while scheduler.active_sequences == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave_async_for())
    freed_within_one_step("async for")
    asyncio.run(cancel_task())
    freed_within_one_step("task cancel")
    assert_all_sequences_free(batched)


def eog_ids(model: localllm.Model) -> list[int]:
    return [t for t in range(model.tokenizer.vocab_size)
            if model._engine is not None and model._engine.is_end_of_generation(t)]


def test_async_stream_equals_sync_and_never_blocks_the_loop(batched: localllm.Model) -> None:
    """Other tasks run while a request generates (a blocked loop would tick 0 times
    between its first and last chunk). Async text equals the sync text of the same greedy
    request, each run alone from an empty cache, so the float path is the same."""
    prompt, ban = "The capital of France is", {e: float("-inf") for e in eog_ids(batched)}
    wait_idle(batched)
    batched.clear_cache()
    sync = batched.complete(prompt, max_tokens=48, temperature=0, logit_bias=ban)

    async def main() -> tuple[str, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        wait_idle(batched)
        batched.clear_cache()
        tick_task = asyncio.ensure_future(ticker())
        chunks, at_first = [], 0
        async for chunk in batched.astream(prompt, max_tokens=48, temperature=0,
                                           logit_bias=ban):
            at_first = at_first if chunks else ticks
            chunks.append(chunk)
        between = ticks - at_first
        stop.set()
        await tick_task
        return "".join(c.text for c in chunks), between

    text, between = asyncio.run(main())
    assert text == sync.text
    assert between >= 1


def test_queue_full_and_timeout_are_typed(default_model_path: Path) -> None:
    with localllm.load(default_model_path, context_length=256, threads=2, parallel=1,
                       max_queue=1) as model:
        ban = {eos: float("-inf") for eos in eog_ids(model)}
        assert model.stats == localllm.ModelStats(active_sequences=0, queue_depth=0,
                                                  max_sequences=1)
        running = model.stream("Once upon a time", max_tokens=240, logit_bias=ban)
        next(running)
        assert model.stats.active_sequences == 1 and model.stats.queue_depth == 0
        queued = model.stream("Once upon a time", max_tokens=4)
        waiter = threading.Thread(target=lambda: list(queued))
        with pytest.raises(localllm.QueueFullError) as info:
            # the first request runs, the second waits: the third finds the queue full
            waiter.start()
            deadline = time.monotonic() + 10
            while not model.stats.queue_depth and time.monotonic() < deadline:
                time.sleep(0.01)
            assert model.stats.queue_depth == 1
            model.complete("x", max_tokens=2)
        assert info.value.retry_after_s > 0
        running.close()  # type: ignore[attr-defined]
        waiter.join(timeout=60)  # the queued request runs once the first is freed
        assert not waiter.is_alive()
        assert model.stats.active_sequences == 0 and model.stats.queue_depth == 0
        with pytest.raises(localllm.RequestTimeoutError, match="timed out"):
            model.complete("Once upon a time", max_tokens=200, timeout=0.05, logit_bias=ban)
        with pytest.raises(localllm.ConfigError, match="timeout"):
            model.complete("x", max_tokens=2, timeout=0)
        assert model.complete("x", max_tokens=2).usage.completion_tokens <= 2


def test_context_is_honest_per_request(default_model_path: Path) -> None:
    """A request that can never fit fails at once; requests that fit but need KV space
    held by others wait for it and then run."""
    with localllm.load(default_model_path, context_length=256, threads=2, parallel=2) as m:
        with pytest.raises(localllm.ContextOverflowError):
            m.complete("word " * 300, max_tokens=8)
        results: list[int] = []

        def run() -> None:
            results.append(m.complete("Once upon a time", max_tokens=200).usage.total_tokens)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(results) == 3


def test_parallel_is_planned_and_validated(default_model_path: Path) -> None:
    plan = localllm.plan(default_model_path, context_length=1024, parallel=3)
    assert plan.parallel == 3 and "3 parallel" in plan.describe()
    one = localllm.plan(default_model_path, context_length=1024, parallel=1)
    assert plan.memory.host.kv_cache == 3 * one.memory.host.kv_cache
    default = localllm.plan(default_model_path, context_length=1024)
    assert default.parallel >= 1 and any("parallel" in r for r in default.reasons)
    with pytest.raises(localllm.ConfigError, match="parallel"):
        localllm.load(default_model_path, parallel=0)


def test_a_live_sequence_shares_its_prefix(batched: localllm.Model) -> None:
    """A request whose prompt starts like a running one's copies those KV entries
    (llama_memory_seq_cp) instead of recomputing them, and says so in its usage."""
    batched.clear_cache()
    system = "You are a terse assistant. Answer in one word. " * 8
    ban = {eos: float("-inf") for eos in eog_ids(batched)}
    running = batched.stream(system + "Colour of the sky?", max_tokens=200, logit_bias=ban)
    next(running)
    shared = len(batched.tokenizer.encode(system))
    second = batched.complete(system + "Colour of grass?", max_tokens=4, temperature=0)
    running.close()  # type: ignore[attr-defined]
    assert second.usage.cached_prompt_tokens >= shared - 2
    alone = solo_uncached(batched, system + "Colour of grass?")
    assert second.usage.prompt_tokens == alone.usage.prompt_tokens
    assert_all_sequences_free(batched)


def solo_uncached(model: localllm.Model, prompt: str) -> localllm.Completion:
    wait_idle(model)  # a cancelled request keeps its sequence until the next step
    model.clear_cache()
    result = model.complete(prompt, max_tokens=4, temperature=0)
    assert result.usage.cached_prompt_tokens == 0
    return result


def test_a_failing_logits_processor_fails_only_its_request(batched: localllm.Model) -> None:
    """A user processor that raises ends its own request with BackendError (the cause
    attached); requests decoding beside it and after it are unaffected."""
    def broken(input_ids: object, logits: object) -> object:
        raise ValueError("boom")

    ban = {eos: float("-inf") for eos in eog_ids(batched)}
    neighbour = batched.stream("Once upon a time", max_tokens=40, logit_bias=ban)
    next(neighbour)
    with pytest.raises(localllm.BackendError, match="ValueError: boom") as info:
        batched.complete("x", max_tokens=4, logits_processors=[broken])
    assert isinstance(info.value.__cause__, ValueError)
    rest = list(neighbour)
    final = rest[-1].completion
    assert final is not None and final.usage.completion_tokens == 40
    assert batched.complete("x", max_tokens=2).usage.completion_tokens <= 2
    assert_all_sequences_free(batched)
