"""Ollama's native API, enough for the official ``ollama`` client to work unchanged.

Chat and generate stream NDJSON ending in a ``done`` object with the stats (durations in
ns). ``options`` map onto localllm's sampling parameters; ``num_ctx`` and ``num_thread``
apply when the request loads the model. Model management (pull, push, create, copy,
delete, blobs) is refused: the server never fetches or writes model files for a request.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__
from .._types import Completion, TokenLogprob
from ..protocols import ollama as wire
from ..protocols.openai import logprob_entry
from . import _generation as generation
from ._app import (
    HTTPError,
    ServerState,
    http_error,
    ndjson,
    read_json,
    route,
    until_disconnect,
    validate,
)
from ._embeddings import embed as embed_texts
from ._embeddings import texts_of
from ._generation import Generation
from ._registry import ServedModel, parse_keep_alive
from ._streaming import EventStream, hold_while_streaming

API_VERSION = "0.12.0"  # the Ollama API level these routes follow
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


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    think: bool | str | None = None

    def parsed_options(self) -> Options:
        raw = {k: v for k, v in (self.options or {}).items() if k not in wire.IGNORED_OPTIONS}
        return validate(Options, raw)  # type: ignore[no-any-return]


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Request):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None


def _generation(req: _Request, *, messages: list[Any] | None = None,
                prompt: str | None = None) -> tuple[Generation, dict[str, Any]]:
    """The Generation and the load-time options of an Ollama request."""
    if req.think:
        raise HTTPError(400, "think is not supported: the served models have no thinking "
                        "mode", param="think")
    opts = req.parsed_options()
    params = generation.sampling_params(opts.model_dump(), wire.OPTION_FIELDS)
    predict = params.get("max_tokens")
    if predict is not None and predict < 0:  # -1: no limit, -2: fill the context
        del params["max_tokens"]
    elif predict == 0:
        raise HTTPError(400, "num_predict=0 generates nothing; give a positive number or -1",
                        param="options.num_predict")
    load = generation.sampling_params(opts.model_dump(), wire.LOAD_FIELDS)
    fmt = _format(req.format)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    tools = getattr(req, "tools", None) or None
    gen = Generation(messages=messages, prompt=prompt, params=params, response_format=fmt,
                     tools=tools, logprobs=logprobs, context_limit=opts.num_ctx)
    return gen, load


def _format(fmt: str | dict[str, Any] | None) -> Any:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise HTTPError(400, f"format={fmt!r} is invalid; use 'json' or a JSON schema",
                    param="format")


def _messages(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(raw):
        if m.get("images"):
            raise HTTPError(400, f"messages[{i}] has images; the served models read text only")
        msg = {k: m[k] for k in ("role", "content", "tool_calls") if m.get(k) is not None}
        if m.get("role") == "tool" and m.get("tool_name"):
            msg["name"] = m["tool_name"]
        if msg.get("tool_calls"):
            msg["tool_calls"] = [{**c, "id": c.get("id") or f"call_{i}_{j}"}
                                 for j, c in enumerate(msg["tool_calls"])]
            if msg.get("content") == "":
                msg["content"] = None
        out.append(msg)
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _stats(r: Completion, load_s: float) -> dict[str, Any]:
    t = r.timings
    return {"total_duration": int((load_s + t.prompt_s + t.generation_s) * NS),
            "load_duration": int(load_s * NS),
            "prompt_eval_count": r.usage.prompt_tokens,
            "prompt_eval_duration": int(t.prompt_s * NS),
            "eval_count": r.usage.completion_tokens,
            "eval_duration": int(t.generation_s * NS)}


def _details(served: ServedModel) -> dict[str, Any]:
    facts = _facts(served.source, served.size)
    return {"parent_model": "", "format": "gguf", "family": facts["architecture"],
            "families": [facts["architecture"]],
            "parameter_size": facts["parameter_size"],
            "quantization_level": facts["quantization"]}


@functools.lru_cache(maxsize=64)
def _facts(source: str, size: int) -> dict[str, Any]:
    from .._loader import describe_source

    gguf = describe_source(source)
    params = gguf.parameter_count
    return {"architecture": gguf.architecture, "quantization": gguf.quantization,
            "parameter_count": params, "context_length": gguf.context_length,
            "parameter_size": f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M",
            "chat_template": gguf.chat_template or "",
            "embedding": bool(gguf.arch_value("pooling_type", 0))}


def _load_s(served: ServedModel, started: float) -> float:
    """Seconds this request spent loading the model (0 when it was loaded already)."""
    return served.loaded_at - started if served.loaded_at >= started else 0.0


async def _refuse_management(request: Request) -> Response:
    raise HTTPError(403, f"{request.url.path} is disabled: localllm serve never fetches, "
                    "creates or deletes model files because of a request; manage models on "
                    "the host with `localllm pull` and restart the server with their paths",
                    kind="permission_error")


def routes(state: ServerState) -> list[Route]:
    registry, metrics = state.registry, state.metrics

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": API_VERSION, "localllm": __version__})

    async def tags(request: Request) -> Response:
        models = []
        for served in registry.models.values():
            models.append({"name": served.name, "model": served.name,
                           "modified_at": _now(), "size": served.size,
                           "digest": "", "details": _details(served)})
        return JSONResponse({"models": models})

    async def show(request: Request) -> Response:
        body = await read_json(request, state.max_body)
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        served = registry.lookup(name)
        facts = _facts(served.source, served.size)
        capabilities = ["embedding"] if facts["embedding"] else \
            ["completion"] + (["tools"] if facts["chat_template"] else [])
        return JSONResponse({
            "modelfile": "", "parameters": "", "template": facts["chat_template"],
            "details": _details(served), "capabilities": capabilities,
            "model_info": {"general.architecture": facts["architecture"],
                           "general.parameter_count": facts["parameter_count"],
                           f"{facts['architecture']}.context_length":
                               facts["context_length"]},
            "modified_at": _now()})

    async def ps(request: Request) -> Response:
        out = []
        for served in registry.loaded():
            expires = served.expires_at
            until = (datetime.now(timezone.utc) + timedelta(
                seconds=max(0.0, expires - time.monotonic()))) if expires else None
            plan = served.model.info.plan if served.model is not None else None
            out.append({"name": served.name, "model": served.name, "size": served.size,
                        "digest": "", "details": _details(served),
                        "expires_at": until.isoformat() if until else "9999-12-31T00:00:00Z",
                        "size_vram": 0,
                        "context_length": plan.context_length if plan is not None else 0})
        return JSONResponse({"models": out})

    async def chat(request: Request) -> Response:
        req: ChatRequest = validate(ChatRequest, await read_json(request, state.max_body))
        messages = _messages(req.messages)
        gen, load = _generation(req, messages=messages)
        return await _run(request, req, gen, load, chat=True, empty=not messages)

    async def generate(request: Request) -> Response:
        req: GenerateRequest = validate(GenerateRequest,
                                        await read_json(request, state.max_body))
        for name in ("suffix", "template", "context", "images"):
            if getattr(req, name):
                raise HTTPError(400, f"{name} is not supported by this server", param=name)
        if req.raw:
            gen, load = _generation(req, prompt=req.prompt)
        else:
            messages = ([{"role": "system", "content": req.system}] if req.system else [])
            messages.append({"role": "user", "content": req.prompt})
            gen, load = _generation(req, messages=messages)
        return await _run(request, req, gen, load, chat=False, empty=not req.prompt)

    async def _run(request: Request, req: _Request, gen: Generation, load: dict[str, Any],
                   *, chat: bool, empty: bool) -> Response:
        keep = parse_keep_alive(req.keep_alive) if req.keep_alive is not None else "default"
        started = time.monotonic()
        if empty:  # Ollama's way to load (or, with keep_alive 0, unload) a model
            async with registry.use(req.model, load, keep) as served:
                pass
            reason = "unload" if keep == 0 else "load"
            head = {"model": req.model, "created_at": _now(), "done": True,
                    "done_reason": reason}
            head.update({"message": {"role": "assistant", "content": ""}} if chat
                        else {"response": ""})
            return JSONResponse(head)
        if not req.stream:
            async with registry.use(req.model, load, keep) as served:
                load_s = _load_s(served, started)
                result = await until_disconnect(request, generation.complete(
                    served.live, gen, metrics))
            return JSONResponse(_final(req.model, chat, result, load_s, result.text))
        served, body = await hold_while_streaming(
            registry.use(req.model, load, keep),
            lambda served: generation.stream(served.live, gen, metrics))
        load_s = _load_s(served, started)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for chunk in body:
                    if chunk.completion is not None:
                        yield ndjson(_final(req.model, chat, chunk.completion, load_s,
                                            chunk.text))
                    elif chunk.text or chunk.logprobs:
                        yield ndjson(_part(req.model, chat, chunk.text, chunk.logprobs))
            except Exception as exc:
                yield ndjson({"error": http_error(exc).message})

        return EventStream(lines(), media_type="application/x-ndjson")

    def _part(model: str, chat: bool, text: str,
              logprobs: tuple[TokenLogprob, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": _now(), "done": False}
        if chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        if logprobs:
            out["logprobs"] = [logprob_entry(lp) for lp in logprobs]
        return out

    def _final(model: str, chat: bool, r: Completion, load_s: float,
               text: str) -> dict[str, Any]:
        out = _part(model, chat, text, ())
        if chat and r.tool_calls:
            out["message"]["tool_calls"] = wire.tool_calls(r.tool_calls)
        if r.logprobs is not None and text == r.text:  # not streamed: all of them here
            out["logprobs"] = [logprob_entry(lp) for lp in r.logprobs]
        reason = "stop" if r.finish_reason == "tool_calls" else r.finish_reason
        out.update(done=True, done_reason=reason, **_stats(r, load_s))
        return out

    async def embed(request: Request) -> Response:
        """/api/embed: unit vectors; ``truncate`` defaults to true as in Ollama, and the
        reply lists what was cut under ``truncated`` (Ollama says nothing)."""
        body = await read_json(request, state.max_body)
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise HTTPError(400, "truncate must be true or false")
        texts = texts_of(body.get("input"), "input")
        started = time.perf_counter()
        async with registry.use(body.get("model")) as served:
            result = await embed_texts(served.live, texts, normalize=True,
                                       truncate=truncate, dimensions=body.get("dimensions"))
        out: dict[str, Any] = {
            "model": served.name, "embeddings": result.vectors.tolist(),
            "total_duration": int((time.perf_counter() - started) * 1e9),
            "load_duration": 0, "prompt_eval_count": result.usage.prompt_tokens}
        if result.truncated:
            out["truncated"] = [{"index": i, "dropped_tokens": t.dropped_tokens}
                                for i, t in sorted(result.truncated.items())]
        return JSONResponse(out)

    async def legacy_embeddings(request: Request) -> Response:
        """/api/embeddings (Ollama's older route): one prompt, a raw (unnormalised)
        vector, and an error instead of truncation."""
        body = await read_json(request, state.max_body)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise HTTPError(400, "the body must be a JSON object with a string prompt")
        async with registry.use(body.get("model")) as served:
            result = await embed_texts(served.live, [body["prompt"]], normalize=False,
                                       truncate=False)
        return JSONResponse({"embedding": result.vectors[0].tolist()})

    def r(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, route("ollama", metrics, path, handler), methods=methods)

    management = [r(p, _refuse_management, m) for p, m in (
        ("/api/pull", ["POST"]), ("/api/push", ["POST"]), ("/api/create", ["POST"]),
        ("/api/copy", ["POST"]), ("/api/delete", ["DELETE"]),
        ("/api/blobs/{digest}", ["HEAD", "POST"]))]
    return [r("/", root, ["GET", "HEAD"]), r("/api/version", version, ["GET"]),
            r("/api/tags", tags, ["GET"]), r("/api/show", show, ["POST"]),
            r("/api/ps", ps, ["GET"]), r("/api/chat", chat, ["POST"]),
            r("/api/generate", generate, ["POST"]), r("/api/embed", embed, ["POST"]),
            r("/api/embeddings", legacy_embeddings, ["POST"]), *management]
