"""Anthropic's Messages API (``/v1/messages``), both sides: the server's codec (a body with
content blocks → one ``GenerationRequest``; the answer as a message of ``text`` and
``tool_use`` blocks, or as Anthropic's named SSE events), and the client's request bodies
and reply decoding for ``connect(api="anthropic")``.

Blocks map onto localllm's messages: ``system`` becomes the system turn, ``text`` blocks
content parts, a user's ``image`` blocks image parts (a base64 source decoded, a url source
kept unfetched), an assistant's ``tool_use`` blocks its tool calls (``input`` as JSON
arguments), and each ``tool_result`` block a ``tool`` turn answering its call. Tools take
Anthropic's shape (``name``, ``description``, ``input_schema``) and ``tool_choice`` all four
of its kinds (``auto``, ``any``, ``tool``, ``none``).

Thinking: the request's ``thinking`` sets a reasoning model's switch and budget (see
:func:`read_thinking`); the answer's thinking comes back as a ``thinking`` block before
the text, streamed as ``thinking_delta`` events and closed by a ``signature_delta``. An
earlier turn's ``thinking`` and ``redacted_thinking`` blocks are accepted and left out of
the prompt, as Anthropic's own models drop them from earlier turns. The client writes
``think=`` and ``reasoning_budget=`` the same way (:func:`thinking_fields`) and reads the
``thinking_delta`` text back as the completion's reasoning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._errors import ConfigError, RemoteError, RequestError, UnsupportedFeatureError
from .._types import Completion, ImagePart, Message, StreamChunk, ToolCallDelta
from ..core.request import GenerationRequest, Piece
from .codec import (
    MEDIA_TYPES,
    Call,
    Failure,
    StreamDecoder,
    base64_text,
    block_parts,
    image_from_base64,
    image_from_url,
    media_type,
    named_event,
    server_request,
    validate,
)

VERSION = "2023-06-01"  # the anthropic-version this API follows
#: Anthropic's stop reasons by localllm's finish reason (a stop string: stop_sequence)
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
#: ``output_config.effort`` as localllm's thinking level, where the thinking is on
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
#: the error type Anthropic names for each status; others are api_error
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error"}


# ---------------------------------------------------------------------------- server side
class CountBody(BaseModel):
    """``/v1/messages/count_tokens``: what a message request would read."""

    model_config = ConfigDict(extra="forbid")  # a field Anthropic defines but we do not: 400

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesBody(CountBody):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    stream: bool = False

    def response_format(self) -> Any:
        """``output_config.format`` (a JSON schema the answer must follow) as localllm's
        response format (``effort`` is read with the thinking, by :func:`read_thinking`)."""
        config = self.output_config or {}
        unknown = set(config) - {"format", "effort"}
        if unknown:
            raise RequestError(f"output_config.{sorted(unknown)[0]} is not supported",
                               param=f"output_config.{sorted(unknown)[0]}")
        fmt = config.get("format")
        if fmt is None:
            return None
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or \
                not isinstance(fmt.get("schema"), dict):
            raise RequestError("output_config.format must be {'type': 'json_schema', "
                               "'schema': {...}}", param="output_config.format")
        return {"type": "json_schema", "json_schema": {"name": "output",
                                                       "schema": fmt["schema"]}}

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_tokens": self.max_tokens}
        for name in ("temperature", "top_p", "top_k"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.stop_sequences:
            out["stop"] = self.stop_sequences
        return out


@dataclass(frozen=True)
class ThinkingAsked:
    """What a request's ``thinking`` asks of the model: ``think`` and ``budget`` as
    ``Model.chat`` takes them, and whether the thinking's text is left out of the answer
    (``display: "omitted"``: the block comes back empty, with its signature)."""

    think: Any = None
    budget: int | None = None
    omitted: bool = False


def read_thinking(thinking: dict[str, Any] | None, effort: Any, max_tokens: int
                  ) -> ThinkingAsked:
    """``thinking`` and ``output_config.effort`` as localllm's switch and budget.

    ``enabled`` turns the thinking on with ``budget_tokens`` as the budget (which must be
    below ``max_tokens``, as Anthropic requires; its minimum of 1,024 is not, since a small
    local model is worth testing with a small budget); ``adaptive`` turns it on and lets
    the model decide how long; ``disabled`` and ``between_tools`` (thinking off, with
    progress notes between tool calls, which a local model does not write) render the
    template's off switch. Absent, the template's default applies. ``effort`` sets the
    level (``xhigh`` and ``max`` are localllm's ``high``) where the thinking is on; with it
    off or left to the template, there is no thinking to spend the effort on, so it
    changes nothing. A model that does not think refuses a thinking request with the
    same 400 as the other surfaces (the model decides that, not this codec)."""
    if effort is not None and effort not in EFFORTS:
        raise RequestError(f"output_config.effort {effort!r} is not one of "
                           f"{', '.join(EFFORTS)}", param="output_config.effort")
    if thinking is None:
        return ThinkingAsked()
    kind = thinking.get("type")
    if kind not in ("enabled", "adaptive", "disabled", "between_tools"):
        raise RequestError(f"thinking type {kind!r} is not one of enabled, adaptive, "
                           "disabled, between_tools", param="thinking.type")
    allowed = {"type"} | ({"display"} if kind in ("enabled", "adaptive") else set()) | (
        {"budget_tokens"} if kind == "enabled" else set())
    unknown = sorted(set(thinking) - allowed)
    if unknown:
        raise RequestError(f"thinking.{unknown[0]} is not supported with thinking type "
                           f"{kind!r}", param=f"thinking.{unknown[0]}")
    display = thinking.get("display")
    if display not in (None, "summarized", "omitted"):
        raise RequestError(f"thinking.display {display!r} is not summarized or omitted",
                           param="thinking.display")
    omitted = display == "omitted"
    level = EFFORTS[effort] if effort is not None else True
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise RequestError(f"thinking.budget_tokens must be a whole number of tokens "
                               f">= 0, not {budget!r}", param="thinking.budget_tokens")
        if budget >= max_tokens:
            raise RequestError(f"thinking.budget_tokens ({budget}) must be less than "
                               f"max_tokens ({max_tokens}): the answer comes after the "
                               "thinking, within max_tokens", param="thinking.budget_tokens")
        return ThinkingAsked(level, budget, omitted)
    if kind == "adaptive":
        return ThinkingAsked(level, None, omitted)
    return ThinkingAsked(False)  # disabled, between_tools


def signature(thinking: str) -> str:
    """The ``signature`` of a thinking block: a digest of its text (base64 of SHA-256).

    Anthropic's clients expect one and pass it back with the block; it is not a
    cryptographic proof that this server wrote the thinking (anyone can compute it, and
    the server does not check it when the block comes back, since earlier thinking is
    left out of the prompt anyway). It only makes a block recognisable, and equal for the
    same thinking streamed or not."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def _text(value: Any, where: str) -> str:
    """A string, or a list of text blocks joined (``system``, a tool result's content)."""
    parts = block_parts(value, where, ("text",), "text block")
    return parts if isinstance(parts, str) else "".join(p["text"] for p in parts)


def read_image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An ``image`` block as an image part: a ``base64`` source (``media_type`` one of
    the four Anthropic takes) decoded, a ``url`` source kept as that URL (read only by a
    server that fetches images); any other source (``file`` ids above all: there is no
    file store here) is a RequestError naming it."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise RequestError(f"{where}.source must be an object", param=f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        if source.get("media_type") not in MEDIA_TYPES.values():
            raise RequestError(f"{where}.source.media_type {source.get('media_type')!r} is "
                               f"not one of {', '.join(MEDIA_TYPES.values())}",
                               param=f"{where}.source.media_type")
        return image_from_base64(source.get("data"), f"{where}.source.data")
    if kind == "url":
        return image_from_url(source.get("url"), f"{where}.source.url")
    raise RequestError(f"{where}.source.type {kind!r} is not supported; send the image as "
                       "a base64 or url source", param=f"{where}.source.type")


def read_messages(system: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic's turns to localllm's messages (see the module's docstring)."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _text(system, "system")})
    names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer them
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        where = f"messages.{i}"
        if role not in ("user", "assistant"):
            raise RequestError(f"messages[{i}].role must be 'user' or 'assistant', not "
                               f"{role!r}", param=f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content must be a string or a list of "
                               "blocks", param=f"{where}.content")
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            here = f"{where}.content.{j}"
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image" and role == "user":
                parts.append(read_image(block, here))
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue  # earlier thinking is not shown to the model again
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(block.get("input", {}), dict):
                    raise RequestError("a tool_use block's input must be an object",
                                       param=f"{here}.input")
                names[str(block.get("id"))] = str(block.get("name"))
                calls.append({"id": str(block.get("id")), "type": "function", "function": {
                    "name": str(block.get("name")),
                    "arguments": json.dumps(block.get("input") or {})}})
            elif kind == "tool_result" and role == "user":
                call_id = str(block.get("tool_use_id"))
                result = _text(block.get("content", ""), f"{here}.content")
                if block.get("is_error"):
                    result = f"Error: {result}"
                turn: dict[str, Any] = {"role": "tool", "tool_call_id": call_id,
                                        "content": result}
                if call_id in names:
                    turn["name"] = names[call_id]
                out.append(turn)
            else:
                raise RequestError(f"messages[{i}].content[{j}] is a {kind!r} block, which "
                                   f"a {role} turn cannot carry here (text; tool_use, "
                                   "thinking and redacted_thinking from the assistant; "
                                   "image and tool_result from the user)", param=here)
        if role == "assistant" and (parts or calls):
            said: dict[str, Any] = {"role": "assistant", "content": parts or None}
            if calls:
                said["tool_calls"] = calls
            out.append(said)
        elif role == "user" and parts:
            out.append({"role": "user", "content": parts})
    return out


def read_tools(tools: list[dict[str, Any]] | None, choice: dict[str, Any] | None
               ) -> tuple[list[dict[str, Any]] | None, Any]:
    """Anthropic's tools and tool_choice in the function-tool shape the model takes."""
    out = None
    if tools:
        out = []
        for i, tool in enumerate(tools):
            if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
                raise RequestError(f"tools[{i}] is not a client tool with an input_schema "
                                   f"(type {tool.get('type')!r}); only those are supported",
                                   param=f"tools.{i}")
            out.append({"type": "function", "function": {
                "name": tool.get("name"), "description": tool.get("description", ""),
                "parameters": tool["input_schema"]}})
    if choice is None:
        return out, None
    kind = choice.get("type")
    if kind == "tool":
        return out, {"type": "function", "function": {"name": choice.get("name")}}
    if kind in ("auto", "any", "none"):
        return out, {"auto": "auto", "any": "required", "none": "none"}[kind]
    raise RequestError(f"tool_choice type {kind!r} is not one of auto, any, tool, none",
                       param="tool_choice.type")


def stop_reason(r: Completion) -> str:
    return "stop_sequence" if r.stop_sequence is not None else STOP_REASONS[r.finish_reason]


def usage(r: Completion) -> dict[str, int]:
    return {"input_tokens": r.usage.prompt_tokens, "output_tokens": r.usage.completion_tokens,
            "cache_read_input_tokens": r.usage.cached_prompt_tokens}


def error_body(failure: Failure) -> dict[str, Any]:
    kind = ERROR_TYPES.get(failure.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": failure.message}}


@dataclass
class _Echo:
    id: str
    model: str
    omitted: bool = False  # thinking display "omitted": the blocks come back empty


class MessagesCodec:
    """``/v1/messages``: Anthropic's named SSE events when streamed."""

    path = "/v1/messages"
    media_type = "text/event-stream"

    def parse(self, body: Any, caller: str = "") -> Call:
        req: MessagesBody = validate(MessagesBody, body)
        tools, choice = read_tools(req.tools, req.tool_choice)
        asked = read_thinking(req.thinking, (req.output_config or {}).get("effort"),
                              req.max_tokens)
        gen = server_request(messages=read_messages(req.system, req.messages),
                             params=req.params(), tools=tools, tool_choice=choice,
                             think=asked.think, reasoning_budget=asked.budget,
                             parallel_tool_calls=not (req.tool_choice or {}).get(
                                 "disable_parallel_tool_use", False),
                             response_format=req.response_format())
        return Call(req.model, [gen], 1, req.stream,
                    echo=_Echo("msg_" + secrets.token_hex(12), req.model, asked.omitted))

    def reply(self, call: Call, results: list[Completion], load_s: float) -> dict[str, Any]:
        r, e = results[0], call.echo
        content: list[dict[str, Any]] = [] if not r.reasoning else [{
            "type": "thinking", "thinking": "" if e.omitted else r.reasoning,
            "signature": signature(r.reasoning)}]
        content += [{"type": "text", "text": r.text}] if r.text else []
        content += [{"type": "tool_use", "id": c.id, "name": c.name,
                     "input": c.parsed_arguments} for c in r.tool_calls]
        return {"id": e.id, "type": "message", "role": "assistant", "model": e.model,
                "content": content, "stop_reason": stop_reason(r),
                "stop_sequence": r.stop_sequence, "usage": usage(r)}

    async def events(self, call: Call, chunks: AsyncIterator[tuple[int, StreamChunk]],
                     load_s: float) -> AsyncIterator[dict[str, Any]]:
        e = call.echo
        yield {"type": "message_start", "message": {
            "id": e.id, "type": "message", "role": "assistant", "model": e.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}
        blocks = _Blocks(omitted=e.omitted)
        final: Completion | None = None
        async for _, chunk in chunks:
            for event in blocks.feed(chunk):
                yield event
            final = chunk.completion or final
        for event in blocks.close():
            yield event
        assert final is not None  # a stream always ends with its completion
        yield {"type": "message_delta", "delta": {"stop_reason": stop_reason(final),
                                                  "stop_sequence": final.stop_sequence},
               "usage": usage(final)}
        yield {"type": "message_stop"}

    def frame(self, event: Mapping[str, Any]) -> bytes:
        return named_event(event)

    def end(self) -> bytes:
        return b""

    def error(self, failure: Failure) -> dict[str, Any]:
        return error_body(failure)


@dataclass
class _Blocks:
    """Chunks → content block events: a thinking block while thinking comes (its
    signature sent as the last delta before it closes), a text block while text comes, a
    tool_use block for each call, each closed before the next opens; one ping after the
    first opens."""

    omitted: bool = False  # thinking display "omitted": no thinking deltas, only the signature
    index: int = -1
    open: str | None = None
    pinged: bool = False
    calls: dict[int, int] = field(default_factory=dict)  # call index -> block index
    thought: list[str] = field(default_factory=list)  # the open thinking block's text

    def feed(self, chunk: StreamChunk) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if chunk.reasoning:  # a chunk's thinking comes before its text
            if self.open != "thinking":
                out += self._start({"type": "thinking", "thinking": "", "signature": ""},
                                   "thinking")
            self.thought.append(chunk.reasoning)
            if not self.omitted:
                out.append({"type": "content_block_delta", "index": self.index,
                            "delta": {"type": "thinking_delta",
                                      "thinking": chunk.reasoning}})
        if chunk.text:
            if self.open != "text":
                out += self._start({"type": "text", "text": ""}, "text")
            out.append({"type": "content_block_delta", "index": self.index,
                        "delta": {"type": "text_delta", "text": chunk.text}})
        for delta in chunk.tool_calls:
            if delta.id is not None:
                out += self._start({"type": "tool_use", "id": delta.id, "name": delta.name,
                                    "input": {}}, "tool_use")
                self.calls[delta.index] = self.index
            if delta.arguments:
                out.append({"type": "content_block_delta",
                            "index": self.calls.get(delta.index, self.index),
                            "delta": {"type": "input_json_delta",
                                      "partial_json": delta.arguments}})
        return out

    def _start(self, block: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        out = self.close()
        self.index += 1
        self.open = kind
        out.append({"type": "content_block_start", "index": self.index, "content_block": block})
        if not self.pinged:
            self.pinged = True
            out.append({"type": "ping"})
        return out

    def close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        out: list[dict[str, Any]] = []
        if self.open == "thinking":
            out.append({"type": "content_block_delta", "index": self.index, "delta": {
                "type": "signature_delta", "signature": signature("".join(self.thought))}})
            self.thought = []
        self.open = None
        return [*out, {"type": "content_block_stop", "index": self.index}]


# ---------------------------------------------------------------------------- client side
def image_block(part: ImagePart) -> dict[str, Any]:
    """An image part as Anthropic's ``image`` block: a url source for an http(s) part, the
    bytes as a base64 source otherwise (the media type sniffed from them)."""
    if part.url is not None:
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": media_type(part.data),
                                        "data": base64_text(part.data)}}


def _blocks(m: Message) -> list[dict[str, Any]]:
    """A turn's content as blocks: its text as one text block, or, with images, each part
    in its place."""
    if not m.images:
        return [{"type": "text", "text": m.text}] if m.text else []
    assert isinstance(m.content, tuple)
    return [image_block(p) if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
            for p in m.content if isinstance(p, ImagePart) or p.text]


def message_blocks(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """localllm's messages as (system, Anthropic turns): tool turns become tool_result
    blocks of a user turn (consecutive ones together), tool calls tool_use blocks, images
    image blocks in their places. The system prompt and tool results are text here, so an
    image in one is a ConfigError rather than left out."""
    system = "\n".join(m.text or "" for m in messages if m.role == "system") or None
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.images and m.role in ("system", "tool"):
            raise ConfigError(f"an image in a {m.role} message cannot be sent over "
                              "Anthropic's Messages API (it takes images in user turns); "
                              "move it to a user message")
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.tool_call_id or "",
                     "content": m.text or ""}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list) \
                    and out[-1]["content"][-1]["type"] == "tool_result":
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
            continue
        blocks = _blocks(m)
        blocks += [{"type": "tool_use", "id": c.id, "name": c.name,
                    "input": c.parsed_arguments} for c in m.tool_calls]
        out.append({"role": m.role, "content": blocks})
    return system, out


def client_body(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any], bool]:
    """(route, body, streamed) for ``request`` on a server speaking Anthropic's API."""
    if request.messages is None:
        raise UnsupportedFeatureError("Anthropic's Messages API", "complete() with a prompt",
                                      "it takes messages only; use chat()")
    sampling = request.sampling
    if sampling.max_tokens is None:
        raise UnsupportedFeatureError("Anthropic's Messages API", "max_tokens=None",
                                      "the API requires a limit; give max_tokens")
    system, turns = message_blocks(request.messages)
    body: dict[str, Any] = {"model": model, "max_tokens": sampling.max_tokens,
                            "messages": turns, "stream": True}
    if system:
        body["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        if name in request.given:
            body[name] = getattr(sampling, name)
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    if request.tools:
        body["tools"] = [{"name": t["function"]["name"],
                          "description": t["function"].get("description", ""),
                          "input_schema": t["function"].get("parameters") or {
                              "type": "object", "properties": {}}}
                         for t in request.tools]
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = {"type": {"auto": "auto", "required": "any", "none": "none"}
                               [choice]} if isinstance(choice, str) else \
            {"type": "tool", "name": choice["function"]["name"]}
    if request.tools and not request.parallel_tool_calls:
        body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}),
                               "disable_parallel_tool_use": True}
    body.update(thinking_fields(request.think, request.reasoning_budget, sampling.max_tokens))
    return "/v1/messages", body, True


