"""Speculative decoding (prompt lookup) vs none, and vs llama-server's own, in one run.

Tasks, single stream, temperature 0, the default model and the same threads:

* **quote**: a ~400-token document and a request to repeat its second section verbatim;
* **rename**: a ~300-token Python snippet to rewrite with one variable renamed;
* **story**: a free-form story (nothing to copy: speculation must cost next to nothing).

Each side's decode rate is the runtime's own count: localllm's
``timings.generation_tokens_per_s`` (the tokens after the first over the time after the
first), llama-server's ``timings.predicted_per_second``. llama-server (built from the
same llama.cpp sources by ``scripts/build_reference_tools.py``) runs ``--spec-type none``
and ``--spec-type ngram-simple``; its speed-up is the yardstick. Then 8 concurrent
streams of the quote task, aggregate tokens/s with speculation on and off (it backs off
when the batch is full). Medians of ``--reps``; the ratios are on / off.

Usage: python benchmarks/bench_speculative.py [--reps 3] [--threads 2] [--tokens 160]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_batching import tools_dir
from results_file import write_result

import localllm
from localllm.models.store import ModelStore

DOCUMENT = """# The Harbour Lights of Vellmar

## Founding

Vellmar began as a fishing village of eleven families who settled the sheltered bay in
1702. They built their houses of grey stone from the cliffs and roofed them with slate
carried by boat from the northern quarries. For most of a century the village lived on
herring and cod, salted in the long sheds that still stand along the western quay.

## The lighthouse

The lighthouse on Gull Point was lit for the first time on the night of 3 March 1811. Its
lamp burned whale oil until 1862, when the keepers changed to paraffin, and it was
electrified in 1931. The tower is twenty-six metres tall and its light can be seen from
thirty-two kilometres away on a clear night. Three families kept the light over the years:
the Arnesens, the Dowds and the Petrovics, who stayed until the light was automated in 1987.

## The harbour today

