"""Decode speed of the gpt4all and ctransformers backends vs the llama.cpp backend.

Same file, same threads, greedy decoding, one run, medians over prompts:
* gpt4all 2.8.2 on the default model (its compatibility copy) vs llama.cpp on the original;
* ctransformers 0.2.27 vs llama.cpp on a synthetic SentencePiece llama GGUF (f16, 8
  layers, 768 wide, 32k vocabulary), since ctransformers cannot read the default model.

Usage: python benchmarks/bench_legacy_backends.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from results_file import write_result  # noqa: E402

import localllm  # noqa: E402

PROMPTS = ["Once upon a time", "The history of the city", "In the morning, the farmer",
           "Dear diary, today", "The recipe begins with"]


def decode_rate(model: localllm.Model, n: int) -> float:
    rates = []
    for p in PROMPTS:
        r = model.complete(p, max_tokens=n, temperature=0)
        if r.usage.completion_tokens >= 16:
            rates.append(r.timings.generation_tokens_per_s)
    return statistics.median(rates)


def main() -> None:
    from synthetic_models import SHAPES, write_model

    results = {}
    default = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    with localllm.load(default, backend="gpt4all", context_length=1024, threads=2,
                       backend_options={"compat_copy": True}) as g, \
            localllm.load(default, context_length=1024, threads=2) as ref:
        results["gpt4all"] = {"model": "SmolLM2-135M Q4_1", "tokens_per_s": decode_rate(g, 128),
                              "llama.cpp_tokens_per_s": decode_rate(ref, 128)}
    with tempfile.TemporaryDirectory() as tmp:
        shape = next(s for s in SHAPES if s.name == "mid-gqa-f16")
        path = write_model(shape, Path(tmp) / "mid.gguf")
        with localllm.load(path, backend="ctransformers", context_length=1024, threads=2,
                           chat_template="chatml") as c, \
                localllm.load(path, context_length=1024, threads=2, chat_template="chatml") as ref:
            results["ctransformers"] = {"model": "synthetic mid-gqa-f16",
                                        "tokens_per_s": decode_rate(c, 64),
                                        "llama.cpp_tokens_per_s": decode_rate(ref, 64)}
    print("| backend | model | decode tok/s | llama.cpp tok/s | ratio |\n|---|---|---|---|---|")
    for name, r in results.items():
        r["ratio"] = r["tokens_per_s"] / r["llama.cpp_tokens_per_s"]
        print(f"| {name} | {r['model']} | {r['tokens_per_s']:.1f} | "
              f"{r['llama.cpp_tokens_per_s']:.1f} | {r['ratio']:.2f} |")
    write_result("legacy-backends", results)


if __name__ == "__main__":
    main()
