"""OpenAI's chat completions and completions, both sides: field names and message shapes;
the server's codecs (``ChatCodec``, ``CompletionsCodec``: parse a body, encode answers,
events and errors); the client's request bodies and reply decoding for ``connect()``."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._errors import RemoteError, RequestError, UnsupportedFeatureError
from .._types import (
    Completion,
    ImagePart,
    Message,
    StreamChunk,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from ..core.request import GenerationRequest, Piece
from .codec import (
    Call,
    Failure,
    StreamDecoder,
    image_from_url,
    image_url,
    sampling_params,
    server_request,
    validate,
)

#: the sampling fields OpenAI's API defines
STANDARD_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed",
                   "stop", "logit_bias")
#: llama.cpp's sampling fields that llama-server, vLLM and localllm take on the same routes
EXTENSION_FIELDS = ("top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n")
#: request field -> localllm sampling parameter, for the fields whose value passes as it
#: is (logit_bias keys arrive as strings and are converted where they are read)
SAMPLING_FIELDS = {name: name for name in STANDARD_FIELDS + EXTENSION_FIELDS
                   if name != "logit_bias"}
#: ``reasoning_effort`` (chat completions) and ``reasoning.effort`` (Responses) as
#: localllm's ``think``: "none" is off, "minimal" the lowest level, "xhigh" and "max" the
#: highest
EFFORTS: dict[str, Any] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                           "high": "high", "xhigh": "high", "max": "high"}


def wire_effort(think: Any) -> str:
    """``think=`` as an effort: a level as it is, False as "none" (the off switch OpenAI,
    vLLM, llama-server and localllm take) and True as "medium", OpenAI's default level
    (what a template that grades the thinking renders for True locally)."""
    if think is True:
        return "medium"
    return "none" if think is False else str(think)


def tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Finished calls: ``{"id", "type": "function", "function": {"name", "arguments"}}``
    with the arguments as JSON text."""
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def tool_call_deltas(deltas: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    """Streamed pieces of calls: id, type and name on a call's first piece only."""
    out = []
    for d in deltas:
        fn: dict[str, Any] = {"arguments": d.arguments}
        entry: dict[str, Any] = {"index": d.index, "function": fn}
        if d.id is not None:
            entry.update(id=d.id, type="function")
            fn["name"] = d.name
        out.append(entry)
    return out


def message(m: Message) -> dict[str, Any]:
    """One chat message as OpenAI's API takes it: only the fields it has (no empty
    ``tool_calls`` on a plain turn), calls in the wire shape above, images as
    ``image_url`` parts (see :func:`content_part`)."""
    out: dict[str, Any] = {"role": m.role}
    if m.content is not None or not m.tool_calls:
        out["content"] = m.content if not isinstance(m.content, tuple) else [
            content_part(part) for part in m.content]
    if m.tool_calls:
        out["tool_calls"] = tool_calls(m.tool_calls)
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def content_part(part: Any) -> dict[str, Any]:
    """A content part as OpenAI's API takes it: text as it is; an image as an
    ``image_url`` part holding its http(s) URL or its bytes as a ``data:`` URI (the media
    type sniffed from them)."""
    if isinstance(part, ImagePart):
        return {"type": "image_url", "image_url": {"url": image_url(part)}}
    return {"type": "text", "text": part.text}


def logprob_entry(lp: TokenLogprob) -> dict[str, Any]:
    """One token's log probability with its alternatives (Ollama uses the same shape)."""
    return {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.bytes),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
                             for t in lp.top_logprobs]}


