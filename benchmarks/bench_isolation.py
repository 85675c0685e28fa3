"""The cost of ``isolation="process"``: decode speed of the default model with the runtime
in a worker process, against the same model in-process, in the same run.

Both models are loaded side by side (context 1024, 2 threads, 4 sequences). Each round
generates 128 tokens per request at temperature 0 with end-of-generation banned, so every
answer has the same length, in three shapes:

* **1 stream**: one request (the runtime's sampler; one round trip per token);
* **4 streams**: four concurrent requests batched into each decode step;
* **localllm sampler**: one request sampled by localllm's sampler, so the full logits row
  (49,152 floats) crosses the process boundary every token.

Rounds alternate in-process / isolated; the median over ``--reps`` is reported. The load
time of each (the worker's interpreter start included) is printed first.
Goal: isolated / in-process decode time ≤ 1.05.

Usage: cd benchmarks && ../.venv/bin/python bench_isolation.py [--reps 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from results_file import write_result

import localllm

TOKENS = 128
SHAPES = ("1 stream", "4 streams", "localllm sampler")


def one_round(model: localllm.Model, shape: str, ban: dict[int, float]) -> int:
    def ask(i: int) -> int:
        extra: dict[str, Any] = {"sampler": "localllm"} if shape == "localllm sampler" else {}
        done = model.complete(f"Story {i}: once upon a time", max_tokens=TOKENS,
                              temperature=0, logit_bias=ban, **extra)
        return done.usage.completion_tokens
    if shape == "4 streams":
        with ThreadPoolExecutor(4) as pool:
            return sum(pool.map(ask, range(4)))
    return ask(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    options: dict[str, Any] = {"context_length": 1024, "threads": 2, "parallel": 4}
    results: dict[str, Any] = {}
    load_s: dict[str, float] = {}
    for isolation in ("none", "process"):  # a cold load of each, for the start-up cost
        started = time.perf_counter()
        localllm.load(isolation=isolation, **options).close()
        load_s[isolation] = time.perf_counter() - started
    print(f"load: in-process {load_s['none']:.2f} s, isolated {load_s['process']:.2f} s")
    with localllm.load(**options) as inproc, \
            localllm.load(isolation="process", **options) as isolated:
        engine = inproc._live()
        ban = {t: -100.0 for t in range(engine.vocab_size) if engine.is_end_of_generation(t)}
        models = {"in-process": inproc, "isolated": isolated}
        for model in models.values():
            one_round(model, "1 stream", ban)  # warm-up
        for shape in SHAPES:
            times: dict[str, list[float]] = {name: [] for name in models}
            tokens: set[int] = set()
            for _ in range(reps):
                for name, model in models.items():
                    started = time.perf_counter()
                    tokens.add(one_round(model, shape, ban))
                    times[name].append(time.perf_counter() - started)
            base, ours = (statistics.median(times[n]) for n in models)
            results[shape] = {"in_process_s": base, "isolated_s": ours, "ratio": ours / base,
                              "all_in_process_s": times["in-process"],
                              "all_isolated_s": times["isolated"], "tokens": sorted(tokens)}
            print(f"{shape}: in-process {base:.3f} s, isolated {ours:.3f} s, ratio "
                  f"{ours / base:.3f} (tokens per round {sorted(tokens)})", flush=True)
    write_result("isolation", {"reps": reps, "tokens_per_request": TOKENS, "load_s": load_s,
                               "results": results})
    print("\n| shape | in-process s | isolated s | ratio | goal |")
    print("|---|---|---|---|---|")
    for shape, r in results.items():
        mark = "✓" if r["ratio"] <= 1.05 else "✗"
        print(f"| {shape} | {r['in_process_s']:.3f} | {r['isolated_s']:.3f} | "
              f"{r['ratio']:.3f} | ≤ 1.05 {mark} |")


if __name__ == "__main__":
    main()
