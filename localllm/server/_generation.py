"""One generation request, as both protocols hand it to ``Model``.

Each wire codec (``protocols``) turns a body into ``GenerationRequest``s; the call itself,
``n`` parallel choices and the metrics are here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .._types import Completion, StreamChunk
from ..core.model import Model
from ..core.request import GenerationRequest
from ._metrics import Metrics


async def complete(model: Model, gen: GenerationRequest, metrics: Metrics) -> Completion:
    result = await model.agenerate(gen)
    record(metrics, result)
    return result


async def complete_n(model: Model, gen: GenerationRequest, n: int, metrics: Metrics
                     ) -> list[Completion]:
    """``n`` choices decoded as parallel sequences (seed + i each, when a seed is given)."""
    return list(await asyncio.gather(*(complete(model, gen.with_seed_offset(i), metrics)
                                       for i in range(n))))


def stream(model: Model, gen: GenerationRequest, metrics: Metrics
           ) -> AsyncIterator[StreamChunk]:
    return _recorded(model.aevents(gen), metrics)


async def _recorded(chunks: AsyncIterator[StreamChunk], metrics: Metrics
                    ) -> AsyncIterator[StreamChunk]:
    async for chunk in chunks:
        if chunk.completion is not None:
            record(metrics, chunk.completion)
        yield chunk


async def stream_n(model: Model, gen: GenerationRequest, n: int, metrics: Metrics
                   ) -> AsyncIterator[tuple[int, StreamChunk]]:
    """The chunks of ``n`` parallel choices as they come, tagged with the choice index."""
    if n == 1:
        async for chunk in stream(model, gen, metrics):
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, StreamChunk | BaseException | None]] = asyncio.Queue()
    streams = [stream(model, gen.with_seed_offset(i), metrics) for i in range(n)]

    async def pump(i: int) -> None:
        try:
            async for chunk in streams[i]:
                await queue.put((i, chunk))
            await queue.put((i, None))
        except BaseException as exc:  # re-raised by the consumer
            await queue.put((i, exc))

    tasks = [asyncio.ensure_future(pump(i)) for i in range(n)]
    try:
        running = n
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()


def record(metrics: Metrics, result: Completion) -> None:
    metrics.generation(result.usage.prompt_tokens, result.usage.completion_tokens,
                       result.timings.time_to_first_token_s, result.timings.generation_s,
                       result.timings.drafted_tokens, result.timings.accepted_tokens)
