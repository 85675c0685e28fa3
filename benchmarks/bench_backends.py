"""Every localllm backend against its own raw runtime, each side in a fresh process.

Per row, the localllm side and the raw runtime load the same file with the same context
(1024) and threads (2) and continue the same distinct prompts (~200 tokens, a unique first
line defeats prefix caches), greedy, up to 64 new tokens. Sides alternate over two rounds;
each worker process reports its load time, the median time to first token, prompt and
decode tokens/s over 3 prompts, and its peak RSS (VmHWM), so memory is per backend.

Raw sides: ``llama_cpp.Llama.generate``; ``gpt4all.GPT4All.generate`` on the same
compatibility copy; ``ctransformers`` ``generate`` on a synthetic SentencePiece llama (it
cannot read the default model); ``onnxruntime_genai`` ``Generator`` on the converted folder.

Usage: python benchmarks/bench_backends.py [--rounds 2]
(``--worker SPEC`` is the internal per-process entry point)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

CONTEXT, THREADS, NEW_TOKENS, REPS = 1024, 2, 64, 3
FILLER = ("The history of the city is long and full of change. Merchants came from the "
          "coast, built markets and schools, and the river carried their goods inland. ")
PROMPT = "Note {i}: {filler}\nThe next chapter tells how"


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- workers: each opener loads its runtime and returns stream(prompt) -> new tokens --------

Stream = Callable[[str], Iterator[Any]]


def local_tokenizer(path: Path) -> Any:
    from localllm.models.gguf import read_gguf
    from localllm.tokenizer import tokenizer_from_folder, tokenizer_from_gguf

    return tokenizer_from_folder(path) if path.is_dir() else tokenizer_from_gguf(
        read_gguf(path))


def open_localllm(spec: dict[str, Any]) -> Stream:
    import localllm

    model = localllm.load(spec["path"], backend=spec["backend"], context_length=CONTEXT,
                          threads=THREADS, chat_template="chatml",
                          backend_options=spec.get("options") or {})
    params: dict[str, Any] = {"max_tokens": NEW_TOKENS, "temperature": 0}
    if "logit_bias" in model.capabilities.sampling_params:  # decode all 64 tokens
        params["logit_bias"] = {i: float("-inf") for i in spec["eog_ids"]}
    return lambda prompt: model.stream(prompt, **params)


def open_llama_cpp(spec: dict[str, Any]) -> Stream:
    import llama_cpp

    llm = llama_cpp.Llama(spec["path"], n_ctx=CONTEXT, n_threads=THREADS,
                          n_threads_batch=THREADS, n_batch=512, flash_attn=True,
                          verbose=False)

    def stream(prompt: str) -> Iterator[int]:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        for n, token in enumerate(llm.generate(tokens, temp=0.0, reset=True)):
            yield token
            if n + 1 == NEW_TOKENS:
                return
    return stream


def open_gpt4all(spec: dict[str, Any]) -> Stream:
    import gpt4all

    path = Path(spec["path"])
    llm = gpt4all.GPT4All(path.name, model_path=str(path.parent), allow_download=False,
                          n_threads=THREADS, device="cpu", n_ctx=CONTEXT, verbose=False)
    return lambda prompt: llm.generate(prompt, max_tokens=NEW_TOKENS, temp=0.0,
                                       streaming=True)


def open_ctransformers(spec: dict[str, Any]) -> Stream:
    """ctransformers' tokenizer, eval and logits calls with a numpy argmax. Its Python
    ``tokenize()``/``generate()`` overflow a buffer sized by characters (this vocabulary
    gives one token more: the leading space) and abort the process, so the native
    tokenizer is called with a buffer sized by bytes."""
    import ctypes

    import numpy as np
    from ctransformers.llm import LLM, Config

    llm = LLM(spec["path"], "llama", config=Config(context_length=CONTEXT, batch_size=512,
                                                   threads=THREADS, gpu_layers=0))

    def stream(prompt: str) -> Iterator[int]:
        llm._context.clear()
        llm.ctransformers_llm_reset()
        raw = prompt.encode()
        buffer = (ctypes.c_int * (len(raw) + 2))()
        llm.eval(buffer[:llm.ctransformers_llm_tokenize(raw, True, buffer)])
        for _ in range(NEW_TOKENS):
            row = np.ctypeslib.as_array(ctypes.cast(llm.ctransformers_llm_logits_data(),
                                                    ctypes.POINTER(ctypes.c_float)),
                                        shape=(llm.ctransformers_llm_logits_size(),))
            token = int(np.argmax(row))
            yield token
            llm.eval([token])
    return stream


def open_genai(spec: dict[str, Any]) -> Stream:
    import onnxruntime_genai as og

    from localllm.tokenizer import tokenizer_from_folder

    config = og.Config(spec["path"])
    config.clear_providers()
    model = og.Model(config)
    tokenizer = tokenizer_from_folder(Path(spec["path"]))

    def stream(prompt: str) -> Iterator[int]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=CONTEXT, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(tokenizer.encode(prompt))
        for _ in range(NEW_TOKENS):
            generator.generate_next_token()
            yield int(generator.get_next_tokens()[0])
            if generator.is_done():
                return
    return stream


OPENERS: dict[str, Callable[[dict[str, Any]], Stream]] = {
    "localllm": open_localllm, "llama_cpp": open_llama_cpp, "gpt4all": open_gpt4all,
    "ctransformers": open_ctransformers, "onnxruntime_genai": open_genai}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, then time 3 prompts; the prompt's token count comes from localllm's tokenizer
    for every side, so prompt tokens/s compare the same work."""
    tok = local_tokenizer(Path(spec["path"]))
    spec = {**spec, "eog_ids": sorted(tok.eog_ids)}
    t0 = time.perf_counter()
    stream = OPENERS[spec["side"]](spec)  # the runtime's import counts: both sides pay it
    load_s = time.perf_counter() - t0
    rows = []
    for i in range(REPS):
        # ~200 tokens in the default model's vocabulary (the synthetic one splits finer)
        prompt = PROMPT.format(i=f"{spec['round']}.{i}", filler=FILLER * spec.get("repeats", 7))
        start = time.perf_counter()
        first = end = 0.0
        count = 0
        for _ in stream(prompt):
            count += 1
            end = time.perf_counter()
            first = first or end
        if count < 16:
            raise RuntimeError(f"{spec['side']} stopped after {count} tokens")
        rows.append((first - start, len(tok.encode(prompt)) / (first - start),
                     (count - 1) / (end - first)))
    return {"load_s": load_s, "ttft_s": statistics.median(r[0] for r in rows),
            "prompt_tokens_per_s": statistics.median(r[1] for r in rows),
            "decode_tokens_per_s": statistics.median(r[2] for r in rows),
            "peak_rss_mib": peak_rss_mib()}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['side']} on {spec['path']} failed:\n"
                           f"{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- the rows -------------------------------------------------------------------------------

