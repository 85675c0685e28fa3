"""Memory estimates and load plans, computed from a GGUF header and the machine.

The estimate models what llama.cpp allocates and touches on the host: every weight byte
(mmap'd pages are read once), the KV cache (cleared, so touched, at creation), the
attention mask and activations of one micro-batch (touched only by prompts that fill it:
hence a peak and an after-load figure), the logits, the runtime's vocabulary tables and a
small fixed overhead. What differs between machines, the runtime's import and library
pages, is not a constant: the plan's base is this process's measured RSS with the runtime
already imported. ``benchmarks/bench_memory.py`` (and a test) compare both figures with
``VmHWM`` of fresh processes on the machine the suite runs on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from .._errors import ConfigError, UnsupportedFeatureError, WillNotFitError
from ..hardware import GPUInfo, HardwareProfile
from ..models.gguf import ModelFile

MIB = 1 << 20
GIB = 1 << 30
RUNTIME_OVERHEAD = 3 * MIB      # llama.cpp backend, threads and allocator slack
BYTES_PER_VOCAB_TOKEN = 305     # runtime token tables + the header's walked string array
BYTES_PER_MERGE = 175           # BPE merge ranks, both sides
GPU_RESERVE = 512 * MIB         # CUDA/ROCm/Metal context and driver reserve per device
RAM_HEADROOM = 0.10             # keep 10% of available RAM for everything else
RUNTIME_IMPORT = 12 * MIB       # importing llama-cpp-python when it cannot be imported yet
KV_TYPES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
MIN_CONTEXT = 512
DEFAULT_PARALLEL = 4  # sequences decoded together when the caller does not say


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


@dataclass(frozen=True)
class ModelShape:
    """The numbers memory depends on; from a GGUF header or from catalog facts."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_merges: int
    n_ctx_train: int
    layer_bytes: tuple[int, ...]
    embed_bytes: int     # token embedding (always in host memory in llama.cpp)
    output_bytes: int    # output norm + output matrix (offloaded with the last layer)
    n_swa: int = 0       # sliding window of the layers flagged in swa_layers (0: none)
    swa_layers: tuple[bool, ...] = ()

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.embed_bytes + self.output_bytes

    @classmethod
    def from_gguf(cls, gguf: ModelFile) -> ModelShape:
        n_layer = gguf.block_count
        n_embd = int(gguf.arch_value("embedding_length", 0))
        n_head = _first(gguf.arch_value("attention.head_count", 1))
        n_head_kv = _first(gguf.arch_value("attention.head_count_kv", n_head))
        head_k = int(gguf.arch_value("attention.key_length", n_embd // max(n_head, 1)))
        head_v = int(gguf.arch_value("attention.value_length", head_k))
        layers = [0] * n_layer
        embed = output = 0
        for t in gguf.tensors:
            m = re.match(r"blk\.(\d+)\.", t.name)
            if m and int(m.group(1)) < n_layer:
                layers[int(m.group(1))] += t.n_bytes
            elif t.name.startswith("token_embd"):
                embed += t.n_bytes
            else:
                output += t.n_bytes
        n_swa, swa_layers = sliding_window_layers(gguf)
        return cls(
            n_swa=n_swa, swa_layers=swa_layers,
            n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
            head_dim_k=head_k, head_dim_v=head_v,
            n_ff=_first(gguf.arch_value("feed_forward_length", 4 * n_embd)),
            n_vocab=gguf.vocab_size, n_merges=len(gguf.metadata.get("tokenizer.ggml.merges")
                                                 or ()),
            n_ctx_train=gguf.context_length or 4096, layer_bytes=tuple(layers),
            embed_bytes=embed, output_bytes=output)


#: llama.cpp's sliding-window attention layout per architecture: of every ``n`` layers the
#: last attends to the whole context and the others to the last ``sliding_window`` tokens
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "gemma-embedding": 6, "cohere2": 4, "gpt-oss": 2,
                "exaone4": 4, "olmo2": 4}


def sliding_window_layers(gguf: ModelFile) -> tuple[int, tuple[bool, ...]]:
    """The window and which layers use it, as llama.cpp reads them (a per-layer
    ``sliding_window_pattern`` array, a period, or the architecture's default period)."""
    window = gguf.arch_value("attention.sliding_window", 0)
    arch, n_layer = gguf.architecture, gguf.block_count
    if not isinstance(window, int) or window <= 0 or arch not in SWA_PATTERNS:
        return 0, ()
    pattern = gguf.arch_value("attention.sliding_window_pattern", SWA_PATTERNS[arch])
    if isinstance(pattern, list) and len(pattern) >= n_layer:
        return window, tuple(bool(flag) for flag in pattern[:n_layer])
    period = pattern if isinstance(pattern, int) else SWA_PATTERNS[arch]
    return window, tuple(period == 0 or il % period < period - 1 for il in range(n_layer))


def _first(value: object) -> int:
    """Per-layer arrays (some architectures vary heads by layer) → their maximum."""
    if isinstance(value, list):
        return int(max(value)) if value else 0
    return int(str(value))


class DeviceMemory(_Frozen):
    device: str
    weights: int
    kv_cache: int
    compute: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead


class MemoryEstimate(_Frozen):
    """Bytes per device for one configuration; ``host`` is the process's RAM increase."""

    context_length: int
    kv_type: str
    gpu_layers: int
    host: DeviceMemory
    parallel: int = 1
    gpu: DeviceMemory | None = None
    #: the part of ``host.compute`` that decoding short prompts touches (logits and one
    #: token's activations); the rest is touched only by prompts that fill a micro-batch
    host_decode_compute: int = 0

    @property
    def host_after_load(self) -> int:
        """Host bytes right after loading and serving short prompts."""
        return self.host.total - self.host.compute + self.host_decode_compute

    def describe(self) -> list[str]:
        lines = []
        for dev in (self.host, self.gpu):
            if dev is not None:
                lines.append(f"{dev.device}: {dev.total / MIB:,.0f} MiB = weights "
                             f"{dev.weights / MIB:,.0f} + KV cache {dev.kv_cache / MIB:,.0f} "
                             f"+ compute {dev.compute / MIB:,.0f} + runtime "
                             f"{dev.overhead / MIB:,.0f}")
        return lines


def kv_bytes_per_layer(shape: ModelShape, context: int, kv_type: str) -> int:
    per = KV_TYPES[kv_type]
    return int(_pad(context) * shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v) * per)


