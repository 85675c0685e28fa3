"""Anthropic's Messages API besides generation: ``/v1/messages/count_tokens``, the tokens
a message request would read (the prompt as the model's template renders it, tools
included). ``/v1/messages`` itself is the codec in ``protocols.anthropic``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import UnsupportedFeatureError
from ..protocols import anthropic as wire
from ..protocols.codec import validate
from ._app import ServerState, read_json, route


def routes(state: ServerState) -> list[Route]:
    registry = state.registry

    async def count_tokens(request: Request) -> Response:
        req: wire.CountBody = validate(wire.CountBody, await read_json(request, state.max_body))
        messages = wire.read_messages(req.system, req.messages)
        tools, choice = wire.read_tools(req.tools, req.tool_choice)
        async with registry.use(req.model) as served:
            model = served.live
            prompt = model.render_chat(messages, tools=tools, tool_choice=choice)
            return JSONResponse({"input_tokens": model.count_tokens(prompt)
                                 + image_tokens(model, messages)})

    path = "/v1/messages/count_tokens"
    return [Route(path, route("anthropic", state.metrics, path, count_tokens),
                  methods=["POST"])]


def image_tokens(model: Any, messages: Any) -> int:
    """The prompt tokens of a request's images (the rendered text holds none of them)."""
    from ..templates.chat import normalize_messages

    n = sum(len(m.images) for m in normalize_messages(messages))
    if n and not model.info.image_tokens:
        raise UnsupportedFeatureError(model.info.backend, "image input",
                                      "the model was loaded without a vision projector")
    return n * (model.info.image_tokens or 0)
