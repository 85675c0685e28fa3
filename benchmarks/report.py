"""``make bench``: run every benchmark, then write one report for this machine.

Runs the focused benchmarks (each writes its own ``results/<date>-<name>.json``) and
``bench_backends`` (every backend vs its raw runtime, each side in its own process),
measures the machine's memory read bandwidth, and writes

* ``results/<date>-<machine>.json`` — everything, including the focused results;
* ``results/<date>-<machine>.md`` — the tables;
* ``results/<date>-<machine>.png`` — decode speed against the bandwidth ceiling, and ratios;

and puts the main table into README.md between the ``bench`` markers.

Decode ceiling: a decode step reads every weight once, so tokens/s cannot exceed memory
bandwidth ÷ weight bytes per token. Bandwidth here is numpy's multi-threaded read rate
over 512 MiB (best of 5), a little under what optimized kernels reach.

Usage: python benchmarks/report.py [--skip-focused]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from results_file import RESULTS, result_path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
FOCUSED = [("llamacpp", ["bench_llamacpp.py", "--reps", "7"]),
           ("import", ["bench_import.py"]),
           ("tokenizer-sampling", ["bench_tokenizer_sampling.py"]),
           ("memory", ["bench_memory.py"]),
           ("legacy-backends", ["bench_legacy_backends.py"]),
           ("onnx", ["bench_onnx.py"]),
           ("batching", ["bench_batching.py"]),
           ("server", ["bench_server.py"]),
           ("agent-apis", ["bench_agent_apis.py"])]
MEASURES = [("load_s", "load s", "{:.2f}"), ("ttft_s", "first token s", "{:.2f}"),
            ("prompt_tokens_per_s", "prompt tok/s", "{:.1f}"),
            ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
            ("peak_rss_mib", "peak RSS MiB", "{:.0f}")]


def read_bandwidth(threads: int, mib: int = 512, tries: int = 5) -> float:
    """Bytes/s numpy reads with ``threads`` threads (localllm's own measurement, bigger)."""
    from localllm.planning.speed import read_bandwidth as measure

    return measure(threads, mib, tries)


def machine_facts() -> dict[str, Any]:
    from localllm.hardware import probe

    profile = probe()
    cores = int(profile.cpu.usable_cores)
    slug = re.sub(r"[^a-z0-9]+", "-", profile.cpu.model.lower()).strip("-")
    return {"name": f"{slug}-{cores}c", "cpu": profile.cpu.model, "usable_cores": cores,
            "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile", "neon")
                    if profile.cpu.has(f)],
            "ram_gib": round(profile.memory.total / 2**30, 1), "python": platform.python_version(),
            "runtimes": {r.name: r.version for r in profile.runtimes},
            "read_bandwidth_gb_s": max(read_bandwidth(1), read_bandwidth(cores)) / 1e9}


def run_focused() -> dict[str, Any]:
    today = date.today().isoformat()
    out = {}
    for name, argv in FOCUSED:
        print(f"== {argv[0]}", flush=True)
        subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], check=True)
        out[name] = json.loads(result_path(name, today).read_text())
    return out


def cell(value: float, ratio: float, fmt: str) -> str:
    return f"{fmt.format(value)} ({ratio:.2f}×)"