def swa_cells(shape: ModelShape, cells: int, parallel: int, batch_size: int) -> int:
    """KV cells of a sliding-window layer: llama.cpp keeps each sequence's window plus one
    micro-batch (padded to 256), never more than the full cache."""
    return min(_pad(cells), _pad(shape.n_swa * parallel + batch_size))


def _pad(context: int) -> int:
    return (context + 255) // 256 * 256  # llama.cpp pads the context to 256


def estimate_memory(shape: ModelShape, context_length: int, *, kv_type: str = "f16",
                    gpu_layers: int = 0, batch_size: int = 512,
                    parallel: int = 1) -> MemoryEstimate:
    """Memory for ``parallel`` sequences of up to ``context_length`` tokens each (one KV
    cache of ``parallel * context_length`` cells)."""
    if kv_type not in KV_TYPES:
        raise ConfigError(f"kv_type={kv_type!r} is unknown; use one of {', '.join(KV_TYPES)}")
    cells = context_length * parallel
    n_gpu = min(gpu_layers, shape.n_layer + 1)
    on_gpu = list(range(shape.n_layer - min(n_gpu, shape.n_layer), shape.n_layer))
    kv_full = kv_bytes_per_layer(shape, cells, kv_type)
    kv_window = kv_bytes_per_layer(shape, swa_cells(shape, cells, parallel, batch_size),
                                   kv_type) if shape.n_swa else kv_full

    def kv_of(layers: Iterable[int]) -> int:
        return sum(kv_window if i < len(shape.swa_layers) and shape.swa_layers[i] else kv_full
                   for i in layers)
    ubatch = min(batch_size, context_length)
    activations = ubatch * (4 * shape.n_embd + 3 * shape.n_ff) * 4
    mask = ubatch * _pad(cells) * 2
    host_layers = [b for i, b in enumerate(shape.layer_bytes) if i not in on_gpu]
    host_weights = sum(host_layers) + shape.embed_bytes + (
        0 if n_gpu > shape.n_layer else shape.output_bytes)
    tables = shape.n_vocab * BYTES_PER_VOCAB_TOKEN + shape.n_merges * BYTES_PER_MERGE
    host = DeviceMemory(
        device="host RAM", weights=host_weights,
        kv_cache=kv_of(i for i in range(shape.n_layer) if i not in on_gpu),
        compute=(activations + mask + shape.n_vocab * 4 * parallel) if not on_gpu else
        (shape.n_vocab * 4 * parallel + ubatch * shape.n_embd * 4),
        overhead=RUNTIME_OVERHEAD + tables)
    gpu = None
    if on_gpu:
        gpu_weights = sum(shape.layer_bytes[i] for i in on_gpu) + (
            shape.output_bytes if n_gpu > shape.n_layer else 0)
        gpu = DeviceMemory(
            device="GPU", weights=gpu_weights, kv_cache=kv_of(on_gpu),
            # the GPU reserves the full graph: every logit of the micro-batch included
            compute=activations + mask + ubatch * shape.n_vocab * 4,
            overhead=GPU_RESERVE)
    decode = shape.n_vocab * 4 * parallel + parallel * (4 * shape.n_embd + 3 * shape.n_ff) * 4
    return MemoryEstimate(context_length=context_length, parallel=parallel, kv_type=kv_type,
                          gpu_layers=n_gpu, host=host, gpu=gpu,
                          host_decode_compute=min(decode, host.compute))