def prepare(work: Path) -> list[dict[str, Any]]:
    """The files each row runs on (converted and synthetic ones written under ``work``)."""
    from synthetic_models import SHAPES, write_model

    import localllm
    from localllm.engines.gpt4all import compat_copy
    from localllm.models.convert import convert_gguf_to_onnx
    from localllm.models.gguf import read_gguf

    default = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    compat = compat_copy(read_gguf(default), "starcoder")
    spm = write_model(next(s for s in SHAPES if s.name == "mid-gqa-f16"), work / "spm.gguf")
    fp32 = convert_gguf_to_onnx(default, work / "onnx-fp32")
    int8 = convert_gguf_to_onnx(default, work / "onnx-int8", dtype="int8")
    small = "SmolLM2-135M Q4_1"
    return [
        {"row": "llama.cpp", "model": small, "weights": str(default),
         "ours": {"backend": "llama.cpp", "path": str(default)},
         "raw": {"side": "llama_cpp", "path": str(default)}},
        {"row": "gpt4all", "model": small + " (compat copy)", "weights": str(compat),
         "ours": {"backend": "gpt4all", "path": str(default),
                  "options": {"compat_copy": True}},
         "raw": {"side": "gpt4all", "path": str(compat)}},
        {"row": "ctransformers", "model": "synthetic llama f16 (8×768, SPM 32k)",
         "weights": str(spm),
         "ours": {"backend": "ctransformers", "path": str(spm), "repeats": 1},
         "raw": {"side": "ctransformers", "path": str(spm), "repeats": 1}},
        {"row": "onnxruntime fp32", "model": small + " → ONNX fp32", "weights": str(fp32),
         "ours": {"backend": "onnxruntime", "path": str(fp32)},
         "raw": {"side": "onnxruntime_genai", "path": str(fp32)}},
        {"row": "onnxruntime int8", "model": small + " → ONNX int8", "weights": str(int8),
         "ours": {"backend": "onnxruntime", "path": str(int8)},
         "raw": {"side": "onnxruntime_genai", "path": str(int8)}},
        {"row": "onnxruntime-genai fp32", "model": small + " → ONNX fp32",
         "weights": str(fp32), "ours": {"backend": "onnxruntime-genai", "path": str(fp32)},
         "raw": {"side": "onnxruntime_genai", "path": str(fp32)}},
    ]


