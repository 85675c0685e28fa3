"""The ONNX backend (fp32 conversion of the default model) vs raw onnxruntime-genai on the
same folder, and vs llama.cpp on the original Q4_1 GGUF: decode tokens/s, prompt tokens/s
and time to first token, same threads (2), one run, greedy, 48 tokens, medians of 3.

The physical limit for decode is memory bandwidth ÷ bytes read per token: the fp32 folder
reads ~650 MB of weights per token, the Q4_1 file ~98 MB, which bounds the ratio; the int4
conversion (MatMulNBits with float zero points: exact for Q4_1, but onnxruntime runs
that form on its slow reference path) is far from that limit.

Usage: python benchmarks/bench_onnx.py
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import localllm
from localllm._convert import convert_gguf_to_onnx

PROMPT = "Note {i}: " + "The history of the city is long and full of change. " * 20


def measure(model: localllm.Model, reps: int = 3) -> dict[str, float]:
    rows = [model.complete(PROMPT.format(i=i), max_tokens=48, temperature=0,
                           logit_bias={2: float("-inf"), 0: float("-inf")}).timings
            for i in range(reps)]
    return {"decode_tokens_per_s": statistics.median(t.generation_tokens_per_s for t in rows),
            "prompt_tokens_per_s": statistics.median(t.prompt_tokens_per_s for t in rows),
            "ttft_s": statistics.median(t.time_to_first_token_s for t in rows)}


def measure_genai(folder: Path, n_prompt_text: str, reps: int = 3) -> dict[str, float]:
    """onnxruntime-genai's own loop: append the prompt, then generate_next_token."""
    import onnxruntime_genai as og

    from localllm.tokenizer import tokenizer_from_folder

    model = og.Model(str(folder))
    tok = tokenizer_from_folder(folder)
    rows = []
    for i in range(reps):
        ids = tok.encode(PROMPT.format(i=i))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=1024, do_sample=False)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        gen.generate_next_token()
        t_first = time.perf_counter()
        for _ in range(47):
            gen.generate_next_token()
        t_end = time.perf_counter()
        rows.append((t_first - t0, 47 / (t_end - t_first), len(ids) / (t_first - t0)))
    return {"decode_tokens_per_s": statistics.median(r[1] for r in rows),
            "prompt_tokens_per_s": statistics.median(r[2] for r in rows),
            "ttft_s": statistics.median(r[0] for r in rows)}


def main() -> None:
    source = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        folder = convert_gguf_to_onnx(source, Path(tmp) / "onnx")
        with localllm.load(folder, context_length=1024, threads=2) as onnx_model, \
                localllm.load(source, context_length=1024, threads=2) as llama:
            result = {"onnx_fp32": measure(onnx_model), "llama.cpp_q4_1": measure(llama)}
        result["onnxruntime_genai_raw"] = measure_genai(folder, PROMPT)
        int4 = convert_gguf_to_onnx(source, Path(tmp) / "onnx-int4", dtype="int4")
        with localllm.load(int4, context_length=1024, threads=2) as int4_model:
            result["onnx_int4"] = measure(int4_model)
    ratio = {f"vs_{other}_{k}": result["onnx_fp32"][k] / result[other][k]
             for other in ("llama.cpp_q4_1", "onnxruntime_genai_raw")
             for k in ("decode_tokens_per_s", "prompt_tokens_per_s")}
    ratio["int4_vs_llama.cpp_decode"] = (result["onnx_int4"]["decode_tokens_per_s"]
                                         / result["llama.cpp_q4_1"]["decode_tokens_per_s"])
    print("| measure | localllm ONNX fp32 | raw onnxruntime-genai | ratio | llama.cpp Q4_1 | "
          "ratio |\n|---|---|---|---|---|---|")
    for key in ("decode_tokens_per_s", "prompt_tokens_per_s", "ttft_s"):
        a, g, b = (result[s][key] for s in ("onnx_fp32", "onnxruntime_genai_raw",
                                             "llama.cpp_q4_1"))
        print(f"| {key} | {a:.2f} | {g:.2f} | {a / g:.2f} | {b:.2f} | {a / b:.2f} |")
    i4, lc = result["onnx_int4"]["decode_tokens_per_s"], result["llama.cpp_q4_1"][
        "decode_tokens_per_s"]
    print(f"int4 ONNX decode {i4:.2f} tokens/s vs llama.cpp Q4_1 {lc:.2f}: {i4 / lc:.2f}")
    out = Path(__file__).parent / "results" / f"{date.today().isoformat()}-onnx.json"
    out.write_text(json.dumps({**result, "ratio": ratio}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
