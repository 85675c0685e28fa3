"""Per-step cost of localllm's decode loop against the raw runtime, in one process.

One loaded model, two ways to decode N streams (N = 1 and 2) of the same length:

* **raw**: a plain loop over llama.cpp's C API on the very same context (same KV cache,
  threads and batch buffers), on the thread that runs localllm's llama.cpp calls: fill
  the batch, ``llama_decode``, sample each stream with a greedy ``llama_sampler`` chain,
  repeat. Nothing else: the runtime's own speed for the job (llama-batched-bench skips
  the sampling, so it is not the same job).
* **llama-batched-bench** (C++, same sources, 32 prompt + the same generated tokens):
  its S_TG, which decodes without sampling, in the same rounds as the two above.
* **localllm**: N threads each call ``model.complete`` (end-of-generation banned), through
  the scheduler, delivery, detokenization and stop matching, as an application does.

Decode rate of each side is the generated tokens after the first over the time after the
first; localllm's per-step cost is split with timers around ``llama_decode`` and the
sampler: what is left is localllm's own overhead per step, in microseconds. Medians of
``--reps`` rounds, each side taking its turn in every round; a ratio is the median of
the round-by-round ratios (this machine's speed drifts by more than 10% between minutes).

Usage: python benchmarks/bench_step_overhead.py [--reps 5] [--tokens 256] [--threads 2]
"""

from __future__ import annotations

import platform
import statistics
import threading
import time
from typing import Any

from bench_batching import batched_bench, reference_arguments, tools_dir
from bench_llamacpp import prompt_for
from results_file import write_result

import localllm
from localllm.engines._compute import LLAMA_CPP


class _Timed:
    """Wraps one C function of the runtime: calls and seconds spent inside."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.times, self.starts = fn, [], []

    def __call__(self, *args: Any) -> Any:
        started = time.perf_counter()
        self.starts.append(started)
        try:
            return self.fn(*args)
        finally:
            self.times.append(time.perf_counter() - started)

    def after(self, skip: int) -> float:
        """Seconds inside the function after its first ``skip`` calls (the prompts)."""
        return sum(self.times[skip:])


def raw_rate(engine: Any, prompts: list[list[int]], tokens: int) -> float:
    """Greedy decode of each prompt for ``tokens`` steps on the engine's own context."""
    lib, ctx, batch = engine._lib, engine._ctx, engine._batch
    for seq in range(len(prompts)):
        lib.llama_memory_seq_rm(engine._memory, seq, 0, -1)
    params = lib.llama_sampler_chain_default_params()
    samplers = []
    for _ in prompts:
        chain = lib.llama_sampler_chain_init(params)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        samplers.append(chain)
    eog = [t for t in range(engine.vocab_size) if lib.llama_vocab_is_eog(engine._vocab, t)]
    last, pos = [0] * len(prompts), [0] * len(prompts)
    n = 0
    for seq, prompt in enumerate(prompts):  # the prompts, one batch
        for k, t in enumerate(prompt):
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = t, k, 1
            batch.seq_id[n][0], batch.logits[n] = seq, k == len(prompt) - 1
            n += 1
        pos[seq] = len(prompt)
    batch.n_tokens = n
    started = 0.0
    for step in range(tokens):
        if lib.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        if step == 1:
            started = time.perf_counter()
        rows = [n - len(prompts) + i for i in range(len(prompts))] if step else \
            [sum(len(p) for p in prompts[:i + 1]) - 1 for i in range(len(prompts))]
        n = 0
        for seq, row in enumerate(rows):
            for t in eog:  # the same ban the localllm side applies
                lib.llama_get_logits_ith(ctx, row)[t] = -1e30
            last[seq] = lib.llama_sampler_sample(samplers[seq], ctx, row)
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = last[seq], pos[seq], 1
            batch.seq_id[n][0], batch.logits[n] = seq, 1
            pos[seq] += 1
            n += 1
        batch.n_tokens = n
    elapsed = time.perf_counter() - started
    for chain in samplers:
        lib.llama_sampler_free(chain)
    return len(prompts) * (tokens - 1) / elapsed