def current_rss() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class LoadPlan(_Frozen):
    """What ``load()`` will do, and why; ``localllm plan MODEL`` prints it."""

    path: str
    backend: str
    device: str
    gpu_layers: int
    gpu_names: tuple[str, ...] = ()
    context_length: int
    threads: int
    batch_size: int
    kv_type: str
    memory: MemoryEstimate
    parallel: int = 1
    predicted_peak_ram: int
    available_ram: int
    #: RAM of this process after loading and serving short prompts (the peak comes with
    #: prompts that fill a whole micro-batch, touching all of the compute buffer)
    predicted_ram_after_load: int = 0
    reasons: tuple[str, ...]

    def describe(self) -> str:
        lines = [f"model      {self.path}", f"backend    {self.backend}",
                 f"device     {self.device}" + (f" ({self.gpu_layers} layers on "
                                                f"{', '.join(self.gpu_names)})"
                                                if self.gpu_layers else ""),
                 f"context    {self.context_length} tokens (KV {self.kv_type}), "
                 f"{self.parallel} parallel sequence(s)",
                 f"threads    {self.threads}, batch {self.batch_size}",
                 *("memory     " + m for m in self.memory.describe()),
                 f"peak RAM   {self.predicted_peak_ram / MIB:,.0f} MiB predicted for this "
                 f"process ({self.predicted_ram_after_load / MIB:,.0f} MiB after loading), "
                 f"{self.available_ram / MIB:,.0f} MiB available",
                 "why:", *(f"  - {r}" for r in self.reasons)]
        return "\n".join(lines)


@dataclass
class _Budget:
    ram: int
    vram: int


def _fits(est: MemoryEstimate, budget: _Budget) -> bool:
    gpu_ok = est.gpu is None or est.gpu.total <= budget.vram
    return est.host.total <= budget.ram and gpu_ok


def _use_gpu(gpus: list[GPUInfo], device: str, gpu_layers: int | None, offload: bool,
             allow_fallback: bool, backend: str, reasons: list[str]) -> bool:
    """Whether the plan places layers on a GPU: asked for (or "auto" with one there) and
    the runtime can offload; asked for but impossible is an error unless
    ``allow_fallback``, and a GPU left unused is said in ``reasons``."""
    want_gpu = device == "gpu" or bool(gpu_layers) or (
        device == "auto" and bool(gpus) and gpu_layers != 0)
    if not want_gpu:
        return False
    if not gpus:
        if device == "gpu" or gpu_layers:
            raise UnsupportedFeatureError(backend, "GPU placement",
                                          "no GPU was found on this machine")
        return False
    if offload:
        return True
    msg = (f"{gpus[0].name} found, but the installed {backend} build cannot offload "
           "to a GPU (CPU-only build); rebuild it with GPU support to use it")
    if device == "gpu" or gpu_layers:
        if not allow_fallback:
            raise UnsupportedFeatureError(backend, "GPU offload", msg)
        reasons.append(msg + "; running on the CPU because allow_fallback=True")
    else:
        reasons.append(msg + "; planning for the CPU")
    return False


def _choose_context(context_length: int | None, trained: int, fits: Callable[[int], bool],
                    reasons: list[str]) -> int:
    """The context asked for (checked against the trained length), or the largest that
    fits, up to the trained length, in steps of 256."""
    if context_length is not None:
        if not MIN_CONTEXT // 32 <= context_length <= trained:
            raise ConfigError(f"context_length={context_length} is out of range "
                              f"{MIN_CONTEXT // 32}..{trained}; the model was trained on "
                              f"{trained} tokens and longer contexts degrade silently")
        reasons.append(f"context {context_length} as requested (trained: {trained})")
        return context_length
    if fits(trained):
        reasons.append(f"context {trained}: the full trained length fits")
        return trained
    low, high = MIN_CONTEXT, trained
    while high - low > 256:
        mid = (low + high) // 2 // 256 * 256
        if fits(mid):
            low = mid
        else:
            high = mid
    reasons.append(f"context {low}: the largest that fits (trained: {trained})")
    return low


