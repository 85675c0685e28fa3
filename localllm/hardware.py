"""What this machine has: CPU, memory (cgroup limits respected), GPUs and runtimes.

:func:`probe` never hangs and never fails because a vendor tool is missing: files are
read from ``root`` (so tests can feed recorded /proc and /sys trees), NVIDIA GPUs come
from NVML when ``nvidia-ml-py`` is installed, AMD from sysfs, Apple unified memory from
``sysctl`` with a timeout, and runtimes are inspected in a subprocess with a timeout (a
runtime built for the wrong CPU dies there, not in your process).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["CPUInfo", "GPUInfo", "HardwareProfile", "MemoryInfo", "RuntimeInfo", "probe"]

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
             "neon", "asimd", "sve")
SUBPROCESS_TIMEOUT = 20.0


class _Info(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class CPUInfo(_Info):
    model: str
    architecture: str
    physical_cores: int
    logical_cores: int
    usable_cores: float  # after affinity masks and cgroup CPU quotas
    flags: tuple[str, ...]

    def has(self, flag: str) -> bool:
        return flag in self.flags


class MemoryInfo(_Info):
    total: int
    available: int
    cgroup_limit: int | None = None


class GPUInfo(_Info):
    vendor: str  # nvidia, amd, apple
    name: str
    memory_total: int
    memory_free: int
    unified: bool = False  # shares system RAM (Apple silicon)
    driver: str = ""


class RuntimeInfo(_Info):
    name: str
    version: str
    importable: bool
    gpu_offload: bool = False
    details: dict[str, Any] = {}
    error: str = ""


class HardwareProfile(_Info):
    system: str
    cpu: CPUInfo
    memory: MemoryInfo
    gpus: tuple[GPUInfo, ...]
    runtimes: tuple[RuntimeInfo, ...]

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def runtime(self, name: str) -> RuntimeInfo | None:
        return next((r for r in self.runtimes if r.name == name), None)


def _read(root: Path, path: str) -> str | None:
    try:
        return (root / path.lstrip("/")).read_text(errors="replace")
    except OSError:
        return None


def probe_cpu(root: Path = Path("/"), machine: str | None = None, system: str = "Linux",
              sysctl: Any = None) -> CPUInfo:
    machine = machine or platform.machine()
    if system == "Darwin" and sysctl is not None:
        return _probe_cpu_darwin(machine, sysctl)
    text = _read(root, "/proc/cpuinfo") or ""
    model, flags = "unknown", set()
    cores: set[tuple[str, str]] = set()
    logical = 0
    phys = core = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key in ("model name", "Hardware", "cpu model") and model == "unknown":
            model = value
        elif key in ("flags", "Features"):
            flags |= set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    logical = logical or os.cpu_count() or 1
    physical = len(cores) or logical
    usable = float(logical)
    if root == Path("/") and hasattr(os, "sched_getaffinity"):
        usable = float(len(os.sched_getaffinity(0)))
    quota = _read(root, "/sys/fs/cgroup/cpu.max")
    if quota and not quota.startswith("max"):
        limit, period = quota.split()[:2]
        usable = min(usable, int(limit) / int(period))
    return CPUInfo(model=model, architecture=machine, physical_cores=physical,
                   logical_cores=logical, usable_cores=usable,
                   flags=tuple(f for f in ISA_FLAGS if f in flags))


def _probe_cpu_darwin(machine: str, sysctl: Any) -> CPUInfo:
    def number(name: str) -> int:
        value = sysctl(name)
        return int(value) if value and value.isdigit() else 0

    logical = number("hw.logicalcpu") or os.cpu_count() or 1
    flags: tuple[str, ...] = ("neon",) if machine == "arm64" else ()
    if machine != "arm64":
        features = (sysctl("machdep.cpu.features") or "").lower().split()
        features += (sysctl("machdep.cpu.leaf7_features") or "").lower().split()
        names = {"sse4.2": "sse4_2", "avx1.0": "avx", "avx2": "avx2", "fma": "fma",
                 "f16c": "f16c", "avx512f": "avx512f"}
        flags = tuple(v for k, v in names.items() if k in features)
    return CPUInfo(model=sysctl("machdep.cpu.brand_string") or "unknown",
                   architecture=machine, physical_cores=number("hw.physicalcpu") or logical,
                   logical_cores=logical, usable_cores=float(logical), flags=flags)


def probe_memory(root: Path = Path("/")) -> MemoryInfo:
    info: dict[str, int] = {}
    for line in (_read(root, "/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            info[key.strip()] = int(parts[0]) * 1024
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable", info.get("MemFree", 0))
    limit = None
    raw = _read(root, "/sys/fs/cgroup/memory.max") or \
        _read(root, "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if raw and raw.strip().isdigit() and int(raw) < (1 << 60):
        limit = int(raw)
        used = _read(root, "/sys/fs/cgroup/memory.current") or \
            _read(root, "/sys/fs/cgroup/memory/memory.usage_in_bytes")
        in_use = int(used) if used and used.strip().isdigit() else 0
        total = min(total, limit) if total else limit
        available = min(available, max(0, limit - in_use))
    return MemoryInfo(total=total, available=available, cgroup_limit=limit)


def probe_nvidia(nvml: Any = None) -> list[GPUInfo]:
    """NVIDIA GPUs through NVML; ``nvml`` may be injected (tests replay recorded values)."""
    if nvml is None:
        try:
            nvml = importlib.import_module("pynvml")  # from nvidia-ml-py
        except ImportError:
            return []
    try:
        nvml.nvmlInit()
    except Exception:  # no driver, no GPU: not an error for a probe
        return []
    gpus = []
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GPUInfo(vendor="nvidia", name=_text(name), memory_total=int(mem.total),
                                memory_free=int(mem.free), driver=_text(driver)))
    finally:
        with contextlib.suppress(Exception):  # a half-initialised NVML shuts down fine
            nvml.nvmlShutdown()
    return gpus


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_amd(root: Path = Path("/")) -> list[GPUInfo]:
    gpus = []
    drm = root / "sys/class/drm"
    if not drm.is_dir():
        return []
    for card in sorted(drm.glob("card[0-9]*")):
        dev = card / "device"
        vendor = _read(dev, "vendor")
        total = _read(dev, "mem_info_vram_total")
        if not vendor or vendor.strip() != "0x1002" or not total:
            continue
        used = _read(dev, "mem_info_vram_used") or "0"
        name = (_read(dev, "product_name") or f"AMD GPU ({card.name})").strip()
        gpus.append(GPUInfo(vendor="amd", name=name, memory_total=int(total),
                            memory_free=int(total) - int(used)))
    return gpus


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def probe_apple(system: str, machine: str, sysctl: Any = _sysctl) -> list[GPUInfo]:
    if system != "Darwin" or machine != "arm64":
        return []
    memsize = sysctl("hw.memsize")
    if not memsize or not memsize.isdigit():
        return []
    total = int(memsize)
    brand = sysctl("machdep.cpu.brand_string") or "Apple silicon"
    # Metal lets the GPU use about three quarters of unified memory by default
    return [GPUInfo(vendor="apple", name=f"{brand} GPU", memory_total=total * 3 // 4,
                    memory_free=total * 3 // 4, unified=True)]


#: onnxruntime's GPU execution providers, most preferred first (a build ships one family).
#: Others (CPU, Azure's remote endpoint provider, OpenVINO, XNNPACK) are not GPU offload.
GPU_PROVIDERS = ("CUDAExecutionProvider", "ROCMExecutionProvider",
                 "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")

_RUNTIME_SCRIPT = r"""
import json, sys
GPU_PROVIDERS = json.loads(sys.argv[1])
out = {}
try:
    import llama_cpp
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    out["llama.cpp"] = {"version": llama_cpp.__version__, "importable": True,
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "details": {"system_info": info.strip()}}
except Exception as exc:
    out["llama.cpp"] = {"importable": False, "error": repr(exc)}
