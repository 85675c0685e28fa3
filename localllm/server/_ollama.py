"""Ollama's native API besides generation, enough for the official ``ollama`` client to
work unchanged: version, tags, show, ps, embed. Chat and generate are the codecs in
``protocols.ollama`` (NDJSON ending in a ``done`` object with the stats), mounted by
``_endpoint``. Model management (pull, push, create, copy, delete, blobs) is refused: the
server never fetches or writes model files for a request.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__
from ..protocols import ollama as wire
from ._app import HTTPError, ServerState, read_json, route
from ._embeddings import embed as embed_texts
from ._embeddings import texts_of
from ._registry import ServedModel

API_VERSION = "0.12.0"  # the Ollama API level these routes follow


def _details(served: ServedModel) -> dict[str, Any]:
    facts = _facts(served.source, served.size)
    return {"parent_model": "", "format": "gguf", "family": facts["architecture"],
            "families": [facts["architecture"]],
            "parameter_size": facts["parameter_size"],
            "quantization_level": facts["quantization"]}


@functools.lru_cache(maxsize=64)
def _facts(source: str, size: int) -> dict[str, Any]:
    from ..models.loader import describe_source

    gguf = describe_source(source)
    params = gguf.parameter_count
    return {"architecture": gguf.architecture, "quantization": gguf.quantization,
            "parameter_count": params, "context_length": gguf.context_length,
            "parameter_size": f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M",
            "chat_template": gguf.chat_template or "",
            "embedding": bool(gguf.arch_value("pooling_type", 0))}


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
                           "modified_at": wire.now(), "size": served.size,
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
            "modified_at": wire.now()})

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

    def r(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, route("ollama", metrics, path, handler), methods=methods)

    management = [r(p, _refuse_management, m) for p, m in (
        ("/api/pull", ["POST"]), ("/api/push", ["POST"]), ("/api/create", ["POST"]),
        ("/api/copy", ["POST"]), ("/api/delete", ["DELETE"]),
        ("/api/blobs/{digest}", ["HEAD", "POST"]))]
    embed, legacy_embeddings = _embed_handlers(state)
    return [r("/", root, ["GET", "HEAD"]), r("/api/version", version, ["GET"]),
            r("/api/tags", tags, ["GET"]), r("/api/show", show, ["POST"]),
            r("/api/ps", ps, ["GET"]), r("/api/embed", embed, ["POST"]),
            r("/api/embeddings", legacy_embeddings, ["POST"]), *management]


Handler = Callable[[Request], Awaitable[Response]]


def _embed_handlers(state: ServerState) -> tuple[Handler, Handler]:
    """``/api/embed`` and Ollama's older ``/api/embeddings``."""
    registry = state.registry

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

    return embed, legacy_embeddings

