"""Load/close cycles of the real default model in a fresh process: after a warm-up, RSS
growth stays under 20 MB and no file descriptor or thread is left behind. The count comes
from ``LOCALLLM_LOAD_CYCLES`` (default 200, about 30 s; ``make soak`` runs 1,000)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

CYCLES = """
import gc, json, os, sys, threading
import localllm

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")

path, cycles = sys.argv[1], int(sys.argv[2])

def cycle():
    with localllm.load(path, context_length=256, threads=2) as model:
        model.complete("Hello", max_tokens=2, temperature=0)

for _ in range(5):  # warm-up: allocator pools, caches and the runtime settle
    cycle()
gc.collect()
before = (rss_mb(), len(os.listdir("/proc/self/fd")), threading.active_count())
for _ in range(cycles):
    cycle()
gc.collect()
after = (rss_mb(), len(os.listdir("/proc/self/fd")), threading.active_count())
print(json.dumps({"before": before, "after": after}))
"""


def test_load_close_cycles_leak_nothing(default_model_path: Path) -> None:
    cycles = int(os.environ.get("LOCALLLM_LOAD_CYCLES", "200"))
    done = subprocess.run([sys.executable, "-c", CYCLES, str(default_model_path), str(cycles)],
                          capture_output=True, text=True, timeout=60 + 3 * cycles)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (rss0, fds0, threads0), (rss1, fds1, threads1) = report["before"], report["after"]
    print(f"\n{cycles} load/close cycles: RSS {rss0:.1f} -> {rss1:.1f} MB, "
          f"fds {fds0} -> {fds1}, threads {threads0} -> {threads1}")
    assert rss1 - rss0 < 20, report
    assert fds1 == fds0 and threads1 == threads0, report
