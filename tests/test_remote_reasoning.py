"""Reasoning through ``connect()``: a remote model's thinking comes back apart from its
answer on all four wire APIs (OpenAI chat completions, Ollama, Anthropic Messages, OpenAI
Responses), ``think=`` and ``reasoning_budget=`` pass through each API's own switch, and
what an API cannot say is refused with a typed error before anything is sent.

The server is ``localllm serve``'s app on loopback, started and stopped here, serving the
real default model with QwQ's real chat template in the file's own metadata (the prompt
opens ``<think>``, so the model's output is thinking until ``</think>``, which a budget
forces). The local oracle is the very ``Model`` the server serves, called in-process
through the library's API: its prompt cache is cleared before every run, local or remote,
so each evaluates the prompt from scratch on the same weights, context and threads, one
float path, and greedy equality is exact on any CPU. What holds by construction is
asserted (remote equal to local, streamed equal to whole, no marker in either part, the
off switch leaving no thinking), never the words."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import served_in_thread, served_model

import localllm
from localllm.core.request import Assembler, build_request
from localllm.models.gguf import copy_with_metadata
from localllm.protocols import anthropic as anthropic_wire
from localllm.protocols import ollama as ollama_wire
from localllm.protocols import openai as openai_wire
from localllm.protocols import responses as responses_wire
from localllm.remote.generator import RemoteRun

pytestmark = pytest.mark.real_model
THINKER = "thinker"
PLAIN = "smollm2-135m-instruct"  # the default model under its own template: it does not think
APIS = ("openai", "ollama", "anthropic", "responses")
ASK = [{"role": "user", "content": "Name the capital of France."}]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 40}
MARKERS = ("<think>", "</think>")
#: the APIs whose usage counts the thinking's tokens apart
COUNTED = ("openai", "responses")


@pytest.fixture(scope="module")
def base(templates: dict[str, str], default_model_path: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("thinker") / f"{THINKER}.gguf"
    copy_with_metadata(default_model_path, path,
                       {"tokenizer.chat_template": templates["Qwen-QwQ-32B"]})
    with served_in_thread([str(path), PLAIN], context_length=1024, parallel=1,
                          threads=2) as url:
        yield url


@pytest.fixture(scope="module")
def local(base: str) -> localllm.Model:
    """The served thinker itself, for the same request through the library's API."""
    return served_model(base, THINKER)


@pytest.fixture(scope="module")
def remotes(base: str) -> Iterator[dict[str, localllm.Model]]:
    """The thinker through each API: ``load("URL#MODEL", backend=API)``."""
    models = {api: localllm.load(f"{base}#{THINKER}", backend=api) for api in APIS}
    yield models
    for model in models.values():
        model.close()


def fresh(local: localllm.Model) -> localllm.Model:
    """The served model with nothing cached: the next run, local or remote, evaluates the
    whole prompt."""
    local.clear_cache()
    return local


def cases(api: str) -> list[dict[str, Any]]:
    """The switches each API can say: a level everywhere, True, and a budget where the
    API has one (short, so that the close marker is forced and an answer may follow)."""
    out: list[dict[str, Any]] = [{"think": "low"}, {"think": True}]
    if api == "anthropic":
        out += [{"think": "low", "reasoning_budget": 3}, {"reasoning_budget": 2}]
    return out


@pytest.mark.parametrize("api", APIS)
def test_remote_thinking_is_the_local_models_whole_and_streamed(
        api: str, local: localllm.Model, remotes: dict[str, localllm.Model]) -> None:
    remote = remotes[api]
    assert remote.server is not None and remote.server.api == api
    for switch in cases(api):
        want = fresh(local).chat(ASK, **GREEDY, **switch)
        assert want.reasoning, (switch, want)  # the prompt opened the thinking
        fresh(local)
        got = remote.chat(ASK, **GREEDY, **switch)
        assert (got.reasoning, got.text) == (want.reasoning, want.text), (api, switch)
        assert not any(m in got.reasoning + got.text for m in MARKERS)
        assert got.finish_reason == want.finish_reason
        assert got.usage.completion_tokens == want.usage.completion_tokens
        assert got.usage.reasoning_tokens == (
            want.usage.reasoning_tokens if api in COUNTED else 0), (api, got.usage)

        fresh(local)
        chunks = list(remote.stream_chat(ASK, **GREEDY, **switch))
        done = chunks[-1].completion
        assert done is not None and (done.reasoning, done.text) == (got.reasoning, got.text)
        assert "".join(c.reasoning for c in chunks) == got.reasoning
        assert "".join(c.text for c in chunks) == got.text
        # the thinking streams ahead of the answer: no reasoning after the first text
        first_text = next((i for i, c in enumerate(chunks) if c.text), len(chunks))
        assert not any(c.reasoning for c in chunks[first_text:]), api