def decode_logprobs(block: Any) -> tuple[TokenLogprob, ...]:
    """A reply's ``logprobs``: the chat shape (``content``: entries as
    :func:`logprob_entry` writes them) or the legacy completions shape (``tokens``,
    ``token_logprobs``, ``top_logprobs``: {token: logprob}). Servers give no token ids
    (-1 here); bytes are the token's UTF-8 where a server leaves them out."""
    if not isinstance(block, dict):
        return ()

    def entry(token: Any, logprob: Any, raw: Any = None) -> dict[str, Any]:
        return {"token": str(token), "id": -1, "logprob": float(logprob or 0.0),
                "bytes": tuple(raw or str(token).encode())}

    if block.get("content"):
        return tuple(TokenLogprob(
            **entry(e.get("token", ""), e.get("logprob"), e.get("bytes")),
            top_logprobs=tuple(TopLogprob(**entry(t.get("token", ""), t.get("logprob"),
                                                  t.get("bytes")))
                               for t in e.get("top_logprobs") or []))
            for e in block["content"])
    tops = block.get("top_logprobs") or []
    return tuple(TokenLogprob(**entry(token, logprob), top_logprobs=tuple(
        TopLogprob(**entry(t, lp)) for t, lp in (tops[i] if i < len(tops) and tops[i]
                                                 else {}).items()))
        for i, (token, logprob) in enumerate(zip(block.get("tokens") or [],
                                                 block.get("token_logprobs") or [],
                                                 strict=False)))


# ---------------------------------------------------------------------------- client side
def client_body(request: GenerationRequest, model: str, *, max_completion_tokens: bool,
                stream_usage: bool, wire_format: dict[str, Any] | None
                ) -> tuple[str, dict[str, Any], bool]:
    """(route, body, streamed) for ``request`` on an OpenAI-compatible server: only the
    sampling fields the caller set are sent, so the server's defaults stand otherwise.
    ``think=`` is ``reasoning_effort`` (see :func:`wire_effort`); the API has no thinking
    budget and a plain prompt no template to switch, so those are refused, never dropped."""
    chat, sampling = request.chat, request.sampling
    if request.reasoning_budget is not None:
        raise UnsupportedFeatureError(
            "OpenAI's chat completions API", "reasoning_budget=",
            "its reasoning_effort is a level, not a budget: give think='low' (or 'medium', "
            "'high'), or use api='anthropic' (thinking.budget_tokens) where the server "
            "speaks it")
    if request.think is not None and not chat:
        raise UnsupportedFeatureError("OpenAI's completions API", "think= with complete()",
                                      "a plain prompt has no chat template to switch the "
                                      "thinking; use chat()")
    sent = {name: getattr(sampling, name) for name in request.given
            if name not in ("max_tokens", "logit_bias")}
    body: dict[str, Any] = {"model": model, "stream": True, **sent}
    streamed = True
    if sampling.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
    if sampling.max_tokens is not None:
        body["max_completion_tokens" if max_completion_tokens and chat
             else "max_tokens"] = sampling.max_tokens
    if stream_usage:
        body["stream_options"] = {"include_usage": True}
    if wire_format is not None:
        body["response_format"] = wire_format
    if request.logprobs is not None:
        body.update({"logprobs": True, "top_logprobs": request.logprobs} if chat
                    else {"logprobs": request.logprobs})
        if not chat:  # legacy-shaped logprobs are not streamed by every server
            body["stream"] = streamed = False
            body.pop("stream_options", None)
    if request.messages is not None:
        body["messages"] = [message(m) for m in request.messages]
        if request.tools:
            body["tools"] = list(request.tools)
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if request.tools and not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
        if request.tools and request.max_tool_calls is not None:
            body["max_tool_calls"] = request.max_tool_calls
        if request.think is not None:
            body["reasoning_effort"] = wire_effort(request.think)
        return "/v1/chat/completions", body, streamed
    body["prompt"] = request.prompt
    return "/v1/completions", body, streamed


def reasoning_text(message_: Mapping[str, Any]) -> str:
    """The thinking in a reply's message or streamed delta: ``reasoning_content``
    (llama-server, localllm, DeepSeek, older vLLM) or ``reasoning`` (newer vLLM,
    OpenRouter; some servers send both, with the same text, so one is taken)."""
    for name in ("reasoning_content", "reasoning"):
        value = message_.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


