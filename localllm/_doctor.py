"""Health checks on the probed machine, each with a remedy (``localllm doctor``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from .hardware import HardwareProfile, llama_cpp_build_flags

Status = Literal["ok", "warn", "fail"]
# llama.cpp system_info names → /proc/cpuinfo flags the CPU must have
_BUILD_NEEDS = {"AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c",
                "AVX512": "avx512f", "AVX512_VNNI": "avx512_vnni",
                "AVX512_BF16": "avx512_bf16", "AVX_VNNI": "avx_vnni", "AMX_INT8": "amx_int8"}
REBUILD = "rebuild it for this CPU: .venv/bin/python scripts/install_llama_cpp.py"


class Check(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    name: str
    status: Status
    message: str
    remedy: str = ""


def run_checks(profile: HardwareProfile) -> list[Check]:
    checks: list[Check] = []
    cpu = profile.cpu
    llama = profile.runtime("llama.cpp")
    flags = llama_cpp_build_flags(profile)
    x86 = cpu.architecture.lower() in ("x86_64", "amd64", "i686")

    if llama is None:
        checks.append(Check(name="llama.cpp runtime", status="warn",
                            message="llama-cpp-python is not installed",
                            remedy='pip install "localllm[llama-cpp]" (or make demo)'))
    elif not llama.importable:
        checks.append(Check(name="llama.cpp runtime", status="fail",
                            message=f"llama-cpp-python {llama.version} fails to import: "
                                    f"{llama.error}", remedy=REBUILD))
    else:
        checks.append(Check(name="llama.cpp runtime", status="ok",
                            message=f"llama-cpp-python {llama.version}; build: "
                                    f"{', '.join(sorted(flags)) or 'no CPU features reported'}"))
        checks.append(_images_check())
        if ("AMX_INT8" in flags or "AMX" in flags) and cpu.has("amx_int8"):
            checks.append(Check(
                name="AMX kernels", status="fail",
                message="this llama.cpp build uses AMX kernels on an AMX CPU; it segfaults "
                        "in ggml_backend_amx_mul_mat on the first decode (llama.cpp #20824)",
                remedy=REBUILD + " (portable flags, AMX off)"))
        missing = [f for f, need in _BUILD_NEEDS.items() if f in flags and not cpu.has(need)]
        if x86 and missing:
            checks.append(Check(
                name="CPU features", status="fail",
                message=f"the llama.cpp build uses {', '.join(missing)}, which this CPU lacks: "
                        "expect 'illegal instruction' crashes", remedy=REBUILD))
        if profile.has_gpu and not llama.gpu_offload:
            gpu = profile.gpus[0]
            flag = {"nvidia": "-DGGML_CUDA=on", "amd": "-DGGML_HIP=on",
                    "apple": "-DGGML_METAL=on"}.get(gpu.vendor, "-DGGML_VULKAN=on")
            checks.append(Check(
                name="GPU offload", status="warn",
                message=f"{gpu.name} is present but the llama.cpp build is CPU-only; models "
                        "would run on the CPU", remedy=f'CMAKE_ARGS="{flag}" pip install '
                        "--force-reinstall --no-cache-dir llama-cpp-python"))
    if x86 and not cpu.has("avx2"):
        checks.append(Check(
            name="AVX2", status="warn",
            message="this CPU has no AVX2: ctransformers' default library and gpt4all's "
                    "prebuilt kernels need it; llama.cpp builds here use what the CPU has",
            remedy="use the llama.cpp backend built by scripts/install_llama_cpp.py"))
    gib = profile.memory.available / (1 << 30)
    limit = profile.memory.cgroup_limit
    checks.append(Check(
        name="memory", status="ok" if gib >= 1 else "warn",
        message=f"{gib:.1f} GiB available of {profile.memory.total / (1 << 30):.1f} GiB"
                + (f" (cgroup limit {limit / (1 << 30):.1f} GiB)" if limit else ""),
        remedy="" if gib >= 1 else "close other programs or pick a smaller model "
                                   "(localllm models --fits)"))
    for gpu in profile.gpus:
        checks.append(Check(name=f"GPU {gpu.name}", status="ok",
                            message=f"{gpu.vendor}, {gpu.memory_free / (1 << 30):.1f} GiB free "
                                    f"of {gpu.memory_total / (1 << 30):.1f} GiB"
                                    + (" (unified memory)" if gpu.unified else "")))
    return checks


def _images_check() -> Check:
    """Whether images can be read: libmtmd in the llama.cpp build, and Pillow."""
    import importlib.util

    from .engines.llamacpp_vision import images_available

    if not images_available():
        return Check(name="images", status="warn",
                     message="this llama-cpp-python build has no libmtmd: models cannot read "
                             "images", remedy=REBUILD + " (it builds libmtmd)")
    if importlib.util.find_spec("PIL") is None:
        return Check(name="images", status="warn", message="Pillow is not installed: "
                     "images cannot be decoded", remedy='pip install "localllm[images]"')
    return Check(name="images", status="ok",
                 message="libmtmd is built in: models loaded with a vision projector "
                         "(mmproj) read images")