@pytest.mark.parametrize("api", APIS)
def test_think_false_renders_the_off_switch(api: str, local: localllm.Model,
                                            remotes: dict[str, localllm.Model]) -> None:
    """False is each API's off switch (``reasoning_effort``/``reasoning.effort`` "none",
    Ollama's ``think: false``, Anthropic's ``disabled``): the template closes the
    thinking in the prompt, so nothing is thought and the answer is the local one."""
    want = fresh(local).chat(ASK, think=False, **GREEDY)
    assert want.reasoning == "" and want.text.strip()
    fresh(local)
    got = remotes[api].chat(ASK, think=False, **GREEDY)
    assert (got.reasoning, got.text) == ("", want.text)
    assert got.usage.prompt_tokens == want.usage.prompt_tokens  # the off switch's prompt
    fresh(local)
    streamed = list(remotes[api].stream_chat(ASK, think=False, **GREEDY))
    assert not any(c.reasoning for c in streamed)
    assert "".join(c.text for c in streamed) == want.text


def test_async_streams_carry_the_thinking_too(local: localllm.Model,
                                              remotes: dict[str, localllm.Model]) -> None:
    want = fresh(local).chat(ASK, think="low", **GREEDY)

    async def both(model: localllm.Model) -> tuple[localllm.Completion, list[Any]]:
        fresh(local)
        whole = await model.achat(ASK, think="low", **GREEDY)
        fresh(local)
        return whole, [c async for c in model.astream_chat(ASK, think="low", **GREEDY)]

    for api in ("openai", "anthropic"):
        whole, chunks = asyncio.run(both(remotes[api]))
        assert (whole.reasoning, whole.text) == (want.reasoning, want.text), api
        assert "".join(c.reasoning for c in chunks) == want.reasoning


def test_what_an_api_cannot_say_is_refused_before_sending(base: str) -> None:
    """A budget where the API has none, a switch on a plain prompt, a budget Anthropic
    would reject, and a server marked as not switching: typed errors, never dropped."""
    refused = localllm.UnsupportedFeatureError
    with localllm.connect(base, THINKER, api="openai") as oai:
        with pytest.raises(refused, match="reasoning_budget"):
            oai.chat(ASK, reasoning_budget=4, max_tokens=8)
        with pytest.raises(refused, match="complete"):
            oai.complete("Two plus two is", think=True, max_tokens=4)
    with localllm.connect(base, THINKER, api="ollama") as native:
        with pytest.raises(refused, match="reasoning_budget"):
            native.chat(ASK, think=True, reasoning_budget=4, max_tokens=8)
        with pytest.raises(refused, match="complete"):
            native.complete("Two plus two is", think=False, max_tokens=4)
    with localllm.connect(base, THINKER, api="responses") as responses, \
            pytest.raises(refused, match="reasoning_budget"):
        responses.chat(ASK, reasoning_budget=4, max_tokens=8)
    with localllm.connect(base, THINKER, api="anthropic") as claude:
        with pytest.raises(refused, match="below max_tokens"):
            claude.chat(ASK, reasoning_budget=8, max_tokens=8)
        with pytest.raises(refused, match="think=False"):
            claude.chat(ASK, think=False, reasoning_budget=4, max_tokens=8)
    with localllm.connect(base, THINKER, capabilities={"think": False}) as deaf, \
            pytest.raises(refused, match="would not switch"):
        deaf.chat(ASK, think=True, max_tokens=4)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_model_that_does_not_think(base: str, api: str) -> None:
    """Without ``think=`` a model that writes no thinking has ``reasoning=None``, as
    locally; asking it to think is the server's 400, a ConfigError here."""
    with localllm.connect(base, PLAIN, api=api) as plain:
        assert plain.chat(ASK, max_tokens=4, temperature=0).reasoning is None
        with pytest.raises(localllm.ConfigError, match="not a reasoning model"):
            plain.chat(ASK, think=True, max_tokens=4)


