"""Speculative decoding (prompt lookup): the same tokens, fewer steps.

The distribution test runs on a fake engine whose next-token distribution is known in
closed form (a Markov chain over three letters), because only there can the sampled
output be compared with the exact distribution; everything else runs on the real default
model through llama.cpp.
"""

from __future__ import annotations

import collections
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from margins import assert_greedy_agrees, wide_greedy_prefix
from scipy.stats import chisquare

import localllm
from localllm.core.engine import EngineOptions
from localllm.core.speculation import NgramDrafter, Speculation
from localllm.engines.fake import BatchingFakeEngine
from localllm.testing import _fake_model

COPY_TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen "
             "liquor jugs. How vexingly quick daft zebras jump. ") * 3
COPY = [{"role": "user", "content": "Repeat this text exactly, word for word:\n\n" + COPY_TEXT}]


def test_ngram_drafts_follow_the_latest_longest_match() -> None:
    spec = Speculation(ngram_max=3, ngram_min=1, draft_max=4)
    drafter = NgramDrafter(spec, [1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    assert drafter.draft(10) == []  # the text ends in 8, seen nowhere before
    drafter.extend([1, 2, 3])
    assert drafter.draft(10) == [4, 5, 9, 2]  # "1 2 3" went on with 4 5 9 2; at most 4
    assert drafter.draft(1) == [4]
    shorter = NgramDrafter(spec, [5, 2, 3, 4, 6, 2, 3, 7, 8, 0, 2, 3])
    assert shorter.draft(4) == [7, 8, 0, 2]  # no earlier "0 2 3": "2 3", latest first
    drafter.extend([-5, -6])  # an image's placeholders: no n-gram spans them
    assert drafter.draft(4) == []
    for _ in range(3):
        drafter.record(4, 0)
    drafter.extend([1, 2])
    assert drafter.draft(4) == []  # paused after three drafts that gained nothing
    with pytest.raises(localllm.ConfigError, match="speculative"):
        Speculation(mode="magic")


class MarkovEngine(BatchingFakeEngine):
    """Next-token probabilities that depend on the last letter only: p(b | a) etc."""

    LETTERS = b"abc"
    P = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])

    def _logits(self, history: list[int]) -> Any:
        row = np.full(self.vocab_size, -1e9, dtype=np.float32)
        last = self.LETTERS.find(bytes([history[-1]])) if history[-1] < 256 else -1
        probs = self.P[last] if last >= 0 else np.full(3, 1 / 3)
        for letter, p in zip(self.LETTERS, probs, strict=True):
            row[letter] = np.log(p)
        return row


def test_sampled_output_keeps_the_models_distribution() -> None:
    engine = MarkovEngine(EngineOptions(context_length=256, threads=1, batch_size=64,
                                        parallel=1))
    assert_keeps_the_chains_distribution(_fake_model(engine, "chatml"), "ngram")


def assert_keeps_the_chains_distribution(model: localllm.Model, mode: str) -> None:
    """3000 seeded three-token answers of a MarkovEngine model with speculation ``mode``,
    against the chain's exact distribution of the 27 answers (chi-square); drafts were
    taken and checked along the way, and every 100th seed gives the same answer with
    speculation off."""
    prompt = "abcabcabcaabbccabca"  # ends in a: the first answer letter follows a
    counts: collections.Counter[str] = collections.Counter()
    drafted = accepted = 0
    for seed in range(3000):
        done = model.complete(prompt, max_tokens=3, temperature=1.0, seed=seed,
                              speculative=mode)
        counts[done.text] += 1
        drafted += done.timings.drafted_tokens
        accepted += done.timings.accepted_tokens
        if seed % 100 == 0:
            plain = model.complete(prompt, max_tokens=3, temperature=1.0, seed=seed,
                                   speculative=None)
            assert plain.token_ids == done.token_ids
    assert drafted > 1000 and 0 < accepted < drafted
    answers = ["".join(t) for t in itertools.product("abc", repeat=3)]
    index = {c: i for i, c in enumerate("abc")}
    expected = []
    for answer in answers:
        p, last = 1.0, index["a"]
        for letter in answer:
            p *= MarkovEngine.P[last, index[letter]]
            last = index[letter]
        expected.append(p * 3000)
    assert set(counts) <= set(answers)
    _, p_value = chisquare([counts[a] for a in answers], expected)
    assert p_value > 1e-3, (counts, p_value)


@pytest.fixture(scope="module")
def speculative(default_model_path: Path) -> Any:
    with localllm.load(default_model_path, context_length=2048, threads=2, parallel=2,
                       speculative="ngram") as model:
        yield model


