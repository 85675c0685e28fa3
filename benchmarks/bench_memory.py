"""Predicted vs measured peak memory of llama.cpp loads, each case in a fresh process.

For every (model, context) case a subprocess imports localllm and the runtime, asks the
planner for the predicted peak RSS (from the GGUF header and the process's current RSS),
loads the model, evaluates a prompt filling ~90% of the context, and reads ``VmHWM``.
Models: the default model and three synthetic GGUFs of different shapes (f32, f16 with
grouped-query attention, Q8_0 with multi-query attention) written with ``gguf``.

Usage: python benchmarks/bench_memory.py  (writes benchmarks/results/<date>-memory.json)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from results_file import write_result  # noqa: E402

CONTEXTS = (512, 2048, 8192)
WORKER = r"""
import json, sys, random
import localllm
from localllm._backends.llamacpp import _Runtime
from localllm._gguf import read_gguf
from localllm._planner import make_plan
from localllm.hardware import probe
path, ctx = sys.argv[1], int(sys.argv[2])
_Runtime.get()
gguf = read_gguf(path)
plan = make_plan(gguf, probe(runtimes=False), backend="llama.cpp", gpu_offload_supported=False,
                 context_length=ctx, device="cpu", threads=2)
model = localllm.load(path, context_length=ctx, threads=2, device="cpu")
engine = model._engine
rng = random.Random(0)
ids = [rng.randrange(300, engine.vocab_size) for _ in range(int(ctx * 0.9))]
engine.start(ids)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"predicted": plan.predicted_peak_ram, "measured": hwm}))
"""


def model_files(workdir: Path) -> list[tuple[str, Path]]:
    from synthetic_models import SHAPES, write_model

    import localllm

    files = [("SmolLM2-135M Q4_1", localllm.ModelStore().ensure(localllm.DEFAULT_MODEL))]
    for shape in SHAPES:
        path = write_model(shape, workdir / f"{shape.name}.gguf")
        files.append((f"synthetic {shape.name}", path))
    return files


def run_case(path: Path, ctx: int) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", WORKER, str(path), str(ctx)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"case {path} ctx={ctx} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_cases(workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for name, path in model_files(workdir):
        for ctx in CONTEXTS:
            r = run_case(path, ctx)
            error = (r["predicted"] - r["measured"]) / r["measured"]
            rows.append({"model": name, "context": ctx, "predicted_mib": r["predicted"] / 2**20,
                         "measured_mib": r["measured"] / 2**20, "error": error})
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_cases(Path(tmp))
    errors = [abs(r["error"]) for r in rows]
    print("| model | n_ctx | predicted MiB | measured MiB (VmHWM) | error |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['context']} | {r['predicted_mib']:.1f} | "
              f"{r['measured_mib']:.1f} | {r['error'] * 100:+.1f}% |")
    summary = {"max_abs_error": max(errors), "median_abs_error": statistics.median(errors)}
    print(f"max |error| {summary['max_abs_error'] * 100:.1f}%, median |error| "
          f"{summary['median_abs_error'] * 100:.1f}%")
    write_result("memory", {"rows": rows, **summary})


if __name__ == "__main__":
    main()
