"""OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Every documented field is honoured or refused with a 400 naming it; only fields that
change nothing here (``user``, ``store``, ``parallel_tool_calls``, ``metadata``...) are
ignored. ``max_completion_tokens`` wins over ``max_tokens`` when both are given.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._types import Completion, StreamChunk, TokenLogprob
from ..protocols import openai as wire
from . import _generation as generation
from ._app import (
    HTTPError,
    ServerState,
    http_error,
    openai_error_body,
    read_json,
    route,
    sse,
    until_disconnect,
    validate,
)
from ._embeddings import as_base64, embed, texts_of
from ._generation import Generation
from ._streaming import EventStream, hold_while_streaming


class _Request(BaseModel):
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
        params = generation.sampling_params(self.model_dump(), wire.SAMPLING_FIELDS)
        limit = self.max_completion_tokens or self.max_tokens  # the newer field wins
        if limit is not None:
            params["max_tokens"] = limit
        if self.logit_bias:
            params["logit_bias"] = _logit_bias(self.logit_bias)
        return params

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)


def _logit_bias(raw: dict[str, float]) -> dict[int, float]:
    out = {}
    for key, value in raw.items():
        if not key.lstrip("-").isdigit():
            raise HTTPError(400, f"logit_bias keys are token ids; {key!r} is not",
                            param="logit_bias")
        if not -100 <= value <= 100:
            raise HTTPError(400, f"logit_bias[{key}]={value} is outside -100..100",
                            param="logit_bias")
        out[int(key)] = value
    return out


def _messages(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages to localllm's: text parts joined, 'developer' read as 'system'."""
    out = []
    for i, m in enumerate(raw):
        m = dict(m)
        if m.get("role") == "developer":
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise HTTPError(400, f"messages[{i}] has a {kind!r} content part; only "
                                    "text parts are supported", param=f"messages.{i}.content")
                texts.append(str(part.get("text", "")))
            m["content"] = "".join(texts)
        keep = {"role", "content", "tool_calls", "tool_call_id", "name"}
        out.append({k: v for k, v in m.items() if k in keep and v is not None})
    return out


def _response_format(raw: dict[str, Any] | None) -> Any:
    if raw is None or raw.get("type") == "text":
        return None
    if raw.get("type") not in ("json_object", "json_schema"):
        raise HTTPError(400, f"response_format type {raw.get('type')!r} is not supported; "
                        "use text, json_object or json_schema", param="response_format")
    return raw


