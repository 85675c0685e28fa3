"""Speculative decoding with a draft model: a smaller model of the same vocabulary guesses,
the target checks, and the output is the target's own.

The real pair is the default model (Q4_1) drafting for an f16 copy of the same weights
written by ``change_precision``: the only same-vocabulary pair this machine has. The
distribution test runs on two fake engines with known next-token distributions, because
only there can the sampled output be compared with the exact distribution.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from margins import assert_greedy_agrees
from test_speculation import COPY, MarkovEngine, assert_keeps_the_chains_distribution

import localllm
from localllm import DraftModelError
from localllm.core.engine import EngineOptions
from localllm.core.speculation import DraftModel
from localllm.models.convert_precision import change_precision
from localllm.models.draft import check_vocabulary
from localllm.testing import _fake_model

GEMMA = "gemma-3-270m"


@pytest.fixture(scope="module")
def f16_copy(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Written as a user would: ``localllm convert MODEL OUT.gguf --dtype f16``."""
    from localllm import cli

    out = tmp_path_factory.mktemp("f16") / "f16.gguf"
    assert cli.main(["convert", str(default_model_path), str(out), "--dtype", "f16"]) == 0
    return out


def test_the_f16_copy_holds_the_same_weights(f16_copy: Path,
                                             default_model_path: Path) -> None:
    import gguf

    quantized, wide = gguf.GGUFReader(default_model_path), gguf.GGUFReader(f16_copy)
    assert [t.name for t in wide.tensors] == [t.name for t in quantized.tensors]
    for q, w in zip(quantized.tensors, wide.tensors, strict=True):
        exact = gguf.quants.dequantize(q.data, q.tensor_type)
        assert w.data.shape == exact.shape, q.name
        assert w.tensor_type == (gguf.GGMLQuantizationType.F16 if exact.ndim >= 2
                                 else gguf.GGMLQuantizationType.F32)
        # f16 keeps 11 bits: the dequantized weights to its rounding
        np.testing.assert_allclose(w.data.astype(np.float32), exact, rtol=1e-3, atol=1e-6)
    header = localllm.read_gguf(f16_copy)
    original = localllm.read_gguf(default_model_path)
    assert header.metadata["tokenizer.ggml.tokens"] == original.metadata["tokenizer.ggml.tokens"]
    assert header.chat_template == original.chat_template
    assert header.metadata["general.file_type"] == 1  # mostly f16
    with pytest.raises(localllm.ConfigError, match="exists"):
        change_precision(default_model_path, f16_copy)
    with pytest.raises(localllm.ConfigError, match="int8"):
        change_precision(default_model_path, f16_copy.with_name("other.gguf"), dtype="int8")


def test_the_q8_0_copy_holds_the_weights_to_its_rounding(default_model_path: Path,
                                                       tmp_path: Path) -> None:
    """``--dtype q8_0``: every matrix in Q8_0 blocks (a batched step of it runs on GEMM
    kernels, see docs/concurrency.md), each value within half a Q8_0 step of the
    original's, and the copy loads and generates."""
    import gguf

    from localllm import cli

    out = tmp_path / "q8.gguf"
    assert cli.main(["convert", str(default_model_path), str(out), "--dtype", "q8_0"]) == 0
    quantized, q8 = gguf.GGUFReader(default_model_path), gguf.GGUFReader(out)
    for q, w in zip(quantized.tensors, q8.tensors, strict=True):
        exact = gguf.quants.dequantize(q.data, q.tensor_type)
        if exact.ndim < 2:
            assert w.tensor_type == gguf.GGMLQuantizationType.F32, q.name
            continue
        assert w.tensor_type == gguf.GGMLQuantizationType.Q8_0, q.name
        got = gguf.quants.dequantize(w.data, w.tensor_type)
        blocks = exact.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # Q8_0's step per block
        error = np.abs(got.reshape(-1, 32) - blocks)
        # half a step, plus up to 127 times the f16 rounding of the step itself
        assert (error <= step * (0.5 + 127 / 2048) + 1e-7).all(), q.name
    assert localllm.read_gguf(out).metadata["general.file_type"] == 7  # mostly Q8_0
    with localllm.load(out, context_length=256) as model:
        assert model.complete("The capital of France is", max_tokens=6,
                              temperature=0).usage.completion_tokens > 0


def test_a_draft_of_another_vocabulary_is_refused(default_model_path: Path) -> None:
    model_store = localllm.ModelStore()
    gemma = model_store.ensure(GEMMA)
    with pytest.raises(DraftModelError, match=r"262144 tokens.*49152"):
        localllm.load(default_model_path, draft=gemma, context_length=512)
    ours = localllm.read_gguf(default_model_path)
    tokens = list(ours.metadata["tokenizer.ggml.tokens"])
    tokens[300] = "elsewhere"
    other = dataclasses.replace(ours, metadata={**ours.metadata,
                                                "tokenizer.ggml.tokens": tokens})
    with pytest.raises(DraftModelError, match="token 300 = 'elsewhere'"):
        check_vocabulary(ours, other)
    shifted = dataclasses.replace(ours, metadata={**ours.metadata,
                                                  "tokenizer.ggml.eos_token_id": 0})
    with pytest.raises(DraftModelError, match="eos_token_id"):
        check_vocabulary(ours, shifted)
    embedder = model_store.ensure("all-minilm-l6-v2-onnx-int8")
    with pytest.raises(DraftModelError, match="one sequence at a time"):
        localllm.load(default_model_path, draft=embedder, context_length=512)
    with pytest.raises(localllm.ConfigError, match="needs a draft model"):
        localllm.load(default_model_path, speculative="draft", context_length=512)


