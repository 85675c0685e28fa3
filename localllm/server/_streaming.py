"""Streaming responses that stop generating as soon as the client goes away.

Starlette's ``StreamingResponse`` watches for a disconnect only under older ASGI spec
versions; under newer ones it notices when a write fails, which some servers never
report. This one always listens, so a dropped client cancels its generation (and frees
its sequence) at the next decode step.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")
S = TypeVar("S")


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


async def hold_while_streaming(held: AbstractAsyncContextManager[S],
                               start: Callable[[S], AsyncIterator[T]]
                               ) -> tuple[S, AsyncIterator[T]]:
    """Enter ``held`` (a model in use), start a stream on it and wait for its first item.
    The returned iterator leaves ``held`` when the stream ends, however it ends; an error
    before the first item leaves it at once and propagates (so it gets its status)."""
    value = await held.__aenter__()
    try:
        body = await first_then_rest(start(value))
    except BaseException:
        await held.__aexit__(None, None, None)
        raise

    async def releasing() -> AsyncIterator[T]:
        try:
            async for item in body:
                yield item
        finally:
            await held.__aexit__(None, None, None)

    return value, releasing()


async def _empty() -> AsyncIterator[Any]:
    return
    yield