class Decoder(StreamDecoder):
    """A reply (SSE ``data:`` lines, or one JSON body) → :class:`Piece` events, with the
    finish reason, usage and whether the server said the answer is complete; a chat's
    thinking (see :func:`reasoning_text`) as ``Piece.reasoning``."""

    def feed_line(self, line: str) -> list[Piece]:
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.ended = True
            return []
        event = json.loads(data)
        if isinstance(event.get("error"), (dict, str)):
            raise RemoteError(f"the server failed mid-stream: {event['error']}")
        self._usage(event)
        out = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") if self.chat else choice.get("text")
            out.append(Piece(text or "", (), decode_logprobs(choice.get("logprobs")),
                             tuple(_call_delta(c) for c in delta.get("tool_calls") or []),
                             reasoning_text(delta) if self.chat else ""))
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
        return out

    def feed_whole(self, reply: dict[str, Any]) -> list[Piece]:
        """A non-streamed reply, as one event."""
        self._usage(reply)
        out = []
        for choice in (reply.get("choices") or [])[:1]:
            message_ = choice.get("message") or {}
            text = message_.get("content") if self.chat else choice.get("text")
            calls = tuple(_call_delta({**c, "index": i})
                          for i, c in enumerate(message_.get("tool_calls") or []))
            out.append(Piece(text or "", (), decode_logprobs(choice.get("logprobs")), calls,
                             reasoning_text(message_) if self.chat else ""))
            self.finish, self.ended = str(choice.get("finish_reason") or "stop"), True
        return out

    def _usage(self, event: Mapping[str, Any]) -> None:
        if event.get("usage"):
            u = event["usage"]
            self.usage = (int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
            details = u.get("completion_tokens_details") or {}
            self.reasoning_tokens = int(details.get("reasoning_tokens") or 0)


def _call_delta(call: Mapping[str, Any]) -> ToolCallDelta:
    fn = call.get("function") or {}
    return ToolCallDelta(index=int(call.get("index", 0)), id=call.get("id"),
                         name=fn.get("name"), arguments=str(fn.get("arguments") or ""))


# ---------------------------------------------------------------------------- server side
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # user, store, metadata... change nothing

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    repeat_last_n: int | None = Field(None, ge=0)

    def params(self) -> dict[str, Any]:
        params = sampling_params(self.model_dump(), SAMPLING_FIELDS)
        limit = self.max_completion_tokens or self.max_tokens  # the newer field wins
        if limit is not None:
            params["max_tokens"] = limit
        if self.logit_bias:
            params["logit_bias"] = _logit_bias(self.logit_bias)
        return params

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatBody(_Body):
    messages: list[dict[str, Any]] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    #: at most this many tool calls (the Responses API's field, taken here too)
    max_tool_calls: int | None = Field(None, ge=1)
    #: read as ``think`` through :data:`EFFORTS`
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] \
        | None = None


class CompletionBody(_Body):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


def _logit_bias(raw: dict[str, float]) -> dict[int, float]:
    out = {}
    for key, value in raw.items():
        if not key.lstrip("-").isdigit():
            raise RequestError(f"logit_bias keys are token ids; {key!r} is not",
                               param="logit_bias")
        if not -100 <= value <= 100:
            raise RequestError(f"logit_bias[{key}]={value} is outside -100..100",
                               param="logit_bias")
        out[int(key)] = value
    return out


