"""One request type and one path: every public method builds a ``GenerationRequest``, the
context budget is decided once, content parts reach the template as text, and the wire
codecs share one contract.

These run on the fake engine (``localllm.testing.FakeModel``): what they check is the
request path above the engine, which is the same for every runtime; the real-model and
served paths are covered by the chat, server and remote suites.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import localllm
from localllm import GenerationRequest, Message, TextPart, build_request
from localllm.protocols import ollama as ollama_wire
from localllm.protocols import openai as openai_wire
from localllm.protocols.codec import Failure
from localllm.testing import FakeModel

HI = [{"role": "user", "content": "Capital of France?"}]


def counting_tokenize(model: localllm.Model) -> list[str]:
    """Record every text the engine tokenizes (the fake engine, wrapped in place)."""
    engine = model._engine
    assert engine is not None
    seen: list[str] = []
    original = engine.tokenize

    def tokenize(text: str, **kw: Any) -> list[int]:
        seen.append(text)
        return original(text, **kw)

    engine.tokenize = tokenize  # type: ignore[method-assign]
    return seen


def test_every_public_method_is_the_one_request_path() -> None:
    with FakeModel("Paris.") as model:
        request = build_request(messages=HI, max_tokens=8)
        assert isinstance(request, GenerationRequest) and request.chat
        assert request.given == frozenset({"max_tokens"})
        whole = model.generate(request)
        assert whole.text == model.chat(HI, max_tokens=8).text == "Paris."
        streamed = list(model.events(request))
        assert "".join(c.text for c in streamed) == "Paris."
        assert streamed[-1].completion is not None and streamed[-1].completion.text == "Paris."

        async def both() -> tuple[str, str]:
            a = await model.agenerate(request)
            parts = [c.text async for c in model.aevents(request)]
            return a.text, "".join(parts)

        assert asyncio.run(both()) == ("Paris.", "Paris.")


def test_a_request_is_checked_when_it_is_built() -> None:
    with pytest.raises(localllm.ConfigError, match="overflow"):
        build_request(prompt="x", overflow="sideways")
    with pytest.raises(localllm.ConfigError, match="drop_oldest"):
        build_request(prompt="x", overflow="drop_oldest")
    with pytest.raises(localllm.ConfigError, match="timeout"):
        build_request(prompt="x", timeout=0)
    with pytest.raises(localllm.ConfigError, match="logprobs"):
        build_request(prompt="x", logprobs=21)
    with pytest.raises(localllm.ConfigError, match="prompt must be str"):
        build_request(prompt=HI)  # type: ignore[arg-type]
    with pytest.raises(localllm.ConfigError, match="not callable"):
        build_request(prompt="x", logits_processors=[42])  # type: ignore[list-item]
    with pytest.raises(localllm.ConfigError, match="temperatur"):
        build_request(prompt="x", temperatur=0.1)
    with pytest.raises(localllm.ChatTemplateError, match="empty"):
        build_request(messages=[])
    seeded = build_request(prompt="x", seed=7)
    assert seeded.with_seed_offset(2).sampling.seed == 9
    assert build_request(prompt="x").with_seed_offset(2).sampling.seed is None


def test_the_context_budget_is_decided_once_with_one_tokenization() -> None:
    """A ``max_tokens`` past the context's end, clamped (as the server asks): one render
    and one tokenization, and the answer may run to the context's end."""
    with FakeModel("ab" * 400, context_length=64) as model:
        seen = counting_tokenize(model)
        request = build_request(messages=HI, max_tokens=10_000, clamp_to_context=True)
        done = model.generate(request)
        assert len(seen) == 1
        assert done.finish_reason == "length"
        assert done.usage.prompt_tokens + done.usage.completion_tokens == 64
        # unclamped, the same request is an error naming the numbers
        with pytest.raises(localllm.ContextOverflowError, match="10000"):
            model.chat(HI, max_tokens=10_000)
        # a smaller window for this request alone (Ollama's num_ctx) clamps the same way
        seen.clear()
        small = model.generate(build_request(messages=HI, context_limit=40))
        assert len(seen) == 1
        assert small.usage.prompt_tokens + small.usage.completion_tokens == 40


def test_content_parts_reach_the_template_as_their_text() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "Capital of "},
                                          {"type": "text", "text": "France?"}]}]
    with FakeModel("Paris.") as model:
        assert model.render_chat(parts) == model.render_chat(HI)
        assert model.count_tokens(parts) == model.count_tokens(HI)
        assert model.chat(parts).text == "Paris."
    message = Message(role="user", content=(TextPart(text="a"), TextPart(text="b")))
    assert message.text == "ab" and message.template_view()["content"] == "ab"
    # each API writes them its own way: OpenAI keeps parts, Ollama takes a string
    assert openai_wire.message(message)["content"] == [{"type": "text", "text": "a"},
                                                        {"type": "text", "text": "b"}]
    assert ollama_wire.message(message)["content"] == "ab"
    with pytest.raises(localllm.ChatTemplateError, match="content"):
        build_request(messages=[{"role": "user", "content": [{"type": "image_url"}]}])


def test_every_server_codec_keeps_the_one_contract() -> None:
    """Each mounted codec parses a body into requests, refuses a bad field with a
    ``RequestError`` naming it, and writes errors in its API's own envelope."""
    codecs = [(openai_wire.ChatCodec(), {"model": "m", "messages": HI}),
              (openai_wire.CompletionsCodec(), {"model": "m", "prompt": "Hi"}),
              (ollama_wire.ChatCodec(), {"model": "m", "messages": HI}),
              (ollama_wire.GenerateCodec(), {"model": "m", "prompt": "Hi"})]
    failure = Failure(400, "bad", code="x", param="temperature")
    for codec, body in codecs:
        call = codec.parse(body)
        assert call.model == "m" and len(call.requests) == 1
        assert call.requests[0].clamp_to_context and call.requests[0].sampling.max_tokens \
            is None
        bad = {**body, "temperature": "hot", "options": {"temperature": "hot"}}
        with pytest.raises(localllm.RequestError) as caught:
            codec.parse(bad)
        assert "temperature" in str(caught.value)
        envelope = codec.error(failure)
        assert envelope["error"] == ("bad" if codec.media_type == "application/x-ndjson"
                                     else {"message": "bad", "type": "invalid_request_error",
                                           "param": "temperature", "code": "x"})
        assert codec.frame({"a": 1}).endswith(b"\n")
