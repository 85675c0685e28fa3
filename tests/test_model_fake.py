"""Model behaviour on the runtime-free fake backend (logic only; real-model tests elsewhere).

The fake engine is used here because these tests check localllm's own bookkeeping —
parameter validation, overflow policies, stop strings, UTF-8 safety — where a scripted
reply with one token per byte makes every boundary case reachable on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import localllm
from localllm import ConfigError, ContextOverflowError, UnsupportedFeatureError
from localllm.engines.fake import DEFAULT_REPLY
from localllm.testing import BackendContract, BatchingFakeModel, FakeModel


class TestFakeBackendContract(BackendContract):
    @pytest.fixture
    def model(self) -> Iterator[localllm.Model]:
        with FakeModel("Paris is the capital. It is big.") as m:
            yield m


class TestBatchingFakeContract(BackendContract):
    """The whole contract, its batching section included, on a fake engine that
    implements the batched step itself (it checks every position it is fed): the
    scheduler's batching, prefix reuse and cancellation proven without a runtime."""

    @pytest.fixture
    def model(self) -> Iterator[localllm.Model]:
        with BatchingFakeModel(parallel=4, batch_size=16) as m:
            yield m


def test_batches_hold_several_sequences_and_long_prompts_in_chunks() -> None:
    """A prompt longer than a batch is fed in chunks at the right positions (the fake
    raises otherwise), and overlapping requests share steps."""
    with BatchingFakeModel(parallel=3, batch_size=16) as model:
        engine = model._engine
        prompt = "a long prompt that does not fit one batch of sixteen tokens " * 3
        assert model.count_tokens(prompt) > 16
        outs = [model.complete(f"{prompt} {i}", max_tokens=6, temperature=0)
                for i in range(2)]
        assert all(o.usage.completion_tokens == 6 for o in outs)
        assert outs[1].usage.cached_prompt_tokens > 16  # the shared part was kept
        assert engine is not None and max(engine.steps_with) == 1  # one at a time so far


def test_utf8_streaming_never_splits_characters() -> None:
    reply = "é🙂東京→"
    with FakeModel(reply) as model:
        chunks = [c.text for c in model.stream("x", max_tokens=100)]
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) == reply
    # one byte per token: the emoji took four tokens but arrived as one chunk
    assert "🙂" in chunks


def test_stop_spanning_tokens_in_stream_and_complete() -> None:
    with FakeModel("alpha beta gamma") as model:
        r = model.complete("x", stop=["a gam"])
        assert r.text == "alpha bet" and r.finish_reason == "stop"
        assert "".join(c.text for c in model.stream("x", stop=["a gam"])) == "alpha bet"


def test_parameter_errors_name_field_value_and_range() -> None:
    with FakeModel() as model:
        with pytest.raises(ConfigError, match=r"temperature=-1.*greater than or equal to 0"):
            model.complete("x", temperature=-1)
        with pytest.raises(ConfigError, match=r"top_p=1.5.*less than or equal to 1"):
            model.complete("x", top_p=1.5)
        with pytest.raises(ConfigError, match=r"max_tokens=0"):
            model.complete("x", max_tokens=0)
        with pytest.raises(ConfigError, match="did you mean 'max_tokens'"):
            model.complete("x", max_token=5)
        with pytest.raises(ConfigError, match="stop"):
            model.complete("x", stop=[""])
        with pytest.raises(ConfigError, match="out of range"):
            model.complete("x", logit_bias={10**6: 1.0})
        with pytest.raises(ConfigError, match="overflow"):
            model.complete("x", overflow="squeeze")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="prompt must be str"):
            model.complete(["x"])  # type: ignore[arg-type]


def test_unsupported_params_are_refused_not_ignored() -> None:
    with FakeModel() as model:
        with pytest.raises(UnsupportedFeatureError, match="temperature"):
            model.complete("x", temperature=0.2)
        # setting a parameter to its disabled default asks nothing of the backend
        assert model.complete("x", typical_p=1.0, max_tokens=2).usage.completion_tokens == 2


