"""Ollama's native API (``/api/chat``, ``/api/generate``), both sides: option names and
message shapes; the server's codecs (``ChatCodec``, ``GenerateCodec``); the client's request
bodies and reply decoding for ``connect()``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._errors import ConfigError, RemoteError, RequestError, UnsupportedFeatureError
from .._types import Completion, Message, StreamChunk, TokenLogprob, ToolCall, ToolCallDelta
from ..core.request import GenerationRequest, Piece
from .codec import (
    Call,
    Failure,
    StreamDecoder,
    base64_text,
    image_from_base64,
    sampling_params,
    server_request,
    validate,
)
from .openai import logprob_entry

#: ``options`` entry -> localllm sampling parameter
OPTION_FIELDS = {"num_predict": "max_tokens", "temperature": "temperature", "top_k": "top_k",
                 "top_p": "top_p", "min_p": "min_p", "typical_p": "typical_p",
                 "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
                 "presence_penalty": "presence_penalty",
                 "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop"}
#: localllm sampling parameter -> ``options`` entry
OPTION_NAMES = {ours: wire for wire, ours in OPTION_FIELDS.items()}
#: ``options`` entries that size the model's load rather than the request
LOAD_FIELDS = {"num_ctx": "context_length", "num_thread": "threads"}
#: ``options`` entries about how Ollama itself loads, which change no answer
IGNORED_OPTIONS = {"num_keep", "num_batch", "num_gpu", "main_gpu", "use_mmap", "numa",
                   "low_vram", "vocab_only", "use_mlock", "penalize_newline"}


def tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Calls as Ollama writes them: ``{"id", "function": {"index", "name", "arguments":
    {...}}}``, the arguments as an object, each call with its own id and index."""
    return [{"id": c.id, "function": {"index": i, "name": c.name,
                                      "arguments": c.parsed_arguments}}
            for i, c in enumerate(calls)]


def message(m: Message) -> dict[str, Any]:
    """One chat message as Ollama takes it: content always a string, images as base64 in
    ``images`` (Ollama places them before the text, wherever the parts stood), calls as
    above, a tool result's function as ``tool_name``. Ollama's API has no image URLs: an
    ``http(s)`` image part is a ConfigError, never fetched here nor dropped."""
    out: dict[str, Any] = {"role": m.role, "content": m.text or ""}
    if m.images:
        for part in m.images:
            if part.url is not None:
                raise ConfigError(f"Ollama's API takes image bytes, not URLs: fetch "
                                  f"{part.url[:80]} yourself and pass its bytes")
        out["images"] = [base64_text(part.data) for part in m.images]
    if m.tool_calls:
        out["tool_calls"] = tool_calls(m.tool_calls)
    if m.role == "tool" and m.name is not None:
        out["tool_name"] = m.name
    return out


def call_pieces(message: Mapping[str, Any], first_index: int) -> list[dict[str, Any]]:
    """A reply message's calls in OpenAI's streamed shape (``index``, ``id``,
    ``function``: name and arguments as JSON text), numbered from ``first_index``: Ollama
    sends each call whole, with its arguments as an object and often no id."""
    pieces = []
    for offset, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        index = first_index + offset
        arguments = fn.get("arguments")
        pieces.append({"index": index, "id": call.get("id") or f"call_{index}",
                       "function": {"name": fn.get("name"), "arguments": arguments
                                    if isinstance(arguments, str)
                                    else json.dumps(arguments or {})}})
    return pieces


# ---------------------------------------------------------------------------- client side
def client_body(request: GenerationRequest, model: str, wire_format: dict[str, Any] | None
                ) -> tuple[str, dict[str, Any], bool]:
    """(route, body, streamed) for ``request`` on Ollama's native API: the set sampling
    fields as ``options``, ``num_predict`` -1 for no limit, a prompt sent ``raw`` (a plain
    continuation, as ``complete()`` is locally). ``think=`` is Ollama's ``think`` as it is
    (a bool or a level); the API has no thinking budget, and a raw prompt no template to
    switch, so those are refused, never dropped."""
    sampling = request.sampling
    if request.reasoning_budget is not None:
        raise UnsupportedFeatureError(
            "Ollama's API", "reasoning_budget=",
            "its think switch has no budget: give think='low' (or 'medium', 'high'), or use "
            "api='anthropic' (thinking.budget_tokens) where the server speaks it")
    if request.think is not None and not request.chat:
        raise UnsupportedFeatureError("Ollama's API", "think= with complete()",
                                      "a raw prompt has no chat template to switch the "
                                      "thinking; use chat()")
    opts = {OPTION_NAMES[name]: getattr(sampling, name) for name in request.given
            if name != "max_tokens"}
    opts["num_predict"] = sampling.max_tokens if sampling.max_tokens is not None else -1
    body: dict[str, Any] = {"model": model, "stream": True, "options": opts}
    if wire_format is not None:
        body["format"] = "json" if wire_format["type"] == "json_object" else \
            wire_format["json_schema"]["schema"]
    if request.messages is not None:
        body["messages"] = [message(m) for m in request.messages]
        if request.tools:
            body["tools"] = list(request.tools)
        if request.think is not None:
            body["think"] = request.think
        return "/api/chat", body, True
    body["prompt"] = request.prompt
    body["raw"] = True
    return "/api/generate", body, True


