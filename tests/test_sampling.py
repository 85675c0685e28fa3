"""The numpy sampling chain against llama.cpp's own sampler chain on fixed logits.

llama.cpp's samplers run here through llama-cpp-python's C API on the same logits rows,
so greedy picks are compared one to one and sampled distributions with a chi-square
test (fixed seeds, so the outcome never changes between runs).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from scipy import stats

from localllm import SamplingParams
from localllm.engines.llamacpp import build_sampler_chain
from localllm.sampling import (
    LogitBias,
    LogitsProcessor,
    MinP,
    Penalties,
    Sampler,
    Temperature,
    TopK,
    TopP,
    TypicalP,
    softmax,
)


def llama_draws(row: np.ndarray, p: SamplingParams, n: int, seed: int = 1) -> np.ndarray:
    """Draws from llama.cpp's own samplers, chained exactly as the llama.cpp backend does."""
    import llama_cpp as lib

    chain = build_sampler_chain(lib, p, seed, row.size)
    size = row.size
    data = (lib.llama_token_data * size)()
    template = np.zeros(size, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    template["id"] = np.arange(size)
    template["logit"] = row
    raw = template.tobytes()
    out = np.empty(n, dtype=np.int64)
    try:
        for i in range(n):
            ctypes.memmove(data, raw, len(raw))
            arr = lib.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)
            lib.llama_sampler_apply(chain, ctypes.byref(arr))
            out[i] = data[arr.selected].id
    finally:
        lib.llama_sampler_free(chain)
    return out


def test_greedy_picks_are_identical_to_llama_cpp() -> None:
    rng = np.random.default_rng(0)
    greedy = SamplingParams(temperature=0)
    for trial in range(200):
        row = (rng.standard_normal(49152) * rng.uniform(0.5, 8)).astype(np.float32)
        ours = Sampler(greedy, seed=trial).sample([], row)
        assert ours == int(llama_draws(row, greedy, 1)[0]) == int(np.argmax(row))


CASES = [
    SamplingParams(temperature=0.8),  # llama.cpp defaults: top-k 40, top-p 0.95, min-p 0.05
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=0.7, top_k=10, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=0.7),
    SamplingParams(temperature=0.5, top_k=20, top_p=0.9, min_p=0.02, typical_p=0.95),
]


@pytest.mark.parametrize("params", CASES, ids=lambda p: f"t{p.temperature}-k{p.top_k}-"
                         f"p{p.top_p}-m{p.min_p}-y{p.typical_p}")
def test_sampled_distribution_matches_llama_cpp(params: SamplingParams) -> None:
    rng = np.random.default_rng(42)
    row = (rng.standard_normal(64) * 2.0).astype(np.float32)
    n = 20_000
    expected = Sampler(params, seed=0).probabilities([], row)
    theirs = np.bincount(llama_draws(row, params, n, seed=3), minlength=row.size)
    sampler = Sampler(params, seed=5)
    ours = np.bincount([sampler.sample([], row) for _ in range(n)], minlength=row.size)
    support = expected > 0
    # same support: llama.cpp never draws a token our chain removed, and vice versa
    assert theirs[~support].sum() == 0 and ours[~support].sum() == 0
    for counts in (theirs, ours):
        big = expected * n >= 5
        obs = np.append(counts[big], counts[support & ~big].sum())
        exp = np.append(expected[big] * n, expected[support & ~big].sum() * n)
        keep = exp > 0
        result = stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum())
        assert result.pvalue > 1e-3, (counts, expected)


def test_processors_never_mutate_their_input() -> None:
    rng = np.random.default_rng(1)
    row = rng.standard_normal(500).astype(np.float32)
    row[7] = -np.inf
    procs: list[LogitsProcessor] = [
        LogitBias({1: 5.0, 2: -np.inf}), Penalties(1.3, 0.5, 0.5, 64), TopK(10), TopP(0.9),
        MinP(0.1), TypicalP(0.8), Temperature(0.7), Temperature(0.0)]
    for proc in procs:
        before = row.copy()
        out = proc([1, 2, 3, 3], row)
        assert np.array_equal(row, before, equal_nan=True), type(proc).__name__
        assert out is not row or isinstance(proc, TopK | TopP | MinP | TypicalP)
        assert isinstance(proc, LogitsProcessor)


def test_penalties_follow_llama_cpp_arithmetic() -> None:
    row = np.array([2.0, -2.0, 1.0, 0.5], dtype=np.float32)
    out = Penalties(repeat=2.0, frequency=0.1, presence=0.5, last_n=8)([0, 0, 1], row)
    # token 0 seen twice (positive: divided), token 1 once (negative: multiplied)
    assert out[0] == pytest.approx(2.0 / 2 - 2 * 0.1 - 0.5)
    assert out[1] == pytest.approx(-2.0 * 2 - 0.1 - 0.5)
    assert list(out[2:]) == [1.0, 0.5]
    assert np.array_equal(Penalties(2.0, 0, 0, 1)([0, 1], row)[:1], row[:1])  # window


def test_filters_keep_the_documented_sets() -> None:
    row = np.log(np.array([0.5, 0.25, 0.15, 0.1], dtype=np.float32))
    assert np.isfinite(TopP(0.7)([], row)).tolist() == [True, True, False, False]
    assert np.isfinite(TopP(0.75)([], row)).tolist() == [True, True, False, False]
    assert np.isfinite(MinP(0.35)([], row)).tolist() == [True, True, False, False]
    assert np.isfinite(TopK(3)([], row)).tolist() == [True, True, True, False]
    assert softmax(Temperature(0.0)([], row)).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_same_seed_same_draws() -> None:
    row = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    a = Sampler(SamplingParams(), seed=9)
    b = Sampler(SamplingParams(), seed=9)
    assert [a.sample([], row) for _ in range(50)] == [b.sample([], row) for _ in range(50)]


def test_all_masked_is_a_clear_error() -> None:
    row = np.full(10, -np.inf, dtype=np.float32)
    with pytest.raises(ValueError, match="masked"):
        Sampler(SamplingParams(), seed=0).sample([], row)
