"""Remote backends on real servers, all on loopback and started here: ``localllm serve``
(through its OpenAI and its Ollama API), llama.cpp's ``llama-server`` (built from the
pinned llama-cpp-python's llama.cpp by scripts/build_reference_tools.py, cached) and
llama-cpp-python's own server. Ollama itself cannot be installed here (its binary comes
from outside PyPI): the ``ollama`` backend runs against localllm serve's Ollama API, which
the server tests check with the official ``ollama`` client."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydantic
import pytest
from server_harness import (
    first_model_id,
    reference_tools,
    running_server,
    served_in_thread,
    served_model,
)

import localllm
from localllm.testing import assert_text_agrees

pytestmark = pytest.mark.real_model
CHAT = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
PROMPTS = ["Name the capital of France.", "Write one sentence about the sea.",
           "What is 2 + 2?", "List three colours.", "Say hello in Spanish.",
           "Describe a cat in five words.", "What is the boiling point of water?",
           "Give me a synonym for happy."]


@pytest.fixture(scope="module")
def served(default_model_path: Path) -> Iterator[str]:
    with served_in_thread([CHAT, EMBEDDER], parallel=4, context_length=1024, threads=2) as url:
        yield url


@pytest.fixture(scope="module")
def llama_server(default_model_path: Path) -> Iterator[str]:
    """llama-server on the default model; its binary comes from `make tools` (make test
    builds it first), so a missing build fails here loudly."""
    binary = reference_tools() / "llama-server"
    command = [str(binary), "-m", str(default_model_path), "-c", "1024", "-np", "1", "-t", "2",
               "--host", "127.0.0.1", "--port", "{port}", "--jinja"]
    with running_server(command) as (url, _):
        yield url


@pytest.fixture(scope="module")
def lcp_server(default_model_path: Path) -> Iterator[str]:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path),
               "--host", "127.0.0.1", "--port", "{port}", "--n_ctx", "1024",
               "--n_threads", "2", "--interrupt_requests", "false"]
    with running_server(command, health="/v1/models") as (url, _):
        yield url


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def check_greedy_like_local(remote: localllm.RemoteModel, local: localllm.Model) -> None:
    """8 prompts at temperature 0: the remote text is the local llama.cpp backend's, up to
    a near tie (another process's KV layout may tip one; see localllm.testing)."""
    for prompt in PROMPTS:
        got = remote.chat(chat(prompt), max_tokens=24, temperature=0)
        assert got.usage.completion_tokens > 0 and got.finish_reason in ("stop", "length")
        assert_text_agrees(local, local.render_chat(chat(prompt)), got.text, 24)


def test_localllm_serve_through_both_apis_matches_local(served: str,
                                                        shared_model: localllm.Model) -> None:
    for api in ("openai", "ollama"):
        with localllm.connect(served, CHAT, api=api) as remote:
            assert remote.server.flavour == "localllm" and remote.server.api == api
            assert remote.info.backend == f"remote-{api}"
            check_greedy_like_local(remote, shared_model)
    with localllm.load(f"{served}/v1#{CHAT}") as remote:  # the load() source form
        assert isinstance(remote, localllm.Model) and remote.server.api == "openai"
        with pytest.warns(DeprecationWarning, match="model.server"):
            assert remote.flavour == "localllm"  # RemoteModel's attribute, still answered


def test_llama_server_matches_local(llama_server: str, shared_model: localllm.Model) -> None:
    with localllm.connect(llama_server, first_model_id(llama_server)) as remote:
        assert remote.server.flavour == "llama-server"
        check_greedy_like_local(remote, shared_model)
        ids = remote.tokenizer.encode("hello world", add_special=False)
        assert ids == shared_model.tokenizer.encode("hello world", add_special=False)
        assert remote.tokenizer.decode(ids) == "hello world"
        with pytest.raises(localllm.UnsupportedFeatureError, match="logprobs"):
            remote.chat(chat("Hi"), max_tokens=2, logprobs=2)


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_llama_server_through_the_agent_apis(api: str, llama_server: str,
                                             shared_model: localllm.Model) -> None:
    """llama-server serves Anthropic's Messages API and the Responses API too; the same
    codecs speak them, and the greedy text is the local one's."""
    with localllm.connect(llama_server, first_model_id(llama_server), api=api) as remote:
        assert remote.server.flavour == "llama-server" and remote.server.api == api
        check_greedy_like_local(remote, shared_model)
        # streamed too: llama-server reuses the cached prompt here, another float path, so
        # the text is held to the local one by the margin rule, not to the whole answer
        streamed = list(remote.stream_chat(chat(PROMPTS[1]), max_tokens=16, temperature=0))
        text = "".join(c.text for c in streamed)
        assert streamed[-1].completion is not None and streamed[-1].completion.text == text
        assert streamed[-1].completion.usage.completion_tokens > 0
        assert_text_agrees(shared_model, shared_model.render_chat(chat(PROMPTS[1])), text, 16)


def test_llama_cpp_python_server_refuses_what_it_drops(lcp_server: str) -> None:
    with localllm.connect(lcp_server, first_model_id(lcp_server)) as remote:
        assert remote.server.flavour == "llama-cpp-python"
        assert remote.chat(chat("Name the capital of France."), max_tokens=8,
                           temperature=0).text
        schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "integer"}}}}}
        refusals = [({"response_format": schema}, "response_format"),
                    ({"tools": [TOOL], "tool_choice": "required"}, "tool_choice"),
                    ({"repeat_last_n": 16}, "repeat_last_n")]
        for extra, needle in refusals:
            with pytest.raises(localllm.UnsupportedFeatureError, match=needle):
                remote.chat(chat("Hi"), max_tokens=4, **extra)
    # the table is data: a caller who knows better may override it
    with localllm.connect(lcp_server, first_model_id(lcp_server),
                          capabilities={"sampling": ["temperature", "repeat_last_n"]}) as r:
        assert r.chat(chat("Hi"), max_tokens=2, repeat_last_n=16).text is not None
        with pytest.raises(localllm.UnsupportedFeatureError, match="top_p"):
            r.chat(chat("Hi"), max_tokens=2, top_p=0.5)


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                              "maxLength": 20}},
                   "required": ["city"]}}}


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
     "content": "18 C and sunny"},
    {"role": "user", "content": "Is that warm?"}]