def bytes_per_token(weights: str) -> int:
    """Weight bytes one decode step reads: every matrix once, one embedding row (the
    embedding table counts when it doubles as the output head)."""
    path = Path(weights)
    if path.is_dir():
        import onnx
        from onnx.external_data_helper import ExternalDataInfo

        graph = onnx.load(str(path / "model.onnx"), load_external_data=False).graph
        return sum(ExternalDataInfo(t).length or 0 for t in graph.initializer
                   if t.name != "token_embd")
    from localllm.models.gguf import read_gguf

    info = read_gguf(path)
    names = {t.name for t in info.tensors}
    return sum(t.n_bytes for t in info.tensors
               if t.name != "token_embd.weight" or "output.weight" not in names)


MEASURES = ("load_s", "ttft_s", "prompt_tokens_per_s", "decode_tokens_per_s", "peak_rss_mib")


def main(rounds: int = 2) -> dict[str, Any]:
    import tempfile

    out: dict[str, Any] = {"settings": {"context": CONTEXT, "threads": THREADS,
                                        "new_tokens": NEW_TOKENS, "prompts_per_worker": REPS,
                                        "rounds": rounds}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for row in prepare(Path(tmp)):
            runs: dict[str, list[dict[str, Any]]] = {"localllm": [], "raw": []}
            for r in range(rounds):
                runs["localllm"].append(run_worker({**row["ours"], "side": "localllm",
                                                    "round": r}))
                runs["raw"].append(run_worker({**row["raw"], "round": r}))
            sides = {side: {m: statistics.median(x[m] for x in got) for m in MEASURES}
                     for side, got in runs.items()}
            ratio = {m: sides["localllm"][m] / sides["raw"][m] for m in MEASURES}
            entry = {"backend": row["row"], "model": row["model"],
                     "raw_runtime": row["raw"]["side"], "localllm": sides["localllm"],
                     "raw": sides["raw"], "ratio": ratio,
                     "bytes_per_token": bytes_per_token(row["weights"])}
            out["rows"].append(entry)
            ours, raw = sides["localllm"], sides["raw"]
            print(f"{row['row']:24s} decode {ours['decode_tokens_per_s']:6.1f} vs "
                  f"{raw['decode_tokens_per_s']:6.1f} tok/s "
                  f"({ratio['decode_tokens_per_s']:.2f}), prompt "
                  f"{ratio['prompt_tokens_per_s']:.2f}, RSS {ours['peak_rss_mib']:.0f} vs "
                  f"{raw['peak_rss_mib']:.0f} MiB", flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        os._exit(0)  # raw ctransformers aborts in its native teardown; the numbers are out
    else:
        print(json.dumps(main(args.rounds), indent=2))
