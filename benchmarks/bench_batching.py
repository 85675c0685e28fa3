"""localllm's continuous batching vs llama.cpp's own reference, side by side in one run.

* **throughput**: ``llama-batched-bench`` (built by ``scripts/build_reference_tools.py``
  from the wheel's llama.cpp, same flags) decodes N sequences of 32 prompt + 64 generated
  tokens; its ``S_TG`` column is the aggregate decode rate. localllm (``parallel=16``, one
  unified KV cache) gets N threads started at once, each with a distinct 32-token prompt
  and 64 tokens (end-of-generation tokens banned); its rate is the N x 63 tokens after
  the first ones over the span from the last first token to the last end.
* **latency**: 8 streams decode without pause while 64-token prompts arrive. Reported:
  the newcomers' time to first token, and whether each first token came within two decode
  steps (median inter-token interval of the running streams) of the step that carried
  its prompt, plus the scheduler steps it waited.
* **single stream**: localllm ``parallel=1`` vs raw ``Llama``, measured as in
  ``bench_llamacpp.py``, each side in processes of its own.

Medians over ``--reps`` repetitions; ratios are localllm / reference.

Usage: python benchmarks/bench_batching.py [--reps 3] [--threads 2] [--tools DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from bench_llamacpp import measure_localllm, measure_raw, prompt_for
from results_file import write_result

import localllm

ROOT = Path(__file__).resolve().parent.parent
LOADS = (1, 2, 4, 8, 16)
PP, TG = 32, 64
TIMEOUT = 120.0  # seconds for any one request: a hang fails the run instead of stalling it


def tools_dir(given: str | None) -> Path:
    """The reference binaries: ``--tools`` or the cached build (built on first use)."""
    if given:
        return Path(given)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_reference_tools.py")],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def reference_arguments(doc: str, *, reps: int, tokens: int,
                        tool: str) -> argparse.ArgumentParser:
    """The options of a benchmark that compares with a reference tool built from the same
    llama.cpp sources: --reps, --threads, --tokens and --tools (where ``tool`` lies)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--reps", type=int, default=reps)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=tokens)
    ap.add_argument("--tools", help=f"directory with {tool} (default: cached build)")
    return ap


