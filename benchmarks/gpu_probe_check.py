"""Checks the probe and the planner on a real NVIDIA machine (run where a GPU is lent).

Compares what ``localllm.hardware.probe()`` reads through NVML with ``nvidia-smi``, runs
the doctor, and plans 7B and Mixtral-class headers for a GPU-capable and for a CPU-only
runtime build. Prints one JSON report (and writes it to $OUT when set).

Usage: python benchmarks/gpu_probe_check.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from localllm._doctor import run_checks  # noqa: E402
from localllm.hardware import probe  # noqa: E402
from localllm.planning.planner import MIB, make_plan  # noqa: E402
from localllm.planning.recommend import RECOMMENDED, recommend  # noqa: E402


def main() -> None:
    from test_hardware import fake_gguf  # the 7B-class header builder of the test suite

    started = time.monotonic()
    profile = probe()
    probe_s = time.monotonic() - started
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free,"
                              "driver_version", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        smi = f"nvidia-smi unavailable: {exc}"
    report: dict[str, object] = {"probe_s": probe_s, "nvidia_smi": smi,
                                 "gpus": [g.model_dump() for g in profile.gpus],
                                 "cpu": profile.cpu.model_dump(),
                                 "memory": profile.memory.model_dump()}
    report["checks"] = [c.model_dump() for c in run_checks(profile)]
    plans = {}
    for name in ("openchat-3.5-0106", "mixtral-8x7b-instruct", "qwen1.5-32b-chat"):
        facts = next(f for f in RECOMMENDED if f.name == name)
        for offload in (True, False):
            p = make_plan(fake_gguf(facts), profile, backend="llama.cpp",
                          gpu_offload_supported=offload, context_length=8192)
            plans[f"{name} offload={offload}"] = {
                "device": p.device, "gpu_layers": p.gpu_layers,
                "vram_mib": round(p.memory.gpu.total / MIB) if p.memory.gpu else 0,
                "ram_mib": round(p.memory.host.total / MIB), "reasons": list(p.reasons)}
    report["plans"] = plans
    report["recommend"] = [(r.name, r.quantization, r.placement)
                           for r in recommend(profile, gpu_offload=True)]
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)


if __name__ == "__main__":
    main()