def _top_logprobs(req: ChatRequest) -> int | None:
    if req.top_logprobs is not None and not req.logprobs:
        raise HTTPError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def _entries(logprobs: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    return [wire.logprob_entry(lp) for lp in logprobs]


def _usage(results: list[Completion], n: int) -> dict[str, Any]:
    """Usage of ``n`` choices per prompt: each prompt counts once, every choice's output."""
    firsts = results[::n]
    prompt = sum(r.usage.prompt_tokens for r in firsts)
    completion = sum(r.usage.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {
                "cached_tokens": sum(r.usage.cached_prompt_tokens for r in firsts)}}


def routes(state: ServerState) -> list[Route]:
    registry, metrics = state.registry, state.metrics

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            _model_card(name) for name in registry.models]})

    async def get_model(request: Request) -> Response:
        return JSONResponse(_model_card(registry.lookup(request.path_params["name"]).name))

    async def chat(request: Request) -> Response:
        req: ChatRequest = validate(ChatRequest, await read_json(request, state.max_body))
        gen = Generation(messages=_messages(req.messages), params=req.params(),
                         response_format=_response_format(req.response_format),
                         tools=req.tools, tool_choice=req.tool_choice,
                         logprobs=_top_logprobs(req))
        return await _respond(request, req, gen, chat=True)

    async def completions(request: Request) -> Response:
        req: CompletionRequest = validate(CompletionRequest,
                                          await read_json(request, state.max_body))
        if req.echo or req.suffix or (req.best_of or 1) > 1:
            raise HTTPError(400, "echo, suffix and best_of are not supported",
                            param="echo" if req.echo else "suffix" if req.suffix else "best_of")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise HTTPError(400, "prompt is an empty list", param="prompt")
        if req.stream and len(prompts) > 1:
            raise HTTPError(400, "streaming takes one prompt; send a list without stream",
                            param="prompt")
        if req.stream and req.logprobs is not None:
            raise HTTPError(400, "logprobs are not streamed on /v1/completions; use "
                            "/v1/chat/completions or stream: false", param="logprobs")
        gens = [Generation(prompt=p, params=req.params(), logprobs=req.logprobs)
                for p in prompts]
        if req.stream:
            return await _respond(request, req, gens[0], chat=False)
        created, rid = int(time.time()), "cmpl-" + secrets.token_hex(12)
        async with registry.use(req.model) as served:
            results: list[Completion] = []
            for gen in gens:
                results += await until_disconnect(request, generation.complete_n(
                    served.live, gen, req.n, metrics))
        usage = _usage(results, req.n)
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": req.model,
            "choices": [{"index": i, "text": r.text, "finish_reason": r.finish_reason,
                         "logprobs": _legacy_logprobs(r)} for i, r in enumerate(results)],
            "usage": usage})

    async def _respond(request: Request, req: _Request, gen: Generation,
                       chat: bool) -> Response:
        created = int(time.time())
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        if req.stream:
            _, body = await hold_while_streaming(
                registry.use(req.model),
                lambda served: generation.stream_n(served.live, gen, req.n, metrics))
            shape = _chat_chunks if chat else _completion_chunks
            return EventStream(_sse_events(shape(body, rid, created, req)),
                               media_type="text/event-stream")
        async with registry.use(req.model) as served:
            results = await until_disconnect(request, generation.complete_n(
                served.live, gen, req.n, metrics))
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": req.model,
            "choices": [_chat_choice(i, r) for i, r in enumerate(results)],
            "usage": _usage(results, req.n), "system_fingerprint": "localllm"})

    async def embeddings(request: Request) -> Response:
        body = await read_json(request, state.max_body)
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        texts = texts_of(body.get("input"), "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise HTTPError(400, f"encoding_format={encoding!r} is not 'float' or 'base64'",
                            param="encoding_format")
        async with registry.use(body.get("model")) as served:
            result = await embed(served.live, texts, normalize=True, truncate=False,
                                 dimensions=body.get("dimensions"))
        shape = as_base64 if encoding == "base64" else (lambda row: row.tolist())
        n = result.usage.prompt_tokens
        return JSONResponse({
            "object": "list", "model": served.name,
            "data": [{"object": "embedding", "index": i, "embedding": shape(row)}
                     for i, row in enumerate(result.vectors)],
            "usage": {"prompt_tokens": n, "total_tokens": n}})

    def r(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, route("openai", metrics, path, handler), methods=methods)

    return [r("/v1/models", list_models, ["GET"]),
            r("/v1/models/{name:path}", get_model, ["GET"]),
            r("/v1/chat/completions", chat, ["POST"]),
            r("/v1/completions", completions, ["POST"]),
            r("/v1/embeddings", embeddings, ["POST"])]


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "localllm"}


def _chat_choice(i: int, r: Completion) -> dict[str, Any]:
    calls = wire.tool_calls(r.tool_calls) or None
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else r.text,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    logprobs = None
    if r.logprobs is not None:
        logprobs = {"content": _entries(r.logprobs), "refusal": None}
    return {"index": i, "message": message, "logprobs": logprobs,
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


async def _chat_chunks(chunks: AsyncIterator[tuple[int, StreamChunk]], rid: str,
                       created: int, req: _Request) -> AsyncIterator[dict[str, Any]]:
    base = {"id": rid, "object": "chat.completion.chunk", "created": created,
            "model": req.model, "system_fingerprint": "localllm"}
    started: set[int] = set()
    finals: list[Completion] = []
    async for i, chunk in chunks:
        delta: dict[str, Any] = {}
        if i not in started:
            started.add(i)
            delta = {"role": "assistant", "content": ""}
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.tool_calls:
            delta["tool_calls"] = wire.tool_call_deltas(chunk.tool_calls)
        choice: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": None,
                                  "logprobs": None}
        if chunk.logprobs:
            choice["logprobs"] = {"content": _entries(chunk.logprobs)}
        if delta or chunk.logprobs:
            yield {**base, "choices": [choice]}
        if chunk.completion is not None:
            finals.append(chunk.completion)
            yield {**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                        "finish_reason": chunk.completion.finish_reason}]}
    if req.include_usage:
        yield {**base, "choices": [], "usage": _usage(finals, req.n)}


async def _completion_chunks(chunks: AsyncIterator[tuple[int, StreamChunk]], rid: str,
                             created: int, req: _Request) -> AsyncIterator[dict[str, Any]]:
    base = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
    finals: list[Completion] = []
    async for i, chunk in chunks:
        done = chunk.completion
        if chunk.text or done is not None:
            yield {**base, "choices": [{"index": i, "text": chunk.text, "logprobs": None,
                                        "finish_reason": done.finish_reason if done else None}]}
        if done is not None:
            finals.append(done)
    if req.include_usage:
        yield {**base, "choices": [], "usage": _usage(finals, req.n)}


async def _sse_events(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """SSE frames ending in [DONE]; a failure mid-stream is an error event (the status
    line is already sent)."""
    try:
        async for event in events:
            yield sse(event)
    except Exception as exc:
        yield sse(openai_error_body(http_error(exc)))
        return
    yield b"data: [DONE]\n\n"
