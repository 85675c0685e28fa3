"""One generic endpoint per wire codec: read the body, let the codec parse it, run the
requests on the served model, and answer whole or streamed in the codec's own shapes,
errors included. A new wire API is a codec in ``protocols`` plus one line in ``_app``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..core.request import GenerationRequest
from ..protocols.codec import Failure, ServerCodec
from . import _generation as generation
from ._app import HTTPError, ServerState, http_error, read_json, until_disconnect
from ._fetch import fetch_message_images
from ._registry import ServedModel, parse_keep_alive
from ._streaming import EventStream, hold_while_streaming


def mount(codec: ServerCodec, state: ServerState) -> Route:
    """The route serving ``codec`` at its path (POST)."""
    registry, metrics = state.registry, state.metrics

    async def handle(request: Request) -> Response:
        call = codec.parse(await read_json(request, state.max_body), caller_of(request))
        if state.config.fetch_images:
            call.requests = [await _fetched(gen, state.config.fetch_allow)
                             for gen in call.requests]
        if call.keep_alive is None or call.keep_alive == "default":
            call.keep_alive = "default"
        else:
            call.keep_alive = parse_keep_alive(call.keep_alive)
        started = time.monotonic()
        use = registry.use(call.model, call.load_options or None, call.keep_alive)
        if call.stream and call.requests:
            served, chunks = await hold_while_streaming(
                use, lambda served: generation.stream_n(served.live, call.requests[0], call.n,
                                                        metrics))
            events = codec.events(call, chunks, _load_s(served, started))
            return EventStream(_framed(codec, events), media_type=codec.media_type)
        async with use as served:
            load_s = _load_s(served, started)
            results = []
            for gen in call.requests:
                results += await until_disconnect(request, generation.complete_n(
                    served.live, gen, call.n, metrics))
        return JSONResponse(codec.reply(call, results, load_s))

    async def endpoint(request: Request) -> Response:
        try:
            response = await handle(request)
        except Exception as exc:
            response = error_response(codec, http_error(exc))
        metrics.request(codec.path, response.status_code)
        return response

    return Route(codec.path, endpoint, methods=["POST"])


def caller_of(request: Request) -> str:
    """Who asks: a digest of the API key the Guard accepted ("" when none is required)."""
    return str(request.scope.get("state", {}).get("caller", ""))


def error_response(codec: ServerCodec, err: HTTPError) -> Response:
    return JSONResponse(codec.error(failure(err)), status_code=err.status, headers=err.headers)


def failure(err: HTTPError) -> Failure:
    return Failure(err.status, err.message, err.kind, err.code, err.param)


async def _framed(codec: ServerCodec, events: AsyncIterator[dict[str, Any]]
                  ) -> AsyncIterator[bytes]:
    """The events on the wire; a failure mid-stream is an error event in the codec's
    envelope (the status line is already sent)."""
    try:
        async for event in events:
            yield codec.frame(event)
    except Exception as exc:
        yield codec.frame(codec.error(failure(http_error(exc))))
        return
    end = codec.end()
    if end:
        yield end


def _load_s(served: ServedModel, started: float) -> float:
    """Seconds this request spent loading the model (0 when it was loaded already)."""
    return served.loaded_at - started if served.loaded_at >= started else 0.0



async def _fetched(gen: GenerationRequest, allow: Sequence[str]) -> GenerationRequest:
    """The request with its image URLs fetched (in a thread: the fetch blocks)."""
    if not gen.messages:
        return gen
    messages = await anyio.to_thread.run_sync(fetch_message_images, gen.messages, allow)
    return gen if messages is None else dataclasses.replace(gen, messages=messages)
