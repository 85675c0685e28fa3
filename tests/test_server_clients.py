"""The official clients, unchanged, against ``localllm serve`` on loopback: the ``openai``
package, the ``ollama`` package and langchain-openai's ``ChatOpenAI``. Real server, real
default model; the clients are the ones users install."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field
from server_harness import served_in_thread, served_model

pytestmark = pytest.mark.real_model
MODEL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hello."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                             "maxLength": 20}},
                   "required": ["city"]}}}
PARAMS = WEATHER["function"]["parameters"]  # type: ignore[index]


class Person(BaseModel):
    """Bounded (the name's length; JSON numbers are bounded by the grammar), so the
    answer ends within max_tokens by construction, whatever tokens a CPU draws."""

    name: str = Field(max_length=20)
    age: int


@pytest.fixture(scope="module")
def base(default_model_path: Path) -> Iterator[str]:
    with served_in_thread([MODEL], parallel=4, context_length=1024, threads=2,
                          api_keys=["k1"]) as url:
        yield url


def requests_counted(base: str, endpoint: str, status: int) -> int:
    text = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer k1"}).text
    found = re.search(rf'localllm_requests_total{{endpoint="{re.escape(endpoint)}",'
                      rf'status="{status}"}} (\d+)', text)
    return int(found.group(1)) if found else 0


# ------------------------------------------------------------------------------ openai
@pytest.fixture(scope="module")
def client(base: str):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key="k1")


def fresh(base: str) -> None:
    """Empty the KV cache before a run compared token for token with another (CPU flash
    attention sums in cache-cell order)."""
    served_model(base, MODEL).clear_cache()


def test_openai_create_and_stream(base: str, client) -> None:  # type: ignore[no-untyped-def]
    fresh(base)
    out = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=8,
                                         temperature=0)
    assert out.choices[0].message.content and out.usage.completion_tokens <= 8
    fresh(base)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        out.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    legacy = client.completions.create(model=MODEL, prompt="1, 2, 3,", max_tokens=4)
    assert legacy.choices[0].text


def test_openai_parse_pydantic(client) -> None:  # type: ignore[no-untyped-def]
    out = client.chat.completions.parse(
        model=MODEL, max_tokens=120, temperature=0, response_format=Person,
        messages=[{"role": "user", "content": "Invent a person: name and age."}])
    person = out.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.age, int)


def test_openai_tools_named_required_auto(client) -> None:  # type: ignore[no-untyped-def]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        out = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER],
                                             tool_choice=choice, max_tokens=80)
        (call,) = out.choices[0].message.tool_calls
        assert out.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), PARAMS)
    out = client.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER],
                                         tool_choice="auto", max_tokens=40)
    message = out.choices[0].message
    if message.tool_calls:  # the model chose to call: then the call is valid
        jsonschema.validate(json.loads(message.tool_calls[0].function.arguments), PARAMS)
    else:
        assert message.content and out.choices[0].finish_reason in ("stop", "length")


def test_openai_logprobs_and_n(client) -> None:  # type: ignore[no-untyped-def]
    out = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4,
                                         logprobs=True, top_logprobs=2, n=2, seed=3,
                                         temperature=1.0)
    assert len(out.choices) == 2
    for choice in out.choices:
        entries = choice.logprobs.content
        assert entries and all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)
        assert all(bytes(e.bytes).decode("utf-8", "replace") == e.token for e in entries)


def test_openai_errors_map_to_classes_without_retries(base: str, client) -> None:  # type: ignore[no-untyped-def]
    import openai

    before = requests_counted(base, "/v1/chat/completions", 400)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HI, temperature=7)
    assert requests_counted(base, "/v1/chat/completions", 400) == before + 1  # no retry
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong").models.list()
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        client.embeddings.create(model=MODEL, input="hello")


# ------------------------------------------------------------------------------ ollama
@pytest.fixture(scope="module")
def ollama_client(base: str):  # type: ignore[no-untyped-def]
    import ollama

    return ollama.Client(host=base, headers={"Authorization": "Bearer k1"})


def test_ollama_list_show_ps(ollama_client) -> None:  # type: ignore[no-untyped-def]
    listed = {m.model: m for m in ollama_client.list().models}  # with the store's models
    assert MODEL in listed and all(m.size > 0 for m in listed.values())
    assert listed[MODEL].details.family == "llama"
    shown = ollama_client.show(MODEL)
    assert shown.details.quantization_level and "completion" in shown.capabilities
    ollama_client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    assert MODEL in [m.model for m in ollama_client.ps().models]


def test_ollama_chat_generate(base: str, ollama_client) -> None:  # type: ignore[no-untyped-def]
    fresh(base)
    whole = ollama_client.chat(model=MODEL, messages=HI,
                               options={"num_predict": 10, "temperature": 0})
    fresh(base)
    parts = list(ollama_client.chat(model=MODEL, messages=HI, stream=True,
                                    options={"num_predict": 10, "temperature": 0}))
    assert "".join(p.message.content for p in parts) == whole.message.content
    final = parts[-1]
    assert final.done and final.eval_count == whole.eval_count
    assert final.prompt_eval_count and final.total_duration and final.total_duration > 1000
    gen = ollama_client.generate(model=MODEL, prompt="The sky is",
                                 options={"num_predict": 5, "stop": ["\n"]})
    assert gen.done and "\n" not in gen.response


def test_ollama_format_schema_and_tools(ollama_client) -> None:  # type: ignore[no-untyped-def]
    reply = ollama_client.chat(model=MODEL, format=Person.model_json_schema(),
                               messages=[{"role": "user", "content": "Invent a person."}],
                               options={"num_predict": 120, "temperature": 0})
    Person.model_validate_json(reply.message.content)

    def get_weather(city: str) -> str:
        """Current weather in a city.

        Args:
            city: the city
        """
        return "sunny"

    reply = ollama_client.chat(model=MODEL, tools=[get_weather], options={"num_predict": 60},
                               messages=[{"role": "user", "content": "Weather in Oslo?"}])
    if reply.message.tool_calls:  # auto: the model chose to call, with object arguments
        (call,) = reply.message.tool_calls
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict) and "city" in call.function.arguments
    else:
        assert reply.message.content and reply.done_reason in ("stop", "length")


def test_ollama_embed_and_keep_alive_0(base: str, ollama_client) -> None:  # type: ignore[no-untyped-def]
    import ollama

    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.embed(model=MODEL, input="hello")
    assert info.value.status_code == 400
    unloaded = ollama_client.generate(model=MODEL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert ollama_client.ps().models == []
    with pytest.raises(ollama.ResponseError) as info:
        ollama_client.pull(MODEL)
    assert info.value.status_code == 403


# ------------------------------------------------------------------------------ langchain
def test_langchain_chat_openai(base: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{base}/v1", api_key="k1", model=MODEL,  # type: ignore[arg-type]
                     max_tokens=40, temperature=0, stream_usage=True)
    assert llm.invoke("Say hello.").content
    chunks = list(llm.stream("Say hello."))
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] >= 1
    roomy = ChatOpenAI(base_url=f"{base}/v1", api_key="k1", model=MODEL,  # type: ignore[arg-type]
                       max_tokens=120, temperature=0)  # Person ends within it by construction
    structured = roomy.with_structured_output(Person).invoke("Invent a person: name, age.")
    assert isinstance(structured, Person)
