"""Parallel tool calls through the official clients people use: ``openai``, ``ollama``
and langchain's ``bind_tools``, streamed and not, against a real server on loopback.

The producer is the real default model under Functionary v3.1's real template (a family
format), asked for the weather in three cities with ``tool_choice="required"`` and
``max_tool_calls=3``: at temperature 0 it writes one call after another (each time the
next call's first token leads the end of the turn by 6 nats or more), and the grammar
ends the turn at the third call, so three calls come back. What is asserted holds by
construction: three calls, each to the one function with arguments valid under its
schema, distinct ids, indexes 0, 1, 2, ``finish_reason`` "tool_calls", and the streamed
answer equal to the whole one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from server_harness import served_in_thread

from localllm.models.gguf import copy_with_metadata

#: keys in the order the ollama client sends them, so every client renders one prompt
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "Paris? London? Tokyo? Check the weather in each."}]
CALLS = 3


@pytest.fixture(scope="module")
def served(templates: dict[str, str], default_model_path: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("caller") / "caller.gguf"
    copy_with_metadata(default_model_path, path, {
        "tokenizer.chat_template": templates["meetkai-functionary-medium-v3.1"]})
    with served_in_thread([str(path)], context_length=2048, parallel=1) as base:
        yield base


def check(calls: list[tuple[str | None, str, dict[str, object]]]) -> None:
    """(id, name, arguments) of each call: three, distinct ids, valid arguments."""
    assert len(calls) == CALLS, calls
    ids = [c[0] for c in calls]
    assert all(ids) and len(set(ids)) == CALLS, ids
    for _, name, arguments in calls:
        assert name == "get_weather"
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])  # type: ignore[index]


def test_the_openai_client_sees_parallel_calls(served: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{served}/v1", api_key="none", timeout=120)
    ask = dict(model="caller", messages=ASK, tools=[WEATHER], tool_choice="required",
               temperature=0, max_tokens=200, extra_body={"max_tool_calls": CALLS})
    whole = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    check([(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls])
    streamed: dict[int, dict[str, str]] = {}
    finish = []
    for chunk in client.chat.completions.create(stream=True, **ask):  # type: ignore[call-overload]
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = streamed.setdefault(delta.index, {"id": "", "name": "", "args": ""})
            entry["id"] += delta.id or ""
            entry["name"] += delta.function.name or "" if delta.function else ""
            entry["args"] += delta.function.arguments or "" if delta.function else ""
        if chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert finish == ["tool_calls"] and sorted(streamed) == list(range(CALLS))
    check([(e["id"], e["name"], json.loads(e["args"])) for e in streamed.values()])
    assert [e["args"] for e in streamed.values()] == [c.function.arguments for c in calls]


def test_the_ollama_client_sees_parallel_calls(served: str) -> None:
    """Ollama's API has no tool_choice: localllm reads it (and max_tool_calls) from
    ``options``. The ollama client keeps a call's name and arguments only; the ids and
    indexes the server sends with them are read from the same reply over HTTP."""
    import httpx
    import ollama

    client = ollama.Client(host=served, timeout=120)
    options = {"temperature": 0, "num_predict": 200, "tool_choice": "required",
               "max_tool_calls": CALLS}
    whole = client.chat(model="caller", messages=ASK, tools=[WEATHER], options=options)
    calls = [(c.function.name, dict(c.function.arguments))
             for c in whole.message.tool_calls or []]
    assert whole.done_reason == "stop"  # Ollama's way: a turn with calls ends with stop
    raw = httpx.post(f"{served}/api/chat", timeout=120, json={
        "model": "caller", "messages": ASK, "tools": [WEATHER], "options": options,
        "stream": False}).json()["message"]["tool_calls"]
    check([(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in raw])
    assert [c["function"]["index"] for c in raw] == list(range(CALLS))
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in raw] == calls
    parts = list(client.chat(model="caller", messages=ASK, tools=[WEATHER], options=options,
                             stream=True))
    streamed = [(c.function.name, dict(c.function.arguments))
                for p in parts for c in p.message.tool_calls or []]
    assert streamed == calls


def test_langchain_bind_tools_sees_parallel_calls(served: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{served}/v1", api_key="none", model="caller",  # type: ignore[arg-type]
                     temperature=0, max_tokens=200, timeout=120,
                     extra_body={"max_tool_calls": CALLS})
    bound = llm.bind_tools([WEATHER], tool_choice="required", parallel_tool_calls=True)
    message = bound.invoke(ASK)
    check([(c["id"], c["name"], c["args"]) for c in message.tool_calls])
    assert message.response_metadata["finish_reason"] == "tool_calls"
    gathered = None
    for part in bound.stream(ASK):
        gathered = part if gathered is None else gathered + part
    assert gathered is not None
    check([(c["id"], c["name"], c["args"]) for c in gathered.tool_calls])
    assert [c["args"] for c in gathered.tool_calls] == [c["args"] for c in message.tool_calls]


def test_connect_bounds_the_calls_where_the_server_can(served: str) -> None:
    """``connect()`` passes max_tool_calls to localllm's server (and the Responses API);
    over Ollama's API, which has no such field, it is refused before anything is sent."""
    import localllm

    with localllm.connect(served, "caller") as remote:
        out = remote.chat(ASK, tools=[WEATHER], tool_choice="required",
                          max_tool_calls=CALLS, temperature=0, max_tokens=200)
        assert out.finish_reason == "tool_calls"
        check([(c.id, c.name, c.parsed_arguments) for c in out.tool_calls])
    with localllm.connect(served, "caller", api="ollama") as native, \
            pytest.raises(localllm.UnsupportedFeatureError, match="max_tool_calls"):
        native.chat(ASK, tools=[WEATHER], max_tool_calls=CALLS, max_tokens=8)
