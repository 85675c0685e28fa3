"""Test helpers: a runtime-free ``FakeModel`` and the backend contract suite.

Every backend adopts :class:`BackendContract` by subclassing it in its own test module
and providing a ``model`` fixture. Tests that need a capability skip by the capability
the backend declares, never by backend name. Requires pytest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import pytest

from ._errors import (
    ConfigError,
    ContextOverflowError,
    ModelClosedError,
    UnsupportedFeatureError,
)
from ._types import DevicePlacement, ModelInfo, SamplingParams
from .core.engine import EngineOptions
from .core.local import LocalGenerator
from .core.model import Model
from .engines.fake import DEFAULT_REPLY, BatchingFakeEngine, FakeEngine
from .sampling import Logits, LogitsProcessor
from .templates.chat import resolve_template

__all__ = ["BackendContract", "BatchingFakeModel", "FakeModel", "next_token_logits"]


def FakeModel(reply: str = DEFAULT_REPLY, *, context_length: int = 512,
              chat_template: str = "chatml") -> Model:
    """A ``Model`` on the fake engine: scripted ``reply``, byte-level tokens, no runtime.

    >>> from localllm.testing import FakeModel
    >>> with FakeModel("Paris.") as model:
    ...     model.chat([{"role": "user", "content": "Capital of France?"}]).text
    'Paris.'
    """
    options = EngineOptions(context_length=context_length, threads=1, batch_size=64)
    return _fake_model(FakeEngine(options, reply), chat_template)


def BatchingFakeModel(*, parallel: int = 4, context_length: int = 512, batch_size: int = 64,
                      chat_template: str = "chatml") -> Model:
    """A ``Model`` on a fake engine that implements the batched contract itself
    (``parallel`` sequences in one step, prefix copies, logits): the scheduler's batching
    without a runtime. Its text is a deterministic function of each sequence's history."""
    options = EngineOptions(context_length=context_length, threads=1, batch_size=batch_size,
                            parallel=parallel)
    return _fake_model(BatchingFakeEngine(options), chat_template)


def _fake_model(engine: FakeEngine, chat_template: str, draft: Any = None) -> Model:
    """A model over a fake engine (``draft``: a DraftModel for speculative="draft")."""
    options = engine._options
    info = ModelInfo(
        path="<fake>", name="fake", format="fake", architecture="fake", parameter_count=0,
        quantization="none", file_size=0, vocab_size=engine.vocab_size,
        trained_context_length=options.context_length,
        context_length=options.context_length, backend=engine.backend_name,
        backend_version=engine.backend_version, threads=1, batch_size=options.batch_size,
        parallel=options.parallel, placement=DevicePlacement(), has_chat_template=True)
    return Model(LocalGenerator(engine, info, resolve_template(chat_template, None), "<s>",
                                "</s>", load_s=0.0, draft=draft))


def next_token_logits(model: Model, ids: Sequence[int]) -> Any:
    """The logits row after ``ids`` (numpy float32), evaluated as any request is: through
    the model's scheduler, so the KV cache stays the scheduler's (no engine call behind its
    back). For engines that expose logits."""
    from .core.scheduler import Request

    request = model._scheduler.submit(Request(
        prompt=list(ids), params=SamplingParams(temperature=0.0), seed=0, budget=1,
        native=False, logprobs=True))
    delivered = list(request.tokens())
    if len(delivered) != 1:
        raise AssertionError(f"one token was asked for, {len(delivered)} came")
    _token, row = delivered[0]
    return row


#: Top-2 logit margin below which two float paths may pick different greedy tokens. On the
#: default model the margin at one step was seen to move by 0.15 between two solo runs
#: whose prompts were evaluated in differently shaped batches (prefix reuse). Batched
#: decoding moves logits further: see :data:`BATCH_NEAR_TIE`.
NEAR_TIE = 0.5


#: Between a solo run and a batched decode of the same prompt (another KV layout, another
#: batch shape) one step's margin was seen to move by 0.54 on one CPU, and single logits by
#: up to 1.2. A batched greedy run may part from its solo run only to a token whose solo
#: logit at that step is within this of the top: any other token would mean another
#: sequence's data leaked in.
BATCH_NEAR_TIE = 1.5


class GreedyTrace(NamedTuple):
    """A greedy run alone: its tokens, the top-1 minus top-2 logit margin at each step, and
    the tokens within :data:`BATCH_NEAR_TIE` of the top at each step (the top included)."""

    ids: tuple[int, ...]
    margins: list[float]
    contenders: list[frozenset[int]]


