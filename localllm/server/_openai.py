"""OpenAI's API besides generation: /v1/models and /v1/embeddings. Chat completions and
completions are the codecs in ``protocols.openai``, mounted by ``_endpoint``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._app import HTTPError, ServerState, read_json, route
from ._embeddings import as_base64, embed, texts_of
from ._registry import ServedModel


def routes(state: ServerState) -> list[Route]:
    registry, metrics = state.registry, state.metrics

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            _model_card(served) for served in registry.models.values()]})

    async def get_model(request: Request) -> Response:
        return JSONResponse(_model_card(registry.lookup(request.path_params["name"])))

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
            r("/v1/embeddings", embeddings, ["POST"])]


def _model_card(served: ServedModel) -> dict[str, Any]:
    """OpenAI's model object, plus whether it is loaded and its context length then (the
    chat page's picker shows both; OpenAI's clients keep extra fields)."""
    model = served.model
    return {"id": served.name, "object": "model", "created": 0, "owned_by": "localllm",
            "loaded": model is not None,
            "context_length": model.info.context_length if model is not None else None}