# ---------------------------------------------------------------------------- the wire
def test_each_api_writes_its_own_switch() -> None:
    """The request bodies: what each ``think=`` and budget becomes on each API."""
    def body(api: str, **options: Any) -> dict[str, Any]:
        request = build_request(messages=ASK, max_tokens=64, **options)
        if api == "openai":
            return openai_wire.client_body(request, "m", max_completion_tokens=True,
                                           stream_usage=True, wire_format=None)[1]
        if api == "ollama":
            return ollama_wire.client_body(request, "m", None)[1]
        if api == "anthropic":
            return anthropic_wire.client_body(request, "m")[1]
        return responses_wire.client_body(request, "m", None)[1]

    for think, effort in ((True, "medium"), (False, "none"), ("high", "high")):
        assert body("openai", think=think)["reasoning_effort"] == effort
        assert body("responses", think=think)["reasoning"] == {"effort": effort}
        assert body("ollama", think=think)["think"] == think
        # what the server reads back is the switch that was given (True: a level)
        assert openai_wire.EFFORTS[effort] == (think if think is not True else "medium")
    assert body("anthropic", think=True)["thinking"] == {"type": "adaptive"}
    assert body("anthropic", think=False)["thinking"] == {"type": "disabled"}
    low = body("anthropic", think="low", reasoning_budget=16)
    assert low["thinking"] == {"type": "enabled", "budget_tokens": 16}
    assert low["output_config"] == {"effort": "low"}
    assert anthropic_wire.read_thinking(low["thinking"], "low", 64) == \
        anthropic_wire.ThinkingAsked("low", 16)
    for api in APIS:  # no switch given: none sent, the server's default stands
        assert not {"reasoning_effort", "reasoning", "think", "thinking"} & set(body(api))


def decoded(decoder: Any, lines: list[str], **options: Any) -> localllm.Completion:
    """Server lines through a decoder and the assembler, as a remote run reads them."""
    request = build_request(messages=ASK, **options)
    run = RemoteRun(None, "/", {}, True, decoder, None, request)  # type: ignore[arg-type]
    assembler = Assembler(run, ())
    for line in lines:
        for piece in decoder.feed_line(line):
            assembler.feed(piece)
    done = assembler.final().completion
    assert done is not None
    return done


def sse(event: dict[str, Any]) -> str:
    return "data: " + json.dumps(event)


def test_other_servers_thinking_shapes_are_read() -> None:
    """Shapes localllm's server does not send: vLLM's and OpenRouter's ``reasoning``
    delta, a delta carrying both names with the same text (taken once), the usage
    details, and Ollama's /api/generate ``thinking``."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return sse({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    done = decoded(openai_wire.Decoder(chat=True), [
        chunk({"role": "assistant", "reasoning": "Paris is "}),
        chunk({"reasoning": "in France.", "reasoning_content": "in France."}),
        chunk({"content": "Paris."}, "stop"),
        sse({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7,
                                      "completion_tokens_details": {"reasoning_tokens": 4}}}),
        "data: [DONE]"])
    assert (done.reasoning, done.text) == ("Paris is in France.", "Paris.")
    assert done.usage.reasoning_tokens == 4 and done.usage.completion_tokens == 7
    whole = openai_wire.Decoder(chat=True).feed_whole({"choices": [{
        "message": {"content": "Paris.", "reasoning_content": "Think."},
        "finish_reason": "stop"}]})
    assert [(p.reasoning, p.text) for p in whole] == [("Think.", "Paris.")]

    done = decoded(ollama_wire.Decoder(chat=False), [
        json.dumps({"response": "", "thinking": "Hmm.", "done": False}),
        json.dumps({"response": "Paris.", "done": True, "done_reason": "stop",
                    "prompt_eval_count": 3, "eval_count": 4})])
    assert (done.reasoning, done.text) == ("Hmm.", "Paris.")

    # Anthropic's signature and a Responses summary are not thinking text
    done = decoded(anthropic_wire.Decoder(chat=True), [
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "thinking_delta", "thinking": "Hmm."}}),
        sse({"type": "content_block_delta", "index": 0,
             "delta": {"type": "signature_delta", "signature": "c2ln"}}),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"output_tokens": 3}}),
        sse({"type": "message_stop"})], think=True)
    assert (done.reasoning, done.text) == ("Hmm.", "")
    done = decoded(responses_wire.Decoder(chat=True), [
        sse({"type": "response.reasoning_summary_text.delta", "delta": "A summary."}),
        sse({"type": "response.output_text.delta", "delta": "Paris."}),
        sse({"type": "response.completed", "response": {"usage": {
            "input_tokens": 3, "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 6}}}})])
    assert (done.reasoning, done.text) == (None, "Paris.")
    assert done.usage.reasoning_tokens == 6