try:
    import onnxruntime
    out["onnxruntime"] = {"version": onnxruntime.__version__, "importable": True,
        "gpu_offload": any(p in GPU_PROVIDERS for p in onnxruntime.get_available_providers()),
        "details": {"providers": onnxruntime.get_available_providers()}}
except Exception as exc:
    out["onnxruntime"] = {"importable": False, "error": repr(exc)}
print(json.dumps(out))
"""

_DISTRIBUTIONS = {"llama.cpp": "llama-cpp-python", "onnxruntime": "onnxruntime",
                  "onnxruntime-genai": "onnxruntime-genai", "gpt4all": "gpt4all",
                  "ctransformers": "ctransformers"}


def probe_runtimes(timeout: float = SUBPROCESS_TIMEOUT) -> list[RuntimeInfo]:
    """Installed runtimes: versions from package metadata, build facts from a subprocess."""
    installed = {}
    for name, dist in _DISTRIBUTIONS.items():
        try:
            installed[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    facts: dict[str, Any] = {}
    if "llama.cpp" in installed or "onnxruntime" in installed:
        try:
            proc = subprocess.run([sys.executable, "-c", _RUNTIME_SCRIPT,
                                   json.dumps(GPU_PROVIDERS)], capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            facts = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout else {}
            if proc.returncode != 0:
                facts = {n: {"importable": False, "error": f"probe exited {proc.returncode} "
                             f"(a crash, e.g. an illegal instruction)"} for n in installed}
        except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            facts = {n: {"importable": False, "error": f"probe failed: {exc}"} for n in installed}
    out = []
    for name, version in installed.items():
        fact = facts.get(name, {"importable": True})
        out.append(RuntimeInfo(name=name, version=version,
                               importable=bool(fact.get("importable", False)),
                               gpu_offload=bool(fact.get("gpu_offload", False)),
                               details=fact.get("details", {}), error=fact.get("error", "")))
    return out


def probe(root: str | Path = "/", *, nvml: Any = None, system: str | None = None,
          machine: str | None = None, sysctl: Any = _sysctl,
          runtimes: bool = True) -> HardwareProfile:
    """The machine's profile. Arguments exist to replay recorded machines in tests."""
    root = Path(root)
    system = system or platform.system()
    machine = machine or platform.machine()
    gpus = probe_nvidia(nvml) + probe_amd(root) + probe_apple(system, machine, sysctl)
    memory = probe_memory(root)
    if system == "Darwin" and not memory.total:
        total = sysctl("hw.memsize")
        if total and total.isdigit():
            memory = MemoryInfo(total=int(total), available=int(total) // 2)
    return HardwareProfile(
        system=system, cpu=probe_cpu(root, machine, system, sysctl), memory=memory,
        gpus=tuple(gpus),
        runtimes=tuple(probe_runtimes() if runtimes else ()))


def llama_cpp_build_flags(profile: HardwareProfile) -> set[str]:
    """Features the installed llama.cpp build reports as on (``AVX2 = 1`` → ``AVX2``)."""
    rt = profile.runtime("llama.cpp")
    info = str(rt.details.get("system_info", "")) if rt else ""
    return {m.group(1) for m in re.finditer(r"(\w+) = 1", info)}
