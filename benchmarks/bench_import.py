"""How long ``import localllm`` takes, against importing the raw runtime, in the same run.

Each import runs in a fresh interpreter (``python -X importtime`` is not used: it slows
what it measures); the median of ``--reps`` alternating rounds is reported for

* ``import localllm`` (imports no runtime: the test suite checks that by construction);
* ``import llama_cpp`` (the runtime an application would import instead);
* ``python -c pass`` (the interpreter's own start, subtracted from both).

Goal: localllm's import costs at most 1.5× the runtime's (it brings pydantic and its
frozen result types; the runtime brings numpy and its ctypes bindings). It was a timed
unit test once, which a cold 2-core machine failed at 0.49 s, so the number lives here.

Usage: cd benchmarks && ../.venv/bin/python bench_import.py [--reps 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from results_file import write_result

CASES = {"interpreter": "pass", "localllm": "import localllm", "llama_cpp": "import llama_cpp"}


def once(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    opts = parser.parse_args()
    for code in CASES.values():  # warm the page cache once
        once(code)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(opts.reps):
        for name, code in CASES.items():
            times[name].append(once(code))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base = median["interpreter"]
    own = {name: median[name] - base for name in ("localllm", "llama_cpp")}
    ratio = own["localllm"] / own["llama_cpp"]
    print(f"interpreter start {base * 1000:.0f} ms; import localllm +{own['localllm'] * 1000:.0f}"
          f" ms, import llama_cpp +{own['llama_cpp'] * 1000:.0f} ms: ratio {ratio:.2f} "
          f"(goal <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    write_result("import", {"median_s": median, "import_s": own, "ratio": ratio,
                            "reps": opts.reps})


if __name__ == "__main__":
    main()
