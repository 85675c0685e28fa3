"""Build llama.cpp's reference tools, ``llama-batched-bench`` and ``llama-server``
(and provide nginx, for the replicas test, and llama.cpp's real chat templates, for the
template conformance test).

They are the yardstick for localllm's batching and serving, so they are built from the
llama.cpp sources vendored in the pinned llama-cpp-python sdist, with the CPU flags of the
wheel that ``install_llama_cpp.py`` builds (same kernels, never the AMX ones) plus what the
tools need: tools and server switched on, no curl, no OpenSSL, no web-UI download, static
libraries so the two binaries stand alone. They are cached under
``~/.cache/localllm/tools/<key>/`` (key: version and flags), so the next run takes seconds.
Prints the directory holding the binaries.

Usage: python scripts/build_reference_tools.py [--version X.Y.Z] [--print-flags]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from install_llama_cpp import (
    MULTIMODAL,
    VERSION,
    build_key,
    cache_dir,
    cmake_args,
    run_with_progress,
)

TARGETS = ["llama-batched-bench", "llama-server"]
# The wheel turns tools, server and examples off; these override that.
TOOL_ARGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
             "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON",
             "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_UI=OFF",
             "-DLLAMA_USE_PREBUILT_UI=OFF"]


def tool_args() -> list[str]:
    overridden = {a.split("=", 1)[0] for a in TOOL_ARGS}
    wheel = [a for a in cmake_args() if a.split("=", 1)[0] not in overridden
             and a not in MULTIMODAL]  # llama-cpp-python's options only
    return wheel + TOOL_ARGS


def fetch_source(version: str, work: Path, only: str = "") -> Path:
    """The sdist's vendored llama.cpp tree, downloaded and unpacked once under ``work``
    (only its ``only`` folder when one is named)."""
    tree = work / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (tree / (only or "CMakeLists.txt")).exists():
        return tree
    sdists = sorted(work.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not sdists:
        print(f"downloading the llama-cpp-python {version} sdist", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"llama-cpp-python=={version}", "-d", str(work)],
                       check=True, stdin=subprocess.DEVNULL)
        sdists = sorted(work.glob(f"llama_cpp_python-{version}.tar.gz"))
        if not sdists:
            sys.exit(f"pip download left no llama_cpp_python-{version}.tar.gz in {work}")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = prefix + (only.rstrip("/") + "/" if only else "")
    with tarfile.open(sdists[-1]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
        tar.extractall(work, members=members, filter="data")
    if not (tree / (only or "CMakeLists.txt")).exists():
        sys.exit(f"the sdist has no {wanted}")
    return tree


def build(version: str, args: list[str], out: Path) -> None:
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    src = fetch_source(version, work)
    build_dir = work / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")
    print(f"building {' '.join(TARGETS)} from llama-cpp-python {version}'s llama.cpp "
          f"(several minutes on 2 cores)\n  cmake flags: {' '.join(args)}\n"
          f"  full log: {out / 'build.log'}", flush=True)
    took = run_with_progress(["cmake", "-S", str(src), "-B", str(build_dir), *generator, *args],
                             out / "configure.log", "cmake configure")
    took += run_with_progress(["cmake", "--build", str(build_dir), "--target", *TARGETS,
                               "-j", jobs], out / "build.log", "reference tools build")
    for name in TARGETS:
        found = [p for p in build_dir.rglob(name) if p.is_file() and os.access(p, os.X_OK)]
        if not found:
            sys.exit(f"the build produced no {name} under {build_dir}")
        shutil.copy2(found[0], out / name)
    keep_templates(src, out)
    shutil.rmtree(work)  # sources and objects: ~1 GB, not needed once the binaries exist
    print(f"built {', '.join(TARGETS)} in {took:.0f} s", flush=True)


TEMPLATES = "models/templates"


def keep_templates(tree: Path, out: Path) -> None:
    """Keep the real chat templates llama.cpp ships (``models/templates/*.jinja``): the
    test data of the template conformance test, kept beside the binaries."""
    found = sorted((tree / TEMPLATES).glob("*.jinja"))
    if not found:
        sys.exit(f"the sdist's llama.cpp has no {TEMPLATES}/*.jinja")
    staging = out / "templates.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in found:
        shutil.copy2(path, staging / path.name)
    shutil.rmtree(out / "templates", ignore_errors=True)
    staging.rename(out / "templates")
    print(f"kept {len(found)} chat templates in {out / 'templates'}", flush=True)


def ensure_templates(version: str, out: Path) -> None:
    """The templates for a tools cache built before they were kept: unpacked from the
    sdist alone (a download, no build)."""
    if any((out / "templates").glob("*.jinja")):
        return
    work = out / "templates-work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        keep_templates(fetch_source(version, work, only=TEMPLATES), out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_nginx(out: Path) -> None:
    """nginx for the replicas test (load balancing two llama-servers): the system's when
    installed, else Debian's package unpacked into ``out`` (``apt-get download`` and
    ``dpkg -x``: nothing is installed into the system, no root needed)."""
    target = out / "nginx"
    if target.exists():
        return
    system = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx",
                                                                      os.X_OK) else None)
    if system:
        target.symlink_to(system)
        return
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        sys.exit("nginx is not installed and this is not a Debian system: install nginx")
    work = out / "nginx-deb"
    work.mkdir(exist_ok=True)
    print("fetching Debian's nginx package (apt-get download)", flush=True)
    subprocess.run(["apt-get", "download", "nginx"], cwd=work, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    debs = sorted(work.glob("nginx_*.deb"))
    if not debs:
        sys.exit(f"apt-get download nginx left no package in {work}")
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(work / "root")], check=True)
    binary = work / "root" / "usr" / "sbin" / "nginx"
    if not binary.is_file():
        sys.exit(f"{debs[-1].name} holds no usr/sbin/nginx")
    target.symlink_to(binary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION)
    parser.add_argument("--print-flags", action="store_true", help="print cmake flags and exit")
    opts = parser.parse_args()
    args = tool_args()
    if opts.print_flags:
        print(" ".join(args))
        return
    out = cache_dir("tools") / build_key(opts.version, args, python=False)
    if all((out / name).is_file() for name in TARGETS):
        print(f"using cached build in {out}")
    else:
        build(opts.version, args, out)
    ensure_templates(opts.version, out)
    ensure_nginx(out)
    print(out)


if __name__ == "__main__":
    main()