def batched_bench(binary: Path, model: Path, threads: int, *, context: int = 4096,
                  prompt: int = PP, tokens: int = TG,
                  loads: tuple[int, ...] = LOADS) -> dict[int, float]:
    """S_TG (aggregate decode tokens/s, nothing sampled) per number of parallel
    sequences, each of ``prompt`` tokens then ``tokens`` generated, on one unified KV
    cache of ``context`` tokens, like localllm's."""
    cmd = [str(binary), "-m", str(model), "-c", str(context), "-b", "512", "-ub", "512",
           "-npp", str(prompt), "-ntg", str(tokens), "-npl", ",".join(map(str, loads)),
           "-t", str(threads), "--kv-unified"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if run.returncode:
        sys.exit(f"llama-batched-bench failed ({run.returncode}):\n{run.stderr[-2000:]}")
    rates = {}
    for line in (run.stdout + run.stderr).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            rates[int(cells[2])] = float(cells[7])  # B, S_TG t/s
    if set(rates) != set(loads):
        sys.exit(f"could not read llama-batched-bench's table:\n{run.stdout[-2000:]}")
    return rates


def cpu_seconds() -> tuple[float, float, float]:
    """(wall, CPU-seconds all CPUs were busy, CPU-seconds of this process and its children);
    the difference over a run is other work, which makes the numbers noisy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return (time.monotonic(), (sum(fields) - fields[3] - fields[4]) / tick,
            own.user + own.system + own.children_user + own.children_system)


def eog_bias(model: localllm.Model) -> dict[int, float]:
    is_eog = model._engine.is_end_of_generation  # type: ignore[union-attr]
    return {i: float("-inf") for i in range(model.tokenizer.vocab_size) if is_eog(i)}


def exact_prompt(model: localllm.Model, tag: str, n: int) -> str:
    """A prompt of exactly ``n`` tokens that starts with a unique tag (no prefix reuse)."""
    ids = model.tokenizer.encode(prompt_for(0, 4 * n).replace("Note 0", tag),
                                 add_special=False)
    for k in range(n, 0, -1):
        text = model.tokenizer.decode(ids[:k])
        if model.count_tokens(text) == n:
            return text
    raise RuntimeError(f"no {n}-token prompt found")


def aggregate(model: localllm.Model, n: int, bias: dict[int, float], tag: str) -> float:
    """N threads at once, PP + TG tokens each; decode tokens/s while all N run."""
    prompts = [exact_prompt(model, f"{tag}-{i}", PP) for i in range(n)]
    model.clear_cache()  # as batched-bench clears its KV cache between runs
    gate = threading.Barrier(n)
    spans: list[tuple[float, float, int] | BaseException] = []

    def worker(prompt: str) -> None:
        try:
            gate.wait()
            first, final = 0.0, None
            for chunk in model.stream(prompt, max_tokens=TG, temperature=0, logit_bias=bias,
                                      timeout=TIMEOUT):
                first = first or time.perf_counter()
                final = chunk.completion or final
            assert final is not None
            spans.append((first, time.perf_counter(), final.usage.completion_tokens))
        except BaseException as exc:
            spans.append(exc)

    workers = [threading.Thread(target=worker, args=(p,), daemon=True) for p in prompts]
    for w in workers:
        w.start()
    for w in workers:
        w.join(TIMEOUT + 10)
    if any(w.is_alive() for w in workers) or len(spans) != n:
        raise RuntimeError(f"N={n}: {sum(w.is_alive() for w in workers)} requests hung")
    errors = [s for s in spans if isinstance(s, BaseException)]
    if errors:
        raise RuntimeError(f"N={n}: {len(errors)} requests failed") from errors[0]
    done = [s for s in spans if not isinstance(s, BaseException)]
    if any(c != TG for _, _, c in done):
        raise RuntimeError(f"N={n}: generated {[c for _, _, c in done]}, expected {TG} each")
    return n * (TG - 1) / (max(e for _, e, _ in done) - max(f for f, _, _ in done))


async def latency(model: localllm.Model, bias: dict[int, float], newcomers: int,
                  running: int = 8, prompt_tokens: int = 64) -> dict[str, Any]:
    """TTFT of prompts arriving while ``running`` streams decode continuously."""
    sched = model._scheduler

    async def ttft(prompt: str) -> tuple[float, float, int]:
        t0, s0 = time.perf_counter(), sched.steps
        first, steps = 0.0, 0
        async for _ in model.astream(prompt, max_tokens=4, temperature=0, logit_bias=bias,
                                     timeout=TIMEOUT):
            if not first:
                first, steps = time.perf_counter(), sched.steps - s0
        return t0, first, steps

    alone = [await asyncio.wait_for(ttft(exact_prompt(model, f"alone-{i}", prompt_tokens)),
                                    TIMEOUT) for i in range(3)]
    stop = asyncio.Event()
    stamps: list[list[float]] = [[] for _ in range(running)]

    async def runner(k: int) -> None:
        stream = model.astream(exact_prompt(model, f"run-{k}", 32), max_tokens=900,
                               temperature=0, logit_bias=bias, timeout=TIMEOUT)
        async for _ in stream:
            stamps[k].append(time.perf_counter())
            if stop.is_set():
                break
        await stream.aclose()  # type: ignore[attr-defined]

    runners = [asyncio.create_task(runner(k)) for k in range(running)]
    while min(len(s) for s in stamps) < 5:  # all running streams are decoding
        await asyncio.sleep(0.01)
    window = time.perf_counter()
    arrivals = []
    for i in range(newcomers):
        arrivals.append(await asyncio.wait_for(
            ttft(exact_prompt(model, f"new-{i}", prompt_tokens)), TIMEOUT))
        await asyncio.sleep(0.15 + 0.05 * (i % 3))  # staggered so arrivals hit any phase
    end = time.perf_counter()
    stop.set()
    await asyncio.wait_for(asyncio.gather(*runners), TIMEOUT)
    if min(s[-1] for s in stamps) < end:
        raise RuntimeError("a running stream ended before the newcomers were done")
    gaps = [(a, b) for s in stamps for a, b in itertools.pairwise(s) if window <= a < end]
    step = statistics.median(b - a for a, b in gaps)
    # The step that carried a newcomer's prompt is the running streams' gap that ended as
    # its first token came (both are delivered by the same step).
    prefill = [max((b - a for a, b in gaps if first - step / 2 <= b <= first + 0.002),
                   default=step) for _, first, _ in arrivals]
    ttfts = [first - t0 for t0, first, _ in arrivals]
    return {
        "running_streams": running, "newcomers": newcomers, "prompt_tokens": prompt_tokens,
        "ttft_alone_s": statistics.median(f - t for t, f, _ in alone), "step_s": step,
        "prefill_step_s": statistics.median(prefill),
        "running_gap_max_s": max(b - a for a, b in gaps),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": statistics.quantiles(ttfts, n=20)[-1],
        "ttft_s": ttfts, "steps_waited": [s for _, _, s in arrivals],
        "within_two_steps": [t <= p + 2 * step for t, p in zip(ttfts, prefill, strict=True)],
    }


def side_worker(side: str, threads: int, reps: int, tokens: int) -> None:
    """One side of the single-stream comparison, alone in this process: two llama.cpp
    contexts driven from different threads of one process slow each other down (libgomp
    cuts its spin-waiting once its threads outnumber the CPUs)."""
    path = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    if side == "raw":
        from llama_cpp import Llama

        raw = Llama(str(path), n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=threads,
                    n_threads_batch=threads, flash_attn=True, verbose=False)
        measure_raw(raw, prompt_for(-2, 20), 8)
        rates = [measure_raw(raw, prompt_for(1000 + r, 100), tokens)[1] for r in range(reps)]
    else:
        model = localllm.load(path, context_length=2048, threads=threads, batch_size=512,
                              parallel=1)
        bias = eog_bias(model)
        measure_localllm(model, prompt_for(-1, 20), 8, bias)
        rates = [measure_localllm(model, prompt_for(1000 + r, 100), tokens, bias)[1]
                 for r in range(reps)]
    print(json.dumps(rates))


def single_stream(threads: int, reps: int, tokens: int = 128) -> dict[str, float]:
    """Decode tokens/s of one stream, each side in its own processes, alternating."""
    rates: dict[str, list[float]] = {"localllm": [], "raw": []}
    for side in ["localllm", "raw", "raw", "localllm", "localllm", "raw"]:
        out = subprocess.run([sys.executable, __file__, "--side", side, "--threads",
                              str(threads), "--reps", str(reps), "--tokens", str(tokens)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        rates[side] += json.loads(out.strip().splitlines()[-1])
    return {side: statistics.median(r) for side, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--newcomers", type=int, default=12)
    ap.add_argument("--tools", help="directory with llama-batched-bench (default: cached build)")
    ap.add_argument("--side", choices=["localllm", "raw"], help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=128, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.side:
        return side_worker(opts.side, opts.threads, opts.reps, opts.tokens)

    cpu0 = cpu_seconds()
    bench_bin = tools_dir(opts.tools) / "llama-batched-bench"
    path = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    model = localllm.load(path, context_length=1024, threads=opts.threads, batch_size=512,
                          parallel=16)
    bias = eog_bias(model)
    aggregate(model, 2, bias, "warm")
    ref: dict[int, list[float]] = {n: [] for n in LOADS}
    ours: dict[int, list[float]] = {n: [] for n in LOADS}
    steps0 = model._scheduler.steps
    for rep in range(opts.reps):
        for n, rate in batched_bench(bench_bin, path, opts.threads).items():
            ref[n].append(rate)
        for n in LOADS:
            ours[n].append(aggregate(model, n, bias, f"r{rep}n{n}"))
    steps = (model._scheduler.steps - steps0) / (opts.reps * len(LOADS))
    lat = asyncio.run(latency(model, bias, opts.newcomers))
    model.close()
    single = single_stream(opts.threads, opts.reps)
    cpu1 = cpu_seconds()
    other = ((cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])) / (
        (cpu1[0] - cpu0[0]) * (os.cpu_count() or 1))

    thr = {n: {"batched_bench": statistics.median(ref[n]), "localllm": statistics.median(ours[n]),
               "ratio": statistics.median(ours[n]) / statistics.median(ref[n])} for n in LOADS}
    result = {
        "date": date.today().isoformat(), "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(), "model": localllm.DEFAULT_MODEL,
        "threads": opts.threads, "reps": opts.reps, "prompt_tokens": PP, "decode_tokens": TG,
        "other_cpu_busy": other,
        "steps_per_round": steps, "throughput_tokens_per_s": thr,
        "localllm_8_vs_1": thr[8]["localllm"] / thr[1]["localllm"],
        "batched_bench_8_vs_1": thr[8]["batched_bench"] / thr[1]["batched_bench"],
        "latency": lat, "single_stream_tokens_per_s": single,
        "single_stream_ratio": single["localllm"] / single["raw"],
    }
    write_result("batching", result)
    print(f"| decode tok/s (median of {opts.reps}) | llama-batched-bench | localllm | ratio |")
    print("|---|---|---|---|")
    for n, r in thr.items():
        print(f"| N={n} aggregate | {r['batched_bench']:.1f} | {r['localllm']:.1f} "
              f"| {r['ratio']:.3f} |")
    print(f"| N=8 / N=1 | {result['batched_bench_8_vs_1']:.2f} | "
          f"{result['localllm_8_vs_1']:.2f} | |")
    print(f"| one stream (raw Llama, localllm) | {single['raw']:.1f} | {single['localllm']:.1f} "
          f"| {result['single_stream_ratio']:.3f} |")
    print(f"\nscheduler steps per round: {steps:.1f} (prefill + {TG - 1} decodes = {TG})")
    print(f"\n{lat['newcomers']} newcomers of {lat['prompt_tokens']} tokens while "
          f"{lat['running_streams']} streams decode:")
    print("| TTFT p50 s | TTFT p95 s | TTFT idle s | step s | prefill step s | "
          "first token within 2 steps | steps waited |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {lat['ttft_p50_s']:.3f} | {lat['ttft_p95_s']:.3f} | {lat['ttft_alone_s']:.3f} "
          f"| {lat['step_s']:.4f} | {lat['prefill_step_s']:.3f} | "
          f"{sum(lat['within_two_steps'])}/{lat['newcomers']} | "
          f"{min(lat['steps_waited'])}-{max(lat['steps_waited'])} |")
    print(f"\nthreads={opts.threads}; CPUs busy with other work during the run: {other:.0%}"
          + (" (numbers are noisy)" if other > 0.1 else ""))


if __name__ == "__main__":
    main()
