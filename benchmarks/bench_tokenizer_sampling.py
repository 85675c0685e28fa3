"""Tokenizer and sampler speed, measured in one run on the default model.

* encode throughput of the localllm tokenizer vs llama.cpp's tokenizer on the 2,000-string
  agreement corpus (same strings, same special-token parsing), as a ratio;
* the full localllm sampling chain (logit bias, repetition penalty, top-k 40, typical,
  top-p, min-p, temperature, seeded draw) on one 49,152-entry and one 152,064-entry
  logits row, median over many calls, next to one decode step of the default model.

Usage: python benchmarks/bench_tokenizer_sampling.py
"""

from __future__ import annotations

import statistics
import time
from datetime import date

import numpy as np
from results_file import write_result

import localllm
from localllm import SamplingParams
from localllm.models.gguf import read_gguf
from localllm.sampling import Sampler
from localllm.support.corpus import tokenizer_corpus
from localllm.tokenizer import tokenizer_from_gguf


def best_of(fn, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    path = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    corpus = tokenizer_corpus(2000)
    n_bytes = sum(len(s.encode()) for s in corpus)
    ours = tokenizer_from_gguf(read_gguf(path))
    model = localllm.load(path, context_length=512, threads=2)
    engine = model._engine
    assert engine is not None

    t_ours = best_of(lambda: [ours.encode(s, add_special=False) for s in corpus])
    t_batch = best_of(lambda: ours.encode_batch(corpus))
    t_llama = best_of(lambda: [engine.tokenize(s, add_special=False, parse_special=True)
                               for s in corpus])
    sampling = {}
    params = SamplingParams(repeat_penalty=1.1, logit_bias={5: 1.0})
    history = list(range(64))
    for n in (49152, 152064):
        row = (np.random.default_rng(0).standard_normal(n) * 3).astype(np.float32)
        sampler = Sampler(params, seed=1)
        times = []
        for _ in range(500):
            t = time.perf_counter()
            sampler.sample(history, row)
            times.append(time.perf_counter() - t)
        sampling[str(n)] = statistics.median(times) * 1e3
    decode = model.complete("Once upon a time", max_tokens=64, temperature=0,
                            logit_bias={2: float("-inf"), 0: float("-inf")})
    step_ms = 1e3 / decode.timings.generation_tokens_per_s
    result = {
        "date": date.today().isoformat(), "corpus_strings": len(corpus), "corpus_bytes": n_bytes,
        "encode_mb_per_s": {"localllm": n_bytes / t_ours / 1e6,
                            "localllm_batch": n_bytes / t_batch / 1e6,
                            "llama.cpp": n_bytes / t_llama / 1e6},
        "encode_ratio": t_llama / t_ours, "encode_batch_ratio": t_llama / t_batch,
        "sampler_median_ms": sampling, "decode_step_ms": step_ms,
        "sampler_share_of_step_49152": sampling["49152"] / step_ms,
    }
    mbs = result["encode_mb_per_s"]
    print("| measure | localllm | llama.cpp | ratio |\n|---|---|---|---|")
    print(f"| encode, MB/s (one call per string) | {mbs['localllm']:.2f} | "
          f"{mbs['llama.cpp']:.2f} | {result['encode_ratio']:.2f} |")
    print(f"| encode, MB/s (encode_batch) | {mbs['localllm_batch']:.2f} | "
          f"{mbs['llama.cpp']:.2f} | {result['encode_batch_ratio']:.2f} |")
    for n, ms in sampling.items():
        print(f"| sampling chain, {n}-entry row, median ms | {ms:.3f} | | |")
    print(f"| one decode step of the default model, ms | {step_ms:.2f} | | |")
    write_result("tokenizer-sampling", result)
    model.close()


if __name__ == "__main__":
    main()