def greedy_trace(model: Model, prompt: str, max_tokens: int,
                 logits_processors: Sequence[LogitsProcessor] = ()) -> GreedyTrace:
    """Greedy tokens of ``prompt`` run alone, with each step's margin and near-tied
    tokens (after ``logits_processors``). Another float path (a batch, another CPU's
    kernels) may pick differently only where that margin is small, so tests compare texts
    with it, not blindly."""
    import numpy as np

    margins: list[float] = []
    contenders: list[frozenset[int]] = []

    def record(input_ids: Sequence[int], logits: Logits) -> Logits:
        top = np.partition(logits, -2)[-2:]
        margins.append(float(top[1] - top[0]))
        near = np.flatnonzero(logits >= top[1] - BATCH_NEAR_TIE)
        contenders.append(frozenset(int(i) for i in near))
        return logits

    result = model.complete(prompt, max_tokens=max_tokens, temperature=0, sampler="localllm",
                            logits_processors=[*logits_processors, record])
    return GreedyTrace(result.token_ids, margins, contenders)


def greedy_with_margins(model: Model, prompt: str, max_tokens: int,
                        logits_processors: Sequence[LogitsProcessor] = ()
                        ) -> tuple[tuple[int, ...], list[float]]:
    """:func:`greedy_trace`'s tokens and margins."""
    trace = greedy_trace(model, prompt, max_tokens, logits_processors)
    return trace.ids, trace.margins


def assert_batched_agrees(trace: GreedyTrace, got: Sequence[int]) -> int | None:
    """``got`` (a batched greedy run) equals the solo ``trace``, or parts from it to a
    token that was within :data:`BATCH_NEAR_TIE` of the top there. Returns that step, or
    None."""
    at = first_divergence(trace.ids, tuple(got))
    if at is not None:
        assert got[at] in trace.contenders[at], (
            at, trace.ids, tuple(got), [round(m, 3) for m in trace.margins])
    return at


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


def assert_text_agrees(model: Model, prompt: str, text: str, max_tokens: int) -> int | None:
    """``text`` (a greedy text of ``prompt`` from another float path, for callers that only
    have text: a server's answer) equals ``model``'s solo greedy text, or parts from it
    where it took a token within :data:`BATCH_NEAR_TIE` of the top. Where the caller has
    the token ids, :func:`assert_batched_agrees` is the exact check. Returns the step where
    they part, or None."""
    return text_divergence(model.tokenizer, greedy_trace(model, prompt, max_tokens), text)


def text_divergence(tokenizer: _Decoder, trace: GreedyTrace, text: str) -> int | None:
    """The step at which ``text`` parts from the solo ``trace`` to a near-tied token, or
    None when it is the trace's text; AssertionError when no near tie explains it.

    Text alone does not say where two runs parted: a token's text may be a prefix of a
    near-tied rival's (``' '`` and ``' of'``), so the longest common prefix can lie a
    step past the real fork. Every step up to the first real mismatch is therefore
    considered, each with all of its contenders: the first step at which a contender's
    text continues the answer is where they part. A character cut mid-way by
    ``max_tokens`` is left out, as servers do."""

    def decoded(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids)).rstrip("\ufffd")

    ids, contenders = trace.ids, trace.contenders
    if decoded(ids) == text:
        return None
    for step in range(len(ids) + 1):
        ours = decoded(ids[:step])
        if not text.startswith(ours):
            break  # the first real mismatch: no later step can explain the text
        if step == len(ids):
            return None  # the whole solo text, and the answer runs on past max_tokens
        following = decoded(ids[:step + 1])
        for token in sorted(contenders[step] - {ids[step]}):
            theirs = decoded([*ids[:step], token])
            if theirs != following and theirs != ours and text.startswith(theirs):
                return step
            if theirs == ours == text:  # an end-of-generation token: the answer ends here
                return step
    raise AssertionError(
        f"the text parts from the solo greedy run where no near-tied token explains it:\n"
        f"  got:  {text!r}\n  solo: {decoded(ids)!r}\n"
        f"  margins: {[round(m, 3) for m in trace.margins]}")


