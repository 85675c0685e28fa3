"""Reasoning on the agent surfaces: Anthropic's Messages API (``thinking`` blocks, their
budget, ``thinking_delta`` and ``signature_delta`` events) and OpenAI's Responses API
(``reasoning`` items, ``reasoning_text`` events, ``reasoning_tokens``), driven by the
official ``anthropic`` and ``openai`` SDKs against a server this module starts and stops.

The served thinker is the real default model with QwQ's real chat template: thinking on,
the prompt opens ``<think>`` and the model's output is thinking until ``</think>``, which
a budget forces; thinking off, the template closes it in the prompt. What holds by
construction is asserted (the order of blocks and events, the counts, the prompt the
switch renders, streamed equal to whole), never the words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import served_in_thread, served_model

from localllm import StreamChunk
from localllm.decoding.reasoning import template_switch
from localllm.models.gguf import copy_with_metadata
from localllm.protocols import anthropic as anthropic_wire
from localllm.protocols import responses as responses_wire
from localllm.templates.chat import render_chat

pytestmark = pytest.mark.real_model
THINKER = "thinker"
PLAIN = "smollm2-135m-instruct"  # the default model under its own template: it does not think
ASK = [{"role": "user", "content": "What is 2 + 2?"}]
GREEDY = {"temperature": 0}  # the SDK of 2026 no longer names it; the server honours it
MARKERS = ("<think>", "</think>")


@pytest.fixture(scope="module")
def qwq(templates: dict[str, str]) -> str:
    return templates["Qwen-QwQ-32B"]


@pytest.fixture(scope="module")
def base(qwq: str, default_model_path: Path, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[str]:
    """The thinker (the default model's weights with QwQ's template in the file's own
    metadata) and the plain default model, served on loopback."""
    path = tmp_path_factory.mktemp("thinker") / f"{THINKER}.gguf"
    copy_with_metadata(default_model_path, path, {"tokenizer.chat_template": qwq})
    with served_in_thread([str(path), PLAIN], context_length=1024, parallel=2,
                          threads=2) as url:
        yield url


@pytest.fixture(scope="module")
def claude(base: str) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=base, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oai(base: str) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)


def prompt_tokens(base: str, qwq: str, think: Any) -> int:
    """The tokens of the thinker's prompt for ASK as QwQ's template renders it with the
    switch ``think`` sets."""
    return int(served_model(base, THINKER).count_tokens(
        render_chat(qwq, ASK, **template_switch(think))))


def close_tokens(base: str) -> int:
    return len(served_model(base, THINKER).tokenizer.encode("</think>", add_special=False))


# ---------------------------------------------------------------------------- Anthropic
def test_anthropic_thinking_block_comes_first_and_streams_the_same(base: str, qwq: str,
                                                                   claude: Any) -> None:
    # a budget shorter than the model's own thinking: the answer runs on after it
    ask: dict[str, Any] = {"model": THINKER, "messages": ASK, "extra_body": GREEDY,
                           "thinking": {"type": "enabled", "budget_tokens": 2}}
    # warm-up: the prompt (the same with thinking on, whatever the budget) is cached
    claude.messages.create(**{**ask, "max_tokens": 1, "thinking": {"type": "adaptive"}})
    whole = claude.messages.create(**ask, max_tokens=40)
    kinds = [b.type for b in whole.content]
    assert kinds[0] == "thinking" and set(kinds[1:]) <= {"text"}, kinds
    thought = whole.content[0]
    assert thought.thinking and thought.signature
    assert thought.signature == anthropic_wire.signature(thought.thinking)
    text = "".join(b.text for b in whole.content[1:])
    assert not any(m in thought.thinking or m in text for m in MARKERS)
    assert whole.usage.input_tokens == prompt_tokens(base, qwq, True)

    with claude.messages.stream(**ask, max_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]
    assert final.usage.output_tokens == whole.usage.output_tokens
    raw = [e for e in events if e.type.startswith("content_block")]
    assert raw[0].type == "content_block_start" and raw[0].index == 0
    assert raw[0].content_block.type == "thinking"
    block0 = [e for e in raw if e.index == 0]
    deltas = [e.delta.type for e in block0 if e.type == "content_block_delta"]
    assert set(deltas[:-1]) == {"thinking_delta"} and deltas[-1] == "signature_delta"
    assert block0[-1].type == "content_block_stop" and raw.index(block0[-1]) == len(block0) - 1
    assert "".join(e.delta.thinking for e in block0 if e.type == "content_block_delta"
                   and e.delta.type == "thinking_delta") == thought.thinking
    if len(whole.content) > 1:  # the text block follows at the next index
        assert raw[len(block0)].type == "content_block_start"
        assert raw[len(block0)].index == 1 and raw[len(block0)].content_block.type == "text"


def test_anthropic_budget_holds_and_zero_leaves_no_thinking(base: str, claude: Any) -> None:
    model = served_model(base, THINKER)
    close = close_tokens(base)
    for budget in (0, 4, 12):
        model.clear_cache()  # served and local runs evaluate the prompt alike
        got = claude.messages.create(model=THINKER, messages=ASK, max_tokens=40,
                                     thinking={"type": "enabled", "budget_tokens": budget},
                                     extra_body=GREEDY)
        thinking = "".join(b.thinking for b in got.content if b.type == "thinking")
        # Anthropic's usage has no thinking count: the same request run on the served
        # model counts the thinking's tokens, and gives the same thinking
        model.clear_cache()
        local = model.chat(ASK, max_tokens=40, reasoning_budget=budget, temperature=0)
        assert thinking == (local.reasoning or "")
        assert local.usage.reasoning_tokens <= budget + close
        if budget == 0:  # the close marker is forced at once: nothing is thought
            assert [b.type for b in got.content if b.type == "thinking"] == []
    omitted = claude.messages.create(model=THINKER, messages=ASK, max_tokens=20,
                                     thinking={"type": "enabled", "budget_tokens": 8,
                                               "display": "omitted"}, extra_body=GREEDY)
    blocks = [b for b in omitted.content if b.type == "thinking"]
    assert len(blocks) == 1 and blocks[0].thinking == "" and blocks[0].signature
    import anthropic

    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        claude.messages.create(model=THINKER, messages=ASK, max_tokens=8,
                               thinking={"type": "enabled", "budget_tokens": 8})
    with pytest.raises(anthropic.BadRequestError, match="'huge'"):
        claude.messages.create(model=THINKER, messages=ASK, max_tokens=8,
                               thinking={"type": "adaptive"},
                               extra_body={"output_config": {"effort": "huge"}})


def test_anthropic_disabled_renders_the_templates_off_switch(base: str, qwq: str,
                                                             claude: Any) -> None:
    off = render_chat(qwq, ASK, **template_switch(False))
    assert off.rstrip().endswith("<think>\n</think>")  # QwQ's own off switch
    got = claude.messages.create(model=THINKER, messages=ASK, max_tokens=12,
                                 thinking={"type": "disabled"}, extra_body=GREEDY)
    assert got.usage.input_tokens == prompt_tokens(base, qwq, False)
    assert got.usage.input_tokens > prompt_tokens(base, qwq, True)
    # the prompt closed the thinking: the default model does not open it again
    assert [b.type for b in got.content if b.type == "thinking"] == []
    adaptive = claude.messages.create(model=THINKER, messages=ASK, max_tokens=1,
                                      thinking={"type": "adaptive"},
                                      extra_body={**GREEDY, "output_config": {"effort": "max"}})
    assert adaptive.usage.input_tokens == prompt_tokens(base, qwq, True)


def test_anthropic_earlier_thinking_is_accepted_and_not_shown(claude: Any) -> None:
    first = claude.messages.create(model=THINKER, messages=ASK, max_tokens=16,
                                   thinking={"type": "enabled", "budget_tokens": 6},
                                   extra_body=GREEDY)
    assert first.content[0].type == "thinking"
    blocks = [b.model_dump(exclude_none=True) for b in first.content]
    said = "".join(b["text"] for b in blocks if b["type"] == "text")
    answer = {"type": "text", "text": said or "4"}
    if not said:  # all of it was thinking: the turn still needs its answer
        blocks.append(answer)
    then = {"role": "user", "content": "And 3 + 3?"}
    counts = []
    for earlier in (blocks,  # as the SDK gave it back, thinking block included
                    [{"type": "redacted_thinking", "data": "opaque"},
                     {"type": "thinking", "thinking": "not for the prompt", "signature": "x"},
                     answer],
                    [answer]):
        got = claude.messages.create(
            model=THINKER, max_tokens=1, thinking={"type": "enabled", "budget_tokens": 0},
            messages=[*ASK, {"role": "assistant", "content": earlier}, then])
        counts.append(got.usage.input_tokens)
    assert counts[0] == counts[1] == counts[2], counts


def test_anthropic_a_model_that_does_not_think_refuses(claude: Any) -> None:
    import anthropic

    with pytest.raises(anthropic.BadRequestError, match="thinking") as refused:
        claude.messages.create(model=PLAIN, messages=ASK, max_tokens=8,
                               thinking={"type": "enabled", "budget_tokens": 4})
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    plain = claude.messages.create(model=PLAIN, messages=ASK, max_tokens=4)
    assert [b.type for b in plain.content] in ([], ["text"])


# ---------------------------------------------------------------------------- Responses
def test_responses_reasoning_item_comes_first_and_streams_the_same(base: str, qwq: str,
                                                                   oai: Any) -> None:
    ask: dict[str, Any] = {"model": THINKER, "input": ASK, "temperature": 0,
                           "reasoning": {"effort": "low"}, "store": False}
    oai.responses.create(**{**ask, "max_output_tokens": 1})  # warm-up: the prompt is cached
    whole = oai.responses.create(**ask, max_output_tokens=24)
    kinds = [item.type for item in whole.output]
    assert kinds == ["reasoning", "message"], kinds
    item = whole.output[0]
    assert item.id.startswith("rs_") and item.summary == []
    assert [c.type for c in item.content] == ["reasoning_text"]
    thought = item.content[0].text
    assert thought and not any(m in thought or m in whole.output_text for m in MARKERS)
    details = whole.usage.output_tokens_details
    assert 0 < details.reasoning_tokens <= whole.usage.output_tokens
    assert whole.usage.input_tokens == prompt_tokens(base, qwq, "low")

    with oai.responses.stream(**ask, max_output_tokens=24) as stream:
        events = list(stream)
        final = stream.get_final_response()
    order = [e.type for e in events]
    assert order[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.reasoning_text.delta"]
    assert events[2].item.type == "reasoning"
    done = order.index("response.reasoning_text.done")
    assert set(order[4:done]) == {"response.reasoning_text.delta"}
    assert order[done:done + 4] == ["response.reasoning_text.done",
                                    "response.content_part.done",
                                    "response.output_item.done",
                                    "response.output_item.added"]
    assert events[done + 3].item.type == "message" and events[done + 3].output_index == 1
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == events[done].text == thought
    assert [i.type for i in final.output] == kinds
    assert final.output[0].content[0].text == thought
    assert final.output_text == whole.output_text
    assert final.usage.output_tokens_details.reasoning_tokens == details.reasoning_tokens
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_effort_levels_and_the_off_switch(base: str, qwq: str, oai: Any) -> None:
    import openai

    off = oai.responses.create(model=THINKER, input=ASK, temperature=0, store=False,
                               max_output_tokens=12, reasoning={"effort": "none"})
    assert off.usage.input_tokens == prompt_tokens(base, qwq, False)
    # the prompt closed the thinking: the default model does not open it again
    assert [i.type for i in off.output] == ["message"]
    assert off.usage.output_tokens_details.reasoning_tokens == 0
    minimal = oai.responses.create(model=THINKER, input=ASK, store=False,
                                   max_output_tokens=1, reasoning={"effort": "minimal"})
    assert minimal.usage.input_tokens == prompt_tokens(base, qwq, "low")
    with pytest.raises(openai.BadRequestError, match="'extreme'") as bad:
        oai.responses.create(model=THINKER, input=ASK, max_output_tokens=1,
                             reasoning={"effort": "extreme"})
    assert bad.value.body["param"] == "reasoning.effort"


def test_responses_earlier_reasoning_is_accepted_and_not_shown(oai: Any) -> None:
    first = oai.responses.create(model=THINKER, input=ASK, temperature=0,
                                 max_output_tokens=16, reasoning={"effort": "high"})
    assert first.output[0].type == "reasoning"
    then = {"role": "user", "content": "And 3 + 3?"}
    said = {"role": "assistant", "content": first.output_text}
    items = [item.model_dump(exclude_none=True) for item in first.output]
    chained = oai.responses.create(model=THINKER, input=[then], max_output_tokens=1,
                                   previous_response_id=first.id, store=False,
                                   reasoning={"effort": "high"})
    echoed = oai.responses.create(model=THINKER, input=[*ASK, *items, then], store=False,
                                  max_output_tokens=1, reasoning={"effort": "high"})
    plain = oai.responses.create(model=THINKER, input=[*ASK, said, then], store=False,
                                 max_output_tokens=1, reasoning={"effort": "high"})
    assert chained.usage.input_tokens == echoed.usage.input_tokens == \
        plain.usage.input_tokens


def test_responses_a_model_that_does_not_think_refuses(oai: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match="thinking") as refused:
        oai.responses.create(model=PLAIN, input=ASK, max_output_tokens=4,
                             reasoning={"effort": "low"})
    assert refused.value.body["type"] == "invalid_request_error"
    plain = oai.responses.create(model=PLAIN, input=ASK, max_output_tokens=4, store=False)
    assert [i.type for i in plain.output] == ["message"]
    assert plain.usage.output_tokens_details.reasoning_tokens == 0


# ---------------------------------------------------------------------------- both codecs
async def _events(codec: Any, body: dict[str, Any], chunks: list[StreamChunk]
                  ) -> list[dict[str, Any]]:
    async def tagged() -> Any:
        for chunk in chunks:
            yield 0, chunk

    call = codec.parse(body)
    return [event async for event in codec.events(call, tagged(), 0.0)]


def test_a_chunk_with_thinking_and_text_closes_the_thinking_first(base: str) -> None:
    """The split can hand one chunk the thinking's end and the answer's start; each codec
    closes the thinking (with its signature, or its ``.done`` events) before the text
    opens. Chunks from a real run, cut at that point."""
    import asyncio

    model = served_model(base, THINKER)
    done = model.chat(ASK, temperature=0, max_tokens=12, reasoning_budget=2)
    assert done.reasoning
    chunks = [StreamChunk(text="", reasoning=done.reasoning[:-1]),
              StreamChunk(text="Four", reasoning=done.reasoning[-1:]),
              StreamChunk(text="", finish_reason="stop", completion=done)]
    claude = asyncio.run(_events(anthropic_wire.MessagesCodec(), {
        "model": THINKER, "max_tokens": 12, "messages": ASK,
        "thinking": {"type": "enabled", "budget_tokens": 2}}, chunks))
    blocks = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {})
               .get("type")) for e in claude if e["type"].startswith("content_block")]
    assert blocks == [("content_block_start", 0, "thinking"),
                      ("content_block_delta", 0, "thinking_delta"),
                      ("content_block_delta", 0, "thinking_delta"),
                      ("content_block_delta", 0, "signature_delta"),
                      ("content_block_stop", 0, None),
                      ("content_block_start", 1, "text"),
                      ("content_block_delta", 1, "text_delta"),
                      ("content_block_stop", 1, None)]
    signed = next(e for e in claude if e.get("delta", {}).get("type") == "signature_delta")
    assert signed["delta"]["signature"] == anthropic_wire.signature(done.reasoning)

    class Nowhere:  # store: false keeps nothing
        def load(self, response_id: str, caller: str) -> None:
            return None

        def save(self, response_id: str, caller: str, record: dict[str, Any]) -> None:
            raise AssertionError("store: false saves nothing")

    openai_events = asyncio.run(_events(responses_wire.ResponsesCodec(Nowhere()), {
        "model": THINKER, "input": ASK, "reasoning": {"effort": "low"}, "store": False},
        chunks))
    kinds = [e["type"].removeprefix("response.") for e in openai_events]
    assert kinds[2:] == ["output_item.added", "content_part.added", "reasoning_text.delta",
                         "reasoning_text.delta", "reasoning_text.done", "content_part.done",
                         "output_item.done", "output_item.added", "content_part.added",
                         "output_text.delta", "output_text.done", "content_part.done",
                         "output_item.done", kinds[-1]]
    assert kinds[-1] in ("completed", "incomplete")
    final = openai_events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"][0]["text"] == done.reasoning


# ---------------------------------------------------------------------------- client side
def test_the_client_decoders_keep_the_thinking_out_of_the_text(base: str) -> None:
    """``connect()`` reads these surfaces with the same codecs: the thinking events are
    skipped, so the text it assembles is the answer alone."""
    for path, body, decoder in (
            ("/v1/messages", {"messages": ASK, "max_tokens": 20,
                              "thinking": {"type": "enabled", "budget_tokens": 6}},
             anthropic_wire.Decoder(chat=True)),
            ("/v1/responses", {"input": ASK, "reasoning": {"effort": "low"},
                               "max_output_tokens": 20, "store": False},
             responses_wire.Decoder(chat=True))):
        pieces, events = [], []
        with httpx.stream("POST", base + path, json={"model": THINKER, "stream": True,
                                                     **body}, timeout=120) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                pieces += decoder.feed_line(line)
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        if path == "/v1/messages":
            deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
            thought = "".join(d.get("thinking", "") for d in deltas)
            answer = "".join(d.get("text", "") for d in deltas)
        else:
            output = events[-1]["response"]["output"]
            thought = "".join(c["text"] for i in output if i["type"] == "reasoning"
                              for c in i["content"])
            answer = "".join(c["text"] for i in output if i["type"] == "message"
                             for c in i["content"])
        assert thought, path  # the decoder did meet thinking events
        assert decoder.ended and "".join(p.text for p in pieces) == answer, path
