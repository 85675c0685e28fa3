"""The server under load: many concurrent streaming clients, and a soak of short requests
with random disconnects. Real ``localllm serve`` on loopback, real default model; every
loop is bounded in count and time.

The soak's size comes from ``LOCALLLM_SOAK_REQUESTS`` (default 2,000; ``make soak`` runs
more)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import served_in_thread, served_model, served_process

from localllm.testing import assert_text_agrees

pytestmark = pytest.mark.real_model
MODEL = "smollm2-135m-instruct"
TOPICS = ["the sea", "a cat", "the moon", "bread", "winter", "a train", "music", "paper",
          "a garden", "the wind", "glass", "a river", "coffee", "a bridge", "snow", "fire",
          "a clock", "the forest", "salt", "a lamp", "rain", "a book", "a horse", "stone",
          "the desert", "honey", "a ship", "silver", "a violin", "clouds", "a key", "tea"]


@pytest.fixture(scope="module")
def base(default_model_path: Path) -> Iterator[str]:
    with served_in_thread([MODEL], parallel=8, context_length=512, threads=2) as url:
        yield url


def messages(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write one sentence about {topic}."}]


async def stream_text(client: httpx.AsyncClient, body: dict[str, object]) -> tuple[str, str]:
    """(text, finish_reason) of one streamed chat completion, checked to end in [DONE]."""
    import json

    parts, finish, done = [], None, False
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code}: {(await response.aread())!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            for choice in event["choices"]:
                parts.append(choice["delta"].get("content") or "")
                finish = choice["finish_reason"] or finish
    assert done and finish is not None
    return "".join(parts), finish


def test_32_streaming_clients_match_requests_run_alone(base: str) -> None:
    """32 clients x 4 requests, 8 decoded at a time: no errors, every stream complete,
    and each greedy text equal to its prompt run alone, or parting from it at a near tie
    to a token near the top there (see localllm.testing.BATCH_NEAR_TIE)."""
    max_tokens = 16

    async def client_loop(i: int, client: httpx.AsyncClient) -> list[tuple[str, str]]:
        out = []
        for r in range(4):
            topic = TOPICS[(i + r) % len(TOPICS)]
            body = {"model": MODEL, "messages": messages(topic), "max_tokens": max_tokens,
                    "temperature": 0, "stream": True}
            text, _ = await stream_text(client, body)
            out.append((topic, text))
        return out

    async def run() -> list[tuple[str, str]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
            results = await asyncio.wait_for(asyncio.gather(
                *(client_loop(i, client) for i in range(32))), timeout=600)
        return [pair for per_client in results for pair in per_client]

    results = asyncio.run(run())
    assert len(results) == 128
    model = served_model(base, MODEL)
    model.clear_cache()
    for topic in TOPICS:
        prompt = model.render_chat(messages(topic))
        for got in {text for t, text in results if t == topic}:
            assert_text_agrees(model, prompt, got, max_tokens)


def test_soak_with_random_disconnects(default_model_path: Path) -> None:
    """Short requests, about a third dropped by the client mid-stream: the server's RSS
    grows < 30 MB after warm-up, no sequence or queue entry leaks, /health stays ok."""
    total = int(os.environ.get("LOCALLLM_SOAK_REQUESTS", "2000"))
    rng = random.Random(7)
    with served_process([MODEL, "--parallel", "8", "--context", "256", "--threads", "2"]
                        ) as (url, proc):

        def rss_mb() -> float:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            found = re.search(r"VmRSS:\s+(\d+) kB", status)
            assert found
            return int(found.group(1)) / 1024

        async def one(client: httpx.AsyncClient, k: int) -> str:
            body = {"model": MODEL, "messages": messages(TOPICS[k % len(TOPICS)]),
                    "max_tokens": rng.randint(1, 6), "stream": True}
            if rng.random() < 0.35:  # hang up after the first event
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_lines():
                        break
                return "dropped"
            await stream_text(client, body)
            return "done"

        async def run(n: int) -> list[str]:
            sem = asyncio.Semaphore(12)
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                async def guarded(k: int) -> str:
                    async with sem:
                        return await one(client, k)
                return await asyncio.wait_for(
                    asyncio.gather(*(guarded(k) for k in range(n))), timeout=900)

        warmup = min(200, total // 5)
        asyncio.run(run(warmup))
        before = rss_mb()
        started = time.monotonic()
        outcomes = asyncio.run(run(total - warmup))
        elapsed = time.monotonic() - started
        assert outcomes.count("dropped") > 0 and outcomes.count("done") > 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{url}/metrics").text
            active = re.search(r'localllm_active_sequences\{model="[^"]+"\} (\d+)', metrics)
            queued = re.search(r'localllm_queue_depth\{model="[^"]+"\} (\d+)', metrics)
            assert active and queued
            if active.group(1) == "0" and queued.group(1) == "0":
                break
            time.sleep(0.1)
        assert active.group(1) == "0" and queued.group(1) == "0", metrics
        growth = rss_mb() - before
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        print(f"soak: {total - warmup} requests in {elapsed:.0f} s after {warmup} warm-up, "
              f"RSS {before:.0f} MB -> +{growth:.1f} MB")
        assert growth < 30, f"RSS grew {growth:.1f} MB over {total} requests"