def make_plan(gguf: ModelFile, profile: HardwareProfile, *, backend: str,
              gpu_offload_supported: bool, context_length: int | None = None,
              device: str = "auto", kv_type: str = "f16", threads: int | None = None,
              batch_size: int = 512, gpu_layers: int | None = None,
              allow_fallback: bool = False, runtime_loaded: bool = True,
              partial_offload: bool = True, parallel: int | None = None,
              batching: bool = True, projector_bytes: int = 0, image_tokens: int = 0
              ) -> LoadPlan:
    """Choose device placement, context length and parallel sequences for ``gguf``; a
    vision projector's weights (``projector_bytes``) are set aside first."""
    if device not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"device={device!r} is invalid; use 'auto', 'cpu' or 'gpu'")
    shape = ModelShape.from_gguf(gguf)
    reasons: list[str] = []
    base = current_rss() + (0 if runtime_loaded else RUNTIME_IMPORT)
    ram = int(profile.memory.available * (1 - RAM_HEADROOM))
    if profile.memory.cgroup_limit:
        reasons.append(f"memory limited by cgroup to {profile.memory.cgroup_limit / MIB:,.0f} "
                       "MiB")
    gpus = [g for g in profile.gpus if not g.unified or profile.system == "Darwin"]
    use_gpu = _use_gpu(gpus, device, gpu_layers, gpu_offload_supported, allow_fallback,
                       backend, reasons)
    vram = gpus[0].memory_free if use_gpu else 0
    # the projector goes where the model's layers go (libmtmd follows use_gpu)
    budget = _Budget(ram=max(0, ram - base - (0 if use_gpu else projector_bytes)),
                     vram=max(0, vram - projector_bytes) if use_gpu else vram)
    if projector_bytes:
        reasons.append(f"vision projector: {projector_bytes / MIB:,.1f} MiB of weights set "
                       f"aside; each image takes {image_tokens} prompt tokens")
    threads = threads or max(1, int(profile.cpu.usable_cores))

    def layers_for(ctx: int, n_seq: int) -> int:
        if not use_gpu:
            return 0
        if gpu_layers is not None:
            return gpu_layers
        # a runtime without per-layer placement gets all layers or none
        for n in range(shape.n_layer + 1, -1, -1) if partial_offload else \
                (shape.n_layer + 1, 0):
            est = estimate_memory(shape, ctx, kv_type=kv_type, gpu_layers=n,
                                  batch_size=batch_size, parallel=n_seq)
            if est.gpu is None or est.gpu.total <= budget.vram:
                return n
        return 0

    if parallel is not None and parallel > 1 and not batching:
        raise UnsupportedFeatureError(backend, f"parallel={parallel}",
                                      "it decodes one sequence at a time (requests queue); "
                                      "use parallel=1 or the llama.cpp backend")
    n_seq = parallel or 1

    def estimate(ctx: int, n_seq: int) -> MemoryEstimate:
        return estimate_memory(shape, ctx, kv_type=kv_type,
                               gpu_layers=layers_for(ctx, n_seq), batch_size=batch_size,
                               parallel=n_seq)

    chosen = _choose_context(context_length, shape.n_ctx_train,
                             lambda ctx: _fits(estimate(ctx, n_seq), budget), reasons)
    if parallel is None and batching:
        # the default: up to DEFAULT_PARALLEL sequences of the chosen context, as memory allows
        n_seq = next(n for n in range(DEFAULT_PARALLEL, 0, -1)
                     if n == 1 or _fits(estimate(chosen, n), budget))
        reasons.append(f"{n_seq} parallel sequence(s): the KV cache for {n_seq} x {chosen} "
                       f"tokens fits (load with parallel=N to choose)")
    elif not batching:
        reasons.append(f"1 sequence: {backend} runs one request at a time, others queue")
    else:
        reasons.append(f"{n_seq} parallel sequence(s) as requested: KV cache for {n_seq} x "
                       f"{chosen} tokens")
    est = estimate(chosen, n_seq)
    if not _fits(est, budget):
        raise WillNotFitError(_will_not_fit(gguf, shape, est, budget, kv_type, batch_size))
    if est.gpu_layers:
        where = "all layers" if est.gpu_layers > shape.n_layer else \
            f"{est.gpu_layers} of {shape.n_layer} layers"
        reasons.append(f"{where} on {gpus[0].name} ({gpus[0].memory_free / MIB:,.0f} MiB free)")
    elif not use_gpu and not any("GPU" in r for r in reasons):
        reasons.append("CPU: no usable GPU" if not gpus else "CPU as requested")
    reasons.append(f"{threads} threads: the CPUs this process may use")
    return LoadPlan(
        path=str(gguf.path), backend=backend, device="gpu" if est.gpu_layers else "cpu",
        gpu_layers=est.gpu_layers, gpu_names=(gpus[0].name,) if est.gpu_layers else (),
        context_length=chosen, parallel=n_seq, threads=threads,
        batch_size=min(batch_size, chosen * n_seq),
        kv_type=kv_type, memory=est, predicted_peak_ram=base + est.host.total + (
            0 if est.gpu_layers else projector_bytes),
        predicted_ram_after_load=base + est.host_after_load + (
            0 if est.gpu_layers else projector_bytes),
        available_ram=profile.memory.available, reasons=tuple(reasons))


