"""Streaming responses that stop generating as soon as the client goes away.

Starlette's ``StreamingResponse`` watches for a disconnect only under older ASGI spec
versions; under newer ones it notices when a write fails, which some servers never
report. This one always listens, so a dropped client cancels its generation (and frees
its sequence) at the next decode step.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class EventStream(StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            async def run_then_stop(func: Callable[[], Awaitable[None]]) -> None:
                await func()
                group.cancel_scope.cancel()

            group.start_soon(run_then_stop, functools.partial(self.stream_response, send))
            await run_then_stop(functools.partial(self.listen_for_disconnect, receive))
        if self.background is not None:
            await self.background()


async def first_then_rest(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """Wait for the first item before answering, so errors that come before any output
    (a full queue, a bad parameter) still get their HTTP status, not a broken stream."""
    try:
        first = await items.__anext__()
    except StopAsyncIteration:
        return _empty()

    async def rest() -> AsyncIterator[T]:
        yield first
        async for item in items:
            yield item

    return rest()


async def _empty() -> AsyncIterator[Any]:
    return
    yield
