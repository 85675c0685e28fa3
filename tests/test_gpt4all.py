"""The gpt4all backend (2.8.2) on the real default model, through a compatibility copy,
and every gpt4all failure mode turned into a typed error."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from margins import assert_greedy_agrees

import localllm
from localllm.core.engine import EngineOptions
from localllm.engines.gpt4all import GPT4AllEngine, compatibility_problems
from localllm.models.gguf import copy_with_metadata, read_gguf
from localllm.testing import BackendContract

COMPAT = {"compat_copy": True}
PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "1, 1, 2, 3, 5,",
           "The three primary colors are", "Water boils at", "My favourite food is",
           "import numpy as np\n"]


class TestGPT4AllContract(BackendContract):
    @pytest.fixture
    def model(self, default_model_path: Path) -> Iterator[localllm.Model]:
        with localllm.load(default_model_path, backend="gpt4all", context_length=512,
                           threads=2, backend_options=COMPAT) as m:
            yield m


def test_default_model_is_refused_with_the_reason_and_the_way_out(
        default_model_path: Path) -> None:
    with pytest.raises(localllm.UnsupportedModelError) as info:
        localllm.load(default_model_path, backend="gpt4all", context_length=512)
    message = str(info.value)
    assert "pre-tokenizer 'smollm'" in message and "backend='llama.cpp'" in message
    assert "compat_copy" in message


def test_compat_copy_is_cached_and_leaves_the_original_untouched(
        default_model_path: Path) -> None:
    before = hashlib.sha256(default_model_path.read_bytes()).hexdigest()
    with localllm.load(default_model_path, backend="gpt4all", context_length=256,
                       backend_options=COMPAT) as m:
        assert m.info.backend == "gpt4all" and m.info.placement.device == "cpu"
    with localllm.load(default_model_path, backend="gpt4all", context_length=256,
                       backend_options=COMPAT):
        pass
    assert hashlib.sha256(default_model_path.read_bytes()).hexdigest() == before
    copies = list((localllm.ModelStore().home / "compat").glob("*/*.gguf"))
    assert any(read_gguf(c).metadata["tokenizer.ggml.pre"] == "starcoder" for c in copies)


def test_greedy_output_matches_the_llama_cpp_backend(default_model_path: Path) -> None:
    """Both run llama.cpp (gpt4all's is from 2024): flash attention off and the same batch
    size make the arithmetic comparable; the first 16 greedy tokens of each prompt agree
    up to a step where llama.cpp's top-2 margin is below NEAR_TIE, if any: there the two
    versions' kernels (and each CPU's) may tip the choice either way."""
    gpt = localllm.load(default_model_path, backend="gpt4all", context_length=1024,
                        threads=2, backend_options=COMPAT)
    ref = localllm.load(default_model_path, context_length=1024, threads=2,
                        backend_options={"flash_attention": False})
    try:
        for prompt in PROMPTS:
            tokens = gpt.complete(prompt, max_tokens=16, temperature=0).token_ids
            assert_greedy_agrees(tokens, ref, prompt, max_tokens=16)
    finally:
        gpt.close()
        ref.close()


def test_greedy_output_equals_llama_cpp_on_f32_weights(
        default_model_f32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the F32 copy of the default model's weights the two llama.cpp generations do the
    same arithmetic but for rounding (kernel versions, fp16 KV cache, each CPU's SIMD
    width): all 8 prompts give the same 32 greedy tokens (through the compat copy), up to
    a near-tied step, if any."""
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))  # the 540 MB compat copy stays here
    gpt = localllm.load(default_model_f32, backend="gpt4all", context_length=512,
                        threads=2, backend_options=COMPAT)
    ref = localllm.load(default_model_f32, context_length=512, threads=2)
    try:
        for prompt in PROMPTS:
            tokens = gpt.complete(prompt, max_tokens=32, temperature=0).token_ids
            assert_greedy_agrees(tokens, ref, prompt, max_tokens=32)
    finally:
        gpt.close()
        ref.close()


def test_failed_native_load_raises_instead_of_a_silent_broken_model(
        default_model_path: Path) -> None:
    with pytest.raises(localllm.BackendError, match="gpt4all failed to load") as info:
        localllm.load(default_model_path, backend="gpt4all", context_length=256,
                      backend_options={"check_compatibility": False})
    assert "smollm" in str(info.value) or "ERROR" in str(info.value)


def test_prompt_over_the_context_is_an_error_not_text(default_model_path: Path) -> None:
    gguf = read_gguf(default_model_path)
    engine = GPT4AllEngine.open(gguf, EngineOptions(context_length=64, threads=2,
                                                    batch_size=64, backend_options=COMPAT))
    try:
        prompt = engine.tokenize("word " * 200, add_special=False, parse_special=False)
        with pytest.raises(localllm.BackendError, match="gpt4all"):
            list(engine.generate(prompt, localllm.SamplingParams(), seed=1))
    finally:
        engine.close()


def test_compatibility_knowledge(tmp_path: Path, default_model_path: Path) -> None:
    assert compatibility_problems(read_gguf(default_model_path)) == ["pre-tokenizer 'smollm'"]
    fixed = tmp_path / "fixed.gguf"
    copy_with_metadata(default_model_path, fixed, {"tokenizer.ggml.pre": "starcoder"})
    assert compatibility_problems(read_gguf(fixed)) == []
    odd = tmp_path / "odd.gguf"
    copy_with_metadata(default_model_path, odd, {"general.architecture": "mamba2"})
    assert "architecture 'mamba2'" in compatibility_problems(read_gguf(odd))


def test_unknown_backend_option_is_an_error(default_model_path: Path) -> None:
    with pytest.raises(localllm.ConfigError, match="compat_copy"):
        localllm.load(default_model_path, backend="gpt4all", backend_options={"compat": 1})
