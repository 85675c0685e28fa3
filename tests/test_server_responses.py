"""OpenAI's Responses API on ``localllm serve``, driven by the official ``openai`` SDK and
OpenAI's Agents SDK (``openai-agents``), unchanged, on loopback. Real server, real default
model; stored responses in a SQLite file of the test's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from server_harness import served_in_thread, served_model

from localllm.testing import assert_text_agrees

pytestmark = pytest.mark.real_model
MODEL = "smollm2-135m-instruct"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather",
           "parameters": {"type": "object",
                          "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses") / "responses.sqlite"


def serve(db: Path) -> Any:
    return served_in_thread([MODEL], parallel=4, context_length=1024, threads=2,
                            api_keys=["k1", "k2"], responses_db=str(db))


@pytest.fixture(scope="module")
def base(default_model_path: Path, db: Path) -> Iterator[str]:
    with serve(db) as url:
        yield url


def client_for(base: str, key: str = "k1") -> Any:
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)


def test_create_is_the_librarys_greedy_answer(base: str) -> None:
    client = client_for(base)
    served_model(base, MODEL).clear_cache()
    response = client.responses.create(model=MODEL, input="Say hello.", temperature=0,
                                       max_output_tokens=16, instructions="You are brief.")
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.usage.output_tokens <= 16 and response.usage.input_tokens > 0
    model = served_model(base, MODEL)
    prompt = model.render_chat([{"role": "system", "content": "You are brief."},
                                {"role": "user", "content": "Say hello."}])
    assert response.usage.input_tokens == model.count_tokens(prompt)
    assert_text_agrees(model, prompt, response.output_text, 16)


def test_streamed_events_come_in_order_and_add_up(base: str) -> None:
    client = client_for(base)
    served_model(base, MODEL).clear_cache()
    events = list(client.responses.create(model=MODEL, input="Say hello.", temperature=0,
                                          max_output_tokens=12, stream=True))
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", kinds[-1]]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == final.output_text and final.id == events[0].response.id
    served_model(base, MODEL).clear_cache()
    whole = client.responses.create(model=MODEL, input="Say hello.", temperature=0,
                                    max_output_tokens=12)
    assert whole.output_text == deltas
    # the SDK's own stream helper (which checks each event against its snapshot) takes it
    served_model(base, MODEL).clear_cache()
    with client.responses.stream(model=MODEL, input="Say hello.", temperature=0,
                                 max_output_tokens=12) as stream:
        helper = list(stream)
    assert helper[-1].type == kinds[-1]
    assert "".join(e.delta for e in helper if e.type == "response.output_text.delta") == deltas


def test_function_calls_and_their_outputs(base: str) -> None:
    client = client_for(base)
    ask = "What is the weather in Paris?"
    called = client.responses.create(model=MODEL, input=ask, tools=[WEATHER],
                                     tool_choice="required", max_output_tokens=48)
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    streamed = list(client.responses.create(model=MODEL, input=ask, tools=[WEATHER],
                                            tool_choice="required", max_output_tokens=48,
                                            stream=True))
    kinds = [e.type for e in streamed]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in streamed if e.type == "response.function_call_arguments.done"]
    assert done
    jsonschema.validate(json.loads(done[0].arguments), WEATHER["parameters"])
    # the output goes back by previous_response_id, the model answers in text
    answer = client.responses.create(
        model=MODEL, previous_response_id=called.id, tools=[WEATHER], tool_choice="none",
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "18 C and sunny"}], max_output_tokens=16, temperature=0)
    assert answer.output_text and answer.previous_response_id == called.id


def test_stored_state_retrieve_delete_and_items(base: str) -> None:
    client = client_for(base)
    first = client.responses.create(model=MODEL, input="My name is Ada.",
                                    max_output_tokens=8, temperature=0)
    assert client.responses.retrieve(first.id).id == first.id
    items = client.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    follow = client.responses.create(model=MODEL, input="What is my name?",
                                     previous_response_id=first.id, max_output_tokens=8,
                                     temperature=0)
    assert follow.usage.input_tokens > first.usage.input_tokens  # the history came along
    import openai

    with pytest.raises(openai.NotFoundError):  # another key sees nothing
        client_for(base, "k2").responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client_for(base, "k2").responses.create(model=MODEL, input="Hi",
                                                previous_response_id=first.id)
    unstored = client.responses.create(model=MODEL, input="Hi", store=False,
                                       max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    client.responses.delete(follow.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(follow.id)


def test_a_chain_survives_a_restart(default_model_path: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with serve(db) as url:
        first = client_for(url).responses.create(model=MODEL, input="Remember 42.",
                                                 max_output_tokens=4)
    with serve(db) as url:
        again = client_for(url).responses.create(model=MODEL, input="What number?",
                                                 previous_response_id=first.id,
                                                 max_output_tokens=4)
        assert again.previous_response_id == first.id
        assert client_for(url).responses.retrieve(first.id).id == first.id


def test_a_history_too_long_is_a_400_unless_truncation_is_auto(base: str) -> None:
    import openai

    client = client_for(base)
    long = client.responses.create(model=MODEL, input="word " * 700, max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.responses.create(model=MODEL, input="word " * 400, max_output_tokens=2,
                                previous_response_id=long.id)
    cut = client.responses.create(model=MODEL, input="word " * 400, max_output_tokens=2,
                                  previous_response_id=long.id, truncation="auto")
    assert cut.truncation == "auto" and (cut.model_extra or {}).get("truncated_messages")
    with pytest.raises(openai.BadRequestError, match="web_search"):
        client.responses.create(model=MODEL, input="Hi", tools=[{"type": "web_search"}])


def test_the_agents_sdk_runs_a_tool_over_responses_and_chat(base: str) -> None:
    """An agent with one function tool, run to its end, once over the Responses API and
    once over chat completions. ``stop_on_first_tool`` makes the tool's output the final
    output, so the run ends by construction whatever text the small model writes."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    seen: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        seen.append(city)
        return f"18 C and sunny in {city}"

    async def run(model: Any) -> Any:
        agent = Agent(name="weather", instructions="Answer with the tool.", model=model,
                      tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                      model_settings=ModelSettings(tool_choice="required", max_tokens=48))
        return await Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    async def both() -> list[Any]:
        client = AsyncOpenAI(base_url=f"{base}/v1", api_key="k1", max_retries=0)
        return [await run(OpenAIResponsesModel(MODEL, client)),
                await run(OpenAIChatCompletionsModel(MODEL, client))]

    results = asyncio.run(both())
    assert len(seen) == 2
    for result, city in zip(results, seen, strict=True):
        assert result.final_output == f"18 C and sunny in {city}"