def first_divergence(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    """Index of the first differing token of two runs (None when one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


class BackendContract:
    """Behaviour every backend must show through ``Model``. Provide a ``model`` fixture."""

    prompt = "The capital of France is"

    def deterministic(self, model: Model, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"max_tokens": 12, **extra}
        supported = model.capabilities.sampling_params
        if "temperature" in supported:
            params["temperature"] = 0.0
        if "seed" not in supported:
            params.pop("seed", None)  # greedy or scripted: the seed changes nothing
        return params

    def test_complete_result_is_consistent(self, model: Model) -> None:
        result = model.complete(self.prompt, **self.deterministic(model))
        assert result.finish_reason in ("stop", "length")
        assert result.usage.completion_tokens == len(result.token_ids) > 0
        assert result.usage.prompt_tokens == model.count_tokens(self.prompt)
        assert result.usage.total_tokens == (result.usage.prompt_tokens
                                             + result.usage.completion_tokens)
        assert result.timings.time_to_first_token_s > 0

    def test_stream_concatenates_to_complete(self, model: Model) -> None:
        params = self.deterministic(model, seed=7)
        whole = model.complete(self.prompt, **params)
        chunks = list(model.stream(self.prompt, **params))
        assert "".join(c.text for c in chunks) == whole.text
        assert chunks[-1].completion is not None
        assert chunks[-1].completion.text == whole.text
        assert chunks[-1].completion.token_ids == whole.token_ids

    def test_max_tokens_is_a_hard_limit(self, model: Model) -> None:
        result = model.complete(self.prompt, **self.deterministic(model, max_tokens=3))
        assert result.usage.completion_tokens <= 3
        if result.usage.completion_tokens == 3 and result.stop_sequence is None:
            assert result.finish_reason == "length"

    def test_stop_string_never_leaks(self, model: Model) -> None:
        free = model.complete(self.prompt, **self.deterministic(model, max_tokens=24))
        text = free.text.strip()
        assert len(text) >= 4, f"24 tokens gave too little text to test stop strings: {text!r}"
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        cut = model.complete(self.prompt, **self.deterministic(model, max_tokens=24, stop=[stop]))
        assert stop not in cut.text
        assert cut.finish_reason == "stop" and cut.stop_sequence == stop
        streamed = "".join(c.text for c in model.stream(
            self.prompt, **self.deterministic(model, max_tokens=24, stop=[stop])))
        assert streamed == cut.text

    def test_context_overflow_raises_before_compute(self, model: Model) -> None:
        n_ctx = model.info.context_length
        with pytest.raises(ContextOverflowError) as info:
            model.complete(self.prompt, max_tokens=n_ctx)
        assert info.value.context_length == n_ctx
        assert info.value.prompt_tokens == model.count_tokens(self.prompt)

    def test_unknown_parameter_is_an_error(self, model: Model) -> None:
        with pytest.raises(ConfigError, match="temprature"):
            model.complete(self.prompt, temprature=0.5)

    def test_undeclared_parameters_are_refused(self, model: Model) -> None:
        supported = model.capabilities.sampling_params
        probes: dict[str, Any] = {"temperature": 0.3, "top_k": 5, "top_p": 0.5, "min_p": 0.2,
                  "typical_p": 0.5, "repeat_penalty": 1.3, "frequency_penalty": 0.5,
                  "presence_penalty": 0.5, "logit_bias": {1: 1.0}}
        for name, value in probes.items():
            if name in supported:
                continue
            with pytest.raises(UnsupportedFeatureError, match=name):
                model.complete(self.prompt, **{name: value})
        assert set(supported) <= set(SamplingParams.model_fields)

    def test_same_seed_same_output(self, model: Model) -> None:
        if "seed" not in model.capabilities.sampling_params:
            pytest.skip("backend declares no seed")
        params: dict[str, Any] = {"max_tokens": 16, "seed": 1234}
        a = model.complete(self.prompt, **params)
        b = model.complete(self.prompt, **params)
        assert a.text == b.text and a.token_ids == b.token_ids and a.seed == 1234

    def test_threads_never_interleave(self, model: Model) -> None:
        params = self.deterministic(model, max_tokens=8)
        prompts = [self.prompt, "Once upon a time", "1, 2, 3,", "def main():"]
        expected = {p: model.complete(p, **params).text for p in prompts}
        results: dict[int, tuple[str, str, tuple[int, ...]]] = {}
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                p = prompts[i % len(prompts)]
                chunks = list(model.stream(p, **params))
                final = chunks[-1].completion
                assert final is not None
                results[i] = (p, "".join(c.text for c in chunks), final.token_ids)
            except BaseException as exc:  # collected and re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert len(results) == 8
        for prompt, text, ids in results.values():
            if text == expected[prompt]:
                continue
            # a batching engine decodes the threads together: another float path, so a
            # near-tied step may pick the other token; anything else is interference
            assert model.info.parallel > 1 and model.capabilities.logits, (prompt, text)
            assert_batched_agrees(greedy_trace(model, prompt, 8), ids)

    def test_breaking_out_of_a_stream_releases_the_model(self, model: Model) -> None:
        for chunk in model.stream(self.prompt, max_tokens=50):
            assert chunk is not None
            break
        done = threading.Event()

        def other() -> None:
            model.complete(self.prompt, max_tokens=2)
            done.set()

        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=120)
        assert done.is_set()

    def test_tokenizer_round_trip(self, model: Model) -> None:
        for text in ["Hello world", "naïve café — 東京 🙂", "  two  spaces\n\ttab"]:
            ids = model.tokenizer.encode(text, add_special=False)
            assert ids
            assert model.tokenizer.decode(ids) == text

    def test_render_chat_contains_the_messages(self, model: Model) -> None:
        text = model.render_chat([{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hello there"}])
        assert "Be brief." in text and "Hello there" in text

    # ------------------------------------------------------------ batching
    # For engines that decode several sequences in one step (max_sequences > 1).

    def needs_batching(self, model: Model) -> None:
        if model.stats.max_sequences < 2 or not model.capabilities.logits:
            pytest.skip("the backend decodes one sequence at a time")

    def test_batched_requests_decode_together_and_alike(self, model: Model) -> None:
        """Requests that overlap share decode steps, and each one's greedy text is its solo
        text (or parts from it only at a near tie: another float path, never another
        sequence's data). The first request's first step waits until the others queue,
        so they overlap by construction, however fast the engine is."""
        self.needs_batching(model)
        n = min(model.stats.max_sequences, 4)
        prompts = [self.prompt, "Once upon a time", "1, 2, 3,", "def main():"][:n]
        traces = {p: greedy_trace(model, p, 12) for p in prompts}
        queued = threading.Event()

        def hold_until_queued(_ids: Sequence[int], logits: Logits) -> Logits:
            deadline = time.monotonic() + 30
            while (not queued.is_set() and model.stats.queue_depth < n - 1
                   and time.monotonic() < deadline):
                time.sleep(0.001)
            queued.set()
            return logits

        results: dict[str, tuple[int, ...]] = {}
        errors: list[BaseException] = []

        def run(prompt: str, processors: list[LogitsProcessor]) -> None:
            try:
                results[prompt] = model.complete(prompt, max_tokens=12, temperature=0,
                                                 logits_processors=processors).token_ids
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        before = model.stats.decode_steps
        threads = [threading.Thread(target=run, args=(p, [hold_until_queued] if i == 0
                                                       else [])) for i, p in enumerate(prompts)]
        threads[0].start()
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        steps = model.stats.decode_steps - before
        assert steps < sum(len(ids) for ids in results.values()), steps
        for prompt, ids in results.items():
            assert_batched_agrees(traces[prompt], ids)

    def test_a_shared_prefix_is_reused_and_changes_nothing(self, model: Model) -> None:
        """The second request continues the first one's cached prefix (usage says how
        many prompt tokens were not evaluated again) and gets the text it gets alone."""
        self.needs_batching(model)
        shared = "You answer in one short sentence. " * 4
        model.clear_cache()
        model.complete(shared + "Q: first", max_tokens=4, temperature=0)
        second = model.complete(shared + "Q: second", max_tokens=8, temperature=0)
        assert second.usage.cached_prompt_tokens >= model.count_tokens(shared) // 2
        model.clear_cache()
        assert_batched_agrees(greedy_trace(model, shared + "Q: second", 8), second.token_ids)

    def test_a_cancelled_sequence_is_freed(self, model: Model) -> None:
        self.needs_batching(model)
        for _chunk in model.stream(self.prompt, max_tokens=200):
            break
        deadline = time.monotonic() + 30
        while model.stats.active_sequences and time.monotonic() < deadline:
            time.sleep(0.01)
        assert model.stats.active_sequences == 0
        assert model.complete(self.prompt, max_tokens=2).usage.completion_tokens > 0

    def test_close_is_idempotent_and_final(self, model: Model) -> None:
        # runs last within the class on a model the fixture gives each test
        model.close()
        model.close()
        assert model.closed
        with pytest.raises(ModelClosedError):
            model.complete(self.prompt)