def thinking_fields(think: Any, budget: int | None, max_tokens: int) -> dict[str, Any]:
    """``think=`` and ``reasoning_budget=`` as the request's ``thinking`` (and
    ``output_config.effort`` for a level): the reverse of :func:`read_thinking`.

    A budget is ``enabled`` with ``budget_tokens``, which Anthropic requires below
    ``max_tokens`` (the answer comes after the thinking, within it); thinking on without
    one is ``adaptive`` (the model decides how long, as ``think=True`` does locally);
    ``think=False`` is ``disabled``, which takes no budget. A request that cannot be said
    so is refused rather than sent otherwise."""
    where = "Anthropic's Messages API"
    if think is None and budget is None:
        return {}
    if think is False:
        if budget is not None:
            raise UnsupportedFeatureError(where, "reasoning_budget= with think=False",
                                          "disabled thinking takes no budget_tokens")
        return {"thinking": {"type": "disabled"}}
    out: dict[str, Any] = {"thinking": {"type": "adaptive"}}
    if budget is not None:
        if budget >= max_tokens:
            raise UnsupportedFeatureError(
                where, f"reasoning_budget={budget} with max_tokens={max_tokens}",
                "the API requires budget_tokens below max_tokens (the answer comes after "
                "the thinking, within max_tokens): raise max_tokens or lower the budget")
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if isinstance(think, str):
        out["output_config"] = {"effort": think}
    return out