def test_greedy_output_is_the_models_own(speculative: localllm.Model,
                                         shared_model: localllm.Model) -> None:
    assert speculative.info.speculative == "ngram"
    spec = speculative.chat(COPY, max_tokens=96, temperature=0)
    assert spec.timings.drafted_tokens > 0
    assert spec.timings.accepted_tokens > 20  # the answer copies the prompt
    assert spec.timings.acceptance_rate is not None
    # the same tokens as decoding one at a time, up to where a near tie may tip either way
    assert_greedy_agrees(spec.token_ids, shared_model, speculative.render_chat(COPY),
                         max_tokens=len(spec.token_ids))
    off = speculative.chat(COPY, max_tokens=96, temperature=0, speculative=None)
    assert off.timings.drafted_tokens == 0


def test_seeded_sampling_is_reproducible_and_features_compose(
        speculative: localllm.Model) -> None:
    def cold(**params: Any) -> localllm.Completion:
        speculative.clear_cache()  # each run evaluates its prompt alike (no cached prefix)
        return speculative.chat(COPY, max_tokens=48, temperature=0.7, seed=11, **params)

    runs = [cold() for _ in range(2)]
    assert runs[0].token_ids == runs[1].token_ids and runs[0].timings.drafted_tokens > 0
    local = [cold(sampler="localllm", logprobs=2) for _ in range(2)]
    assert local[0].token_ids == local[1].token_ids
    assert len(local[0].logprobs) == len(local[0].token_ids)  # a row per kept token
    # every greedy step up to "lazy" has a wide margin: any CPU writes it
    wide_greedy_prefix(speculative, COPY, "lazy", max_tokens=96)
    stopped = speculative.chat(COPY, max_tokens=96, temperature=0, stop=["lazy"])
    assert "lazy" not in stopped.text and stopped.finish_reason == "stop"
    schema = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 60}},
              "required": ["text"]}
    shaped = speculative.chat(COPY, max_tokens=64, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"schema": schema}})
    assert "text" in shaped.parsed


def test_a_runtime_without_batching_refuses_it() -> None:
    from localllm.testing import FakeModel

    with FakeModel("hi") as model, pytest.raises(localllm.UnsupportedFeatureError,
                                                 match="speculative"):
        model.chat([{"role": "user", "content": "x"}], speculative="ngram")


def test_the_server_speculates_and_reports_it(default_model_path: Path) -> None:
    import httpx
    import openai
    from server_harness import served_in_thread

    with served_in_thread([str(default_model_path)], context_length=2048, threads=2,
                          parallel=1, speculative="ngram") as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id, messages=COPY, max_tokens=48,
            temperature=0)
        assert reply.choices[0].message.content
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
              if line.startswith("localllm_draft")}
    assert values["localllm_draft_tokens_total"] > 0
    assert 0 < values["localllm_draft_accepted_tokens_total"] <= \
        values["localllm_draft_tokens_total"]
    assert values["localllm_draft_acceptance_ratio"] == pytest.approx(
        values["localllm_draft_accepted_tokens_total"] / values["localllm_draft_tokens_total"],
        abs=1e-4)


def test_an_isolated_worker_speculates_alike(speculative: localllm.Model,
                                             default_model_path: Path) -> None:
    speculative.clear_cache()  # both runs start cold: the same batch shapes
    here = speculative.chat(COPY, max_tokens=48, temperature=0.7, seed=5)
    with localllm.load(default_model_path, context_length=2048, threads=2, parallel=2,
                       speculative="ngram", isolation="process") as isolated:
        there = isolated.chat(COPY, max_tokens=48, temperature=0.7, seed=5)
    assert there.timings.drafted_tokens > 0 and there.timings.accepted_tokens > 0
    # the same seed, sampler, runtime and batch shapes: the same tokens
    assert there.token_ids == here.token_ids


def test_a_tool_call_is_drafted_and_checked_by_its_grammar(speculative: localllm.Model) -> None:
    """A forced tool call whose argument copies the prompt: the grammar checks every
    drafted token like any other, and the call comes out whole and valid."""
    save = {"type": "function", "function": {
        "name": "save_note", "description": "Save a note verbatim",
        "parameters": {"type": "object", "properties": {"text": {
            "type": "string", "maxLength": 120}},
                       "required": ["text"]}}}
    ask = [{"role": "user", "content": "Save this note, word for word: " + COPY_TEXT[:120]}]
    out = speculative.chat(ask, tools=[save], tool_choice="required", max_tokens=160,
                           temperature=0, parallel_tool_calls=False)
    assert out.finish_reason == "tool_calls" and len(out.tool_calls) == 1
    call = out.tool_calls[0]
    assert call.name == "save_note" and isinstance(call.parsed_arguments["text"], str)
    assert out.timings.drafted_tokens > 0 and out.timings.accepted_tokens > 0
