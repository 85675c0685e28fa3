"""Speculative decoding with a draft model vs none, and vs llama-server's, in one run.

The pair: the default model (SmolLM2-135M Q4_1) drafts for copies of its own weights
dequantized to f16 and to f32 (``localllm convert``), the only same-vocabulary pairs this
machine has. The same weights guess each other's tokens nearly always, so acceptance is
near its ceiling; what decides the speed-up is the cost of a draft step against a target
step, which on a 135M model is set more by per-step overhead than by the bytes read.
The tasks are ``bench_speculative``'s (quote, rename, story), single stream, temperature 0.

localllm: ``load(target, draft=q4)``, each task with ``speculative=None`` and "draft".
llama-server (same llama.cpp sources): the target alone, and with ``-md q4 --spec-type
draft-simple`` at its defaults. Decode rates are each runtime's own count; the ratios
are the medians of the run-by-run ratios on / off (the two take turns).

Usage: python benchmarks/bench_draft_model.py [--reps 3] [--threads 2] [--tokens 160]
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any

from bench_batching import reference_arguments, tools_dir
from bench_speculative import TASKS, alternating, chat, llama_server, paired, server_rates
from results_file import write_result

import localllm
from localllm.models.convert_precision import change_precision
from localllm.models.store import ModelStore


def localllm_rates(target: Path, draft: Path, threads: int, tokens: int, reps: int
                   ) -> dict[str, Any]:
    with localllm.load(target, draft=draft, context_length=2048, threads=threads,
                       parallel=1) as model:
        model.chat(chat("story"), max_tokens=8, temperature=0)  # warm up
        return alternating(model, (None, "draft"), tokens, reps)


def main() -> None:
    args = reference_arguments(__doc__, reps=3, tokens=160, tool="llama-server").parse_args()
    draft = ModelStore().ensure(localllm.DEFAULT_MODEL)
    binary = tools_dir(args.tools) / "llama-server"
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("f16", "f32"):
            target = change_precision(draft, Path(tmp) / f"target-{dtype}.gguf", dtype=dtype)
            ours = localllm_rates(target, draft, args.threads, args.tokens, args.reps)
            with llama_server(binary, target, args.threads, "none") as plain, \
                    llama_server(binary, target, args.threads, "draft-simple",
                                 ("-md", str(draft))) as drafting:
                theirs = server_rates({"none": plain, "draft": drafting}, args.tokens,
                                      args.reps)
            off, on = theirs["none"], theirs["draft"]
            raw[dtype] = {"localllm": ours, "llama_server": {"none": off, "draft": on}}
            for task in TASKS:
                mine_on, mine_off = ours[f"{task}/draft"], ours[f"{task}/off"]
                rows.append({
                    "target": dtype, "task": task, "localllm_off": mine_off["tok_s"],
                    "localllm_on": mine_on["tok_s"],
                    "speedup": paired(mine_on, mine_off),
                    "acceptance": mine_on["acceptance"], "tokens": mine_on["tokens"],
                    "llama_server_off": off[task]["tok_s"],
                    "llama_server_on": on[task]["tok_s"],
                    "llama_server_speedup": paired(on[task], off[task]),
                    "llama_server_acceptance": on[task]["acceptance"]})
    print("| target | task | localllm off | draft | speed-up | acceptance | "
          "llama-server off | draft | speed-up | acceptance |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['task']} | {r['localllm_off']:.1f} | "
              f"{r['localllm_on']:.1f} | {r['speedup']:.2f}x | {r['acceptance'] or 0:.2f} | "
              f"{r['llama_server_off']:.1f} | {r['llama_server_on']:.1f} | "
              f"{r['llama_server_speedup']:.2f}x | {r['llama_server_acceptance'] or 0:.2f} |")
    write_result("draft-model", {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "reps": args.reps, "max_tokens": args.tokens, "draft": str(draft.name),
        "rows": rows, "raw": raw})


if __name__ == "__main__":
    main()