@pytest.fixture(scope="module")
def drafted(f16_copy: Path, default_model_path: Path) -> Any:
    with localllm.load(f16_copy, draft=default_model_path, context_length=2048, threads=2,
                       parallel=3) as model:
        yield model


def test_greedy_output_is_the_targets_own(drafted: localllm.Model) -> None:
    assert drafted.info.speculative == "draft" and drafted.info.draft
    assert drafted.info.quantization == "F16"
    spec = drafted.chat(COPY, max_tokens=96, temperature=0)
    # the Q4_1 weights guess their own f16 copy's tokens: most drafts are taken
    assert spec.timings.drafted_tokens > 40
    assert spec.timings.accepted_tokens > spec.timings.drafted_tokens // 2
    prompt = drafted.render_chat(COPY)
    off = drafted.complete(prompt, max_tokens=96, temperature=0, speculative=None)
    assert off.timings.drafted_tokens == 0
    # the target's own tokens, one at a time, up to a near tie either way may tip
    assert_greedy_agrees(spec.token_ids, _Plain(drafted), prompt,
                         max_tokens=len(spec.token_ids))
    ngram = drafted.chat(COPY, max_tokens=32, temperature=0, speculative="ngram")
    assert ngram.timings.drafted_tokens > 0  # the per-request override still works


class _Plain:
    """The drafted model with speculation off, for the margin helper's greedy run."""

    def __init__(self, model: localllm.Model) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.complete(*args, speculative=None, **kwargs)


def test_concurrent_streams_draft_together(drafted: localllm.Model) -> None:
    """Three streams draft in the same batched draft steps; at temperature 0 each one's
    tokens, together and alone (cold caches), are the target's own under the margin
    rule."""
    prompts = [[{"role": "user", "content": f"({i}) " + COPY[0]["content"]}]
               for i in range(3)]
    alone = []
    for messages in prompts:
        drafted.clear_cache()
        alone.append(drafted.chat(messages, max_tokens=40, temperature=0))
    drafted.clear_cache()
    together: list[Any] = [None] * 3

    def one(i: int) -> None:
        together[i] = drafted.chat(prompts[i], max_tokens=40, temperature=0)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert all(t is not None and t.timings.accepted_tokens > 0 for t in together)
    for a, t, messages in zip(alone, together, prompts, strict=True):
        assert_greedy_agrees(t.token_ids, _Plain(drafted), drafted.render_chat(messages),
                             max_tokens=len(t.token_ids))
        assert_greedy_agrees(a.token_ids, _Plain(drafted), drafted.render_chat(messages),
                             max_tokens=len(a.token_ids))


def test_seeded_runs_repeat_and_a_worker_process_drafts_alike(
        drafted: localllm.Model, f16_copy: Path, default_model_path: Path) -> None:
    def cold(model: localllm.Model) -> localllm.Completion:
        model.clear_cache()
        return model.chat(COPY, max_tokens=40, temperature=0.7, seed=3)

    first, second = cold(drafted), cold(drafted)
    assert first.token_ids == second.token_ids and first.timings.drafted_tokens > 0
    with localllm.load(f16_copy, draft=default_model_path, context_length=2048, threads=2,
                       parallel=3, isolation="process") as isolated:
        assert isolated.info.isolation == "process"
        there = cold(isolated)
    assert there.token_ids == first.token_ids
    assert there.timings.drafted_tokens == first.timings.drafted_tokens


class SteadyEngine(MarkovEngine):
    """A draft that believes each letter repeats (p = 0.8), where the target's chain
    does not: its drafts are often refused."""

    P = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])


def test_sampled_output_keeps_the_targets_distribution() -> None:
    """Drafted by another chain, the answers still follow the target chain's exact
    distribution (chi-square over 3000 seeded answers)."""
    options = EngineOptions(context_length=256, threads=1, batch_size=64, parallel=1)
    draft = DraftModel(SteadyEngine(options), "steady")
    with _fake_model(MarkovEngine(options), "chatml", draft=draft) as model:
        assert_keeps_the_chains_distribution(model, "draft")


def test_the_server_drafts_with_a_draft_model(f16_copy: Path, default_model_path: Path) -> None:
    import httpx
    import openai
    from server_harness import served_in_thread

    with pytest.raises(localllm.ConfigError, match="drafts for one model"), \
            served_in_thread([str(f16_copy), str(default_model_path)],
                             draft=str(default_model_path)):
        pass
    with served_in_thread([str(f16_copy)], context_length=2048, threads=2, parallel=1,
                          draft=str(default_model_path)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id, messages=COPY,  # type: ignore[arg-type]
            max_tokens=48, temperature=0)
        assert reply.choices[0].message.content
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("localllm_draft")}
    assert values["localllm_draft_tokens_total"] > 0
    assert 0 < values["localllm_draft_accepted_tokens_total"] <= \
        values["localllm_draft_tokens_total"]
