"""Generation speed after an embedding call on another thread, with and without the one
llama.cpp compute thread (``localllm/engines/_compute.py``).

llama.cpp parallelises with OpenMP, and libgomp keeps a worker pool per calling thread.
Each run is a fresh process: the default model decodes 200 tokens three times, the
embedding model embeds four texts on the main thread, and the model decodes three times
more. ``direct`` bypasses the compute thread (each caller runs llama.cpp itself, as
before it existed), ``compute-thread`` is the shipped path. Decode rates are
``timings.generation_tokens_per_s``; ``--reps`` processes per mode, taking turns.

Usage: python benchmarks/bench_compute_thread.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

from results_file import write_result

CHILD = """
import json, sys
import localllm
from localllm.engines import _compute
if sys.argv[1] == "direct":
    _compute.ComputeThread.run = lambda self, fn, *args: fn(*args)
model = localllm.load(context_length=1024, threads=2)
engine = model._generator.engine
bias = {t: -100.0 for t in range(model.info.vocab_size) if engine.is_end_of_generation(t)}

def rate():
    model.clear_cache()
    done = model.complete("Note: the harbour lights of Vellmar. Summary:", max_tokens=200,
                          temperature=0, logit_bias=bias)
    return done.timings.generation_tokens_per_s

before = [rate() for _ in range(3)]
with localllm.load("all-minilm-l6-v2", threads=2) as embedder:
    embedder.embed(["hello world"] * 4)
    after = [rate() for _ in range(3)]
print(json.dumps({"before": before, "after": after}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "compute-thread": []}
    for _ in range(args.reps):
        for mode in runs:
            out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True,
                                 capture_output=True, text=True, timeout=600).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    result: dict[str, Any] = {"reps": args.reps, "runs": runs}
    for mode, rows in runs.items():
        before = statistics.median(r for row in rows for r in row["before"])
        after = statistics.median(r for row in rows for r in row["after"])
        result[mode] = {"before_tok_s": before, "after_tok_s": after, "ratio": after / before}
        print(f"{mode}: {before:.1f} tok/s before the embedding, {after:.1f} after "
              f"({after / before:.2f}x)")
    write_result("compute-thread", result)


if __name__ == "__main__":
    main()