class Decoder(StreamDecoder):
    """Ollama's NDJSON reply lines → :class:`Piece` events, with the finish reason, usage
    and whether the last line (``done``) came; the thinking (``message.thinking`` in a
    chat, ``thinking`` from /api/generate) as ``Piece.reasoning``. Ollama does not count
    the thinking's tokens apart."""

    def __init__(self, chat: bool) -> None:
        super().__init__(chat)
        self.calls = 0

    def feed_line(self, line: str) -> list[Piece]:
        if not line.strip():
            return []
        event = json.loads(line)
        if "error" in event:
            raise RemoteError(f"the server failed mid-stream: {event['error']}")
        message_ = event.get("message") or {}
        text = message_.get("content", "") if self.chat else event.get("response", "")
        thinking = (message_ if self.chat else event).get("thinking")
        pieces = call_pieces(message_, self.calls)
        self.calls += len(pieces)
        calls = tuple(ToolCallDelta(index=p["index"], id=p["id"], name=p["function"]["name"],
                                    arguments=p["function"]["arguments"]) for p in pieces)
        if event.get("done"):
            self.ended = True
            self.finish = "tool_calls" if self.calls else str(event.get("done_reason") or
                                                               "stop")
            self.usage = (int(event.get("prompt_eval_count") or 0),
                          int(event.get("eval_count") or 0))
        return [Piece(text or "", (), (), calls,
                      thinking if isinstance(thinking, str) else "")]

    def feed_whole(self, reply: dict[str, Any]) -> list[Piece]:
        return self.feed_line(json.dumps(reply))