def test_connect_speaks_the_responses_api(base: str) -> None:
    import localllm

    served_model(base, MODEL).clear_cache()
    hi = [{"role": "user", "content": "Say hello."}]
    with localllm.connect(base, MODEL, api="responses", api_key="k1") as remote:
        assert remote.server.api == "responses"
        got = remote.chat(hi, max_tokens=12, temperature=0)
        assert got.usage.completion_tokens > 0 and got.finish_reason in ("stop", "length")
        model = served_model(base, MODEL)
        assert_text_agrees(model, model.render_chat(hi), got.text, 12)
        tool = {"type": "function", "function": {"name": WEATHER["name"],
                                                 "parameters": WEATHER["parameters"]}}
        called = remote.chat([{"role": "user", "content": "Weather in Rome?"}], tools=[tool],
                             tool_choice="required", max_tokens=48)
        assert called.finish_reason == "tool_calls" and called.tool_calls
        jsonschema.validate(called.tool_calls[0].parsed_arguments, WEATHER["parameters"])
        with pytest.raises(localllm.UnsupportedFeatureError, match="top_k"):
            remote.chat(hi, max_tokens=2, top_k=5)


def test_a_failure_mid_stream_is_the_last_event(default_model_path: Path,
                                                 tmp_path: Path) -> None:
    """The status line is sent when the model goes away mid-answer: the stream ends with
    ``response.failed``, numbered in sequence, naming the error."""
    import httpx

    with serve(tmp_path / "f.sqlite") as url:
        events = []
        body = {"model": MODEL, "input": "Tell a very long story.", "max_output_tokens": 400,
                "stream": True}
        with httpx.stream("POST", f"{url}/v1/responses", json=body, timeout=60,
                          headers={"Authorization": "Bearer k1"}) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == "response.output_text.delta" and len(events) == 5:
                    served_model(url, MODEL).close()
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert "closed" in events[-1]["response"]["error"]["message"]


def test_text_format_constrains_the_answer(base: str) -> None:
    client = client_for(base)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    response = client.responses.create(
        model=MODEL, input="Name a city in Japan.", max_output_tokens=40, store=False,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema,
                         "strict": True}})
    assert response.status == "completed"  # the schema bounds the answer within 40 tokens
    jsonschema.validate(json.loads(response.output_text), schema)