def _will_not_fit(gguf: ModelFile, shape: ModelShape, est: MemoryEstimate, budget: _Budget,
                  kv_type: str, batch_size: int) -> str:
    need = est.host.total
    parts = [f"{gguf.path.name} needs about {need / MIB:,.0f} MiB of RAM at context "
             f"{est.context_length} but {budget.ram / MIB:,.0f} MiB are available"]
    if est.gpu is not None:
        parts.append(f"and {est.gpu.total / MIB:,.0f} MiB of VRAM ({budget.vram / MIB:,.0f} "
                     "free)")
    smallest = estimate_memory(shape, MIN_CONTEXT, kv_type=kv_type, batch_size=batch_size)
    if smallest.host.total <= budget.ram:
        for ctx in range(shape.n_ctx_train // 256 * 256, MIN_CONTEXT - 1, -256):
            if estimate_memory(shape, ctx, kv_type=kv_type,
                               batch_size=batch_size).host.total <= budget.ram:
                parts.append(f"; context_length={ctx} would fit")
                break
    else:
        weights = shape.weight_bytes
        parts.append(f"; the weights alone are {weights / MIB:,.0f} MiB: use a smaller "
                     "quantization (e.g. Q4_K_M instead of Q8_0) or a smaller model — "
                     "localllm.recommend() lists what fits")
    elsewhere = scale_out(shape, est.context_length, kv_type=kv_type)
    if elsewhere:
        parts.append("; or serve it on GPUs and reach it with localllm.connect(url, model): "
                     + "; ".join(elsewhere))
    return " ".join(parts)



#: common data-centre and workstation GPU sizes, GiB
GPU_SIZES_GIB = (24, 48, 80)
#: vLLM's default --gpu-memory-utilization: the share of each GPU it plans to use
GPU_UTILIZATION = 0.9


def scale_out(shape: ModelShape, context_length: int, *, kv_type: str = "f16",
              parallel: int = 1) -> list[str]:
    """What would serve a model that does not fit here: per GPU size, the fewest GPUs that
    hold it with tensor parallelism (weights and KV cache split over them, each keeping its
    own activations), by the same arithmetic as :func:`estimate_memory`. Tensor-parallel
    sizes are powers of two that divide the attention heads, as vLLM requires; past 8 (one
    node) the rest is pipeline parallelism across nodes."""
    est = estimate_memory(shape, context_length, kv_type=kv_type, parallel=parallel,
                          gpu_layers=shape.n_layer + 1)
    assert est.gpu is not None
    weights = shape.weight_bytes
    kv = est.gpu.kv_cache + est.host.kv_cache
    lines = []
    for size in GPU_SIZES_GIB:
        usable = size * GIB * GPU_UTILIZATION
        for n in (1, 2, 4, 8, 16, 32, 64):
            if shape.n_head % min(n, 8):
                continue
            per_gpu = (weights + kv) / n + est.gpu.compute + GPU_RESERVE
            if per_gpu <= usable:
                tp, pp = min(n, 8), max(1, n // 8)
                how = ("llama-server -ngl 999" + " across them" * (n > 1) + ", or ") * (
                    n <= 8) + \
                    f"vLLM --tensor-parallel-size {tp}" + (
                    f" --pipeline-parallel-size {pp} ({pp} nodes)" if pp > 1 else "")
                gpus = f"{n} x {size} GB GPU" + "s" * (n > 1)
                lines.append(f"{gpus}: {per_gpu / GIB:,.1f} GiB each "
                             f"(weights {weights / n / GIB:,.1f} + KV cache "
                             f"{kv / n / GIB:,.1f} + compute and runtime "
                             f"{(est.gpu.compute + GPU_RESERVE) / GIB:,.1f}); {how}")
                break
    return lines