def backend_table(report: dict[str, Any]) -> str:
    bandwidth = report["machine"]["read_bandwidth_gb_s"] * 1e9
    head = ["backend", "model", *(label for _, label, _ in MEASURES), "decode ceiling tok/s",
            "of ceiling"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["backends"]["rows"]:
        ceiling = bandwidth / row["bytes_per_token"]
        decode = row["localllm"]["decode_tokens_per_s"]
        cells = [row["backend"], row["model"],
                 *(cell(row["localllm"][k], row["ratio"][k], f) for k, _, f in MEASURES),
                 f"{ceiling:.0f}", f"{decode / ceiling:.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def focused_table(focused: dict[str, Any]) -> str:
    rows = []
    if "llamacpp" in focused:
        f = focused["llamacpp"]
        rows.append(f"| llama.cpp vs llama-cpp-python, {f['reps']} alternating reps, "
                    f"{f['prompt_tokens']}-token prompt | decode {f['ratio']['decode']:.2f}×, "
                    f"prompt {f['ratio']['prompt']:.2f}× |")
    if "tokenizer-sampling" in focused:
        f = focused["tokenizer-sampling"]
        rows.append(f"| tokenizer encode vs llama.cpp ({f['corpus_strings']} strings) | "
                    f"{f['encode_mb_per_s']['localllm']:.2f} MB/s ({f['encode_ratio']:.2f}×) |")
        ms = f["sampler_median_ms"]
        rows.append(f"| sampling chain, 49,152 / 152,064 logits | {ms['49152']:.2f} / "
                    f"{ms['152064']:.2f} ms ({f['sampler_share_of_step_49152']:.1%} of a "
                    "decode step) |")
    if "memory" in focused:
        f = focused["memory"]
        rows.append(f"| peak RSS prediction vs VmHWM ({len(f['rows'])} cases) | max "
                    f"{f['max_abs_error']:.1%}, median {f['median_abs_error']:.1%} |")
    if "legacy-backends" in focused:
        for name, f in focused["legacy-backends"].items():
            rows.append(f"| {name} vs llama.cpp backend, {f['model']} | decode "
                        f"{f['ratio']:.2f}× |")
    if "onnx" in focused:
        f = focused["onnx"]
        for key in ("conformance vs llama.cpp F32 (same weights)", "conformance vs llama.cpp Q4_1"):
            c = f[key]
            rows.append(f"| ONNX fp32 greedy {key.removeprefix('conformance ')} | "
                        f"{c['identical_32']}/8 identical over 32 tokens |")
        for dtype in ("fp32", "fp16", "int8", "int4"):
            d = f[dtype]
            rows.append(f"| ONNX {dtype} decode vs llama.cpp Q4_1 | "
                        f"{d['decode_tokens_per_s']:.1f} tok/s "
                        f"({d['decode_vs_llama.cpp_q4_1']:.2f}×), {d['folder_mib']:.0f} MiB |")
    if "batching" in focused:
        f = focused["batching"]
        ratios = " / ".join(f"{f['throughput_tokens_per_s'][n]['ratio']:.2f}"
                            for n in ("1", "2", "4", "8", "16"))
        rows.append(f"| batched decode vs llama-batched-bench at 1/2/4/8/16 streams | {ratios}× "
                    f"(8 streams = {f['localllm_8_vs_1']:.2f}× one) |")
        lat = f["latency"]
        rows.append(f"| TTFT of prompts arriving while 8 streams decode | p50 "
                    f"{lat['ttft_p50_s']:.2f} s, p95 {lat['ttft_p95_s']:.2f} s |")
        rows.append(f"| one stream through the scheduler vs llama-cpp-python | decode "
                    f"{f['single_stream_ratio']:.2f}× |")
    if "server" in focused:
        f = focused["server"]
        loads = [str(n) for n in f["loads"]]
        ratios = f["ratio_localllm_vs_llama_server"]
        if ratios:
            agg = " / ".join(f"{ratios[n]['aggregate']:.2f}" for n in loads)
            p95 = " / ".join(f"{ratios[n]['ttft_p95']:.2f}" for n in loads)
            rows.append(f"| HTTP server vs llama-server, {'/'.join(loads)} streaming clients | "
                        f"aggregate tok/s {agg}×, TTFT p95 {p95}× |")
        for name, entry in f["servers"].items():
            if "loads" in entry:
                rates = " / ".join(f"{entry['loads'][n]['agg_tokens_per_s']:.0f}"
                                   for n in loads)
                rows.append(f"| {name} over HTTP, aggregate tok/s at {'/'.join(loads)} clients | "
                            f"{rates} |")
    return "| measure | result |\n|---|---|\n" + "\n".join(rows)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    return "\n".join([
        f"Measured {report['date']} on {m['cpu']} ({m['usable_cores']} cores usable, "
        f"{', '.join(m['isa']) or 'no AVX2'}, {m['ram_gib']} GiB), memory read bandwidth "
        f"{m['read_bandwidth_gb_s']:.1f} GB/s. Each cell: localllm's value (localllm ÷ raw "
        "runtime, measured in the same run; above 1 is better for tok/s, below 1 for "
        "seconds and MiB). Ceiling: bandwidth ÷ weight bytes read per token.", "",
        backend_table(report), "", focused_table(report.get("focused", {}))])


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report["backends"]["rows"]
    names = [r["backend"] for r in rows]
    x = np.arange(len(rows))
    bandwidth = report["machine"]["read_bandwidth_gb_s"] * 1e9
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    left.bar(x - 0.2, [r["localllm"]["decode_tokens_per_s"] for r in rows], 0.4,
             label="localllm")
    left.bar(x + 0.2, [r["raw"]["decode_tokens_per_s"] for r in rows], 0.4,
             label="raw runtime")
    left.scatter(x, [min(bandwidth / r["bytes_per_token"], 400) for r in rows], marker="_",
                 s=900, color="black", label="bandwidth ceiling (capped at 400)")
    left.set_xticks(x, names, rotation=25, ha="right")
    left.set_ylabel("decode tokens/s")
    left.set_title("Decode speed")
    left.legend()
    width = 0.8 / len(MEASURES)
    for i, (key, label, _) in enumerate(MEASURES):
        right.bar(x + (i - len(MEASURES) / 2 + 0.5) * width,
                  [r["ratio"][key] for r in rows], width, label=label)
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_xticks(x, names, rotation=25, ha="right")
    right.set_ylabel("localllm ÷ raw runtime")
    right.set_title("Ratios against each raw runtime (same run)")
    right.legend(fontsize=8)
    fig.suptitle(f"localllm benchmarks, {report['date']}, {report['machine']['cpu']}, "
                 f"{report['machine']['usable_cores']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_readme(table: str, stem: str) -> None:
    text = README.read_text()
    block = (f"<!-- bench:start -->\n{table}\n\nFull report: "
             f"[benchmarks/results/{stem}.md](benchmarks/results/{stem}.md), chart: "
             f"[{stem}.png](benchmarks/results/{stem}.png).\n<!-- bench:end -->")
    new, n = re.subn(r"<!-- bench:start -->.*?<!-- bench:end -->", lambda _: block, text,
                     flags=re.S)
    if n != 1:
        raise SystemExit("README.md lacks the <!-- bench:start --> / <!-- bench:end --> block")
    README.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-focused", action="store_true",
                        help="only the backend table (reuses nothing, runs fewer scripts)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_backends

    report: dict[str, Any] = {"date": date.today().isoformat()}
    if not args.skip_focused:
        report["focused"] = run_focused()
    print("== bench_backends.py", flush=True)
    report["backends"] = bench_backends.main()
    report["machine"] = machine_facts()
    for row in report["backends"]["rows"]:
        row["decode_ceiling_tokens_per_s"] = (report["machine"]["read_bandwidth_gb_s"] * 1e9
                                              / row["bytes_per_token"])
    stem = f"{report['date']}-{report['machine']['name']}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / f"{stem}.md").write_text(f"# Benchmarks {report['date']}\n\n{text}\n")
    chart(report, RESULTS / f"{stem}.png")
    update_readme(text, stem)
    print(text)
    print(f"\nwritten: results/{stem}.json, .md, .png; README.md table updated")


if __name__ == "__main__":
    main()
