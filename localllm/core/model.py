"""``Model``: the one front end for generation, whatever generates.

A local model file (``_local.LocalGenerator``: engine and scheduler in this process) and a
model on a server (``_remote_generator.RemoteGenerator``) plug in under the same
``Model``. Every public method builds one :class:`~localllm.core.request.GenerationRequest`
and runs it on one path: the generator prepares it (every error before any compute), its
run yields pieces, and one :class:`~localllm.core.request.Assembler` turns them into
``StreamChunk``s and the ``Completion``.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._errors import ConfigError, UnsupportedFeatureError
from .._types import Completion, Message, ModelInfo, ModelStats, OverflowPolicy, StreamChunk
from .local import LocalGenerator, Tokenizer
from .request import Assembler, GenerationRequest, Run, SamplerChoice, build_request

if TYPE_CHECKING:
    from ..sampling import LogitsProcessor
    from ..tokenizer import LocalTokenizer
    from .embed import Embeddings
    from .engine import Engine
    from .scheduler import Scheduler

Messages = Sequence[Message | Mapping[str, Any]]
__all__ = ["Model", "Tokenizer", "Generator"]


class Generator(Protocol):
    """What ``Model`` needs from whatever generates: a local engine or a server."""

    info: ModelInfo
    tokenizer: Any
    #: tries for a whole answer whose stream broke before it ended (servers behind proxies)
    whole_tries: int

    @property
    def closed(self) -> bool: ...

    @property
    def capabilities(self) -> Any: ...

    @property
    def stats(self) -> ModelStats: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...

    def clear_cache(self) -> None: ...

    def prepare(self, request: GenerationRequest) -> Run: ...

    def retry_wait(self, attempt: int, exc: Exception) -> float | None:
        """Seconds to wait before sending a whole request again after ``exc``; None when
        ``exc`` is not worth another try."""

    def render_chat(self, messages: Messages, add_generation_prompt: bool,
                    tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> str: ...

    def count_tokens(self, text_or_messages: str | Messages,
                     tools: Sequence[Mapping[str, Any]] | None = None,
                     tool_choice: Any = None) -> int: ...

    def embed(self, texts: str | Sequence[str], normalize: bool, overflow: str
              ) -> Embeddings: ...

    def local_tokenizer(self) -> LocalTokenizer: ...


class Model:
    """A loaded LLM: a local model file (:func:`localllm.load`) or a model on a server
    (:func:`localllm.connect`), with one API. Thread-safe and concurrent: requests from any
    number of threads and event loops run together (locally, up to ``parallel``
    sequences per decode step, the rest queue in arrival order).

    Use it as a context manager, or call :meth:`close` (idempotent) to free memory.
    """

    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self.tokenizer = generator.tokenizer

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the model. Running and queued requests end with ``ModelClosedError``;
        safe to call twice."""
        self._generator.close()

    @property
    def closed(self) -> bool:
        return self._generator.closed

    def __repr__(self) -> str:
        return f"<localllm.Model {self.info.name!r} ({self._generator.describe()})>"

    @property
    def info(self) -> ModelInfo:
        return self._generator.info

    @property
    def server(self) -> Any:
        """Where a remote model runs (``RemoteServer``: url, flavour, api and the
        capability table in use); None for a local model."""
        return getattr(self._generator, "server", None)

    def __getattr__(self, name: str) -> Any:
        # the names RemoteModel had, before remote models became Models (deprecated)
        if name in ("flavour", "api", "remote"):
            server = getattr(self.__dict__.get("_generator"), "server", None)
            if server is not None:
                warnings.warn(f"model.{name} is deprecated; read model.server."
                              f"{'capabilities' if name == 'remote' else name}",
                              DeprecationWarning, stacklevel=2)
                return server.capabilities if name == "remote" else getattr(server, name)
        raise AttributeError(f"'Model' object has no attribute {name!r}")

    @property
    def stats(self) -> ModelStats:
        """Requests decoding now and waiting, read without blocking any of them."""
        return self._generator.stats

    def clear_cache(self) -> None:
        """Forget the prompt prefixes that idle sequences keep for reuse, so the next
        request evaluates its whole prompt: for measurements, and for runs that must start
        alike. Requests running now keep theirs."""
        self._generator.clear_cache()

    @property
    def capabilities(self) -> Any:
        return self._generator.capabilities

    # the local engine and scheduler, for tests and benchmarks that look inside
    @property
    def _engine(self) -> Engine | None:
        return getattr(self._generator, "engine", None)

    @property
    def _scheduler(self) -> Scheduler:
        return self._local().scheduler

    def _live(self) -> Engine:
        return self._local().live()

    def _local(self) -> LocalGenerator:
        if not isinstance(self._generator, LocalGenerator):
            raise UnsupportedFeatureError(self.info.backend, "a local engine")
        return self._generator

    # ----------------------------------------------------------------- prompts
    def render_chat(self, messages: Messages, *, add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None,
                    tool_choice: Any = None) -> str:
        """The exact prompt text the model sees for ``messages`` (and ``tools``)."""
        return self._generator.render_chat(messages, add_generation_prompt, tools,
                                           tool_choice)

    def count_tokens(self, text_or_messages: str | Messages, *,
                     tools: Sequence[Mapping[str, Any]] | None = None,
                     tool_choice: Any = None) -> int:
        """Tokens the model would read for a prompt string, or a chat (with its images,
        and the ``tools`` offered with it)."""
        if isinstance(text_or_messages, str) and (tools or tool_choice is not None):
            raise ConfigError("tools are counted with a chat (a list of messages), not with "
                              "a prompt string")
        return self._generator.count_tokens(text_or_messages, tools, tool_choice)

    def local_tokenizer(self) -> LocalTokenizer:
        """The runtime-independent tokenizer of this model (built on first use)."""
        return self._generator.local_tokenizer()

    # ----------------------------------------------------------------- embeddings
    def embed(self, texts: str | Sequence[str], *, normalize: bool = True,
              overflow: Literal["error", "truncate_right", "truncate_left"] = "error"
              ) -> Embeddings:
        """Vectors of ``texts`` (one str or a list) from an embedding model: a float32
        array ``(n, dim)`` in ``.vectors``, unit length unless ``normalize=False``, pooled
        as the model says (``.pooling``). An input over the model's limit raises
        ``ContextOverflowError`` unless ``overflow`` cuts it, reported in ``.truncated``.
        Thread-safe: calls run one at a time, each batching its inputs."""
        return self._generator.embed(texts, normalize, overflow)

    async def aembed(self, texts: str | Sequence[str], *, normalize: bool = True,
                     overflow: Literal["error", "truncate_right", "truncate_left"] = "error"
                     ) -> Embeddings:
        """:meth:`embed` off the event loop (in a worker thread)."""
        return await asyncio.to_thread(self.embed, texts, normalize=normalize,
                                       overflow=overflow)

    # ----------------------------------------------------------------- the one path
    def generate(self, request: GenerationRequest) -> Completion:
        """Run a request to its end. A remote stream that broke before its end (a
        replica died behind a proxy) is sent again, since nothing of it reached the
        caller."""
        tries = self._generator.whole_tries
        for attempt in range(tries):
            try:
                return _collect(self.events(request))
            except Exception as exc:
                wait = self._generator.retry_wait(attempt, exc)
                if wait is None or attempt + 1 == tries:
                    raise
                time.sleep(wait)
        raise AssertionError("unreachable")

    async def agenerate(self, request: GenerationRequest) -> Completion:
        """:meth:`generate` for asyncio."""
        tries = self._generator.whole_tries
        for attempt in range(tries):
            try:
                return await _acollect(self.aevents(request))
            except Exception as exc:
                wait = self._generator.retry_wait(attempt, exc)
                if wait is None or attempt + 1 == tries:
                    raise
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def events(self, request: GenerationRequest) -> Iterator[StreamChunk]:
        """The request's chunks as they are generated; the last carries the
        ``Completion``. Every error comes from this call, before any compute; closing the
        iterator frees the request's sequence at the next step."""
        return _stream(self._generator.prepare(request), request.sampling.stop)

    def aevents(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """:meth:`events` for ``async for``; leaving the loop frees the sequence."""
        return _AsyncStream(self._generator.prepare(request), request.sampling.stop)

    # ----------------------------------------------------------------- public generation
    def complete(self, prompt: str, *, overflow: OverflowPolicy = "error",
                 sampler: SamplerChoice = "auto",
                 logits_processors: Sequence[LogitsProcessor] = (),
                 response_format: Any = None, timeout: float | None = None,
                 logprobs: int | None = None,
                 **params: Any) -> Completion:
        """Continue ``prompt``.

        ``params`` are the :class:`SamplingParams` fields. ``response_format`` constrains
        the output (OpenAI ``json_schema`` dict, a pydantic model class, ``regex`` or
        ``grammar``); ``logits_processors`` are user :class:`LogitsProcessor` callables;
        both run on localllm's sampler, which ``sampler="localllm"`` also selects.
        ``timeout`` (seconds, queueing included) ends the request with
        ``RequestTimeoutError``.
        """
        return self.generate(build_request(
            prompt=prompt, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, **params))

    def stream(self, prompt: str, *, overflow: OverflowPolicy = "error",
               sampler: SamplerChoice = "auto",
               logits_processors: Sequence[LogitsProcessor] = (),
               response_format: Any = None, timeout: float | None = None,
               logprobs: int | None = None,
               **params: Any) -> Iterator[StreamChunk]:
        """Like :meth:`complete`, yielding text as it is generated. Closing the iterator
        (or breaking out of the loop) frees the request's sequence at the next step."""
        return self.events(build_request(
            prompt=prompt, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, **params))

    def chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
             sampler: SamplerChoice = "auto",
             logits_processors: Sequence[LogitsProcessor] = (),
             response_format: Any = None, timeout: float | None = None,
             logprobs: int | None = None,
             tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
             parallel_tool_calls: bool = True, **params: Any) -> Completion:
        """Answer a conversation, rendered with the model's chat template. With ``tools``
        the model may answer with calls in its own format (``info.tool_format``), several
        per turn unless ``parallel_tool_calls=False``."""
        return self.generate(build_request(
            messages=messages, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, tools=tools, tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls, **params))

    def stream_chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
                    sampler: SamplerChoice = "auto",
                    logits_processors: Sequence[LogitsProcessor] = (),
                    response_format: Any = None, timeout: float | None = None,
                    logprobs: int | None = None,
                    tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                    parallel_tool_calls: bool = True, **params: Any) -> Iterator[StreamChunk]:
        """Like :meth:`chat`, yielding text as it is generated."""
        return self.events(build_request(
            messages=messages, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, tools=tools, tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls, **params))

    # ----------------------------------------------------------------- async generation
    async def acomplete(self, prompt: str, *, overflow: OverflowPolicy = "error",
                        sampler: SamplerChoice = "auto",
                        logits_processors: Sequence[LogitsProcessor] = (),
                        response_format: Any = None, timeout: float | None = None,
                        logprobs: int | None = None,
                        **params: Any) -> Completion:
        """:meth:`complete` for asyncio: never blocks the event loop; cancelling the task
        frees the request's sequence at the next decode step."""
        return await self.agenerate(build_request(
            prompt=prompt, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, **params))

    def astream(self, prompt: str, *, overflow: OverflowPolicy = "error",
                sampler: SamplerChoice = "auto",
                logits_processors: Sequence[LogitsProcessor] = (),
                response_format: Any = None, timeout: float | None = None,
                logprobs: int | None = None,
                **params: Any) -> AsyncIterator[StreamChunk]:
        """:meth:`stream` for ``async for``; leaving the loop frees the sequence."""
        return self.aevents(build_request(
            prompt=prompt, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, **params))

    async def achat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
                    sampler: SamplerChoice = "auto",
                    logits_processors: Sequence[LogitsProcessor] = (),
                    response_format: Any = None, timeout: float | None = None,
                    logprobs: int | None = None,
                    tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                    parallel_tool_calls: bool = True, **params: Any) -> Completion:
        """:meth:`chat` for asyncio."""
        return await self.agenerate(build_request(
            messages=messages, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, tools=tools, tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls, **params))

    def astream_chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
                     sampler: SamplerChoice = "auto",
                     logits_processors: Sequence[LogitsProcessor] = (),
                     response_format: Any = None, timeout: float | None = None,
                     logprobs: int | None = None,
                     tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                     parallel_tool_calls: bool = True, **params: Any) -> AsyncIterator[StreamChunk]:
        """:meth:`stream_chat` for ``async for``."""
        return self.aevents(build_request(
            messages=messages, overflow=overflow, sampler=sampler,
            logits_processors=logits_processors, response_format=response_format,
            timeout=timeout, logprobs=logprobs, tools=tools, tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls, **params))


