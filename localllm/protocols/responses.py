"""OpenAI's Responses API (``/v1/responses``), both sides. The server's codec: input items
→ one ``GenerationRequest``, the answer as output items (``message`` with ``output_text``,
``function_call``) whole or as the typed event stream with ``sequence_number``. The
client's request bodies and event decoding, for ``connect(api="responses")``.

State: with ``store`` (the default, as OpenAI's), the conversation so far is kept by the
store the codec is given (``server/_responses.py``, a SQLite file), so a request naming
``previous_response_id`` continues it; a response is visible only to the API key that
created it. ``truncation: "auto"`` lets the oldest turns drop when the history no longer
fits (the response says how many, in ``truncated_messages``); otherwise a history too long
for the context is a 400 naming the sizes.

Reasoning: ``reasoning.effort`` sets a reasoning model's switch (:func:`read_reasoning`);
its thinking comes back as a ``reasoning`` item (the text as ``reasoning_text`` content,
no summary) before the message, and ``usage.output_tokens_details.reasoning_tokens``
counts it. Reasoning items in the input are accepted and left out of the prompt, and the
stored history keeps only the answers, as OpenAI's models drop earlier reasoning.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from .._errors import (
    ConfigError,
    ModelNotFoundError,
    RemoteError,
    RequestError,
    UnsupportedFeatureError,
)
from .._types import Completion, ImagePart, Message, StreamChunk, ToolCallDelta
from ..core.request import GenerationRequest, Piece
from .codec import (
    Call,
    StreamDecoder,
    block_parts,
    data_uri,
    image_from_url,
    image_url,
    named_event,
    server_request,
    validate,
)
from .openai import _SSE, EFFORTS, wire_effort


class Store(Protocol):
    """Where stored responses live (the server gives the codec one)."""

    def load(self, response_id: str, caller: str) -> dict[str, Any] | None:
        """The stored record (``history``: the conversation's messages, ``response``)."""

    def save(self, response_id: str, caller: str, record: dict[str, Any]) -> None: ...


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    stream: bool = False
    truncation: str | None = Field(None, pattern="^(auto|disabled)$")
    # accepted, and they change nothing here
    user: str | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    stream_options: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None  # read by read_reasoning

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.max_output_tokens is not None:
            out["max_tokens"] = self.max_output_tokens
        for name in ("temperature", "top_p"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def read_reasoning(reasoning: dict[str, Any] | None) -> Any:
    """``reasoning`` as ``think`` (None: the template's default; ``effort`` read through
    ``openai.EFFORTS``, which chat completions' ``reasoning_effort`` shares). ``summary``
    is accepted, but no summary is written: the reasoning item carries the whole thinking
    instead."""
    if not reasoning:
        return None
    unknown = sorted(set(reasoning) - {"effort", "summary", "generate_summary"})
    if unknown:
        raise RequestError(f"reasoning.{unknown[0]} is not supported",
                           param=f"reasoning.{unknown[0]}")
    for name in ("summary", "generate_summary"):
        if reasoning.get(name) not in (None, "auto", "concise", "detailed"):
            raise RequestError(f"reasoning.{name} {reasoning[name]!r} is not auto, concise "
                               "or detailed", param=f"reasoning.{name}")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in EFFORTS:
        raise RequestError(f"reasoning.effort {effort!r} is not one of "
                           f"{', '.join(EFFORTS)}", param="reasoning.effort")
    return EFFORTS[effort]


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def read_image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An ``input_image`` part as an image part: its ``image_url`` (a ``data:`` URI, or an
    http(s) URL read only by a server that fetches images); ``detail`` changes nothing
    here. A ``file_id`` is refused: this server keeps no uploaded files."""
    if part.get("file_id") is not None:
        raise RequestError(f"{where}.file_id: file ids are not supported (this server "
                           "keeps no uploaded files); send the image as a data: URI in "
                           "image_url", param=f"{where}.file_id")
    return image_from_url(part.get("image_url"), f"{where}.image_url")


def _parts(content: Any, where: str) -> Any:
    """A message's content: a string, or its parts as localllm's text and image parts."""
    return block_parts(content, where, ("input_text", "output_text"), "part",
                       {"input_image": read_image})


def storable(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as JSON can hold them, for the store: an image part's bytes as a
    ``data:`` URI in OpenAI's ``image_url`` shape, which localllm reads back as the same
    bytes when a later request continues the conversation (the stored history is the
    server's own, read without the request readers, so only shapes written here are in
    it)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list) and any(p.get("data") for p in content):
            m = {**m, "content": [
                {"type": "image_url", "image_url": {"url": data_uri(
                    p["data"], "application/octet-stream")}} if p.get("data") else p
                for p in content]}
        out.append(m)
    return out


def read_input(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items → localllm messages: messages (``developer`` as ``system``), each run
    of ``function_call`` items one assistant turn with its calls, each
    ``function_call_output`` a tool turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        kind = item.get("type", "message" if "role" in item else None)
        where = f"input.{i}"
        if kind == "message":
            role = item.get("role")
            role = "system" if role == "developer" else role
            if role not in ("system", "user", "assistant"):
                raise RequestError(f"input[{i}].role {item.get('role')!r} is not user, system, "
                                   "developer or assistant", param=f"{where}.role")
            out.append({"role": role, "content": _parts(item.get("content"),
                                                        f"{where}.content")})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id")), "type": "function", "function": {
                "name": str(item.get("name")), "arguments": str(item.get("arguments") or "{}")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") \
                    and last.get("content") is None:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id")),
                        "content": output if isinstance(output, str) else json.dumps(output)})
        elif kind == "reasoning":
            continue  # earlier thinking is not shown to the model again
        else:
            raise RequestError(f"input[{i}] is a {kind!r} item; messages, function_call, "
                               "function_call_output and reasoning are supported",
                               param=where)
    return out


def read_tools(tools: list[dict[str, Any]] | None, choice: Any
               ) -> tuple[list[dict[str, Any]] | None, Any]:
    out = None
    if tools:
        out = []
        for i, tool in enumerate(tools):
            if tool.get("type") != "function":
                raise RequestError(f"tools[{i}] has type {tool.get('type')!r}; only function "
                                   "tools are supported here", param=f"tools.{i}.type")
            out.append({"type": "function", "function": {
                "name": tool.get("name"), "description": tool.get("description") or "",
                "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}})
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise RequestError(f"tool_choice type {choice.get('type')!r} is not supported; "
                               "use auto, none, required or a function", param="tool_choice")
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    return out, choice


def read_format(text: dict[str, Any] | None) -> Any:
    fmt = (text or {}).get("format")
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {
            "name": fmt.get("name", "output"), "schema": fmt.get("schema") or {},
            "strict": fmt.get("strict", False)}}
    raise RequestError(f"text.format type {fmt.get('type')!r} is not text, json_object or "
                       "json_schema", param="text.format.type")


@dataclass
class _Echo:
    """The request's own fields, repeated in its response, and what storing it needs."""

    id: str
    created: int
    body: Body
    caller: str
    history: list[dict[str, Any]]
    input_items: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)


class ResponsesCodec(_SSE):
    """``/v1/responses``."""

    path = "/v1/responses"

    def __init__(self, store: Store) -> None:
        self.store = store

    def parse(self, body: Any, caller: str = "") -> Call:
        req: Body = validate(Body, body)
        if req.include:
            raise RequestError(f"include {req.include!r} is not supported", param="include")
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            stored = self.store.load(req.previous_response_id, caller)
            if stored is None:
                raise ModelNotFoundError(f"no stored response {req.previous_response_id!r} "
                                         "(it was not stored, has expired, was deleted, or "
                                         "belongs to another API key)")
            history = list(stored["history"])
        items = [{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": req.input}]}] if isinstance(req.input, str) \
            else list(req.input)
        history += read_input(req.input)
        messages = ([{"role": "system", "content": req.instructions}]
                    if req.instructions else []) + history
        tools, choice = read_tools(req.tools, req.tool_choice)
        gen = server_request(messages=messages, params=req.params(), tools=tools,
                             tool_choice=choice, response_format=read_format(req.text),
                             think=read_reasoning(req.reasoning),
                             parallel_tool_calls=req.parallel_tool_calls is not False,
                             max_tool_calls=req.max_tool_calls,
                             overflow="drop_oldest" if req.truncation == "auto" else "error")
        echo = _Echo(_new_id("resp"), int(time.time()), req, caller, history, items,
                     list(req.tools or []))
        return Call(req.model, [gen], 1, req.stream, echo=echo)

    # ------------------------------------------------------------------ answers
    def response(self, e: _Echo, status: str, output: list[dict[str, Any]],
                 r: Completion | None) -> dict[str, Any]:
        body = e.body
        out: dict[str, Any] = {
            "id": e.id, "object": "response", "created_at": e.created, "status": status,
            "model": body.model, "output": output, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete" else None,
            "instructions": body.instructions, "metadata": body.metadata or {},
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "max_tool_calls": body.max_tool_calls,
            "temperature": body.temperature, "top_p": body.top_p,
            "max_output_tokens": body.max_output_tokens,
            "previous_response_id": body.previous_response_id, "store": body.store,
            "tool_choice": body.tool_choice or "auto", "tools": e.tools,
            "text": body.text or {"format": {"type": "text"}},
            "truncation": body.truncation or "disabled", "usage": None,
            "reasoning": {"effort": (body.reasoning or {}).get("effort"), "summary": None}}
        if r is not None:
            out["usage"] = {"input_tokens": r.usage.prompt_tokens,
                            "input_tokens_details": {
                                "cached_tokens": r.usage.cached_prompt_tokens},
                            "output_tokens": r.usage.completion_tokens,
                            "output_tokens_details": {
                                "reasoning_tokens": r.usage.reasoning_tokens},
                            "total_tokens": r.usage.total_tokens}
            if r.truncation is not None and r.truncation.dropped_messages:
                out["truncated_messages"] = len(r.truncation.dropped_messages)
        return out

    def _finish(self, e: _Echo, r: Completion, output: list[dict[str, Any]]
                ) -> dict[str, Any]:
        status = "incomplete" if r.finish_reason == "length" else "completed"
        whole = self.response(e, status, output, r)
        if e.body.store:
            said: dict[str, Any] = {"role": "assistant",
                                    "content": r.text if r.text or not r.tool_calls else None}
            if r.tool_calls:
                said["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                    "name": c.name, "arguments": c.arguments}} for c in r.tool_calls]
            self.store.save(e.id, e.caller, {"history": storable([*e.history, said]),
                                             "response": whole, "input": e.input_items})
        return whole

    def reply(self, call: Call, results: list[Completion], load_s: float) -> dict[str, Any]:
        r, e = results[0], call.echo
        output: list[dict[str, Any]] = []
        if r.reasoning:
            output.append(_reasoning(_new_id("rs"), r.reasoning, "completed"))
        if r.text or not r.tool_calls:
            output.append(_message(_new_id("msg"), r.text, "completed"))
        output += [_function_call(_new_id("fc"), c.id, c.name, c.arguments, "completed")
                   for c in r.tool_calls]
        return self._finish(e, r, output)

    async def events(self, call: Call, chunks: AsyncIterator[tuple[int, StreamChunk]],
                     load_s: float) -> AsyncIterator[dict[str, Any]]:
        e = call.echo
        stream = _Events()
        yield stream.event("response.created", response=self.response(e, "in_progress", [],
                                                                         None))
        yield stream.event("response.in_progress",
                           response=self.response(e, "in_progress", [], None))
        final: Completion | None = None
        try:
            async for _, chunk in chunks:
                for event in stream.feed(chunk):
                    yield event
                final = chunk.completion or final
        except Exception as exc:  # the status line is sent: the failure is the last event
            failed = self.response(e, "failed", stream.output, None)
            failed["error"] = {"code": "server_error",
                               "message": f"{type(exc).__name__}: {exc}"}
            yield stream.event("response.failed", response=failed)
            return
        assert final is not None  # a stream always ends with its completion
        for event in stream.finish():
            yield event
        whole = self._finish(e, final, stream.output)
        kind = "response.incomplete" if whole["status"] == "incomplete" else \
            "response.completed"
        yield stream.event(kind, response=whole)

    def frame(self, event: Mapping[str, Any]) -> bytes:
        return named_event(event)

    def end(self) -> bytes:
        return b""


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}] if status == "completed" else []}


def _reasoning(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [],
            "content": [_reasoning_part(text)] if status == "completed" else []}


def _reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def _function_call(item_id: str, call_id: str, name: str | None, arguments: str,
                   status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name or "", "arguments": arguments}


@dataclass
class _Events:
    """Chunks → the Responses event sequence: an output item per reasoning, message or
    call, opened with ``output_item.added`` and closed with its ``.done`` events before the
    next one opens, every event numbered. A reasoning item's text streams as one
    ``reasoning_text`` content part, as a message's streams as one ``output_text`` part."""

    sequence: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    open: dict[str, Any] | None = None
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # call index -> item

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        out = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return out

    def _delta(self, text: str, item_type: str, item: Callable[[], dict[str, Any]],
               part: dict[str, Any], kind: str, **extra: Any) -> list[dict[str, Any]]:
        """``text`` streamed into the open item of ``item_type`` (a new ``item()``, with
        its one content part, when another is open)."""
        out: list[dict[str, Any]] = []
        if self.open is None or self.open["type"] != item_type:
            out += self._open(item())
            out.append(self.event("response.content_part.added", **self._at(),
                                  content_index=0, part=part))
        self.text.append(text)
        out.append(self.event(kind, **self._at(), content_index=0, delta=text, **extra))
        return out

    def feed(self, chunk: StreamChunk) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if chunk.reasoning:  # a chunk's thinking comes before its text
            out += self._delta(chunk.reasoning, "reasoning",
                               lambda: _reasoning(_new_id("rs"), "", "in_progress"),
                               _reasoning_part(""), "response.reasoning_text.delta")
        if chunk.text:
            out += self._delta(chunk.text, "message",
                               lambda: _message(_new_id("msg"), "", "in_progress"),
                               _text_part(""), "response.output_text.delta", logprobs=[])
        for delta in chunk.tool_calls:
            if delta.id is not None:
                out += self._open(_function_call(_new_id("fc"), delta.id, delta.name, "",
                                                 "in_progress"))
                self.calls[delta.index] = self.open  # type: ignore[assignment]
            item = self.calls.get(delta.index)
            if delta.arguments and item is not None:
                item["arguments"] += delta.arguments
                out.append(self.event("response.function_call_arguments.delta",
                                      item_id=item["id"], output_index=self._index(item),
                                      delta=delta.arguments))
        return out

    def _at(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1}

    def _index(self, item: dict[str, Any]) -> int:
        return next(i for i, x in enumerate(self.output) if x is item)

    def _open(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.close()
        self.output.append(item)
        self.open = item
        return [*out, self.event("response.output_item.added",
                                 output_index=len(self.output) - 1, item=dict(item))]

    def finish(self) -> list[dict[str, Any]]:
        """Close the open item; an empty answer (nothing, or only thinking) is still one
        (empty) message, as OpenAI sends it."""
        out = self.close()
        if all(item["type"] == "reasoning" for item in self.output):
            out += self._open(_message(_new_id("msg"), "", "in_progress"))
            out.append(self.event("response.content_part.added", **self._at(),
                                  content_index=0, part=_text_part("")))
            out += self.close()
        return out

    def close(self) -> list[dict[str, Any]]:
        item, self.open = self.open, None
        if item is None:
            return []
        at = {"item_id": item["id"], "output_index": self._index(item)}
        out = []
        if item["type"] == "reasoning":
            text = "".join(self.text)
            self.text = []
            out.append(self.event("response.reasoning_text.done", **at, content_index=0,
                                  text=text))
            out.append(self.event("response.content_part.done", **at, content_index=0,
                                  part=_reasoning_part(text)))
            item.update(_reasoning(item["id"], text, "completed"))
        elif item["type"] == "message":
            text = "".join(self.text)
            self.text = []
            out.append(self.event("response.output_text.done", **at, content_index=0,
                                  text=text, logprobs=[]))
            out.append(self.event("response.content_part.done", **at, content_index=0,
                                  part=_text_part(text)))
            item.update(_message(item["id"], text, "completed"))
        else:
            out.append(self.event("response.function_call_arguments.done", **at,
                                  name=item["name"], arguments=item["arguments"]))
            item["status"] = "completed"
        out.append(self.event("response.output_item.done", output_index=at["output_index"],
                              item=dict(item)))
        return out


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


# ---------------------------------------------------------------------------- client side
def _content(m: Message) -> Any:
    """A message's content as input: its text, or, with images, its parts in order
    (text as ``input_text``, or ``output_text`` in an assistant's turn; ``input_image``
    with the URL or a ``data:`` URI)."""
    if not m.images:
        return m.text or ""
    assert isinstance(m.content, tuple)
    text = "output_text" if m.role == "assistant" else "input_text"
    return [{"type": "input_image", "image_url": image_url(p)} if isinstance(p, ImagePart)
            else {"type": text, "text": p.text} for p in m.content]


def input_items(messages: list[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """localllm's messages as (instructions, input items): system text as instructions,
    tool calls as ``function_call`` items, tool turns as ``function_call_output``, images
    as ``input_image`` parts. Instructions and tool outputs are text here, so an image in
    a system or tool message is a ConfigError rather than left out."""
    instructions = "\n".join(m.text or "" for m in messages if m.role == "system") or None
    items: list[dict[str, Any]] = []
    for m in messages:
        if m.images and m.role in ("system", "tool"):
            raise ConfigError(f"an image in a {m.role} message cannot be sent over the "
                              "Responses API here (instructions and tool outputs are "
                              "text); move it to a user message")
        if m.role == "system":
            continue
        if m.role == "tool":
            items.append({"type": "function_call_output", "call_id": m.tool_call_id or "",
                          "output": m.text or ""})
            continue
        if m.text or m.images or not m.tool_calls:
            items.append({"type": "message", "role": m.role, "content": _content(m)})
        items += [{"type": "function_call", "call_id": c.id, "name": c.name,
                   "arguments": c.arguments} for c in m.tool_calls]
    return instructions, items


def client_body(request: GenerationRequest, model: str, wire_format: dict[str, Any] | None
                ) -> tuple[str, dict[str, Any], bool]:
    """(route, body, streamed) for ``request`` on a server speaking the Responses API:
    the whole conversation each time, ``store: false`` (the client keeps the history).
    ``think=`` is ``reasoning.effort`` (False: "none", True: "medium", OpenAI's default);
    the API has no thinking budget, so ``reasoning_budget=`` is refused."""
    if request.messages is None:
        raise UnsupportedFeatureError("the Responses API", "complete() with a prompt",
                                      "it takes a conversation; use chat()")
    if request.reasoning_budget is not None:
        raise UnsupportedFeatureError(
            "the Responses API", "reasoning_budget=",
            "its reasoning.effort is a level, not a budget: give think='low' (or 'medium', "
            "'high'), or use api='anthropic' (thinking.budget_tokens) where the server "
            "speaks it")
    instructions, items = input_items(list(request.messages))
    body: dict[str, Any] = {"model": model, "input": items, "stream": True, "store": False}
    if instructions:
        body["instructions"] = instructions
    sampling = request.sampling
    if sampling.max_tokens is not None:
        body["max_output_tokens"] = sampling.max_tokens
    for name in ("temperature", "top_p"):
        if name in request.given:
            body[name] = getattr(sampling, name)
    if request.tools:
        body["tools"] = [{"type": "function", "name": t["function"]["name"],
                          "description": t["function"].get("description", ""),
                          "parameters": t["function"].get("parameters") or {
                              "type": "object", "properties": {}}} for t in request.tools]
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = choice if isinstance(choice, str) else {
            "type": "function", "name": choice["function"]["name"]}
    if request.tools and not request.parallel_tool_calls:
        body["parallel_tool_calls"] = False
    if request.tools and request.max_tool_calls is not None:
        body["max_tool_calls"] = request.max_tool_calls
    if request.think is not None:
        body["reasoning"] = {"effort": wire_effort(request.think)}
    if wire_format is not None:
        fmt: dict[str, Any] = {"type": wire_format["type"]}
        if wire_format["type"] == "json_schema":
            spec = wire_format["json_schema"]
            fmt.update(name=spec.get("name", "output"), schema=spec["schema"],
                       strict=spec.get("strict", False))
        body["text"] = {"format": fmt}
    return "/v1/responses", body, True


class Decoder(StreamDecoder):
    """The Responses event stream → :class:`Piece` events, finish reason and usage. A
    reasoning item's text (``response.reasoning_text.delta``) is ``Piece.reasoning``; a
    summary of it (``reasoning_summary_text``, what OpenAI's own models send) is not the
    thinking, so it is left out rather than passed off as it."""

    def __init__(self, chat: bool) -> None:
        super().__init__(chat)
        self.calls: dict[str, int] = {}  # function_call item id -> call index

    def feed_line(self, line: str) -> list[Piece]:
        if not line.startswith("data:"):
            return []
        event = json.loads(line[5:].strip())
        kind = event.get("type")
        if kind == "error" or ("error" in event and kind is None):
            raise RemoteError(f"the server failed mid-stream: {event.get('error', event)}")
        if kind == "response.output_text.delta":
            return [Piece(str(event.get("delta", "")))]
        if kind == "response.reasoning_text.delta":
            return [Piece(reasoning=str(event.get("delta", "")))]
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                self.calls[str(item.get("id"))] = len(self.calls)
                return [Piece(tool_calls=(ToolCallDelta(
                    index=len(self.calls) - 1, id=item.get("call_id"), name=item.get("name")),))]
        elif kind == "response.function_call_arguments.delta":
            index = self.calls.get(str(event.get("item_id")), 0)
            return [Piece(tool_calls=(ToolCallDelta(index=index,
                                                    arguments=str(event.get("delta", ""))),))]
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            if kind == "response.failed":
                raise RemoteError(f"the server failed: {event.get('response', {}).get('error')}")
            response = event.get("response") or {}
            u = response.get("usage") or {}
            self.usage = (int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0))
            details = u.get("output_tokens_details") or {}
            self.reasoning_tokens = int(details.get("reasoning_tokens") or 0)
            self.finish = "length" if kind == "response.incomplete" else (
                "tool_calls" if self.calls else "stop")
            self.ended = True
        return []

