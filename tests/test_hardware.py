"""Probe, estimate, plan, recommend and doctor on recorded machines this one is not.

Recorded /proc and /sys trees live in tests/machines/; NVML and sysctl answers are
replayed by small stand-ins, because no NVIDIA GPU or Mac exists on the test machine —
that is the only reason they are not the real thing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import localllm
from localllm._doctor import run_checks
from localllm.hardware import GPU_PROVIDERS, HardwareProfile, RuntimeInfo, probe
from localllm.models.gguf import GGUFFile, TensorInfo
from localllm.planning.planner import (
    MIB,
    ModelShape,
    current_rss,
    estimate_memory,
    make_plan,
    scale_out,
)
from localllm.planning.recommend import RECOMMENDED, ModelFacts, describe_fit, recommend
from localllm.planning.speed import SpeedProfile, bytes_per_token, ops_per_token

MACHINES = Path(__file__).parent / "machines"
GIB = 1 << 30


class RecordedNVML:
    """Replays what NVML reported on a workstation with one RTX 4090 (24 GB)."""

    def __init__(self, free: int = 23 * GIB) -> None:
        self.free = free

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"550.54.14"

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA GeForce RTX 4090"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=24 * GIB, free=self.free, used=24 * GIB - self.free)


class BrokenNVML(RecordedNVML):
    def nvmlInit(self) -> None:
        raise RuntimeError("NVML Shared Library Not Found")


def m2_sysctl(name: str) -> str | None:
    return {"hw.memsize": str(16 * GIB), "machdep.cpu.brand_string": "Apple M2",
            "hw.physicalcpu": "8", "hw.logicalcpu": "8"}.get(name)


def with_llama(profile: HardwareProfile, system_info: str, gpu: bool = False
               ) -> HardwareProfile:
    rt = RuntimeInfo(name="llama.cpp", version="0.3.36", importable=True, gpu_offload=gpu,
                     details={"system_info": system_info})
    return profile.model_copy(update={"runtimes": (rt,)})


@pytest.fixture
def rtx() -> HardwareProfile:
    return probe(MACHINES / "rtx4090", nvml=RecordedNVML(), system="Linux", machine="x86_64",
                 runtimes=False)


@pytest.fixture
def laptop() -> HardwareProfile:
    return probe(MACHINES / "laptop", nvml=BrokenNVML(), system="Linux", machine="x86_64",
                 runtimes=False)


@pytest.fixture
def m2() -> HardwareProfile:
    return probe(MACHINES / "empty", system="Darwin", machine="arm64", sysctl=m2_sysctl,
                 runtimes=False)


def test_probe_nvidia_workstation(rtx: HardwareProfile) -> None:
    assert rtx.cpu.model.startswith("13th Gen Intel")
    assert (rtx.cpu.physical_cores, rtx.cpu.logical_cores) == (8, 16)
    assert {"avx2", "fma", "f16c", "avx_vnni"} <= set(rtx.cpu.flags)
    assert rtx.memory.total == 65536000 * 1024 and rtx.memory.available == 60000000 * 1024
    (gpu,) = rtx.gpus
    assert (gpu.vendor, gpu.name, gpu.memory_total, gpu.driver) == (
        "nvidia", "NVIDIA GeForce RTX 4090", 24 * GIB, "550.54.14")
    json.loads(rtx.model_dump_json())  # JSON-serializable


def test_probe_laptop_without_avx2_and_with_cgroup_limits(laptop: HardwareProfile) -> None:
    assert (laptop.cpu.physical_cores, laptop.cpu.logical_cores) == (2, 4)
    assert laptop.cpu.has("avx") and not laptop.cpu.has("avx2")
    assert laptop.cpu.usable_cores == 3.0  # cpu.max quota of 3 CPUs
    assert laptop.memory.cgroup_limit == 4 * GIB
    assert laptop.memory.total == 4 * GIB  # the cgroup limit, not the 8 GB of RAM
    assert laptop.memory.available == min(3100000 * 1024, 3 * GIB)  # limit - current
    assert laptop.gpus == ()  # NVML missing is not an error


def test_probe_apple_m2_unified_memory(m2: HardwareProfile) -> None:
    assert m2.cpu.model == "Apple M2" and m2.cpu.flags == ("neon",)
    assert m2.memory.total == 16 * GIB
    (gpu,) = m2.gpus
    assert gpu.vendor == "apple" and gpu.unified and gpu.memory_total == 12 * GIB


def test_probe_amd_through_sysfs() -> None:
    amd = probe(MACHINES / "amd", nvml=BrokenNVML(), system="Linux", machine="x86_64",
                runtimes=False)
    (gpu,) = amd.gpus  # the Intel card1 is skipped
    assert gpu.name == "AMD Radeon RX 7800 XT" and gpu.memory_free == 17163091968 - GIB


def test_probe_of_this_machine_is_fast_and_complete() -> None:
    profile = probe()
    assert profile.cpu.logical_cores >= 1 and profile.memory.total > 0
    llama = profile.runtime("llama.cpp")
    assert llama is not None and llama.importable and "AVX" in str(llama.details)
    ort = profile.runtime("onnxruntime")
    assert ort is not None and ort.importable
    providers = ort.details["providers"]
    # CPU builds list AzureExecutionProvider (remote endpoints): that is not GPU offload
    assert ort.gpu_offload == any(p in GPU_PROVIDERS for p in providers), providers


def fake_gguf(facts: ModelFacts, type_id: int = 12) -> GGUFFile:
    """A GGUF header with a 7B-class tensor table (no file: only the header is needed)."""
    e, ff, kv = facts.n_embd, facts.n_ff, facts.n_head_kv * facts.head_dim
    tensors = [TensorInfo("token_embd.weight", (e, facts.n_vocab), type_id, 0),
               TensorInfo("output.weight", (e, facts.n_vocab), type_id, 0)]
    x = facts.n_experts
    ffn: list[tuple[str, tuple[int, ...]]] = (
        [("ffn_gate_exps", (e, ff, x)), ("ffn_up_exps", (e, ff, x)),
         ("ffn_down_exps", (ff, e, x)), ("ffn_gate_inp", (e, x))] if x else
        [("ffn_gate", (e, ff)), ("ffn_up", (e, ff)), ("ffn_down", (ff, e))])
    for i in range(facts.n_layer):
        for name, shape in [("attn_q", (e, e)), ("attn_k", (e, kv)), ("attn_v", (e, kv)),
                            ("attn_output", (e, e)), *ffn]:
            tensors.append(TensorInfo(f"blk.{i}.{name}.weight", shape, type_id, 0))
    md = {"general.architecture": "llama", "llama.block_count": facts.n_layer,
          "llama.embedding_length": e, "llama.attention.head_count": facts.n_head,
          "llama.attention.head_count_kv": facts.n_head_kv, "llama.feed_forward_length": ff,
          "llama.context_length": facts.context_length,
          "tokenizer.ggml.tokens": ["t"] * facts.n_vocab}
    return GGUFFile(Path(f"/models/{facts.name}.gguf"), 3, md, tuple(tensors), 0, 1 << 40)


OPENCHAT = next(f for f in RECOMMENDED if f.name == "openchat-3.5-0106")


def test_estimate_is_exact_for_weights_and_kv() -> None:
    shape = ModelShape.from_gguf(fake_gguf(OPENCHAT))
    assert shape.weight_bytes == sum(t.n_bytes for t in fake_gguf(OPENCHAT).tensors)
    est = estimate_memory(shape, 8192)
    assert est.host.kv_cache == 32 * 8192 * 2 * 8 * 128 * 2  # layers·ctx·(K+V)·heads·dim·f16
    q8 = estimate_memory(shape, 8192, kv_type="q8_0")
    assert q8.host.kv_cache == pytest.approx(est.host.kv_cache * 34 / 64)
    assert estimate_memory(shape, 4000).host.kv_cache == estimate_memory(shape, 4096
                                                                         ).host.kv_cache


def test_plan_full_gpu_on_the_workstation(rtx: HardwareProfile) -> None:
    plan = make_plan(fake_gguf(OPENCHAT), rtx, backend="llama.cpp",
                     gpu_offload_supported=True)
    assert plan.device == "gpu" and plan.gpu_layers == OPENCHAT.n_layer + 1
    assert plan.context_length == 8192 and plan.memory.gpu is not None
    assert plan.memory.gpu.total < 23 * GIB
    assert any("RTX 4090" in r for r in plan.reasons)
    assert plan.threads == 16


def test_plan_partial_offload_when_vram_is_short() -> None:
    small = probe(MACHINES / "rtx4090", nvml=RecordedNVML(free=3 * GIB), system="Linux",
                  machine="x86_64", runtimes=False)
    plan = make_plan(fake_gguf(OPENCHAT), small, backend="llama.cpp",
                     gpu_offload_supported=True, context_length=4096)
    assert 0 < plan.gpu_layers < OPENCHAT.n_layer
    assert plan.memory.gpu is not None and plan.memory.gpu.total <= 3 * GIB
    assert any(f"{plan.gpu_layers} of {OPENCHAT.n_layer} layers" in r for r in plan.reasons)


def test_parallel_sequences_count_in_the_gpu_split() -> None:
    """The KV cache of every parallel sequence is in VRAM too: the split places fewer
    layers and still fits."""
    small = probe(MACHINES / "rtx4090", nvml=RecordedNVML(free=3 * GIB), system="Linux",
                  machine="x86_64", runtimes=False)
    one, four = (make_plan(fake_gguf(OPENCHAT), small, backend="llama.cpp",
                           gpu_offload_supported=True, context_length=4096, parallel=n)
                 for n in (1, 4))
    assert four.memory.gpu is not None and four.memory.gpu.total <= 3 * GIB
    assert four.gpu_layers < one.gpu_layers


def test_whole_model_runtimes_get_all_layers_or_none() -> None:
    """onnxruntime cannot split layers: short VRAM means the CPU, enough means all."""
    small = probe(MACHINES / "rtx4090", nvml=RecordedNVML(free=3 * GIB), system="Linux",
                  machine="x86_64", runtimes=False)
    plan = make_plan(fake_gguf(OPENCHAT), small, backend="onnxruntime",
                     gpu_offload_supported=True, context_length=4096, partial_offload=False)
    assert plan.gpu_layers == 0 and plan.device == "cpu"
    roomy = probe(MACHINES / "rtx4090", nvml=RecordedNVML(free=20 * GIB), system="Linux",
                  machine="x86_64", runtimes=False)
    plan = make_plan(fake_gguf(OPENCHAT), roomy, backend="onnxruntime",
                     gpu_offload_supported=True, context_length=4096, partial_offload=False)
    assert plan.gpu_layers == OPENCHAT.n_layer + 1 and plan.device == "gpu"


def test_cpu_only_build_with_a_gpu_is_never_silent(rtx: HardwareProfile) -> None:
    auto = make_plan(fake_gguf(OPENCHAT), rtx, backend="llama.cpp",
                     gpu_offload_supported=False)
    assert auto.device == "cpu" and any("CPU-only build" in r for r in auto.reasons)
    with pytest.raises(localllm.UnsupportedFeatureError, match="CPU-only build"):
        make_plan(fake_gguf(OPENCHAT), rtx, backend="llama.cpp", gpu_offload_supported=False,
                  device="gpu")
    fallback = make_plan(fake_gguf(OPENCHAT), rtx, backend="llama.cpp",
                         gpu_offload_supported=False, device="gpu", allow_fallback=True)
    assert fallback.device == "cpu" and any("allow_fallback" in r for r in fallback.reasons)


def test_will_not_fit_says_what_would(laptop: HardwareProfile) -> None:
    with pytest.raises(localllm.WillNotFitError, match="smaller quantization") as info:
        make_plan(fake_gguf(next(f for f in RECOMMENDED if f.name == "qwen1.5-14b-chat")),
                  laptop, backend="llama.cpp", gpu_offload_supported=False)
    assert "MiB of RAM" in str(info.value)
    assert isinstance(info.value, MemoryError)
    # ... and what would serve it elsewhere, by the planner's own arithmetic
    assert "1 x 24 GB GPU: " in str(info.value) and "localllm.connect" in str(info.value)
    assert "llama-server -ngl 999" in str(info.value)
    # a 7B at Q4_K with room for a 2048 context only: the planner finds the largest that
    # fits (the budget counts this process's own RSS, so it is set relative to it)
    need = estimate_memory(ModelShape.from_gguf(fake_gguf(OPENCHAT)), 2048).host.total
    tight = laptop.model_copy(update={"memory": laptop.memory.model_copy(
        update={"available": int((need + current_rss() + 64 * MIB) / 0.9)})})
    plan = make_plan(fake_gguf(OPENCHAT), tight, backend="llama.cpp",
                     gpu_offload_supported=False)
    assert 2048 <= plan.context_length < 8192
    assert any("largest that fits" in r for r in plan.reasons)
    with pytest.raises(localllm.WillNotFitError, match="context_length="):
        make_plan(fake_gguf(OPENCHAT), tight, backend="llama.cpp", gpu_offload_supported=False,
                  context_length=8192)


def test_scale_out_splits_a_big_model_over_gpus() -> None:
    """A 32B model in F16 at a 32k context: 2 x 48 GB hold it (weights and KV cache halved,
    compute and runtime per GPU), 1 x 48 GB does not."""
    shape = next(f for f in RECOMMENDED if f.name == "qwen1.5-32b-chat").shape("F16")
    lines = scale_out(shape, 32768)
    by_size = {line.split(" GB")[0].split(" x ")[1]: line for line in lines}
    assert by_size["48"].startswith("2 x 48 GB GPUs") and "--tensor-parallel-size 2" in \
        by_size["48"]
    assert by_size["24"].startswith("4 x 24 GB GPUs")
    est = estimate_memory(shape, 32768, gpu_layers=shape.n_layer + 1)
    per_gpu = (shape.weight_bytes + est.gpu.kv_cache + est.host.kv_cache) / 2 \
        + est.gpu.compute + 512 * MIB  # type: ignore[union-attr]
    assert f"{per_gpu / (1 << 30):,.1f} GiB each" in by_size["48"]
    one_gpu = 2 * per_gpu - est.gpu.compute - 512 * MIB  # type: ignore[union-attr]
    assert one_gpu > 48 * (1 << 30) * 0.9  # so one 48 GB GPU would not do


def test_recommend_per_machine(rtx: HardwareProfile, laptop: HardwareProfile,
                               m2: HardwareProfile) -> None:
    big = {r.name: r for r in recommend(rtx, gpu_offload=True)}
    assert big["qwen1.5-7b-chat"].placement == "full GPU"
    assert big["mixtral-8x7b-instruct"].placement.startswith("partial GPU")
    assert len(big) == len(RECOMMENDED)
    small = {r.name: r for r in recommend(laptop, gpu_offload=False)}
    assert "smollm2-135m-instruct" in small and "qwen1.5-32b-chat" not in small
    assert all(r.placement == "CPU only" for r in small.values())
    mac = {r.name: r for r in recommend(m2, gpu_offload=True)}
    assert mac["gemma-7b-it"].placement == "full GPU"


def test_speed_estimates_flag_models_too_slow_to_use(laptop: HardwareProfile) -> None:
    """With a 2-core-like profile (20 GB/s read, 40 GFLOP/s decode), a 32B model at Q4_K
    "fits" a big-RAM CPU machine but is flagged slow; the 135M default is fast. The figures
    follow the formula: 1 / (bytes ÷ bandwidth + operations ÷ compute)."""
    speed = SpeedProfile(read_bandwidth=20e9, decode_ops=40e9, prompt_ops=70e9, machine="t")
    roomy = laptop.model_copy(update={"memory": laptop.memory.model_copy(
        update={"total": 256 * 2**30, "available": 200 * 2**30})})
    recs = {r.name: r for r in recommend(roomy, gpu_offload=False, speed=speed)}
    big, tiny = recs["qwen1.5-32b-chat"], recs["smollm2-135m-instruct"]
    assert big.slow and big.decode_tokens_per_s is not None and big.decode_tokens_per_s < 5
    assert not tiny.slow and tiny.decode_tokens_per_s is not None
    shape = tiny.facts.shape(tiny.quantization)
    expected = 1 / (bytes_per_token(shape) / 20e9 + ops_per_token(shape) / 40e9)
    assert abs(tiny.decode_tokens_per_s - expected) < 1e-6 * expected
    assert tiny.prompt_tokens_per_s == pytest.approx(
        70e9 / ops_per_token(shape, output=False))
    assert "SLOW: under 5 tok/s" in describe_fit(big) and "tok/s decode" in describe_fit(tiny)
    moe = next(f for f in RECOMMENDED if f.n_experts)
    dense_bytes = bytes_per_token(moe.shape("Q4_K_M"))
    assert bytes_per_token(moe.shape("Q4_K_M"), moe.n_experts, moe.n_experts_used) < \
        0.5 * dense_bytes  # a mixture reads only its active experts
    # an explicit hardware profile without a speed profile: nothing is estimated
    assert all(r.decode_tokens_per_s is None for r in recommend(laptop, gpu_offload=False))


def test_doctor_flags_the_known_bad_cases(rtx: HardwareProfile, laptop: HardwareProfile
                                          ) -> None:
    amx_cpu = rtx.model_copy(update={"cpu": rtx.cpu.model_copy(
        update={"flags": (*rtx.cpu.flags, "amx_tile", "amx_int8", "avx512f")})})
    amx = run_checks(with_llama(amx_cpu, "CPU : AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1"))
    assert any(c.name == "AMX kernels" and c.status == "fail" and "#20824" in c.message
               for c in amx)
    cpu_build = run_checks(with_llama(rtx, "CPU : AVX = 1 | AVX2 = 1", gpu=False))
    gpu_check = next(c for c in cpu_build if c.name == "GPU offload")
    assert gpu_check.status == "warn" and "GGML_CUDA" in gpu_check.remedy
    old = run_checks(with_llama(laptop, "CPU : AVX = 1 | AVX2 = 1 | FMA = 1"))
    assert any(c.name == "CPU features" and c.status == "fail" and "AVX2" in c.message
               for c in old)
    assert any(c.name == "AVX2" and c.status == "warn" for c in old)


def test_doctor_plan_and_fits_commands() -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "localllm.cli", *args],
                              capture_output=True, text=True, timeout=300)

    doctor = cli("doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout  # this machine's build is healthy
    report = json.loads(doctor.stdout)
    assert report["profile"]["cpu"]["logical_cores"] >= 1
    assert all(c["status"] != "fail" for c in report["checks"])
    plan = json.loads(cli("plan", "--context", "1024", "--json").stdout)
    assert plan["context_length"] == 1024 and plan["device"] == "cpu"
    assert "weights" in cli("plan").stdout
    fits = json.loads(cli("models", "--fits", "--json").stdout)
    assert any(r["name"] == "smollm2-135m-instruct" for r in fits)


def test_loaded_model_reports_its_plan(shared_model: localllm.Model) -> None:
    plan = shared_model.info.plan
    assert plan is not None and plan.context_length == 1024 and plan.device == "cpu"
    assert plan.memory.host.weights > 90 * MIB


def test_placement_is_verified_after_loading() -> None:
    """Stands in for a runtime that ignored a GPU request (no GPU exists here)."""
    from localllm._types import DevicePlacement
    from localllm.models.loader import _verify_placement

    engine = SimpleNamespace(backend_name="llama.cpp",
                             placement=DevicePlacement(device="cpu", gpu_layers=0,
                                                       total_layers=32))
    plan = SimpleNamespace(gpu_layers=33)
    with pytest.raises(localllm.BackendError, match="placed 0 layers"):
        _verify_placement(engine, plan, allow_fallback=False)  # type: ignore[arg-type]
    _verify_placement(engine, plan, allow_fallback=True)  # type: ignore[arg-type]


def test_memory_prediction_within_five_percent(tmp_path: Path) -> None:
    """Predicted vs measured RSS (VmHWM) in fresh processes on the machine the suite runs
    on: the default model at three contexts and two KV types, after load (short prompts)
    and at the peak (a prompt filling the context), plus three synthetic shapes. The base
    is measured in the process with the runtime imported, so nothing machine-specific is
    a fitted constant (benchmarks/bench_memory.py prints the table)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from bench_memory import run_cases

    rows = run_cases(tmp_path)
    assert len(rows) >= 12
    errors = sorted(abs(r["error"]) for r in rows)
    assert errors[-1] <= 0.05, rows
    assert errors[len(errors) // 2] <= 0.03, rows


def test_doctor_says_whether_images_can_be_read(rtx: HardwareProfile,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from localllm.engines import llamacpp_vision

    checks = run_checks(with_llama(rtx, "CPU : AVX = 1 | AVX2 = 1"))
    images = next(c for c in checks if c.name == "images")
    assert images.status == "ok" and "libmtmd" in images.message  # this build has it
    monkeypatch.setattr(llamacpp_vision, "images_available", lambda: False)
    images = next(c for c in run_checks(with_llama(rtx, "CPU : AVX = 1")) if c.name == "images")
    assert images.status == "warn" and "install_llama_cpp.py" in images.remedy
