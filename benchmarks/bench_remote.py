"""The remote backend's overhead over a raw httpx streaming loop, on the same server.

``localllm serve`` (default model, ``--parallel 8``) runs as a child process on loopback.
The same chat requests (64 tokens each, end-of-generation banned so every answer has the
same length, temperature 0) are streamed at 1 and at 8 concurrent clients, each client
sending ``--requests`` one after another, two ways:

* **raw**: ``httpx.AsyncClient.stream`` and a loop that reads ``data:`` lines and
  ``json.loads`` each, collecting ``delta.content``: the least a client can do;
* **localllm**: ``localllm.connect(url, model).astream_chat(...)``: the remote ``Model``
  with its capability checks, stop-string matching and ``StreamChunk``/``Completion``
  objects.

Reps alternate raw / localllm; the wall time of each round is the median over ``--reps``.
Goal: localllm / raw ≤ 1.03 at 1 and 8 streams.

Usage: cd benchmarks && ../.venv/bin/python bench_remote.py [--reps 5] [--requests 4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from server_harness import served_process  # noqa: E402

import localllm  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOKENS = 64


def body(i: int, eog: list[int]) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Tell story number {i}."}],
            "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},  # as the remote backend asks
            "logit_bias": {str(t): -100 for t in eog}}


async def raw_round(url: str, clients: int, requests: int, eog: list[int]) -> int:
    async def one(client: httpx.AsyncClient, i: int) -> int:
        parts, tokens = [], 0
        async with client.stream("POST", "/v1/chat/completions", json=body(i, eog)) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    event = json.loads(line[6:])
                    for choice in event["choices"]:
                        parts.append(choice["delta"].get("content") or "")
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
        return tokens

    async with httpx.AsyncClient(base_url=url, timeout=300,
                                 limits=httpx.Limits(max_connections=64)) as client:
        async def worker(c: int) -> int:
            return sum([await one(client, c * requests + k) for k in range(requests)])
        return sum(await asyncio.gather(*(worker(c) for c in range(clients))))


async def localllm_round(remote: Any, clients: int, requests: int, eog: list[int]) -> int:
    async def one(i: int) -> int:
        b = body(i, eog)
        tokens = 0
        async for chunk in remote.astream_chat(b["messages"], max_tokens=TOKENS, temperature=0,
                                               logit_bias={t: -100.0 for t in eog}):
            if chunk.completion is not None:
                tokens = chunk.completion.usage.completion_tokens
        return tokens

    async def worker(c: int) -> int:
        return sum([await one(c * requests + k) for k in range(requests)])
    return sum(await asyncio.gather(*(worker(c) for c in range(clients))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--requests", type=int, default=4, help="per client, one after another")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps, requests = (1, 1) if args.quick else (args.reps, args.requests)
    results: dict[str, Any] = {}
    with served_process([MODEL, "--parallel", "8", "--context", "512", "--threads", "2"]) \
            as (url, _):
        with localllm.load(MODEL, context_length=256) as local:
            eog = [t for t in range(local.tokenizer.vocab_size)
                   if local._live().is_end_of_generation(t)]
        remote = localllm.connect(url, MODEL)
        asyncio.run(raw_round(url, 2, 1, eog))  # warm-up: model loaded, caches hot
        for clients in (1, 8):
            times: dict[str, list[float]] = {"raw": [], "localllm": []}
            sizes: dict[str, set[int]] = {"raw": set(), "localllm": set()}
            for _ in range(reps):
                for name in ("raw", "localllm"):
                    started = time.perf_counter()
                    n = asyncio.run(raw_round(url, clients, requests, eog) if name == "raw"
                                    else localllm_round(remote, clients, requests, eog))
                    times[name].append(time.perf_counter() - started)
                    sizes[name].add(n)
            raw, ours = statistics.median(times["raw"]), statistics.median(times["localllm"])
            results[str(clients)] = {"raw_s": raw, "localllm_s": ours, "ratio": ours / raw,
                                     "all_raw_s": times["raw"], "all_localllm_s": times["localllm"],
                                     "completion_tokens": sorted(sizes["raw"] | sizes["localllm"])}
            print(f"{clients} stream(s): raw {raw:.2f} s, localllm {ours:.2f} s, "
                  f"ratio {ours / raw:.3f}; completion tokens per round: "
                  f"raw {sorted(sizes['raw'])}, localllm {sorted(sizes['localllm'])}", flush=True)
        remote.close()
    out = ROOT / "benchmarks" / "results" / f"{date.today()}-remote.json"
    out.write_text(json.dumps({"reps": reps, "requests_per_client": requests,
                               "tokens_per_request": TOKENS, "results": results}, indent=2))
    print("\n| concurrent streams | raw httpx s | localllm remote s | ratio | goal |")
    print("|---|---|---|---|---|")
    for clients, r in results.items():
        mark = "✓" if r["ratio"] <= 1.03 else "✗"
        print(f"| {clients} | {r['raw_s']:.2f} | {r['localllm_s']:.2f} | {r['ratio']:.3f} | "
              f"≤ 1.03 {mark} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