def test_earlier_tool_calls_go_out_in_each_api_shape(served: str, llama_server: str) -> None:
    """A conversation holding an earlier call and its result is sent in each API's own
    shape (OpenAI's: type and function, arguments as text; Ollama's: function, arguments
    as an object; no empty tool_calls on plain turns). llama-server refused the shape
    sent before with a 500 ("Missing tool call type"). localllm serve renders, through
    either API, exactly the prompt the model renders locally."""
    local = served_model(served, CHAT)
    expected = local.count_tokens(local.render_chat(HISTORY, tools=[TOOL]))
    for api in ("openai", "ollama"):
        with localllm.connect(served, CHAT, api=api) as remote:
            done = remote.chat(HISTORY, tools=[TOOL], max_tokens=4, temperature=0)
            assert done.usage.prompt_tokens == expected, api
    with localllm.connect(llama_server, first_model_id(llama_server)) as remote:
        done = remote.chat(HISTORY, tools=[TOOL], max_tokens=4, temperature=0)
        first_turn = local.count_tokens(local.render_chat(HISTORY[:1]))
        assert done.usage.prompt_tokens > first_turn and done.usage.completion_tokens > 0


def test_streams_tools_schemas_logprobs_and_async(served: str) -> None:
    fresh = served_model(served, CHAT).clear_cache  # compared runs start empty
    with localllm.connect(served, CHAT) as remote:
        fresh()
        whole = remote.chat(chat(PROMPTS[1]), max_tokens=16, temperature=0)
        fresh()
        chunks = list(remote.stream_chat(chat(PROMPTS[1]), max_tokens=16, temperature=0))
        assert "".join(c.text for c in chunks) == whole.text
        assert chunks[-1].completion is not None and chunks[-1].completion.text == whole.text
        called = remote.chat(chat("What is the weather in Paris?"), tools=[TOOL],
                             tool_choice="required", max_tokens=48, temperature=0)
        assert called.finish_reason == "tool_calls" and called.tool_calls[0].name == \
            "get_weather"
        assert isinstance(called.tool_calls[0].parsed_arguments["city"], str)
        deltas = [d for c in remote.stream_chat(chat("Weather in Rome?"), tools=[TOOL],
                                                tool_choice="required", max_tokens=48,
                                                temperature=0) for d in c.tool_calls]
        assert deltas[0].name == "get_weather" and "".join(d.arguments for d in deltas)
        city = remote.chat(chat("Name a city in Japan as JSON."), response_format=City,
                           max_tokens=64, temperature=0)
        assert isinstance(city.parsed, City)
        with_lp = remote.complete("The sky is", max_tokens=4, temperature=0, logprobs=2)
        assert with_lp.logprobs is not None and len(with_lp.logprobs) == 4
        assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in with_lp.logprobs)

        async def both() -> list[str]:
            fresh()
            a = await remote.achat(chat(PROMPTS[0]), max_tokens=12, temperature=0)
            fresh()
            parts = [c.text async for c in remote.astream("Once upon a time", max_tokens=6,
                                                           temperature=0)]
            return [a.text, "".join(parts)]

        texts = asyncio.run(both())
        fresh()
        assert texts[0] == remote.chat(chat(PROMPTS[0]), max_tokens=12, temperature=0).text
        fresh()
        assert texts[1] == remote.complete("Once upon a time", max_tokens=6,
                                           temperature=0).text != ""


