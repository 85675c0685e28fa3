"""The ONNX conversions of the default model: conformance and speed per dtype.

Conformance: for 8 fixed prompts, greedy 32-token continuations of the fp32 folder vs the
llama.cpp backend on (a) the original Q4_1 file, where llama.cpp multiplies with 8-bit
quantized activations, and (b) an F32 GGUF holding the very same weights; the first
differing token is reported per prompt. Per dtype (fp32, fp16, int8, int4): folder size,
first-step logits cosine vs fp32, greedy agreement with fp32, and decode / prompt tokens/s
vs llama.cpp on the Q4_1 file (same threads, one run, medians of 3, 48 tokens).
ONNX vs its raw runtime (onnxruntime-genai) is in bench_backends.py.

Usage: python benchmarks/bench_onnx.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from results_file import write_result  # noqa: E402

import localllm  # noqa: E402
from localllm.models.convert import DTYPES, convert_gguf_to_onnx  # noqa: E402

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "1, 1, 2, 3, 5,",
           "The three primary colors are", "Water boils at", "My favourite food is",
           "import numpy as np\n"]
SPEED_PROMPT = "Note {i}: " + "The history of the city is long and full of change. " * 20


def speed(model: localllm.Model, reps: int = 3) -> dict[str, float]:
    rows = [model.complete(SPEED_PROMPT.format(i=i), max_tokens=48, temperature=0,
                           logit_bias={2: float("-inf"), 0: float("-inf")}).timings
            for i in range(reps)]
    return {"decode_tokens_per_s": statistics.median(t.generation_tokens_per_s for t in rows),
            "prompt_tokens_per_s": statistics.median(t.prompt_tokens_per_s for t in rows)}


def greedy(model: localllm.Model) -> list[list[int]]:
    return [list(model.complete(p, max_tokens=32, temperature=0).token_ids) for p in PROMPTS]


def first_differences(a: list[list[int]], b: list[list[int]]) -> list[int | None]:
    out: list[int | None] = []
    for x, y in zip(a, b, strict=True):
        diff = next((i for i, (s, t) in enumerate(zip(x, y, strict=False)) if s != t), None)
        out.append(diff if diff is not None or len(x) == len(y) else min(len(x), len(y)))
    return out


def first_step(model: localllm.Model) -> list[Any]:
    assert model._engine is not None
    return [model._engine.start(model.tokenizer.encode(p)) for p in PROMPTS]


def main() -> None:
    from localllm.models.convert_precision import change_precision

    source = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    result: dict[str, Any] = {"prompts": PROMPTS}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = change_precision(source, Path(tmp) / "f32.gguf", dtype="f32")
        with localllm.load(source, context_length=1024, threads=2) as q41:
            reference = {"llama.cpp Q4_1": greedy(q41)}
            llama_speed = speed(q41)
        with localllm.load(f32, context_length=1024, threads=2) as lf32:
            reference["llama.cpp F32 (same weights)"] = greedy(lf32)
        base_logits: list[Any] = []
        base_tokens: list[list[int]] = []
        for dtype in DTYPES:
            folder = convert_gguf_to_onnx(source, Path(tmp) / dtype, dtype=dtype)
            size = sum(f.stat().st_size for f in folder.glob("model.onnx*"))
            with localllm.load(folder, context_length=1024, threads=2) as model:
                tokens, logits = greedy(model), first_step(model)
                row: dict[str, Any] = {"folder_mib": size / 2**20, **speed(model)}
            if dtype == "fp32":
                base_logits, base_tokens = logits, tokens
                for name, ref in reference.items():
                    diffs = first_differences(tokens, ref)
                    result[f"conformance vs {name}"] = {
                        "identical_32": sum(d is None for d in diffs),
                        "first_8_identical": sum(d is None or d >= 8 for d in diffs),
                        "first_difference": diffs}
            row["cosine_vs_fp32_min"] = min(
                float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
                for a, b in zip(logits, base_logits, strict=True))
            diffs = first_differences(tokens, base_tokens)
            row["greedy_identical_to_fp32"] = sum(d is None for d in diffs)
            diffs = first_differences(tokens, reference["llama.cpp Q4_1"])
            row["greedy_identical_to_llama.cpp_q4_1"] = sum(d is None for d in diffs)
            row["decode_vs_llama.cpp_q4_1"] = (row["decode_tokens_per_s"]
                                               / llama_speed["decode_tokens_per_s"])
            result[dtype] = row
    result["llama.cpp_q4_1"] = llama_speed
    for key, value in result.items():
        if key.startswith("conformance"):
            print(f"{key}: {value['identical_32']}/8 identical over 32 tokens, "
                  f"first 8 identical {value['first_8_identical']}/8, "
                  f"first differences {value['first_difference']}")
    print("| dtype | MiB | decode tok/s | vs llama.cpp Q4_1 | prompt tok/s | min cosine vs fp32 "
          "| greedy = fp32 | greedy = llama.cpp Q4_1 |\n|---|---|---|---|---|---|---|---|")
    for dtype in DTYPES:
        r = result[dtype]
        print(f"| {dtype} | {r['folder_mib']:.0f} | {r['decode_tokens_per_s']:.1f} | "
              f"{r['decode_vs_llama.cpp_q4_1']:.2f} | {r['prompt_tokens_per_s']:.1f} | "
              f"{r['cosine_vs_fp32_min']:.4f} | {r['greedy_identical_to_fp32']}/8 | "
              f"{r['greedy_identical_to_llama.cpp_q4_1']}/8 |")
    print(f"llama.cpp Q4_1: decode {llama_speed['decode_tokens_per_s']:.1f}, prompt "
          f"{llama_speed['prompt_tokens_per_s']:.1f} tok/s")
    write_result("onnx", result)


if __name__ == "__main__":
    main()
