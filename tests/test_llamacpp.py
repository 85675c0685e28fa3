"""The llama.cpp backend on the real default model (SmolLM2-135M-Instruct Q4_1).

These tests never skip: without llama-cpp-python or the model they fail, loudly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from margins import wide_greedy_prefix

import localllm
from localllm.testing import BackendContract

QUESTION = [{"role": "user", "content": "Name the capital of France."}]


class TestLlamaCppContract(BackendContract):
    @pytest.fixture
    def model(self, default_model_path: Path) -> Iterator[localllm.Model]:
        with localllm.load(default_model_path, context_length=512, threads=2) as m:
            yield m


def test_info_describes_file_runtime_and_placement(shared_model: localllm.Model) -> None:
    info = shared_model.info
    assert (info.format, info.architecture, info.quantization) == ("gguf", "llama", "Q4_1")
    assert info.parameter_count == 134_515_008
    assert (info.trained_context_length, info.context_length) == (8192, 1024)
    assert info.backend == "llama.cpp" and info.backend_version == "0.3.36"
    assert info.threads == 2 and info.placement.device == "cpu"
    assert info.placement.total_layers == 30 and info.has_chat_template


def test_greedy_chat_answers_the_question(shared_model: localllm.Model) -> None:
    """"Paris" is asserted only because every greedy step up to it has a wide top-2
    margin (checked here), so every CPU's kernels write it; where the answer ends is not
    that sure, so the finish reason is checked for consistency, not for a value."""
    result = shared_model.chat(QUESTION, temperature=0, max_tokens=40)
    wide_greedy_prefix(shared_model, QUESTION, "Paris", max_tokens=40)
    assert "Paris" in result.text
    assert result.stop_sequence is None
    if result.finish_reason == "stop":  # the model's end-of-turn token (<|im_end|>)
        assert shared_model._engine is not None
        assert shared_model._engine.is_end_of_generation(result.token_ids[-1])
    else:
        assert result.finish_reason == "length" and result.usage.completion_tokens == 40
    assert result.usage.prompt_tokens == shared_model.count_tokens(QUESTION)
    assert result.timings.generation_tokens_per_s > 0


def test_output_matches_raw_llama_cpp_python(default_model_path: Path) -> None:
    """Same model, same seed and params → the same text as llama-cpp-python's own API.

    llama.cpp's context default enables flash attention on the CPU; llama-cpp-python's
    ``Llama`` turns it off, so the raw side asks for it to compare like with like. Both
    sides are fresh one-sequence contexts of the same llama.cpp build in this process,
    given the same prompts in the same order: their KV caches hold the same cells in the
    same order, so their logits are bit-identical on any CPU and a seed draws the same
    tokens on both (which tokens those are differs between CPUs, and is not asserted)."""
    from llama_cpp import Llama

    raw = Llama(str(default_model_path), n_ctx=1024, n_threads=2, verbose=False,
                flash_attn=True)
    try:
        with localllm.load(default_model_path, context_length=1024, threads=2,
                           parallel=1) as model:
            for prompt, params in [
                    ("The three primary colors are", {"temperature": 0.0}),
                    ("Once upon a time", {"seed": 42}),
                    ("def fibonacci(n):", {"seed": 7, "top_k": 20, "min_p": 0.1})]:
                ours = model.complete(prompt, max_tokens=32, **params)
                raw_params = {"seed": 42, **params}
                theirs = raw.create_completion(prompt, max_tokens=32, **raw_params)
                assert ours.text == theirs["choices"][0]["text"], prompt  # type: ignore[index]
    finally:
        raw.close()


def test_stop_string_spanning_two_tokens(shared_model: localllm.Model) -> None:
    """The stop string is cut from the greedy answer's first tokens, all of them steps
    with a wide top-2 margin (checked here): every run of this test, on any CPU and
    whatever the KV cache holds from earlier requests, writes those tokens again."""
    prompt = shared_model.render_chat(QUESTION)
    stable = len(wide_greedy_prefix(shared_model, prompt, "Paris", max_tokens=24))
    free = shared_model.complete(prompt, max_tokens=24, temperature=0)
    pieces = [shared_model.tokenizer.decode([t]) for t in free.token_ids[:stable]]
    i = next(i for i in range(1, len(pieces) - 1)
             if len(pieces[i].strip()) >= 2 and len(pieces[i + 1].strip()) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    prefix = "".join(pieces[:i]) + pieces[i][:-2]
    cut = shared_model.complete(prompt, max_tokens=24, temperature=0, stop=[stop])
    assert cut.text == prefix[: prefix.find(stop)] if stop in prefix else cut.text == prefix
    assert stop not in cut.text and cut.stop_sequence == stop
    assert cut.finish_reason == "stop"
    streamed = [c.text for c in shared_model.stream(prompt, max_tokens=24, temperature=0,
                                                    stop=[stop])]
    assert "".join(streamed) == cut.text


def test_real_vocabulary_splits_characters_and_decodes_them(
        shared_model: localllm.Model) -> None:
    text = "🙂 東京 ﷺ"
    ids = shared_model.tokenizer.encode(text, add_special=False)
    engine = shared_model._engine
    assert engine is not None
    partial = [t for t in ids if _incomplete_utf8(engine.token_bytes(t))]
    assert partial, "expected byte-level tokens that split a character"
    assert shared_model.tokenizer.decode(ids) == text


def _incomplete_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_logit_bias_and_penalties_change_the_output(shared_model: localllm.Model) -> None:
    base = shared_model.complete("The capital of France is", max_tokens=8, temperature=0)
    first = base.token_ids[0]
    banned = shared_model.complete("The capital of France is", max_tokens=8, temperature=0,
                                   logit_bias={first: float("-inf")})
    assert banned.token_ids[0] != first
    forced = shared_model.complete("The capital of France is", max_tokens=3, temperature=0,
                                   logit_bias={first + 1: 100.0})
    assert forced.token_ids == (first + 1,) * 3


def test_prompt_cache_reuses_the_common_prefix(shared_model: localllm.Model) -> None:
    """The continuation of the repeated list is compared between a run that evaluated
    the whole prompt and one that reused the cached prefix: another batch shape, so
    other float sums. Its greedy steps all have wide top-2 margins (checked here), so the
    two runs write the same text on any CPU."""
    long_prompt = "Here is a list of fruits: " + ", ".join(["apple", "pear", "plum"] * 60)
    cold = shared_model.complete(long_prompt + ", apple", max_tokens=4, temperature=0)
    warm = shared_model.complete(long_prompt + ", pear", max_tokens=4, temperature=0)
    shared = len(shared_model.tokenizer.encode(long_prompt))
    assert cold.usage.cached_prompt_tokens < shared - 2
    # only the tail ran
    assert shared - 2 <= warm.usage.cached_prompt_tokens < warm.usage.prompt_tokens
    other = shared_model.complete("Unrelated text " + long_prompt + ", pear", max_tokens=1,
                                  temperature=0)
    assert other.usage.cached_prompt_tokens == 0  # a different start shares nothing
    # reused state must not change results: the cached prefix gives the same continuation
    again = shared_model.complete(long_prompt + ", apple", max_tokens=4, temperature=0)
    assert again.usage.cached_prompt_tokens >= shared - 2
    wide_greedy_prefix(shared_model, long_prompt + ", apple", cold.text, max_tokens=4)
    assert again.text == cold.text


def test_gpu_request_on_a_cpu_build_is_refused(default_model_path: Path) -> None:
    with pytest.raises(localllm.UnsupportedFeatureError, match="GPU"):
        localllm.load(default_model_path, gpu_layers=99)
    with pytest.raises(localllm.UnsupportedFeatureError, match="GPU"):
        localllm.load(default_model_path, device="gpu")


def test_load_option_errors(default_model_path: Path) -> None:
    with pytest.raises(localllm.UnknownBackendError, match=r"llama\.cpp"):
        localllm.load(default_model_path, backend="llamacpp")
    with pytest.raises(localllm.ConfigError, match="trained on 8192"):
        localllm.load(default_model_path, context_length=100_000)
    with pytest.raises(localllm.ConfigError, match="threads=0"):
        localllm.load(default_model_path, threads=0)
    with pytest.raises(localllm.ConfigError, match="batch_size"):
        localllm.load(default_model_path, context_length=256, batch_size=1000)
    with pytest.raises(localllm.ChatTemplateError, match="neither a known name"):
        localllm.load(default_model_path, chat_template="vicuna-ish")
    with pytest.raises(localllm.ModelNotFoundError, match="smollm2-135m-instruct"):
        localllm.load("no-such-model")


def test_explicit_named_template_overrides_the_file(default_model_path: Path) -> None:
    with localllm.load(default_model_path, context_length=256, chat_template="zephyr") as m:
        assert m.render_chat(QUESTION).startswith("<|user|>\nName the capital")


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_llama_cpp_chatter_goes_to_logging_not_stderr(default_model_path: Path) -> None:
    proc = _run_python(f"""
        import logging, localllm
        records = []
        class Keep(logging.Handler):
            def emit(self, record): records.append(record.getMessage())
        logging.getLogger("localllm").addHandler(Keep())
        logging.getLogger("localllm").setLevel(logging.DEBUG)
        with localllm.load({str(default_model_path)!r}, context_length=256) as m:
            m.complete("Hi", max_tokens=2)
        assert any("llama_context" in r or "llama_model_loader" in r for r in records), records
        print("ok", len(records))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
    assert proc.stderr == ""