def read_messages(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages to localllm's: 'developer' read as 'system', text and ``image_url``
    parts kept as parts, in order; any other part is refused by name. An image part is
    rebuilt from its URL alone (see :func:`read_part`), so no field of it can name a file."""
    out = []
    for i, m in enumerate(raw):
        m = dict(m)
        if m.get("role") == "developer":
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):
            m["content"] = [read_part(part, f"messages.{i}.content.{j}")
                            for j, part in enumerate(content)]
        keep = {"role", "content", "tool_calls", "tool_call_id", "name"}
        out.append({k: v for k, v in m.items() if k in keep and v is not None})
    return out


def read_part(part: Any, where: str) -> dict[str, Any]:
    """One content part of a request: text, or an ``image_url`` part, whose ``image_url``
    is ``{"url": ..., "detail": ...}`` or (as some clients send it) the URL itself; the
    URL must be a ``data:`` URI or http(s) (``detail`` changes nothing here: the
    projector sees every image at its own size)."""
    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
    if kind == "text":
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "image_url":
        inner = part.get("image_url")
        if isinstance(inner, dict):
            return image_from_url(inner.get("url"), f"{where}.image_url.url")
        return image_from_url(inner, f"{where}.image_url")
    raise RequestError(f"{where} is a {kind!r} content part; only text and image_url "
                       "parts are supported", param=where)


def _response_format(raw: dict[str, Any] | None) -> Any:
    if raw is None or raw.get("type") == "text":
        return None
    if raw.get("type") not in ("json_object", "json_schema"):
        raise RequestError(f"response_format type {raw.get('type')!r} is not supported; "
                           "use text, json_object or json_schema", param="response_format")
    return raw


def usage(results: list[Completion], n: int) -> dict[str, Any]:
    """Usage of ``n`` choices per prompt: each prompt counts once, every choice's output
    (of which ``completion_tokens_details.reasoning_tokens`` were thinking)."""
    firsts = results[::n]
    prompt = sum(r.usage.prompt_tokens for r in firsts)
    completion = sum(r.usage.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {
                "cached_tokens": sum(r.usage.cached_prompt_tokens for r in firsts)},
            "completion_tokens_details": {
                "reasoning_tokens": sum(r.usage.reasoning_tokens for r in results)}}


@dataclass
class _Echo:
    """What an answer repeats of its request: id, time, model, usage wanted."""

    id: str
    created: int
    model: str
    include_usage: bool


def _echo(prefix: str, body: _Body) -> _Echo:
    return _Echo(prefix + secrets.token_hex(12), int(time.time()), body.model,
                 body.include_usage)


class _SSE:
    """OpenAI's framing: SSE ``data:`` events ending in ``[DONE]``, errors in an
    ``{"error": {...}}`` envelope."""

    media_type = "text/event-stream"

    def frame(self, event: Mapping[str, Any]) -> bytes:
        return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, failure: Failure) -> dict[str, Any]:
        return error_body(failure)


def error_body(failure: Failure) -> dict[str, Any]:
    return {"error": {"message": failure.message, "type": failure.kind,
                      "param": failure.param, "code": failure.code}}


class ChatCodec(_SSE):
    """``/v1/chat/completions``."""

    path = "/v1/chat/completions"

    def parse(self, body: Any, caller: str = "") -> Call:
        req: ChatBody = validate(ChatBody, body)
        if req.top_logprobs is not None and not req.logprobs:
            raise RequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        gen = server_request(messages=read_messages(req.messages), params=req.params(),
                             response_format=_response_format(req.response_format),
                             tools=req.tools, tool_choice=req.tool_choice,
                             parallel_tool_calls=req.parallel_tool_calls is not False,
                             max_tool_calls=req.max_tool_calls,
                             think=None if req.reasoning_effort is None
                             else EFFORTS[req.reasoning_effort],
                             logprobs=(req.top_logprobs or 0) if req.logprobs else None)
        return Call(req.model, [gen], req.n, req.stream, echo=_echo("chatcmpl-", req))

    def reply(self, call: Call, results: list[Completion], load_s: float) -> dict[str, Any]:
        e: _Echo = call.echo
        return {"id": e.id, "object": "chat.completion", "created": e.created,
                "model": e.model, "choices": [_chat_choice(i, r) for i, r in enumerate(results)],
                "usage": usage(results, call.n), "system_fingerprint": "localllm"}

    async def events(self, call: Call, chunks: AsyncIterator[tuple[int, StreamChunk]],
                     load_s: float) -> AsyncIterator[dict[str, Any]]:
        e: _Echo = call.echo
        base = {"id": e.id, "object": "chat.completion.chunk", "created": e.created,
                "model": e.model, "system_fingerprint": "localllm"}
        started: set[int] = set()
        finals: list[Completion] = []
        async for i, chunk in chunks:
            delta: dict[str, Any] = {}
            if i not in started:
                started.add(i)
                delta = {"role": "assistant", "content": ""}
            if chunk.text:
                delta["content"] = chunk.text
            if chunk.reasoning:
                delta["reasoning_content"] = chunk.reasoning
            if chunk.tool_calls:
                delta["tool_calls"] = tool_call_deltas(chunk.tool_calls)
            choice: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": None,
                                      "logprobs": None}
            if chunk.logprobs:
                choice["logprobs"] = {"content": [logprob_entry(lp) for lp in chunk.logprobs]}
            if delta or chunk.logprobs:
                yield {**base, "choices": [choice]}
            if chunk.completion is not None:
                finals.append(chunk.completion)
                yield {**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                            "finish_reason": chunk.completion.finish_reason}]}
        if e.include_usage:
            yield {**base, "choices": [], "usage": usage(finals, call.n)}


class CompletionsCodec(_SSE):
    """``/v1/completions``: a prompt or a list of them."""

    path = "/v1/completions"

    def parse(self, body: Any, caller: str = "") -> Call:
        req: CompletionBody = validate(CompletionBody, body)
        if req.echo or req.suffix or (req.best_of or 1) > 1:
            raise RequestError("echo, suffix and best_of are not supported",
                               param="echo" if req.echo else "suffix" if req.suffix
                               else "best_of")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise RequestError("prompt is an empty list", param="prompt")
        if req.stream and len(prompts) > 1:
            raise RequestError("streaming takes one prompt; send a list without stream",
                               param="prompt")
        if req.stream and req.logprobs is not None:
            raise RequestError("logprobs are not streamed on /v1/completions; use "
                               "/v1/chat/completions or stream: false", param="logprobs")
        gens = [server_request(prompt=p, params=req.params(), logprobs=req.logprobs)
                for p in prompts]
        return Call(req.model, gens, req.n, req.stream, echo=_echo("cmpl-", req))

    def reply(self, call: Call, results: list[Completion], load_s: float) -> dict[str, Any]:
        e: _Echo = call.echo
        return {"id": e.id, "object": "text_completion", "created": e.created,
                "model": e.model,
                "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                             "logprobs": _legacy_logprobs(r)} for i, r in enumerate(results)],
                "usage": usage(results, call.n)}

    async def events(self, call: Call, chunks: AsyncIterator[tuple[int, StreamChunk]],
                     load_s: float) -> AsyncIterator[dict[str, Any]]:
        e: _Echo = call.echo
        base = {"id": e.id, "object": "text_completion", "created": e.created,
                "model": e.model}
        finals: list[Completion] = []
        async for i, chunk in chunks:
            done = chunk.completion
            if chunk.text or done is not None:
                yield {**base, "choices": [{"index": i, "text": chunk.text, "logprobs": None,
                                            "finish_reason": done.finish_reason if done
                                            else None}]}
            if done is not None:
                finals.append(done)
        if e.include_usage:
            yield {**base, "choices": [], "usage": usage(finals, call.n)}


def _chat_choice(i: int, r: Completion) -> dict[str, Any]:
    calls = tool_calls(r.tool_calls) or None
    message_: dict[str, Any] = {"role": "assistant", "content": None if calls else r.text,
                                "refusal": None}
    if calls:
        message_["tool_calls"] = calls
    if r.reasoning is not None:
        message_["reasoning_content"] = r.reasoning
    logprobs = None
    if r.logprobs is not None:
        logprobs = {"content": [logprob_entry(lp) for lp in r.logprobs], "refusal": None}
    return {"index": i, "message": message_, "logprobs": logprobs,
            "finish_reason": r.finish_reason}


def _legacy_logprobs(r: Completion) -> dict[str, Any] | None:
    """/v1/completions' older shape: parallel lists per token."""
    if r.logprobs is None:
        return None
    offsets, pos = [], 0
    for lp in r.logprobs:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in r.logprobs],
            "token_logprobs": [lp.logprob for lp in r.logprobs],
            "top_logprobs": [{t.token: t.logprob for t in lp.top_logprobs}
                             for lp in r.logprobs],
            "text_offset": offsets}