def test_stop_strings_hold_on_the_client(served: str) -> None:
    fresh = served_model(served, CHAT).clear_cache  # compared runs start empty
    with localllm.connect(served, CHAT) as remote:
        fresh()
        free = remote.complete("One, two, three, four,", max_tokens=16, temperature=0).text
        stop = " " + free.split()[2]  # a word the free text reaches
        fresh()
        got = remote.complete("One, two, three, four,", max_tokens=16, temperature=0,
                              stop=[stop])
        assert got.text == free.split(stop)[0] and got.finish_reason == "stop"


def test_the_client_cuts_at_a_stop_the_server_ignored() -> None:
    """The stream parser on server events as a server that ignores ``stop`` sends them
    (no server needed to show what the client does with them)."""
    from localllm.core.request import Assembler, build_request
    from localllm.protocols.openai import Decoder
    from localllm.remote.generator import RemoteRun

    request = build_request(prompt="The answer is", stop=["END"])
    decoder = Decoder(chat=False)
    run = RemoteRun(None, "/v1/completions", {}, True, decoder, None,  # type: ignore[arg-type]
                    request)
    assembler = Assembler(run, request.sampling.stop)
    texts = []
    for piece in ["The answer is 4", "2. E", "ND and more", " text"]:
        event = {"choices": [{"text": piece, "finish_reason": None}]}
        for part in decoder.feed_line(f"data: {json.dumps(event)}"):
            chunk = assembler.feed(part)
            texts += [chunk.text] if chunk is not None else []
        if assembler.over:
            break
    final = assembler.final().completion
    assert final is not None and final.text == "The answer is 42. " == "".join(texts)
    assert final.stop_sequence == "END" and final.finish_reason == "stop"


def test_leaving_a_stream_stops_the_server(served: str) -> None:
    model = served_model(served, CHAT)
    with localllm.connect(served, CHAT) as remote:
        for _ in remote.stream("Tell a long story about a dragon.", max_tokens=400):
            break
        deadline = time.monotonic() + 30
        while model.stats.active_sequences and time.monotonic() < deadline:
            time.sleep(0.05)
        assert model.stats.active_sequences == 0