def _stream(run: Run, stops: Sequence[str]) -> Iterator[StreamChunk]:
    assembler = Assembler(run, stops)
    pieces = run.pieces()
    try:
        for piece in pieces:
            chunk = assembler.feed(piece)
            if chunk is not None:
                yield chunk
            if assembler.over:
                break
    finally:
        pieces.close()  # type: ignore[attr-defined]  # a generator: frees what it holds
        run.cancel()
    yield assembler.final()


class _AsyncStream:
    """``async for`` over one run. Leaving the loop early, cancelling the task or dropping
    the iterator cancels the run, so its sequence is freed at once."""

    def __init__(self, run: Run, stops: Sequence[str]) -> None:
        self._run = run
        self._assembler = Assembler(run, stops)
        self._pieces: AsyncIterator[Any] | None = None
        self._done = False

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._done:
            raise StopAsyncIteration
        if self._pieces is None:
            self._pieces = self._run.apieces()
        assembler = self._assembler
        try:
            while not assembler.over:
                try:
                    piece = await self._pieces.__anext__()
                except StopAsyncIteration:
                    break
                chunk = assembler.feed(piece)
                if chunk is not None:
                    return chunk
        except BaseException:  # a typed error, or the task cancelled
            await self._finish()
            raise
        await self._finish()
        return assembler.final()

    async def _finish(self) -> None:
        self._close()
        pieces, self._pieces = self._pieces, None
        if pieces is not None:
            await pieces.aclose()  # type: ignore[attr-defined]  # an async generator

    def _close(self) -> None:
        self._done = True
        self._run.cancel()

    async def aclose(self) -> None:
        await self._finish()

    def __del__(self) -> None:
        self._close()


async def _acollect(chunks: AsyncIterator[StreamChunk]) -> Completion:
    """Run an async stream to its end and return its completion."""
    final: Completion | None = None
    async for chunk in chunks:
        if chunk.completion is not None:
            final = chunk.completion
    assert final is not None
    return final


def _collect(chunks: Iterator[StreamChunk]) -> Completion:
    """Run a stream to its end and return its completion."""
    final: Completion | None = None
    for chunk in chunks:
        if chunk.completion is not None:
            final = chunk.completion
    assert final is not None  # a stream always ends with a completion chunk
    return final

