"""Anthropic's Messages API on ``localllm serve``, driven by the official ``anthropic``
SDK, unchanged, on loopback; and ``connect(api="anthropic")`` speaking it from the other
side. Real server, real default model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from server_harness import served_in_thread, served_model

import localllm
from localllm.protocols import anthropic as anthropic_wire
from localllm.testing import assert_text_agrees

pytestmark = pytest.mark.real_model
MODEL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hello."}]
#: the SDK of 2026 no longer names the sampling fields; older clients and llama-server's
#: still send them, and the server honours them
GREEDY = {"temperature": 0}
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object",
                            "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"]}}


@pytest.fixture(scope="module")
def base(default_model_path: Path) -> Iterator[str]:
    with served_in_thread([MODEL], parallel=4, context_length=1024, threads=2,
                          api_keys=["k1"]) as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=base, api_key="k1", max_retries=0)


def fresh(base: str) -> None:
    """Empty the KV cache before a run compared token for token with another."""
    served_model(base, MODEL).clear_cache()


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_create_is_the_librarys_greedy_answer(base: str, client: Any) -> None:
    fresh(base)
    message = client.messages.create(model=MODEL, max_tokens=16, messages=HI, system="You "
                                     "are brief.", extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 0 < message.usage.output_tokens <= 16 and message.usage.input_tokens > 0
    model = served_model(base, MODEL)
    prompt = model.render_chat([{"role": "system", "content": "You are brief."}, *HI])
    assert message.usage.input_tokens == model.count_tokens(prompt)
    assert_text_agrees(model, prompt, text_of(message), 16)


def test_stream_text_equals_its_final_message(base: str, client: Any) -> None:
    fresh(base)
    with client.messages.stream(model=MODEL, max_tokens=12, messages=HI,
                                extra_body=GREEDY) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == text_of(final) and pieces
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    fresh(base)
    whole = client.messages.create(model=MODEL, max_tokens=12, messages=HI, extra_body=GREEDY)
    assert text_of(whole) == text_of(final)


def test_streamed_events_come_in_anthropics_order(base: str) -> None:
    events = []
    with httpx.stream("POST", f"{base}/v1/messages", timeout=60,
                      headers={"x-api-key": "k1", "anthropic-version": "2023-06-01"},
                      json={"model": MODEL, "max_tokens": 6, "messages": HI,
                            "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) <= {"content_block_delta"}


def test_a_forced_tool_use_validates_and_its_result_goes_back(base: str, client: Any) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = client.messages.create(model=MODEL, max_tokens=48, messages=ask,
                                     tools=[WEATHER],
                                     tool_choice={"type": "tool", "name": "get_weather"})
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    # the same call streamed: the SDK assembles input_json_delta pieces into the input
    with client.messages.stream(model=MODEL, max_tokens=48, messages=ask, tools=[WEATHER],
                                tool_choice={"type": "any"}) as stream:
        streamed = stream.get_final_message()
    streamed_uses = [b for b in streamed.content if b.type == "tool_use"]
    assert streamed.stop_reason == "tool_use" and streamed_uses
    jsonschema.validate(streamed_uses[0].input, WEATHER["input_schema"])
    # the tool_result round trip: the model reads the result and answers in text
    history = [*ask, {"role": "assistant", "content": [b.model_dump() for b in uses]},
               {"role": "user", "content": [{"type": "tool_result",
                                             "tool_use_id": uses[0].id,
                                             "content": "18 C and sunny"}]}]
    answer = client.messages.create(model=MODEL, max_tokens=24, messages=history,
                                    tools=[WEATHER], tool_choice={"type": "none"},
                                    extra_body=GREEDY)
    assert answer.stop_reason in ("end_turn", "max_tokens") and text_of(answer)
    model = served_model(base, MODEL)
    rendered = model.render_chat(anthropic_wire.read_messages(None, history))
    assert "18 C and sunny" in rendered and "get_weather" in rendered


def test_output_config_format_constrains_the_answer(client: Any) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    message = client.messages.create(
        model=MODEL, max_tokens=40, messages=[{"role": "user", "content": "A city in Japan?"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body={"temperature": 0})  # greedy: a sampled answer may run past 40 tokens
    jsonschema.validate(json.loads(text_of(message)), schema)


def test_count_tokens_is_the_rendered_prompts(base: str, client: Any) -> None:
    counted = client.messages.count_tokens(model=MODEL, messages=HI, tools=[WEATHER])
    model = served_model(base, MODEL)
    tools, _ = anthropic_wire.read_tools([WEATHER], None)
    assert counted.input_tokens == model.count_tokens(model.render_chat(HI, tools=tools))
    assert counted.input_tokens > client.messages.count_tokens(model=MODEL,
                                                               messages=HI).input_tokens


def test_each_error_is_the_sdks_own_class(base: str, client: Any) -> None:
    import anthropic

    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model=MODEL, max_tokens=0, messages=HI)
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        client.messages.create(model=MODEL, max_tokens=4, messages=HI,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    with pytest.raises(anthropic.BadRequestError, match="image"):
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "AAAA"}}
        client.messages.create(model=MODEL, max_tokens=4,
                               messages=[{"role": "user", "content": [image]}])
    with pytest.raises(anthropic.BadRequestError, match="context") as overflow:
        client.messages.create(model=MODEL, max_tokens=4,
                               messages=[{"role": "user", "content": "word " * 3000}])
    assert overflow.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    import anthropic as sdk

    with pytest.raises(sdk.AuthenticationError):
        sdk.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=HI)


def test_connect_speaks_anthropics_api(base: str) -> None:
    fresh(base)
    with localllm.connect(base, MODEL, api="anthropic", api_key="k1") as remote:
        assert remote.server.api == "anthropic" and remote.info.backend == "remote-anthropic"
        got = remote.chat(HI, max_tokens=12, temperature=0)
        assert got.usage.completion_tokens > 0 and got.finish_reason in ("stop", "length")
        model = served_model(base, MODEL)
        assert_text_agrees(model, model.render_chat(HI), got.text, 12)
        called = remote.chat([{"role": "user", "content": "Weather in Rome?"}],
                             tools=[{"type": "function", "function": {
                                 "name": WEATHER["name"], "description": WEATHER["description"],
                                 "parameters": WEATHER["input_schema"]}}],
                             tool_choice="required", max_tokens=48)
        assert called.finish_reason == "tool_calls" and called.tool_calls
        jsonschema.validate(called.tool_calls[0].parsed_arguments, WEATHER["input_schema"])
        with pytest.raises(localllm.UnsupportedFeatureError, match="logprobs"):
            remote.chat(HI, max_tokens=2, logprobs=1)
        with pytest.raises(localllm.UnsupportedFeatureError, match="prompt"):
            remote.complete("Once upon a time", max_tokens=2)


def test_a_full_queue_and_a_huge_body_are_the_sdks_own_classes(default_model_path: Path,
                                                               client: Any) -> None:
    import threading

    import anthropic

    with pytest.raises(anthropic.ContentTooLargeError):
        client.messages.create(model=MODEL, max_tokens=4, messages=[
            {"role": "user", "content": "a" * (9 * 1024 * 1024)}])
    with served_in_thread([MODEL], parallel=1, max_queue=1, context_length=1024,
                          threads=2) as url:
        busy = served_model(url, MODEL)
        started = [threading.Event(), threading.Event()]

        def long_answer(i: int) -> None:
            body = {"model": MODEL, "max_tokens": 300, "stream": True,
                    "messages": [{"role": "user", "content": f"Tell a long story {i}."}]}
            with httpx.stream("POST", f"{url}/v1/messages", json=body, timeout=120) as r:
                for _ in r.iter_lines():
                    started[i].set()

        # one answer decoding, one waiting: the queue (max_queue=1) is full
        workers = [threading.Thread(target=long_answer, args=(i,)) for i in range(2)]
        workers[0].start()
        try:
            assert started[0].wait(60)
            workers[1].start()
            deadline = time.monotonic() + 30
            while busy.stats.queue_depth < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert busy.stats.queue_depth == 1
            sdk = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0)
            with pytest.raises(anthropic.ServiceUnavailableError) as full:
                sdk.messages.create(model=MODEL, max_tokens=4, messages=HI)
            assert full.value.body["error"]["type"] == "overloaded_error"
        finally:
            busy.clear_cache()
            for worker in workers:
                if worker.is_alive() or worker.ident is not None:
                    worker.join(timeout=120)