# ---------------------------------------------------------------------------- server side
NS = 1_000_000_000


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_predict: int | None = None
    temperature: float | None = Field(None, ge=0.0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    num_ctx: int | None = Field(None, ge=1)
    num_thread: int | None = Field(None, ge=1)
    #: localllm's own, as Ollama's API has no field for them: OpenAI's tool_choice
    #: ("auto", "none", "required" or a function's name) and at most this many calls
    tool_choice: str | None = None
    max_tool_calls: int | None = Field(None, ge=1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    think: bool | str | None = None


class ChatBody(_Body):
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateBody(_Body):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None


def _call(req: _Body, chat: bool, *, messages: list[Any] | None = None,
          prompt: str | None = None) -> Call:
    """The call of an Ollama request: no request for one with nothing to generate from
    (Ollama's way to load or, with keep_alive 0, unload a model)."""
    if req.think is not None and not isinstance(req.think, bool) and \
            req.think not in ("low", "medium", "high"):
        raise RequestError("think must be true, false, or low, medium or high",
                           param="think")
    raw = {k: v for k, v in (req.options or {}).items() if k not in IGNORED_OPTIONS}
    opts: Options = validate(Options, raw)
    params = sampling_params(opts.model_dump(), OPTION_FIELDS)
    predict = params.get("max_tokens")
    if predict is not None and predict < 0:  # -1: no limit, -2: fill the context
        del params["max_tokens"]
    elif predict == 0:
        raise RequestError("num_predict=0 generates nothing; give a positive number or -1",
                           param="options.num_predict")
    load = sampling_params(opts.model_dump(), LOAD_FIELDS)
    requests = []
    if messages or prompt:
        requests.append(server_request(
            messages=messages, prompt=prompt, params=params, response_format=_format(
                req.format), tools=getattr(req, "tools", None) or None,
            logprobs=(req.top_logprobs or 0) if req.logprobs else None,
            context_limit=opts.num_ctx, think=req.think, tool_choice=_tool_choice(
                opts.tool_choice), max_tool_calls=opts.max_tool_calls))
    return Call(req.model, requests, 1, req.stream, load, req.keep_alive, echo=chat)


def _tool_choice(choice: str | None) -> Any:
    """``options.tool_choice``: a mode, or a function's name."""
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _format(fmt: str | dict[str, Any] | None) -> Any:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise RequestError(f"format={fmt!r} is invalid; use 'json' or a JSON schema",
                       param="format")


def with_images(text: Any, images: Any, where: str) -> Any:
    """A message's content with Ollama's ``images`` (base64, decoded here): the images'
    parts first, then the text, where Ollama's own prompt puts them (its ``[img-N]`` tags
    go before the message's text). Without images, the text as it came."""
    if not images:
        return text
    if not isinstance(images, list):
        raise RequestError(f"{where} must be a list of base64 images", param=where)
    parts = [image_from_base64(image, f"{where}.{j}") for j, image in enumerate(images)]
    if isinstance(text, str) and text:
        parts.append({"type": "text", "text": text})
    return parts


def read_messages(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama messages to localllm's: calls get ids, a tool result's ``tool_name`` is its
    ``name``, ``images`` become image parts (see :func:`with_images`). Content must be
    a string, as in Ollama's API: a list of parts is refused, so no part shape (a path
    among them) reaches localllm's own message parsing from here."""
    out = []
    for i, m in enumerate(raw):
        msg = {k: m[k] for k in ("role", "content", "tool_calls") if m.get(k) is not None}
        if not isinstance(msg.get("content", ""), str):
            raise RequestError(f"messages[{i}].content must be a string (images go in the "
                               "message's images, as base64)", param=f"messages.{i}.content")
        if m.get("images"):
            msg["content"] = with_images(m.get("content"), m["images"],
                                         f"messages.{i}.images")
        if m.get("role") == "tool" and m.get("tool_name"):
            msg["name"] = m["tool_name"]
        if msg.get("tool_calls"):
            msg["tool_calls"] = [{**c, "id": c.get("id") or f"call_{i}_{j}"}
                                 for j, c in enumerate(msg["tool_calls"])]
            if msg.get("content") == "":
                msg["content"] = None
        out.append(msg)
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _stats(r: Completion, load_s: float) -> dict[str, Any]:
    t = r.timings
    return {"total_duration": int((load_s + t.prompt_s + t.generation_s) * NS),
            "load_duration": int(load_s * NS),
            "prompt_eval_count": r.usage.prompt_tokens,
            "prompt_eval_duration": int(t.prompt_s * NS),
            "eval_count": r.usage.completion_tokens,
            "eval_duration": int(t.generation_s * NS)}


class _NDJSON:
    """Ollama's framing: one JSON object per line, errors as ``{"error": message}``; the
    answer for a load-only request says it loaded (or unloaded) the model."""

    media_type = "application/x-ndjson"

    def frame(self, event: Mapping[str, Any]) -> bytes:
        return json.dumps(event, ensure_ascii=False).encode() + b"\n"

    def end(self) -> bytes:
        return b""

    def error(self, failure: Failure) -> dict[str, Any]:
        return {"error": failure.message}

    def reply(self, call: Call, results: list[Completion], load_s: float) -> dict[str, Any]:
        chat: bool = call.echo
        if not results:
            head = {"model": call.model, "created_at": now(), "done": True,
                    "done_reason": "unload" if call.keep_alive in (0, "0") else "load"}
            head.update({"message": {"role": "assistant", "content": ""}} if chat
                        else {"response": ""})
            return head
        return _final(call.model, chat, results[0], load_s, results[0].text,
                      results[0].reasoning or "")

    async def events(self, call: Call, chunks: AsyncIterator[tuple[int, StreamChunk]],
                     load_s: float) -> AsyncIterator[dict[str, Any]]:
        chat: bool = call.echo
        async for _, chunk in chunks:
            if chunk.completion is not None:
                yield _final(call.model, chat, chunk.completion, load_s, chunk.text,
                             chunk.reasoning)
            elif chunk.text or chunk.logprobs or chunk.reasoning:
                yield _part(call.model, chat, chunk.text, chunk.logprobs, chunk.reasoning)


class ChatCodec(_NDJSON):
    """``/api/chat``."""

    path = "/api/chat"

    def parse(self, body: Any, caller: str = "") -> Call:
        req: ChatBody = validate(ChatBody, body)
        return _call(req, True, messages=read_messages(req.messages))


class GenerateCodec(_NDJSON):
    """``/api/generate``: a prompt, through the chat template unless ``raw``; its
    ``images`` join the prompt's user turn (a raw prompt has no turn to hold them)."""

    path = "/api/generate"

    def parse(self, body: Any, caller: str = "") -> Call:
        req: GenerateBody = validate(GenerateBody, body)
        for name in ("suffix", "template", "context"):
            if getattr(req, name):
                raise RequestError(f"{name} is not supported by this server", param=name)
        if req.raw and req.images:
            raise RequestError("images need the chat template, which raw skips: send them "
                               "without raw (or through /api/chat)", param="images")
        if req.raw or not (req.prompt or req.images):
            return _call(req, False, prompt=req.prompt)
        messages = [{"role": "system", "content": req.system}] if req.system else []
        messages.append({"role": "user",
                         "content": with_images(req.prompt, req.images, "images")})
        return _call(req, False, messages=messages)


def _part(model: str, chat: bool, text: str, logprobs: tuple[TokenLogprob, ...],
          thinking: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now(), "done": False}
    if chat:
        out["message"] = {"role": "assistant", "content": text}
        if thinking:
            out["message"]["thinking"] = thinking
    else:
        out["response"] = text
        if thinking:
            out["thinking"] = thinking
    if logprobs:
        out["logprobs"] = [logprob_entry(lp) for lp in logprobs]
    return out


def _final(model: str, chat: bool, r: Completion, load_s: float, text: str,
           thinking: str = "") -> dict[str, Any]:
    out = _part(model, chat, text, (), thinking)
    if chat and r.tool_calls:
        out["message"]["tool_calls"] = tool_calls(r.tool_calls)
    if r.logprobs is not None and text == r.text:  # not streamed: all of them here
        out["logprobs"] = [logprob_entry(lp) for lp in r.logprobs]
    reason = "stop" if r.finish_reason == "tool_calls" else r.finish_reason
    out.update(done=True, done_reason=reason, **_stats(r, load_s))
    return out
