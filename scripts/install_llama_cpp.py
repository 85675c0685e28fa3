"""Build and install llama-cpp-python with CPU flags that work on this machine.

llama.cpp's default native build enables every ISA extension the compiler sees. On Intel
CPUs with AMX that build segfaults in ``ggml_backend_amx_mul_mat`` on the first decode
(llama.cpp #20824), so this script builds portably (``GGML_NATIVE=OFF``) and switches on
exactly the extensions listed in /proc/cpuinfo, never the AMX kernels. The wheel is kept
in a cache keyed by version and flags, so the next set-up installs it in seconds.

Usage: python scripts/install_llama_cpp.py [--version X.Y.Z] [--print-flags]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

VERSION = "0.3.36"
# /proc/cpuinfo flag -> ggml CMake option
X86_OPTIONS = {
    "avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2", "avx_vnni": "GGML_AVX_VNNI", "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI", "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
# LLAVA_BUILD builds libmtmd (images) into the wheel; its video helpers are not needed
MULTIMODAL = ["-DLLAVA_BUILD=ON", "-DMTMD_VIDEO=OFF"]
ALWAYS = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
          "-DGGML_AMX_BF16=OFF", *MULTIMODAL, "-DLLAMA_BUILD_TESTS=OFF",
          "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF"]


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cmake_args() -> list[str]:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i686"):
        # No AMX elsewhere; the native build is the right one (NEON, Metal, ...).
        return list(MULTIMODAL)
    flags = cpu_flags()
    args = list(ALWAYS)
    for flag, option in X86_OPTIONS.items():
        args.append(f"-D{option}={'ON' if flag in flags else 'OFF'}")
    return args


CACHE_ENV = {"wheels": "LOCALLLM_WHEEL_CACHE", "tools": "LOCALLLM_TOOLS_CACHE"}


def cache_dir(kind: str = "wheels") -> Path:
    """Where builds of ``kind`` are cached: ``~/.cache/localllm/<kind>`` unless overridden."""
    base = os.environ.get(CACHE_ENV.get(kind, "")) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "localllm", kind)
    return Path(base)


def build_key(version: str, args: list[str], python: bool = True) -> str:
    """Cache key for a build: version, CMake flags, platform (and the Python ABI when the
    product is a wheel)."""
    parts = [version, " ".join(args)]
    if python:
        parts.append(sys.implementation.cache_tag)
    parts += [platform.machine(), str(platform.libc_ver())]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]


def run_with_progress(cmd: list[str], log_path: Path, what: str,
                      env: dict[str, str] | None = None) -> float:
    """Run a compiling command with its output in ``log_path``, printing ``[done/total]``
    progress (every ~15 s when not on a terminal); exit with the log's tail on failure.
    Returns the seconds it took."""
    started = time.monotonic()
    step = re.compile(r"\[(\d+)/(\d+)\]")
    tty = sys.stdout.isatty()
    last = 0.0
    with open(log_path, "w") as log, subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            found = step.search(line)
            now = time.monotonic()
            if found and (tty or now - last > 15 or found.group(1) == found.group(2)):
                last = now
                done, total = int(found.group(1)), int(found.group(2))
                msg = f"  compiling {done}/{total} ({now - started:.0f} s)"
                print(msg, end="\r" if tty and done < total else "\n", flush=True)
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        sys.exit(f"{what} failed (exit {proc.returncode}); last lines:\n"
                 f"{tail}\nfull log: {log_path}")
    return time.monotonic() - started


def build(version: str, args: list[str], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=" ".join(args), CMAKE_BUILD_PARALLEL_LEVEL=str(
        os.cpu_count() or 2))
    log_path = out / "build.log"
    print(f"building llama-cpp-python {version} from source (several minutes on 2 cores)\n"
          f"  CMAKE_ARGS={env['CMAKE_ARGS']}\n  full log: {log_path}", flush=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-v",
           "--no-binary", "llama-cpp-python", "-w", str(out), f"llama-cpp-python=={version}"]
    took = run_with_progress(cmd, log_path, "llama-cpp-python build", env=env)
    wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    if not wheels:
        sys.exit(f"the build produced no wheel in {out}")
    print(f"built {wheels[-1].name} in {took:.0f} s", flush=True)
    return wheels[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION)
    parser.add_argument("--print-flags", action="store_true", help="print CMAKE_ARGS and exit")
    opts = parser.parse_args()
    args = cmake_args()
    if opts.print_flags:
        print(" ".join(args))
        return
    key = build_key(opts.version, args)
    marker = Path(sys.prefix) / ".llama-cpp-build"
    if marker.exists() and marker.read_text().strip() == key:
        print(f"llama-cpp-python {opts.version} already installed with this machine's flags")
        return
    out = cache_dir() / key
    wheels = sorted(out.glob("llama_cpp_python-*.whl"))
    wheel = wheels[-1] if wheels else build(opts.version, args, out)
    if wheels:
        print(f"using cached build {wheel}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall",
                    "--quiet", str(wheel)], check=True)
    # llama-cpp-python's own run-time dependencies (the wheel was installed without them)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "numpy>=1.20",
                    "typing-extensions>=4.5", "diskcache>=5.6.1", "jinja2>=2.11.3"], check=True)
    marker.write_text(key + "\n")
    print(f"installed {wheel.name}")


if __name__ == "__main__":
    main()
