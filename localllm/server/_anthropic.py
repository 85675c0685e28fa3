"""Anthropic's Messages API besides generation: ``/v1/messages/count_tokens``, the tokens
a message request would read (the prompt as the model's template renders it, tools
included). ``/v1/messages`` itself is the codec in ``protocols.anthropic``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
            return JSONResponse({"input_tokens": model.count_tokens(
                messages, tools=tools, tool_choice=choice)})

    path = "/v1/messages/count_tokens"
    return [Route(path, route("anthropic", state.metrics, path, count_tokens),
                  methods=["POST"])]