class Decoder(StreamDecoder):
    """Anthropic's SSE events → :class:`Piece` events, the finish reason and usage; a
    thinking block's ``thinking_delta`` text as ``Piece.reasoning`` (its signature, and a
    ``redacted_thinking`` block, carry no text to show). The API does not count the
    thinking's tokens apart."""

    def __init__(self, chat: bool) -> None:
        super().__init__(chat)
        self.tools = 0  # tool_use blocks seen
        self.block_call: dict[int, int] = {}  # block index -> call index

    def feed_line(self, line: str) -> list[Piece]:
        if not line.startswith("data:"):
            return []
        event = json.loads(line[5:].strip())
        kind = event.get("type")
        if kind == "error":
            raise RemoteError(f"the server failed mid-stream: {event.get('error')}")
        if kind == "message_start":
            u = (event.get("message") or {}).get("usage") or {}
            self.usage = (int(u.get("input_tokens") or 0), 0)
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.block_call[int(event.get("index", 0))] = self.tools
                self.tools += 1
                return [Piece(tool_calls=(ToolCallDelta(
                    index=self.tools - 1, id=block.get("id"), name=block.get("name")),))]
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [Piece(str(delta.get("text", "")))]
            if delta.get("type") == "thinking_delta":
                return [Piece(reasoning=str(delta.get("thinking", "")))]
            if delta.get("type") == "input_json_delta":
                index = self.block_call.get(int(event.get("index", 0)), 0)
                return [Piece(tool_calls=(ToolCallDelta(
                    index=index, arguments=str(delta.get("partial_json", ""))),))]
        elif kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            self.finish = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                           "tool_use": "tool_calls"}.get(str(reason), "stop")
            u = event.get("usage") or {}
            self.usage = (int(u.get("input_tokens") or self.usage[0]),
                          int(u.get("output_tokens") or 0))
        elif kind == "message_stop":
            self.ended = True
        return []