def localllm_rate(model: localllm.Model, prompts: list[str], tokens: int,
                  bias: dict[int, float]) -> dict[str, float]:
    """Aggregate decode rate of N concurrent completions, and the time per step spent
    in llama_decode, in the sampler and elsewhere."""
    engine = model._generator.engine
    lib = engine._lib
    decode, sample = _Timed(lib.llama_decode), _Timed(lib.llama_sampler_sample)
    firsts: list[float] = []
    ends: list[float] = []
    lock = threading.Lock()

    def one(prompt: str) -> None:
        first = 0.0
        for chunk in model.stream(prompt, max_tokens=tokens, temperature=0, logit_bias=bias):
            if not first and chunk.text:
                first = time.perf_counter()
        with lock:
            firsts.append(first)
            ends.append(time.perf_counter())

    model.clear_cache()
    steps0 = model._generator.scheduler.steps
    lib.llama_decode, lib.llama_sampler_sample = decode, sample
    try:
        workers = [threading.Thread(target=one, args=(p,)) for p in prompts]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=300)
    finally:
        lib.llama_decode, lib.llama_sampler_sample = decode.fn, sample.fn
    start, end = max(firsts), max(ends)
    steps = model._generator.scheduler.steps - steps0
    # steady steps: after the prompts' steps, each decoding one token per stream; a
    # step's wall time is from its llama_decode to the next one's (everything the
    # scheduler thread does, and waits for, between two runtime calls)
    first = steps - tokens + 2
    starts, times = decode.starts[first:], decode.times[first:]
    wall_per_step = (starts[-1] - starts[0]) / (len(starts) - 1)
    per_decode = statistics.fmean(times[:-1])
    per_sample = sample.after(first * len(prompts)) / max(1, len(times))
    return {"tok_s": len(prompts) * (tokens - 1) / (end - start) if end > start else 0.0,
            "steps": steps, "step_us": wall_per_step * 1e6, "decode_us": per_decode * 1e6,
            "sample_us": per_sample * 1e6,
            "overhead_us": (wall_per_step - per_decode - per_sample) * 1e6}


def main() -> None:
    args = reference_arguments(__doc__, reps=5, tokens=256,
                               tool="llama-batched-bench").parse_args()
    path = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    bench = tools_dir(args.tools) / "llama-batched-bench"
    runs: dict[int, dict[str, list[Any]]] = {n: {"raw": [], "ours": [], "bb": []} for n in (1, 2)}
    with localllm.load(path, context_length=1024, threads=args.threads, parallel=2) as model:
        engine = model._generator.engine
        bias = {t: -100.0 for t in range(model.info.vocab_size)
                if engine.is_end_of_generation(t)}
        texts = [prompt_for(i, 24) for i in range(2)]
        ids = [model.tokenizer.encode(t) for t in texts]
        model.complete(texts[0], max_tokens=4)  # warm up
        for rep in range(args.reps):  # every side takes its turn in every round
            # 1 and 2 streams of 32 prompt tokens, on a context like localllm's below
            reference = batched_bench(bench, path, args.threads, context=2048, prompt=32,
                                      tokens=args.tokens, loads=(1, 2))
            for streams in (1, 2):
                runs[streams]["bb"].append(reference[streams])
                runs[streams]["ours"].append(
                    localllm_rate(model, texts[:streams], args.tokens, bias))
                model.clear_cache()
                with model._generator.scheduler._engine_lock:  # the scheduler is idle
                    # on llama.cpp's compute thread, as localllm's steps run: one OpenMP
                    # pool in the process (see localllm/engines/_compute.py)
                    runs[streams]["raw"].append(
                        LLAMA_CPP.run(raw_rate, engine, ids[:streams], args.tokens))
                    for seq in range(streams):
                        engine.seq_remove(seq, 0)
            print(f"round {rep + 1}: " + ", ".join(
                f"{n} stream(s) bb {r['bb'][-1]:.1f} raw {r['raw'][-1]:.1f} localllm "
                f"{r['ours'][-1]['tok_s']:.1f}" for n, r in runs.items()), flush=True)
    out: dict[str, Any] = {}
    for streams, r in runs.items():
        ours, raw, bb = r["ours"], r["raw"], r["bb"]
        med = {k: statistics.median(o[k] for o in ours) for k in ours[0]}
        # the median of the round-by-round ratios (the machine's speed drifts)
        ratio = statistics.median(o["tok_s"] / x for o, x in zip(ours, raw, strict=True))
        ratio_bb = statistics.median(o["tok_s"] / x for o, x in zip(ours, bb, strict=True))
        ratio_raw_bb = statistics.median(x / y for x, y in zip(raw, bb, strict=True))
        out[str(streams)] = {"raw_tok_s": statistics.median(raw), "raw_runs": raw,
                             "localllm": med, "localllm_runs": ours, "ratio": ratio,
                             "batched_bench_tok_s": statistics.median(bb),
                             "batched_bench_runs": bb, "ratio_batched_bench": ratio_bb,
                             "raw_over_batched_bench": ratio_raw_bb}
        print(f"{streams} stream(s): raw {statistics.median(raw):.1f} tok/s, localllm "
              f"{med['tok_s']:.1f} tok/s ({ratio:.3f}x raw); llama-batched-bench "
              f"{statistics.median(bb):.1f}: localllm {ratio_bb:.3f}x, raw "
              f"{ratio_raw_bb:.3f}x; per step {med['step_us']:.0f} us = llama_decode "
              f"{med['decode_us']:.0f} + sampler {med['sample_us']:.0f} + localllm "
              f"{med['overhead_us']:.0f}")
    write_result("step-overhead", {"machine": platform.processor() or platform.machine(),
                                   "threads": args.threads, "reps": args.reps,
                                   "tokens": args.tokens, "streams": out})


if __name__ == "__main__":
    main()
