"""Predicted vs measured memory of llama.cpp loads, each case in a fresh process.

Two moments are compared, because they touch different pages:

- **after load**: load, then a 32-token completion of a short prompt. Compared with the
  plan's ``predicted_ram_after_load``.
- **peak**: load, then a prompt filling ~90% of the context (every micro-batch is full, so
  all of the compute buffer is touched). Compared with ``predicted_peak_ram``. The cells
  before the prompt's last micro-batch are restored from a state file and only that batch
  is evaluated (``kv_state.py``): the same pages, seconds instead of minutes; ``--compare``
  measures both ways side by side, ``--full-prefill`` uses the real prefill throughout.

The measurement is ``VmHWM`` (peak RSS) of the subprocess; the prediction is the plan that
``load()`` itself made in that process (``model.info.plan``), whose base is the process's
RSS with the runtime already imported. Models: the default model and three synthetic GGUFs
of other shapes (f32, f16 with grouped-query attention, Q8_0 with multi-query attention).

Usage: python benchmarks/bench_memory.py [--full-prefill | --compare]
(writes benchmarks/results/<date>-memory.json, or -memory-peaks.json)
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

CONTEXTS = (1024, 3000, 8192)
KV_TYPES = ("f16", "q8_0")
WORKER = r"""
import json, os, sys, random, struct, tempfile
import localllm
path, ctx, kv, moment = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
model = localllm.load(path, context_length=ctx, threads=2, device="cpu", kv_type=kv,
                      parallel=1)
plan = model.info.plan
rng = random.Random(0)
ids = [rng.randrange(300, model.tokenizer.vocab_size - 10) for _ in range(int(ctx * 0.9))]
if moment == "peak":
    from localllm.testing import next_token_logits
    next_token_logits(model, ids)
    predicted = plan.predicted_peak_ram
elif moment == "peak-restored":
    sys.path.insert(0, os.environ["LOCALLLM_BENCH_DIR"])
    from kv_state import fill_then_evaluate_last_batch
    fill_then_evaluate_last_batch(model, ids)
    predicted = plan.predicted_peak_ram
else:
    model.complete("The capital of France is", max_tokens=32, temperature=0)
    predicted = plan.predicted_ram_after_load
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"predicted": predicted, "measured": hwm}))
"""


def model_files(workdir: Path) -> list[tuple[str, Path]]:
    from synthetic_models import SHAPES, write_model

    import localllm

    files = [("SmolLM2-135M Q4_1", localllm.ModelStore().ensure(localllm.DEFAULT_MODEL))]
    for shape in SHAPES:
        path = write_model(shape, workdir / f"{shape.name}.gguf")
        files.append((f"synthetic {shape.name}", path))
    return files


def run_case(path: Path, ctx: int, kv: str = "f16", moment: str = "peak") -> dict[str, int]:
    """One case in a fresh process. ``moment`` is "after", "peak" (a real prefill of the
    prompt, minutes at 8k context on 2 cores) or "peak-restored" (the same cells filled
    from a state file, then the prompt's last micro-batch evaluated: seconds)."""
    import os

    proc = subprocess.run([sys.executable, "-c", WORKER, str(path), str(ctx), kv, moment],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LOCALLLM_BENCH_DIR": str(HERE)})
    if proc.returncode != 0:
        raise RuntimeError(f"case {path} ctx={ctx} {kv} {moment} failed:\n"
                           f"{proc.stderr[-2000:]}")
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def cases(workdir: Path) -> list[tuple[str, Path, int, str, str]]:
    """(model, path, context, kv type, moment) for the full sweep."""
    files = model_files(workdir)
    out = []
    name, default = files[0]
    for ctx in CONTEXTS:
        for kv in KV_TYPES:
            for moment in ("after load", "peak"):
                out.append((name, default, ctx, kv, moment))
    for name, path in files[1:]:
        for ctx in (512, 2048):
            out.append((name, path, ctx, "f16", "peak"))
    return out


def run_cases(workdir: Path, peak: str = "peak-restored") -> list[dict[str, Any]]:
    """Every case; a peak is reached the ``peak`` way (see :func:`run_case`)."""
    rows = []
    for name, path, ctx, kv, moment in cases(workdir):
        r = run_case(path, ctx, kv, peak if moment == "peak" else "after")
        error = (r["predicted"] - r["measured"]) / r["measured"]
        rows.append({"model": name, "context": ctx, "kv": kv, "moment": moment,
                     "predicted_mib": r["predicted"] / 2**20,
                     "measured_mib": r["measured"] / 2**20, "error": error})
    return rows


def compare_peaks(workdir: Path) -> list[dict[str, Any]]:
    """Every peak case both ways, side by side: the measured peak of a real prefill and
    of restored cells plus the last micro-batch, and the seconds each process took."""
    import time

    rows = []
    for name, path, ctx, kv, moment in cases(workdir):
        if moment != "peak":
            continue
        row: dict[str, Any] = {"model": name, "context": ctx, "kv": kv}
        for way in ("peak", "peak-restored"):
            started = time.monotonic()
            row[way] = run_case(path, ctx, kv, way)["measured"] / 2**20
            row[f"{way} s"] = time.monotonic() - started
        rows.append(row)
        print(f"| {name} | {ctx} | {kv} | {row['peak']:.1f} | {row['peak-restored']:.1f} | "
              f"{(row['peak-restored'] - row['peak']) / row['peak'] * 100:+.2f}% | "
              f"{row['peak s']:.1f} | {row['peak-restored s']:.1f} |", flush=True)
    return rows


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-prefill", action="store_true",
                        help="reach each peak by a real prefill (minutes at 8k context)")
    parser.add_argument("--compare", action="store_true",
                        help="measure every peak both ways and print them side by side")
    opts = parser.parse_args()
    if opts.compare:
        print("| model | n_ctx | KV | peak MiB, prefill | peak MiB, restored | difference | "
              "prefill s | restored s |\n|---|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            write_result("memory-peaks", compare_peaks(Path(tmp)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_cases(Path(tmp), "peak" if opts.full_prefill else "peak-restored")
    errors = [abs(r["error"]) for r in rows]
    print("| model | n_ctx | KV | moment | predicted MiB | measured MiB (VmHWM) | error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['context']} | {r['kv']} | {r['moment']} | "
              f"{r['predicted_mib']:.1f} | {r['measured_mib']:.1f} | {r['error'] * 100:+.1f}% |")
    summary = {"max_abs_error": max(errors), "median_abs_error": statistics.median(errors)}
    print(f"max |error| {summary['max_abs_error'] * 100:.1f}%, median |error| "
          f"{summary['median_abs_error'] * 100:.1f}%")
    write_result("memory", {"rows": rows, **summary})


if __name__ == "__main__":
    main()