def test_missing_runtime_names_the_extra(default_model_path: Path) -> None:
    """Simulates an environment without llama-cpp-python by blocking its import (it cannot
    be uninstalled for one test)."""
    proc = _run_python(f"""
        import sys
        sys.modules["llama_cpp"] = None  # makes `import llama_cpp` raise ImportError
        import localllm
        try:
            localllm.load({str(default_model_path)!r}, backend="llama.cpp")
        except localllm.BackendUnavailableError as exc:
            assert isinstance(exc, ImportError)
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "localllm[llama-cpp]"' in proc.stdout


def test_import_is_light_and_loads_no_runtime() -> None:
    """``import localllm`` brings in no runtime and none of the heavy libraries behind
    one, which is what keeps it fast (the time itself is measured in
    benchmarks/bench_import.py, against the runtime's own import)."""
    proc = _run_python("""
        import sys
        import localllm
        localllm.load, localllm.plan, localllm.Model, localllm.ModelStore
        heavy = [m for m in ("llama_cpp", "onnxruntime", "onnxruntime_genai", "gpt4all",
                             "ctransformers", "numpy", "jinja2", "gguf", "tokenizers",
                             "starlette")
                 if m in sys.modules]
        print(heavy)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_kv_cache_estimate_equals_what_llama_cpp_allocates(default_model_path: Path,
                                                           kv_type: str) -> None:
    import logging
    import re

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("localllm.llama_cpp")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with localllm.load(default_model_path, context_length=2048, kv_type=kv_type) as m:
            planned = m.info.plan.memory.host.kv_cache
            # the cache works: a greedy first step wide enough for any CPU (checked)
            wide_greedy_prefix(m, "The capital of France is", " Paris", max_tokens=1)
            assert "Paris" in m.complete("The capital of France is", max_tokens=4,
                                         temperature=0).text
    finally:
        logger.removeHandler(handler)
    reported = next(float(x.group(1)) for x in (re.search(r"KV buffer size =\s+([\d.]+) MiB", ln)
                                                for ln in lines) if x)
    assert planned / 2**20 == pytest.approx(reported, abs=0.01)


def test_clear_cache_makes_the_next_request_evaluate_its_whole_prompt(
        shared_model: localllm.Model) -> None:
    prompt = "A long enough prompt about rivers, mountains and the sea, told twice."
    shared_model.complete(prompt, max_tokens=2, temperature=0)
    again = shared_model.complete(prompt, max_tokens=2, temperature=0)
    assert again.usage.cached_prompt_tokens > 0  # the idle sequence kept the prefix
    shared_model.clear_cache()
    fresh = shared_model.complete(prompt, max_tokens=2, temperature=0)
    assert fresh.usage.cached_prompt_tokens == 0
    assert fresh.token_ids == again.token_ids