def test_context_overflow_error_carries_numbers() -> None:
    with FakeModel(context_length=64) as model:
        prompt = "y" * 40  # 41 tokens with BOS
        with pytest.raises(ContextOverflowError) as info:
            model.complete(prompt, max_tokens=30)
        assert (info.value.prompt_tokens, info.value.max_tokens,
                info.value.context_length) == (41, 30, 64)
        with pytest.raises(ContextOverflowError, match="prompt alone"):
            model.complete("y" * 80, max_tokens=None)


def test_max_tokens_none_runs_to_the_context_end() -> None:
    with FakeModel("z" * 500, context_length=64) as model:
        r = model.complete("abc", max_tokens=None)
    assert r.finish_reason == "length"
    assert r.usage.total_tokens == 64


def test_truncate_left_reports_what_was_dropped() -> None:
    with FakeModel("ok", context_length=32) as model:
        r = model.complete("0123456789" * 4, max_tokens=8, overflow="truncate_left")
        engine_prompt = model._engine.prompts[-1]  # type: ignore[union-attr]
    assert r.truncation is not None
    assert r.truncation.policy == "truncate_left"
    assert r.truncation.dropped_tokens == 41 - 24
    assert r.truncation.dropped_text == ("0123456789" * 4)[:17]
    assert len(engine_prompt) == 24 and engine_prompt[0] == 256  # BOS kept


def test_drop_oldest_removes_oldest_non_system_messages() -> None:
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(6):
        msgs.append({"role": "user", "content": f"question {i} " + "q" * 20})
        msgs.append({"role": "assistant", "content": f"answer {i} " + "a" * 20})
    msgs.append({"role": "user", "content": "last one"})
    with FakeModel("ok", context_length=200) as model:
        with pytest.raises(ContextOverflowError):
            model.chat(msgs, max_tokens=10)
        r = model.chat(msgs, max_tokens=10, overflow="drop_oldest")
        kept = msgs[:1] + msgs[1 + len(r.truncation.dropped_messages):]  # type: ignore[union-attr]
        n_kept = model.count_tokens(kept)
        n_more = model.count_tokens(msgs[:1] + msgs[len(r.truncation.dropped_messages) - 1:])  # type: ignore[union-attr]
    assert r.truncation is not None and r.truncation.policy == "drop_oldest"
    dropped = r.truncation.dropped_messages
    assert dropped[0].content.startswith("question 0")
    assert all(m.role != "system" for m in dropped)
    assert len(dropped) % 2 == 0  # whole exchanges: the chat still starts with a user turn
    assert kept[1]["role"] == "user"
    assert r.usage.prompt_tokens == n_kept <= 190 < n_more  # dropped no more than needed
    with FakeModel("ok") as model, pytest.raises(ConfigError, match="chat"):
        model.complete("x", overflow="drop_oldest")


def test_nested_use_on_one_thread_is_not_a_deadlock() -> None:
    """The scheduler never waits for a consumer: a second request from the thread that is
    still iterating a stream runs (after it, on a one-sequence engine) instead of hanging."""
    with FakeModel() as model:
        stream = model.stream("x", max_tokens=8)
        first = next(stream)
        assert model.complete("y", max_tokens=2).usage.completion_tokens == 2
        rest = "".join(chunk.text for chunk in stream)
        assert first.text + rest == DEFAULT_REPLY.encode()[:8].decode()


def test_tokenizer_decode_rejects_bad_ids() -> None:
    with FakeModel() as model:
        with pytest.raises(ConfigError, match="out of range"):
            model.tokenizer.decode([5000])
        text = model.render_chat([{"role": "user", "content": "hi"}])
        plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
        # BOS + one token per byte + one token per chatml marker (2 starts, 1 end)
        assert model.count_tokens([{"role": "user", "content": "hi"}]) == 1 + len(
            plain.encode()) + 3


def test_fake_backend_needs_no_runtime() -> None:
    with FakeModel() as model:
        assert model.info.backend == "fake"
        assert repr(model).startswith("<localllm.Model")
    assert "closed" in repr(model)