Today the harbour shelters about forty boats, most of them used for sailing and tourism.
The old salting sheds hold a museum, a bakery and a workshop that repairs wooden hulls.
Every August the town holds a festival of lights, when each boat in the harbour hangs a
lantern from its mast and the lighthouse keepers' descendants light the old lamp once
more.
"""

CODE = '''def summarize_orders(orders, tax_rate=0.2):
    """Add up the orders of one customer and return the totals."""
    total = 0.0
    count = 0
    largest = None
    for order in orders:
        if order.get("cancelled"):
            continue
        price = order["price"] * order.get("quantity", 1)
        total += price
        count += 1
        if largest is None or price > largest:
            largest = price
    tax = total * tax_rate
    average = total / count if count else 0.0
    return {
        "total": total,
        "tax": tax,
        "total_with_tax": total + tax,
        "count": count,
        "average": average,
        "largest": largest,
    }


def print_summary(summary):
    print("orders:", summary["count"])
    print("total:", round(summary["total"], 2))
    print("with tax:", round(summary["total_with_tax"], 2))
'''

TASKS = {
    "quote": "Here is a document.\n\n" + DOCUMENT + "\nRepeat the section 'The lighthouse' "
             "word for word, exactly as written.",
    "rename": "Rewrite this code with the variable `total` renamed to `subtotal`. Change "
              "nothing else and output only the code.\n\n" + CODE,
    "story": "Write a short story about a lighthouse keeper who finds a message in a "
             "bottle.",
}


def chat(task: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": TASKS[task]}]


def localllm_rates(path: Path, threads: int, tokens: int, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with localllm.load(path, context_length=2048, threads=threads, parallel=1,
                       speculative="ngram") as model:
        model.chat(chat("story"), max_tokens=8, temperature=0)  # warm up
        for task in TASKS:
            for mode in (None, "ngram"):
                rates, drafted, accepted, n = [], 0, 0, 0
                for _ in range(reps):
                    model.clear_cache()  # each run evaluates its prompt alike
                    done = model.chat(chat(task), max_tokens=tokens, temperature=0,
                                      speculative=mode)
                    rates.append(done.timings.generation_tokens_per_s)
                    drafted += done.timings.drafted_tokens
                    accepted += done.timings.accepted_tokens
                    n = done.usage.completion_tokens
                out[f"{task}/{mode or 'off'}"] = {
                    "tok_s": statistics.median(rates), "runs": rates, "tokens": n,
                    "acceptance": accepted / drafted if drafted else None}
    return out


def concurrent_rate(path: Path, threads: int, tokens: int, mode: str | None,
                    streams: int = 8) -> float:
    """Aggregate tokens/s of ``streams`` quote requests started together."""
    with localllm.load(path, context_length=1024, threads=threads, parallel=streams,
                       speculative=mode) as model:
        model.chat(chat("story"), max_tokens=4, temperature=0)
        done: list[int] = []

        def one(i: int) -> None:
            messages = [{"role": "user", "content": f"({i}) " + TASKS["quote"]}]
            done.append(model.chat(messages, max_tokens=tokens // 2,
                                   temperature=0).usage.completion_tokens)

        started = time.perf_counter()
        workers = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=600)
        return sum(done) / (time.perf_counter() - started)


def llama_server_rates(binary: Path, path: Path, threads: int, tokens: int, reps: int,
                       spec: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """llama-server's decode rates on each task with ``--spec-type spec`` (and ``extra``
    arguments, such as a draft model)."""
    port = 18000 + os.getpid() % 1000
    argv = [str(binary), "-m", str(path), "-t", str(threads), "-c", "2048", "-np", "1",
            "--port", str(port), "--host", "127.0.0.1", "--spec-type", spec, "--no-webui",
            *extra]
    log_path = Path(tempfile.gettempdir()) / f"llama-server-{spec}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            return _server_runs(proc, f"http://127.0.0.1:{port}", log_path, tokens, reps)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _server_runs(proc: subprocess.Popen[bytes], base: str, log_path: Path, tokens: int,
                 reps: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"llama-server did not start; see {log_path}")
        time.sleep(0.5)
    out: dict[str, Any] = {}
    for task in TASKS:
        rates, n, drafted, accepted = [], 0, 0, 0
        for _ in range(reps):
            body = {"messages": chat(task), "max_tokens": tokens, "temperature": 0,
                    "cache_prompt": False}
            request = urllib.request.Request(f"{base}/v1/chat/completions",
                                             data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as r:
                reply = json.load(r)
            timings = reply["timings"]
            rates.append(float(timings["predicted_per_second"]))
            n = int(timings["predicted_n"])
            drafted += int(timings.get("draft_n", 0))
            accepted += int(timings.get("draft_n_accepted", 0))
        out[task] = {"tok_s": statistics.median(rates), "runs": rates, "tokens": n,
                     "acceptance": accepted / drafted if drafted else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=160)
    ap.add_argument("--tools", help="directory with llama-server (default: cached build)")
    args = ap.parse_args()
    path = ModelStore().ensure(localllm.DEFAULT_MODEL)
    ours = localllm_rates(path, args.threads, args.tokens, args.reps)
    binary = tools_dir(args.tools) / "llama-server"
    theirs = {spec: llama_server_rates(binary, path, args.threads, args.tokens, args.reps,
                                       spec) for spec in ("none", "ngram-simple")}
    on8 = concurrent_rate(path, args.threads, args.tokens, "ngram")
    off8 = concurrent_rate(path, args.threads, args.tokens, None)
    rows = []
    for task in TASKS:
        on, off = ours[f"{task}/ngram"], ours[f"{task}/off"]
        ref_on, ref_off = theirs["ngram-simple"][task], theirs["none"][task]
        rows.append({"task": task, "localllm_off": off["tok_s"], "localllm_on": on["tok_s"],
                     "speedup": on["tok_s"] / off["tok_s"], "acceptance": on["acceptance"],
                     "tokens": on["tokens"], "llama_server_off": ref_off["tok_s"],
                     "llama_server_on": ref_on["tok_s"],
                     "llama_server_speedup": ref_on["tok_s"] / ref_off["tok_s"],
                     "llama_server_acceptance": ref_on["acceptance"]})
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "reps": args.reps, "max_tokens": args.tokens, "tasks": rows,
              "streams8": {"on_tok_s": on8, "off_tok_s": off8, "ratio": on8 / off8},
              "raw": {"localllm": ours, "llama_server": theirs}}
    print("| task | localllm off | on | speed-up | acceptance | llama-server off | on | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['localllm_off']:.1f} | {r['localllm_on']:.1f} | "
              f"{r['speedup']:.2f}x | {r['acceptance'] or 0:.2f} | {r['llama_server_off']:.1f} "
              f"| {r['llama_server_on']:.1f} | {r['llama_server_speedup']:.2f}x |")
    print(f"8 streams: on {on8:.1f} tok/s, off {off8:.1f} tok/s ({on8 / off8:.3f}x)")
    write_result("speculative", result)


if __name__ == "__main__":
    main()
