"""How fast a model will run here, before loading it: decode and prompt tokens per second.

A decode step reads every weight once (memory bandwidth) and does two floating-point
operations per weight (compute). On big models the first term dominates; on small ones,
the second and llama.cpp's per-step costs do. So the estimate is

    seconds per token = weight bytes read / read bandwidth + operations / compute rate

with the read bandwidth measured by numpy (threaded, best of a few reads, as the benchmark
report does) and the compute rate calibrated once from a short real decode of the default
model. Both are cached per machine (CPU model, cores, llama.cpp version) in
``$LOCALLLM_HOME/speed.json``. Prompt processing is compute-bound: operations per token ÷
the prompt-phase rate, calibrated the same way.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass

from .planner import ModelShape

#: below this a model "fits" but is too slow for interactive use: say so
SLOW_TOKENS_PER_S = 5.0


@dataclass(frozen=True)
class SpeedProfile:
    """This machine's measured rates (bytes/s and operations/s; 0 when not calibrated)."""

    read_bandwidth: float
    decode_ops: float
    prompt_ops: float
    machine: str


@dataclass(frozen=True)
class SpeedEstimate:
    decode_tokens_per_s: float
    prompt_tokens_per_s: float

    @property
    def slow(self) -> bool:
        return self.decode_tokens_per_s < SLOW_TOKENS_PER_S


def bytes_per_token(shape: ModelShape, n_experts: int = 0, n_experts_used: int = 0) -> float:
    """Weight bytes one decode step reads: every layer and the output matrix (the token
    embedding only gives one row); a mixture of experts reads only its active experts'
    share of the feed-forward weights (Mixtral: 12.9 B of 46.7 B parameters)."""
    layers = float(sum(shape.layer_bytes))
    if n_experts and n_experts_used:
        attn = _attention_params(shape)
        ffn = 3 * shape.n_embd * shape.n_ff * n_experts
        layers *= (attn + ffn * n_experts_used / n_experts) / (attn + ffn)
    return layers + shape.output_bytes


def _attention_params(shape: ModelShape) -> int:
    return shape.n_embd * (shape.n_head * shape.head_dim_k * 2
                           + shape.n_head_kv * (shape.head_dim_k + shape.head_dim_v))


def ops_per_token(shape: ModelShape, n_experts: int = 0, n_experts_used: int = 0, *,
                  output: bool = True) -> float:
    """Multiply-adds ×2 of one token: attention projections, feed-forward and (for a
    generated token; a prompt computes it for its last token only) the output matrix,
    which in small models with big vocabularies is most of the work (Gemma 3 270M: 168 M
    of its 268 M parameters)."""
    attn = _attention_params(shape)
    ffn = 3 * shape.n_embd * shape.n_ff * (n_experts_used or 1)
    return 2.0 * (shape.n_layer * (attn + ffn) + output * shape.n_vocab * shape.n_embd)


def estimate(shape: ModelShape, profile: SpeedProfile, n_experts: int = 0,
             n_experts_used: int = 0) -> SpeedEstimate:
    """Decode and prompt tokens/s on this machine's CPU (see the module docstring)."""
    read = bytes_per_token(shape, n_experts, n_experts_used) / profile.read_bandwidth
    ops = ops_per_token(shape, n_experts, n_experts_used)
    compute = ops / profile.decode_ops if profile.decode_ops else 0.0
    prompt = profile.prompt_ops / ops_per_token(shape, n_experts, n_experts_used,
                                                output=False) if profile.prompt_ops else 0.0
    return SpeedEstimate(decode_tokens_per_s=1.0 / (read + compute),
                         prompt_tokens_per_s=prompt)


def read_bandwidth(threads: int, mib: int = 256, tries: int = 3) -> float:
    """Bytes/s numpy reads with ``threads`` threads summing their own slices."""
    import numpy as np

    data = np.ones(mib * 2**20 // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(tries):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


def speed_profile(*, refresh: bool = False, calibrate: bool = True) -> SpeedProfile:
    """This machine's profile: from the cache, else measured (bandwidth: about a second;
    calibration: a short decode of the default model, when it is in the store)."""
    from .._defaults import default_home
    from ..hardware import probe

    profile = probe(runtimes=False)
    cores = int(profile.cpu.usable_cores)
    machine = f"{profile.cpu.model} / {cores} cores / llama-cpp {_llama_version()}"
    path = default_home() / "speed.json"
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if cached.get("machine") == machine and (cached.get("decode_ops") or not calibrate):
                return SpeedProfile(**cached)
        except (OSError, ValueError, TypeError):
            pass
    bandwidth = max(read_bandwidth(1), read_bandwidth(cores))
    decode_ops, prompt_ops = _calibrate(bandwidth, cores) if calibrate else (0.0, 0.0)
    result = SpeedProfile(bandwidth, decode_ops, prompt_ops, machine)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(result)))
    except OSError:
        pass  # a read-only home: measured again next time
    return result


def _llama_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _calibrate(bandwidth: float, threads: int) -> tuple[float, float]:
    """Operations/s of decode and of prompt processing, from the default model: the decode
    time left after reading the weights is compute."""
    from ..models.gguf import read_gguf
    from ..models.loader import load
    from ..models.store import DEFAULT_MODEL, ModelStore

    store = ModelStore()
    entry = store.entry(DEFAULT_MODEL)
    if not store.is_verified(entry):
        return 0.0, 0.0
    path = store.path_for(entry)
    shape = ModelShape.from_gguf(read_gguf(path))
    with load(path, context_length=512, threads=threads, parallel=1) as model:
        prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 22)
        model.complete(prompt, max_tokens=4, temperature=0)  # warm up
        model.clear_cache()
        done = model.complete(prompt, max_tokens=48, temperature=0)
    t = done.timings
    ops = ops_per_token(shape)
    per_token = 1.0 / t.generation_tokens_per_s if t.generation_tokens_per_s else 0.0
    compute = per_token - bytes_per_token(shape) / bandwidth
    decode_ops = ops / compute if compute > 0 else 0.0
    return decode_ops, ops_per_token(shape, output=False) * t.prompt_tokens_per_s


def describe(speed: SpeedEstimate) -> str:
    text = f"~{speed.decode_tokens_per_s:.0f} tok/s decode"
    if speed.prompt_tokens_per_s:
        text += f", ~{speed.prompt_tokens_per_s:.0f} tok/s prompt"
    return text + (" (slow: under 5 tok/s)" if speed.slow else "")