def test_embeddings_through_both_apis(served: str) -> None:
    texts = ["A cat sits on the mat.", "Taxes are due in April."]
    for api in ("openai", "ollama"):
        with localllm.connect(served, EMBEDDER, api=api) as remote:
            got = remote.embed(texts)  # loads the embedder on the server
            local = served_model(served, EMBEDDER).embed(texts).vectors
            assert np.allclose(got.vectors, local, atol=1e-5) and got.usage.prompt_tokens > 0


def test_tokenizer_and_its_limits(served: str, shared_model: localllm.Model) -> None:
    with localllm.connect(served, CHAT) as remote:
        text = "Remote tokenizers agree."
        assert remote.tokenizer.encode(text) == shared_model.tokenizer.encode(text)
        assert remote.count_tokens(text) == len(shared_model.tokenizer.encode(
            text, add_special=False))
        with pytest.raises(localllm.UnsupportedFeatureError, match="chat tokens"):
            remote.count_tokens(chat("Hi"))
    with localllm.connect(served, CHAT, api="ollama") as native, \
            pytest.raises(localllm.UnsupportedFeatureError, match="tokeniz"):
        native.tokenizer.encode("x")


def test_errors_are_typed(served: str, tmp_path: Path) -> None:
    with pytest.raises(localllm.RemoteConnectionError, match=r"127\.0\.0\.1:9"):
        localllm.connect("http://127.0.0.1:9", CHAT)
    with pytest.raises(localllm.RemoteConnectionError, match=r"no-such-host\.invalid"):
        localllm.connect("http://no-such-host.invalid:8000", CHAT)
    with pytest.raises(localllm.ModelNotFoundError, match="serves no model"):
        localllm.connect(served, "no-such-model")
    with localllm.connect(served, CHAT) as remote:
        with pytest.raises(localllm.ContextOverflowError):
            remote.complete("word " * 2000, max_tokens=4)
        with pytest.raises(localllm.UnsupportedFeatureError, match="overflow"):
            remote.complete("x", overflow="truncate_left")
        with pytest.raises(localllm.ConfigError):
            remote.complete("x", temperature="hot")
        with pytest.raises(localllm.RemoteTimeoutError, match="did not answer in time"):
            remote.complete("Tell a long story.", max_tokens=400, timeout=0.001)
    with pytest.raises(localllm.ConfigError, match="URL#MODEL"):
        localllm.load(served)
    with served_in_thread([CHAT], api_keys=["k1"], threads=2) as locked:
        with pytest.raises(localllm.AuthenticationError):
            localllm.connect(locked, CHAT, api_key="wrong").complete("x", max_tokens=1)
        assert localllm.connect(locked, CHAT, api_key="k1").complete("x", max_tokens=1)


def test_a_busy_server_is_retried(default_model_path: Path) -> None:
    """parallel=1, max_queue=1: with one request running and one waiting, a third gets 503
    + Retry-After; the client waits and retries, and all three succeed."""
    with served_in_thread([CHAT], parallel=1, max_queue=1, threads=2,
                          context_length=512) as url, localllm.connect(url, CHAT) as remote:
        held = remote.stream("Tell a long story.", max_tokens=80, temperature=0)
        next(held)  # the first request now holds the only sequence
        results: dict[str, str] = {}

        def complete(key: str) -> None:
            results[key] = remote.complete("Hello", max_tokens=2).text

        waiting = threading.Thread(target=complete, args=("queued",))
        waiting.start()
        scheduler = served_model(url, CHAT)._scheduler
        deadline = time.monotonic() + 30
        while scheduler.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = httpx.post(f"{url}/v1/completions", json={"model": CHAT, "prompt": "x",
                                                            "max_tokens": 1}, timeout=30)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        retried = threading.Thread(target=complete, args=("retried",))
        retried.start()
        time.sleep(0.3)
        assert "retried" not in results  # refused once, waiting for Retry-After
        rest = "".join(c.text for c in held)
        for t in (waiting, retried):
            t.join(timeout=60)
        assert rest and set(results) == {"queued", "retried"}
