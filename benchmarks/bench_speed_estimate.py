"""The speed estimate of ``recommend()`` / ``localllm models --fits`` against measured speed.

``localllm.planning.speed`` estimates decode tokens/s as 1 / (weight bytes ÷ read bandwidth +
operations ÷ compute rate), with the bandwidth measured by numpy and the compute rate
calibrated from a short decode of the default model; prompt tokens/s as the calibrated
prompt-phase rate ÷ operations per prompt token. This script measures a fresh profile,
then runs each model (a ~200-token prompt, 64 generated tokens, median of ``--reps``) and
prints estimate vs measurement. Goal: decode within ±30 % for the default model (the
calibration point) and Gemma 3 270M (independent of it).

Usage: cd benchmarks && ../.venv/bin/python bench_speed_estimate.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

import localllm
from localllm.models.gguf import read_gguf
from localllm.planning.planner import ModelShape
from localllm.planning.speed import estimate, speed_profile

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
PROMPT = " ".join(["the quick brown fox jumps over the lazy dog"] * 22)


def measure(path: Path, reps: int) -> tuple[float, float]:
    decode, prompt = [], []
    with localllm.load(path, context_length=512, threads=2, parallel=1) as model:
        model.complete(PROMPT, max_tokens=4, temperature=0)  # warm-up
        for _ in range(reps):
            model.clear_cache()
            t = model.complete(PROMPT, max_tokens=64, temperature=0).timings
            decode.append(t.generation_tokens_per_s)
            prompt.append(t.prompt_tokens_per_s)
    return statistics.median(decode), statistics.median(prompt)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    profile = speed_profile(refresh=True)
    store = localllm.ModelStore()
    rows = []
    for name in MODELS:
        path = store.ensure(name)
        est = estimate(ModelShape.from_gguf(read_gguf(path)), profile)
        decode, prompt = measure(path, args.reps)
        rows.append({"model": name, "decode_estimate": est.decode_tokens_per_s,
                     "decode_measured": decode,
                     "decode_error": est.decode_tokens_per_s / decode - 1,
                     "prompt_estimate": est.prompt_tokens_per_s, "prompt_measured": prompt,
                     "prompt_error": est.prompt_tokens_per_s / prompt - 1})
    print(f"read bandwidth {profile.read_bandwidth / 1e9:.1f} GB/s, decode compute "
          f"{profile.decode_ops / 1e9:.1f} GFLOP/s, prompt compute "
          f"{profile.prompt_ops / 1e9:.1f} GFLOP/s ({profile.machine})\n")
    print("| model | decode est. | decode measured | error | prompt est. | prompt measured | "
          "error |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['decode_estimate']:.1f} | {r['decode_measured']:.1f} | "
              f"{r['decode_error']:+.0%} | {r['prompt_estimate']:.0f} | "
              f"{r['prompt_measured']:.0f} | {r['prompt_error']:+.0%} |")
    out = Path(__file__).parent / "results" / f"{date.today()}-speed-estimate.json"
    out.write_text(json.dumps({"profile": profile.__dict__, "rows": rows}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
