"""Speculative decoding (prompt lookup) vs none, and vs llama-server's own, in one run.

Tasks, single stream, temperature 0, the default model and the same threads:

* **quote**: a ~400-token document and a request to repeat its second section verbatim;
* **rename**: a ~300-token Python snippet to rewrite with one variable renamed;
* **story**: a free-form story (nothing to copy: speculation must cost next to nothing).

Each side's decode rate is the runtime's own count: localllm's
``timings.generation_tokens_per_s`` (the tokens after the first over the time after the
first), llama-server's ``timings.predicted_per_second``. llama-server (built from the
same llama.cpp sources by ``scripts/build_reference_tools.py``) runs ``--spec-type none``
and ``--spec-type ngram-simple`` (two servers); its speed-up is the yardstick. Then 8
concurrent streams of the quote task, aggregate tokens/s with speculation on and off (it
backs off when the batch is full). On and off take turns run by run; rates are medians
of ``--reps`` and each speed-up is the median of the run-by-run ratios on / off.

``--quant q4_0`` runs it all on the same weights requantized by llama.cpp's quantizer (see
``requantized``): what the runtime's batched kernels do to the speed-up.

Usage: python benchmarks/bench_speculative.py [--reps 3] [--threads 2] [--tokens 160]
       [--quant q4_0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_batching import reference_arguments, tools_dir
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
    with localllm.load(path, context_length=2048, threads=threads, parallel=1,
                       speculative="ngram") as model:
        model.chat(chat("story"), max_tokens=8, temperature=0)  # warm up
        return alternating(model, (None, "ngram"), tokens, reps)


def alternating(model: localllm.Model, modes: tuple[str | None, ...], tokens: int,
                reps: int) -> dict[str, Any]:
    """Each task in each mode, the modes taking turns run by run (so the machine's drift
    falls on both alike); per task and mode the median rate and the acceptance."""
    runs: dict[str, list[Any]] = {f"{t}/{m or 'off'}": [] for t in TASKS for m in modes}
    for _ in range(reps):
        for task in TASKS:
            for mode in modes:
                model.clear_cache()  # each run evaluates its prompt alike
                runs[f"{task}/{mode or 'off'}"].append(model.chat(
                    chat(task), max_tokens=tokens, temperature=0, speculative=mode))
    out: dict[str, Any] = {}
    for key, done in runs.items():
        drafted = sum(d.timings.drafted_tokens for d in done)
        accepted = sum(d.timings.accepted_tokens for d in done)
        rates = [d.timings.generation_tokens_per_s for d in done]
        out[key] = {"tok_s": statistics.median(rates), "runs": rates,
                    "tokens": done[-1].usage.completion_tokens,
                    "acceptance": accepted / drafted if drafted else None}
    return out


def concurrent_rates(path: Path, threads: int, tokens: int, reps: int,
                     streams: int = 8) -> dict[str, list[float]]:
    """Aggregate tokens/s of ``streams`` quote requests started together, speculation
    on and off taking turns (two loaded models), ``reps`` rounds each."""
    rates: dict[str, list[float]] = {"on": [], "off": [], "drafted": [], "steps_on": [],
                                     "steps_off": []}
    with localllm.load(path, context_length=1024, threads=threads, parallel=streams,
                       speculative="ngram") as on, \
            localllm.load(path, context_length=1024, threads=threads, parallel=streams) as off:
        for model in (on, off):
            model.chat(chat("story"), max_tokens=4, temperature=0)
        for _ in range(reps):
            for name, model in (("on", on), ("off", off)):
                model.clear_cache()
                steps = model._generator.scheduler.steps
                rate, drafted = _together(model, tokens // 2, streams)
                rates[name].append(rate)
                rates[f"steps_{name}"].append(model._generator.scheduler.steps - steps)
                if name == "on":
                    rates["drafted"].append(drafted)
    return rates


def _together(model: localllm.Model, tokens: int, streams: int) -> tuple[float, int]:
    """Aggregate tokens/s of the streams, and the tokens they drafted."""
    done: list[localllm.Completion] = []

    def one(i: int) -> None:
        messages = [{"role": "user", "content": f"({i}) " + TASKS["quote"]}]
        done.append(model.chat(messages, max_tokens=tokens, temperature=0))

    started = time.perf_counter()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    elapsed = time.perf_counter() - started
    return (sum(d.usage.completion_tokens for d in done) / elapsed,
            sum(d.timings.drafted_tokens for d in done))


@contextlib.contextmanager
def llama_server(binary: Path, path: Path, threads: int, spec: str,
                 extra: tuple[str, ...] = ()) -> Iterator[str]:
    """llama-server with ``--spec-type spec`` (and ``extra`` arguments, such as a draft
    model) on a free loopback port; yields its base URL once healthy."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [str(binary), "-m", str(path), "-t", str(threads), "-c", "2048", "-np", "1",
            "--port", str(port), "--host", "127.0.0.1", "--spec-type", spec, "--no-webui",
            *extra]
    log_path = Path(tempfile.gettempdir()) / f"llama-server-{spec}-{port}.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not _healthy(base):
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"llama-server did not start; see {log_path}")
                time.sleep(0.5)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def server_rates(bases: dict[str, str], tokens: int, reps: int) -> dict[str, Any]:
    """Per server (name -> base URL) and task: the median decode rate and acceptance,
    the servers taking turns run by run."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {task: [] for task in TASKS} for name in bases}
    for _ in range(reps):
        for task in TASKS:
            for name, base in bases.items():
                body = {"messages": chat(task), "max_tokens": tokens, "temperature": 0,
                        "cache_prompt": False}
                request = urllib.request.Request(
                    f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=300) as r:
                    runs[name][task].append(json.load(r)["timings"])
    out: dict[str, Any] = {}
    for name, tasks in runs.items():
        out[name] = {}
        for task, timings in tasks.items():
            drafted = sum(int(t.get("draft_n", 0)) for t in timings)
            accepted = sum(int(t.get("draft_n_accepted", 0)) for t in timings)
            rates = [float(t["predicted_per_second"]) for t in timings]
            out[name][task] = {"tok_s": statistics.median(rates), "runs": rates,
                               "tokens": int(timings[-1]["predicted_n"]),
                               "acceptance": accepted / drafted if drafted else None}
    return out


def paired(on: dict[str, Any], off: dict[str, Any]) -> float:
    """The median of the run-by-run ratios on / off: the runs took turns, so each pair
    saw the same state of the machine, and its drift cancels out of the ratio."""
    return statistics.median(a / b for a, b in zip(on["runs"], off["runs"], strict=True))


#: the quantizations --quant can write, with llama.cpp's file type (LLAMA_FTYPE_MOSTLY_*)
QUANT_TYPES = {"q4_0": 2, "q8_0": 7}


def requantized(path: Path, quant: str, folder: Path) -> Path:
    """The same weights in another quantization. Q8_0 is written by localllm's converter
    (``localllm convert MODEL OUT.gguf --dtype q8_0``); Q4_0 by llama.cpp's own quantizer
    from the f16 copy. On x86 the batched matmul of Q4_0 and Q8_0 has GEMM kernels that
    Q4_1 (the default file) lacks, so a step that verifies a draft costs far less per
    drafted row."""
    from localllm.models.convert_precision import change_precision

    if quant == "q8_0":
        return change_precision(path, folder / "q8_0.gguf", dtype="q8_0")
    import llama_cpp

    f16 = change_precision(path, folder / "f16.gguf", dtype="f16")
    out = folder / f"{quant}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = QUANT_TYPES[quant], 2
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params) != 0:
        sys.exit(f"llama.cpp could not quantize {f16} to {quant}")
    f16.unlink()
    return out


def main() -> None:
    ap = reference_arguments(__doc__, reps=3, tokens=160, tool="llama-server")
    ap.add_argument("--quant", choices=sorted(QUANT_TYPES),
                    help="run on the default weights requantized to this type")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = ModelStore().ensure(localllm.DEFAULT_MODEL)
        if args.quant:
            path = requantized(path, args.quant, Path(folder))
        run(args, path)


def run(args: argparse.Namespace, path: Path) -> None:
    ours = localllm_rates(path, args.threads, args.tokens, args.reps)
    binary = tools_dir(args.tools) / "llama-server"
    with llama_server(binary, path, args.threads, "none") as plain, \
            llama_server(binary, path, args.threads, "ngram-simple") as ngram:
        theirs = server_rates({"none": plain, "ngram-simple": ngram}, args.tokens, args.reps)
    eight = concurrent_rates(path, args.threads, args.tokens, args.reps)
    on8, off8 = statistics.median(eight["on"]), statistics.median(eight["off"])
    rows = []
    for task in TASKS:
        on, off = ours[f"{task}/ngram"], ours[f"{task}/off"]
        ref_on, ref_off = theirs["ngram-simple"][task], theirs["none"][task]
        rows.append({"task": task, "localllm_off": off["tok_s"], "localllm_on": on["tok_s"],
                     "speedup": paired(on, off), "acceptance": on["acceptance"],
                     "tokens": on["tokens"], "llama_server_off": ref_off["tok_s"],
                     "llama_server_on": ref_on["tok_s"],
                     "llama_server_speedup": paired(ref_on, ref_off),
                     "llama_server_acceptance": ref_on["acceptance"]})
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "reps": args.reps, "max_tokens": args.tokens, "model": path.name,
              "tasks": rows,
              "streams8": {"on_tok_s": on8, "off_tok_s": off8,
                           "ratio": paired({"runs": eight["on"]}, {"runs": eight["off"]}),
                           "runs": eight},
              "raw": {"localllm": ours, "llama_server": theirs}}
    print("| task | localllm off | on | speed-up | acceptance | llama-server off | on | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['localllm_off']:.1f} | {r['localllm_on']:.1f} | "
              f"{r['speedup']:.2f}x | {r['acceptance'] or 0:.2f} | {r['llama_server_off']:.1f} "
              f"| {r['llama_server_on']:.1f} | {r['llama_server_speedup']:.2f}x |")
    print(f"8 streams: on {on8:.1f} tok/s, off {off8:.1f} tok/s "
          f"({result['streams8']['ratio']:.3f}x); drafted per round {eight['drafted']}, "
          f"steps on {eight['steps_on']} off {eight['steps_off']}")
    write_result("speculative" + (f"-{args.quant}" if args.quant else ""), result)


if __name__ == "__main__":
    main()
