"""The cost of the agent APIs over chat completions, on one ``localllm serve``.

The same chats go to ``/v1/chat/completions``, Anthropic's ``/v1/messages`` and OpenAI's
``/v1/responses`` of one server (default model, ``--parallel 8``, context 1024, 2
threads), streamed, at 1 and at 8 concurrent clients, each client sending ``--requests``
one after another. Every request asks for 64 tokens at temperature 0; the prompts ask for
long stories, and the tokens each API generated are reported, so the comparison is of the
same work (greedy decoding renders and decodes the same prompt on every route). Clients
are plain httpx loops that read the stream to its end, so what is measured is the
server's route: parsing, the event shapes and their framing.

Rounds rotate the order of the three APIs; each API's wall time is the median over
``--reps``. Goal: messages / chat and responses / chat ≤ 1.03 at 1 and 8 streams.

Usage: cd benchmarks && ../.venv/bin/python bench_agent_apis.py [--reps 3] [--requests 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from results_file import write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from server_harness import served_process  # noqa: E402

MODEL = "smollm2-135m-instruct"

TOKENS = 64
APIS = ("chat", "messages", "responses")
TOPICS = ["a dragon", "a lighthouse", "a lost key", "a river", "a robot", "a storm",
          "a garden", "a train", "a library", "a mountain", "a clock", "a ship",
          "a forest", "a market", "a bridge", "a comet"]


def body(api: str, model: str, topic: str) -> tuple[str, dict[str, Any]]:
    text = f"Write a long story about {topic}."
    if api == "chat":
        return "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if api == "messages":
        return "/v1/messages", {"model": model, "max_tokens": TOKENS, "temperature": 0,
                                "messages": [{"role": "user", "content": text}],
                                "stream": True}
    return "/v1/responses", {"model": model, "input": text, "max_output_tokens": TOKENS,
                             "temperature": 0, "stream": True, "store": False}


def tokens_of(api: str, event: dict[str, Any]) -> int | None:
    """The output token count where each API reports it at the end of a stream."""
    if api == "chat" and event.get("usage"):
        return int(event["usage"]["completion_tokens"])
    if api == "messages" and event.get("type") == "message_delta":
        return int(event["usage"]["output_tokens"])
    if api == "responses" and event.get("type") in ("response.completed",
                                                     "response.incomplete"):
        return int(event["response"]["usage"]["output_tokens"])
    return None


async def one(client: httpx.AsyncClient, base: str, api: str, model: str, topic: str) -> int:
    path, payload = body(api, model, topic)
    tokens = None
    async with client.stream("POST", base + path, json=payload) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{api}: HTTP {response.status_code}: "
                               f"{(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                found = tokens_of(api, json.loads(line[5:]))
                tokens = found if found is not None else tokens
    if tokens is None:
        raise RuntimeError(f"{api}: the stream reported no usage")
    return tokens


async def round_of(client: httpx.AsyncClient, base: str, api: str, model: str, n: int,
                   requests: int, rep: int) -> tuple[float, int]:
    async def client_loop(c: int) -> int:
        return sum([await one(client, base, api, model,
                              TOPICS[(rep * 7 + c * requests + r) % len(TOPICS)])
                    for r in range(requests)])

    started = time.perf_counter()
    counts = await asyncio.gather(*(client_loop(c) for c in range(n)))
    return time.perf_counter() - started, sum(counts)


async def measure(base: str, model: str, reps: int, requests: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=300, trust_env=False,
                                 limits=httpx.Limits(max_connections=32)) as client:
        for api in APIS:  # warm-up: the model is loaded and each route has run once
            await one(client, base, api, model, "a warm-up")
        for n in (1, 8):
            times: dict[str, list[float]] = {api: [] for api in APIS}
            tokens: dict[str, set[int]] = {api: set() for api in APIS}
            for rep in range(reps):
                order = APIS[rep % 3:] + APIS[:rep % 3]
                for api in order:
                    wall, count = await round_of(client, base, api, model, n, requests, rep)
                    times[api].append(wall)
                    tokens[api].add(count)
            chat = statistics.median(times["chat"])
            out[str(n)] = {api: {"wall_s": statistics.median(times[api]),
                                 "ratio_to_chat": statistics.median(times[api]) / chat,
                                 "all_wall_s": times[api],
                                 "tokens_per_round": sorted(tokens[api])} for api in APIS}
            print(f"{n} stream(s): " + ", ".join(
                f"{api} {out[str(n)][api]['wall_s']:.2f} s" for api in APIS), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2, help="per client, one after another")
    args = ap.parse_args()
    with served_process([MODEL, "--parallel", "8", "--context", "1024", "--threads", "2"]) \
            as (base, _):
        results = asyncio.run(measure(base, MODEL, args.reps, args.requests))
    write_result("agent-apis", {"reps": args.reps, "requests": args.requests,
                                "tokens_per_request": TOKENS, "results": results})
    print("\n| streams | API | wall s | / chat completions | tokens per round | goal |")
    print("|---|---|---|---|---|---|")
    for n, row in results.items():
        for api in APIS:
            r = row[api]
            mark = "" if api == "chat" else ("≤ 1.03 ✓" if r["ratio_to_chat"] <= 1.03
                                             else "≤ 1.03 ✗")
            print(f"| {n} | {api} | {r['wall_s']:.2f} | {r['ratio_to_chat']:.3f} | "
                  f"{r['tokens_per_round']} | {mark} |")


if __name__ == "__main__":
    sys.exit(main())
