"""One generation request, as both protocols hand it to ``Model``.

The OpenAI and Ollama routes only translate fields; the call itself, the context cap on
``max_tokens``, ``n`` parallel choices, the log-probability shape and the metrics are
here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._errors import ContextOverflowError
from .._model import Model
from .._types import Completion, StreamChunk
from ._metrics import Metrics


@dataclass(frozen=True)
class Generation:
    """What to generate: a chat or a raw prompt, with its options."""

    messages: list[Any] | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    response_format: Any = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    logprobs: int | None = None
    context_limit: int | None = None  # a per-request window smaller than the model's

    def options(self) -> dict[str, Any]:
        # no max_tokens means up to the context's end, as in both APIs (not the library's
        # default of 256)
        opts: dict[str, Any] = {"response_format": self.response_format,
                                "logprobs": self.logprobs, "max_tokens": None, **self.params}
        if self.messages is not None:
            opts.update(tools=self.tools, tool_choice=self.tool_choice)
        return opts


def _limited(model: Model, gen: Generation) -> Generation:
    """A request with its own smaller window (Ollama's ``num_ctx``): ``max_tokens`` so that
    prompt and answer fit in it. Only this case counts the prompt here."""
    if gen.context_limit is None or gen.context_limit >= model.info.context_length:
        return gen
    if gen.messages is not None:
        text = model.render_chat(gen.messages, tools=gen.tools, tool_choice=gen.tool_choice)
    else:
        assert gen.prompt is not None
        text = gen.prompt
    n_prompt = model.count_tokens(text)
    requested = gen.params.get("max_tokens")
    room = gen.context_limit - n_prompt
    if room < 1:
        raise ContextOverflowError(n_prompt, requested or 1, gen.context_limit)
    return _with_max_tokens(gen, room if requested is None else min(requested, room))


def _with_max_tokens(gen: Generation, max_tokens: int) -> Generation:
    return replace(gen, params={**gen.params, "max_tokens": max_tokens})


def _call(model: Model, gen: Generation, streaming: bool) -> Any:
    if gen.messages is not None:
        chat = model.astream_chat if streaming else model.achat
        return chat(gen.messages, **gen.options())
    assert gen.prompt is not None
    plain = model.astream if streaming else model.acomplete
    return plain(gen.prompt, **gen.options())


def _capped(gen: Generation, exc: ContextOverflowError) -> Generation:
    """A ``max_tokens`` past the context's end, capped to it: the server never reserves
    more than the context. The error counted the prompt, so nothing is tokenized twice;
    a prompt that fills the context alone stays an error."""
    room = exc.context_length - exc.prompt_tokens
    if room < 1 or gen.params.get("max_tokens") is None:
        raise exc
    return _with_max_tokens(gen, room)


async def complete(model: Model, gen: Generation, metrics: Metrics) -> Completion:
    gen = _limited(model, gen)
    try:
        result: Completion = await _call(model, gen, streaming=False)
    except ContextOverflowError as exc:
        result = await _call(model, _capped(gen, exc), streaming=False)
    record(metrics, result)
    return result


async def complete_n(model: Model, gen: Generation, n: int, metrics: Metrics
                     ) -> list[Completion]:
    """``n`` choices decoded as parallel sequences (seed + i each, when a seed is given)."""
    return list(await asyncio.gather(*(complete(model, with_index_seed(gen, i), metrics)
                                       for i in range(n))))


def stream(model: Model, gen: Generation, metrics: Metrics) -> AsyncIterator[StreamChunk]:
    gen = _limited(model, gen)
    try:  # the stream's request is validated (and sized) when it is created
        chunks = _call(model, gen, streaming=True)
    except ContextOverflowError as exc:
        chunks = _call(model, _capped(gen, exc), streaming=True)
    return _recorded(chunks, metrics)


async def _recorded(chunks: AsyncIterator[StreamChunk], metrics: Metrics
                    ) -> AsyncIterator[StreamChunk]:
    async for chunk in chunks:
        if chunk.completion is not None:
            record(metrics, chunk.completion)
        yield chunk


async def stream_n(model: Model, gen: Generation, n: int, metrics: Metrics
                   ) -> AsyncIterator[tuple[int, StreamChunk]]:
    """The chunks of ``n`` parallel choices as they come, tagged with the choice index."""
    if n == 1:
        async for chunk in stream(model, gen, metrics):
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, StreamChunk | BaseException | None]] = asyncio.Queue()
    streams = [stream(model, with_index_seed(gen, i), metrics) for i in range(n)]

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


def with_index_seed(gen: Generation, i: int) -> Generation:
    seed = gen.params.get("seed")
    if seed is None or i == 0:
        return gen
    return replace(gen, params={**gen.params, "seed": (seed + i) % (2**32 - 1)})


def record(metrics: Metrics, result: Completion) -> None:
    metrics.generation(result.usage.prompt_tokens, result.usage.completion_tokens,
                       result.timings.time_to_first_token_s, result.timings.generation_s)


def sampling_params(fields: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The set request fields renamed to localllm's sampling parameters."""
    out: dict[str, Any] = {}
    for wire, ours in names.items():
        value = fields.get(wire)
        if value is not None:
            out[ours] = value
    return out
