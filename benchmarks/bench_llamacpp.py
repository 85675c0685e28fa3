"""localllm vs raw llama-cpp-python on the default model, side by side in one run.

Both sides load the same file with the same context, batch, threads and flash attention,
and get the same distinct prompts (a unique first line defeats either side's prefix
cache). Measured per repetition, alternating sides, reported as medians:

* time to first token (tokenizing, prompt processing, one sample) → prompt tokens/s
* decode tokens/s over the following tokens

The raw side is ``Llama.generate`` — llama-cpp-python's tightest loop (no detokenizing,
no stop checks) — so the ratio charges localllm for all of its per-token work. localllm
bans the end-of-generation tokens through its native logit bias so both sides decode
the same number of tokens.

Usage: python benchmarks/bench_llamacpp.py [--reps 7] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date

from results_file import write_result

import localllm

FILLER = ("The history of the city is long and full of change. Merchants came from the "
          "coast, built markets and schools, and the river carried their goods inland. ")


def prompt_for(i: int, words: int) -> str:
    body = (FILLER * (words // len(FILLER.split()) + 1)).split()[:words]
    return f"Note {i}: " + " ".join(body) + "\nSummary:"


def measure_localllm(model: localllm.Model, prompt: str, n: int, bias: dict[int, float]
                     ) -> tuple[float, float, int, int]:
    t0 = time.perf_counter()
    t_first = 0.0
    final = None
    for chunk in model.stream(prompt, max_tokens=n, temperature=0, logit_bias=bias):
        if not t_first:
            t_first = time.perf_counter()
        final = chunk.completion or final
    t_end = time.perf_counter()
    assert final is not None and final.usage.completion_tokens == n, final
    return t_first - t0, (n - 1) / (t_end - t_first), final.usage.prompt_tokens, n


def measure_raw(llm: object, prompt: str, n: int) -> tuple[float, float, int, int]:
    t0 = time.perf_counter()
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)  # type: ignore[attr-defined]
    t_first = 0.0
    count = 0
    for _ in llm.generate(tokens, temp=0.0, reset=True):  # type: ignore[attr-defined]
        count += 1
        if count == 1:
            t_first = time.perf_counter()
        if count == n:
            break
    t_end = time.perf_counter()
    return t_first - t0, (n - 1) / (t_end - t_first), len(tokens), count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    opts = ap.parse_args()

    from llama_cpp import Llama

    path = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    t = time.perf_counter()
    raw = Llama(str(path), n_ctx=opts.context, n_batch=512, n_ubatch=512,
                n_threads=opts.threads, n_threads_batch=opts.threads, flash_attn=True,
                verbose=False)
    raw_load = time.perf_counter() - t
    t = time.perf_counter()
    model = localllm.load(path, context_length=opts.context, threads=opts.threads,
                          batch_size=512)
    ours_load = time.perf_counter() - t
    eog = [i for i in range(model.tokenizer.vocab_size)
           if model._engine is not None and model._engine.is_end_of_generation(i)]
    bias = {i: float("-inf") for i in eog}

    rows: dict[str, list[tuple[float, float, int, int]]] = {"localllm": [], "raw": []}
    measure_localllm(model, prompt_for(-1, 20), 8, bias)  # warm-up both
    measure_raw(raw, prompt_for(-2, 20), 8)
    for rep in range(opts.reps):
        p = prompt_for(rep, opts.prompt_words)
        if rep % 2:
            rows["raw"].append(measure_raw(raw, p, opts.tokens))
            rows["localllm"].append(measure_localllm(model, p, opts.tokens, bias))
        else:
            rows["localllm"].append(measure_localllm(model, p, opts.tokens, bias))
            rows["raw"].append(measure_raw(raw, p, opts.tokens))

    def med(side: str, k: int) -> float:
        return statistics.median(r[k] for r in rows[side])

    n_prompt = rows["raw"][0][2]
    result = {
        "date": date.today().isoformat(), "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(), "model": localllm.DEFAULT_MODEL,
        "threads": opts.threads, "context": opts.context, "prompt_tokens": n_prompt,
        "decode_tokens": opts.tokens, "reps": opts.reps,
        "load_s": {"localllm": ours_load, "raw": raw_load},
        "ttft_s": {s: med(s, 0) for s in rows},
        "prompt_tokens_per_s": {s: statistics.median(r[2] / r[0] for r in rows[s])
                                for s in rows},
        "decode_tokens_per_s": {s: med(s, 1) for s in rows},
    }
    result["ratio"] = {
        "prompt": result["prompt_tokens_per_s"]["localllm"] / result["prompt_tokens_per_s"]["raw"],
        "decode": result["decode_tokens_per_s"]["localllm"] / result["decode_tokens_per_s"]["raw"],
        "ttft": result["ttft_s"]["raw"] / result["ttft_s"]["localllm"],
    }
    write_result("llamacpp", result)
    print(f"| metric (median of {opts.reps}) | localllm | llama-cpp-python | ratio |")
    print("|---|---|---|---|")
    pps, dps, ratio = (result["prompt_tokens_per_s"], result["decode_tokens_per_s"],
                       result["ratio"])
    print(f"| prompt tokens/s ({n_prompt} tokens) | {pps['localllm']:.1f} | {pps['raw']:.1f} "
          f"| {ratio['prompt']:.3f} |")
    print(f"| decode tokens/s ({opts.tokens} tokens) | {dps['localllm']:.1f} | {dps['raw']:.1f} "
          f"| {ratio['decode']:.3f} |")
    print(f"| time to first token, s | {result['ttft_s']['localllm']:.3f} | "
          f"{result['ttft_s']['raw']:.3f} | {result['ratio']['ttft']:.3f} |")
    print(f"| load, s | {ours_load:.2f} | {raw_load:.2f} | |")
    print(f"threads={opts.threads} context={opts.context}")
    model.close()
    raw.close()


if __name__ == "__main__":
    main()
