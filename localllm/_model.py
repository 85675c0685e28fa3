"""``Model``: the one place where generation logic lives, whatever the runtime.

Parameter validation, capability checks, tokenization, chat rendering, the context
budget, incremental UTF-8 decoding, stop strings, usage, timings and the per-model lock
are written here once; engines only evaluate tokens and sample.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._backends.base import Engine
from ._chat import normalize_messages, render_chat
from ._defaults import DEFAULTS
from ._errors import (
    ChatTemplateError,
    ConfigError,
    ContextOverflowError,
    ModelClosedError,
    UnsupportedFeatureError,
)
from ._scheduler import Outbox, Request, Scheduler
from ._text import IncrementalDetokenizer, StopMatcher
from ._types import (
    Completion,
    FinishReason,
    Message,
    ModelInfo,
    ModelStats,
    OverflowPolicy,
    SamplingParams,
    StreamChunk,
    Timings,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Truncation,
    Usage,
)

if TYPE_CHECKING:
    from ._embed import Embeddings
    from ._tools import ToolSetup
    from .sampling import LogitsProcessor
    from .tokenizer import LocalTokenizer

Messages = Sequence[Message | Mapping[str, Any]]
SamplerChoice = Literal["auto", "native", "localllm"]
_OVERFLOW_POLICIES = ("error", "truncate_left", "drop_oldest")
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class Tokenizer:
    """The model's tokenizer: text to token ids and back."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True
               ) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS where the model wants it."""
        if not isinstance(text, str):
            raise ConfigError(f"text must be str, not {type(text).__name__}")
        return self._engine.tokenize(text, add_special=add_special, parse_special=parse_special)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; control tokens such as BOS/EOS contribute nothing."""
        n = self._engine.vocab_size
        for t in ids:
            if not isinstance(t, int) or not 0 <= t < n:
                raise ConfigError(f"token id {t!r} is out of range 0..{n - 1}")
        return self._engine.decode(list(ids))

    def token_text(self, token: int) -> str:
        """The vocabulary spelling of one token, special tokens included."""
        return self._engine.token_text(token)


class Model:
    """A loaded local LLM. Thread-safe and concurrent: requests from any number of threads
    and event loops run together on the model's scheduler (up to ``parallel`` sequences
    per decode step, the rest queue in arrival order).

    Use it as a context manager, or call :meth:`close` (idempotent) to free memory.
    """

    def __init__(self, engine: Engine, info: ModelInfo, chat_template: str | None,
                 bos_text: str, eos_text: str, load_s: float,
                 tokenizer_factory: Callable[[], LocalTokenizer] | None = None,
                 max_queue: int = DEFAULTS.max_queue) -> None:
        self._engine: Engine | None = engine
        self._info = info
        self._chat_template = chat_template
        self._bos_text = bos_text
        self._eos_text = eos_text
        self._load_s = load_s
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self._scheduler = Scheduler(engine, max_queue=max_queue)
        self.tokenizer = Tokenizer(engine)
        self._tokenizer_factory = tokenizer_factory
        self._local_tokenizer: LocalTokenizer | None = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the model. Running and queued requests end with ``ModelClosedError``;
        safe to call twice."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            self._scheduler.close()
            engine.close()

    @property
    def closed(self) -> bool:
        return self._engine is None

    def __repr__(self) -> str:
        state = "closed" if self.closed else self._info.backend
        return f"<localllm.Model {self._info.name!r} ({state})>"

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def stats(self) -> ModelStats:
        """Requests decoding now and waiting, read without blocking any of them."""
        scheduler = self._scheduler
        return ModelStats(active_sequences=scheduler.active_sequences,
                          queue_depth=scheduler.queue_depth,
                          max_sequences=self._info.parallel)

    def clear_cache(self) -> None:
        """Forget the prompt prefixes that idle sequences keep for reuse, so the next
        request evaluates its whole prompt: for measurements, and for runs that must start
        alike. Requests running now keep theirs."""
        self._live()
        self._scheduler.clear_cache()

    @property
    def capabilities(self) -> Any:
        return self._live().capabilities

    def _live(self) -> Engine:
        if self._engine is None:
            raise ModelClosedError(f"{self._info.name!r} was closed; load it again to use it")
        return self._engine

    # ----------------------------------------------------------------- prompts
    def render_chat(self, messages: Messages, *, add_generation_prompt: bool = True,
                    tools: Sequence[Mapping[str, Any]] | None = None,
                    tool_choice: Any = None) -> str:
        """The exact prompt text the model sees for ``messages`` (and ``tools``)."""
        from ._tools import prepare, with_tools

        msgs = with_tools(normalize_messages(messages), prepare(tools, tool_choice))
        return self._render(msgs, add_generation_prompt)

    def _render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        from ._chat import fold_system_message, resolve_template

        template = resolve_template(None, self._chat_template)

        def render(msgs: Sequence[Message | Mapping[str, Any]]) -> str:
            return render_chat(template, msgs, bos_token=self._bos_text,
                               eos_token=self._eos_text,
                               add_generation_prompt=add_generation_prompt)

        if self._info.system_message == "fold":
            return render(fold_system_message(messages))
        try:
            return render(messages)
        except ChatTemplateError as exc:
            if not (messages and messages[0].role == "system"
                    and any(m.role == "user" for m in messages)):
                raise
            try:
                render(fold_system_message(messages))
            except ChatTemplateError:
                raise exc from None
            raise ChatTemplateError(
                f"{exc}. It renders these messages with the system text folded into the "
                "first user turn: load the model with system_message='fold' to do that"
            ) from None

    def count_tokens(self, text_or_messages: str | Messages) -> int:
        """Tokens the model would read for a prompt string or a chat."""
        return len(self._encode_prompt(self._as_prompt_text(text_or_messages)))

    def _as_prompt_text(self, text_or_messages: str | Messages) -> str:
        if isinstance(text_or_messages, str):
            return text_or_messages
        return self.render_chat(text_or_messages)

    def _encode_prompt(self, text: str) -> list[int]:
        engine = self._live()
        # A template that writes BOS itself must not get a second one from the tokenizer.
        add_special = not (engine.add_bos and self._bos_text and text.startswith(self._bos_text))
        return engine.tokenize(text, add_special=add_special, parse_special=True)

    # ----------------------------------------------------------------- embeddings
    def embed(self, texts: str | Sequence[str], *, normalize: bool = True,
              overflow: Literal["error", "truncate_right", "truncate_left"] = "error"
              ) -> Embeddings:
        """Vectors of ``texts`` (one str or a list) from an embedding model: a float32
        array ``(n, dim)`` in ``.vectors``, unit length unless ``normalize=False``, pooled
        as the model says (``.pooling``). An input over the model's limit raises
        ``ContextOverflowError`` unless ``overflow`` cuts it, reported in ``.truncated``.
        Thread-safe: calls run one at a time, each batching its inputs."""
        from ._embed import embed

        with self._embed_lock:
            return embed(self._live(), texts, normalize=normalize, overflow=overflow)

    async def aembed(self, texts: str | Sequence[str], *, normalize: bool = True,
                     overflow: Literal["error", "truncate_right", "truncate_left"] = "error"
                     ) -> Embeddings:
        """:meth:`embed` off the event loop (in a worker thread)."""
        return await asyncio.to_thread(self.embed, texts, normalize=normalize,
                                       overflow=overflow)

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
        return _collect(self._run(self._prompt_job(
            prompt, _Options(overflow, sampler, logits_processors, response_format, timeout,
                            logprobs), params)))

    def stream(self, prompt: str, *, overflow: OverflowPolicy = "error",
               sampler: SamplerChoice = "auto",
               logits_processors: Sequence[LogitsProcessor] = (),
               response_format: Any = None, timeout: float | None = None,
               logprobs: int | None = None,
               **params: Any) -> Iterator[StreamChunk]:
        """Like :meth:`complete`, yielding text as it is generated. Closing the iterator
        (or breaking out of the loop) frees the request's sequence at the next step."""
        return self._run(self._prompt_job(
            prompt, _Options(overflow, sampler, logits_processors, response_format, timeout,
                            logprobs), params))

    def chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
             sampler: SamplerChoice = "auto",
             logits_processors: Sequence[LogitsProcessor] = (),
             response_format: Any = None, timeout: float | None = None,
             logprobs: int | None = None,
             tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
             **params: Any) -> Completion:
        """Answer a conversation, rendered with the model's chat template."""
        return _collect(self._run(self._chat_job(
            messages, _Options(overflow, sampler, logits_processors, response_format, timeout,
                              logprobs, tools, tool_choice), params)))

    def stream_chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
                    sampler: SamplerChoice = "auto",
                    logits_processors: Sequence[LogitsProcessor] = (),
                    response_format: Any = None, timeout: float | None = None,
                    logprobs: int | None = None,
                    tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                    **params: Any) -> Iterator[StreamChunk]:
        """Like :meth:`chat`, yielding text as it is generated."""
        return self._run(self._chat_job(
            messages, _Options(overflow, sampler, logits_processors, response_format, timeout,
                              logprobs, tools, tool_choice), params))

    # ----------------------------------------------------------------- async generation
    async def acomplete(self, prompt: str, *, overflow: OverflowPolicy = "error",
                        sampler: SamplerChoice = "auto",
                        logits_processors: Sequence[LogitsProcessor] = (),
                        response_format: Any = None, timeout: float | None = None,
                        logprobs: int | None = None,
                        **params: Any) -> Completion:
        """:meth:`complete` for asyncio: never blocks the event loop; cancelling the task
        frees the request's sequence at the next decode step."""
        return await _acollect(self.astream(
            prompt, overflow=overflow, sampler=sampler, logits_processors=logits_processors,
            response_format=response_format, timeout=timeout, logprobs=logprobs, **params))

    def astream(self, prompt: str, *, overflow: OverflowPolicy = "error",
                sampler: SamplerChoice = "auto",
                logits_processors: Sequence[LogitsProcessor] = (),
                response_format: Any = None, timeout: float | None = None,
                logprobs: int | None = None,
                **params: Any) -> AsyncIterator[StreamChunk]:
        """:meth:`stream` for ``async for``; leaving the loop frees the sequence."""
        return _AsyncStream(self, self._prompt_job(
            prompt, _Options(overflow, sampler, logits_processors, response_format, timeout,
                            logprobs), params))

    async def achat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
                    sampler: SamplerChoice = "auto",
                    logits_processors: Sequence[LogitsProcessor] = (),
                    response_format: Any = None, timeout: float | None = None,
                    logprobs: int | None = None,
                    tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                    **params: Any) -> Completion:
        """:meth:`chat` for asyncio."""
        return await _acollect(self.astream_chat(
            messages, overflow=overflow, sampler=sampler, logits_processors=logits_processors,
            response_format=response_format, timeout=timeout, logprobs=logprobs, tools=tools,
            tool_choice=tool_choice, **params))

    def astream_chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
                     sampler: SamplerChoice = "auto",
                     logits_processors: Sequence[LogitsProcessor] = (),
                     response_format: Any = None, timeout: float | None = None,
                     logprobs: int | None = None,
                     tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                     **params: Any) -> AsyncIterator[StreamChunk]:
        """:meth:`stream_chat` for ``async for``."""
        return _AsyncStream(self, self._chat_job(
            messages, _Options(overflow, sampler, logits_processors, response_format, timeout,
                              logprobs, tools, tool_choice), params))

    # ----------------------------------------------------------------- request preparation
    def _prompt_job(self, prompt: str, opts: _Options, params: Mapping[str, Any]) -> _Job:
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be str, not {type(prompt).__name__}; "
                              "use chat() for a list of messages")
        overflow = opts.overflow
        sampling = self._prepare(params, overflow, chat=False)
        decoding = self._decoding(opts, None)
        ids = self._encode_prompt(prompt)
        ids, truncation = self._fit_prompt_tokens(ids, sampling, overflow)
        return self._job(ids, sampling, truncation, decoding, opts.timeout)

    def _chat_job(self, messages: Messages, opts: _Options, params: Mapping[str, Any]) -> _Job:
        from ._tools import prepare, with_tools

        overflow = opts.overflow
        sampling = self._prepare(params, overflow, chat=True)
        tools = prepare(opts.tools, opts.tool_choice)
        decoding = self._decoding(opts, tools)
        msgs = normalize_messages(messages)
        dropped: list[Message] = []
        while True:
            ids = self._encode_prompt(self._render(with_tools(msgs, tools)))
            if overflow != "drop_oldest" or self._fits(len(ids), sampling):
                break
            victim = next((i for i, m in enumerate(msgs[:-1]) if m.role != "system"), None)
            if victim is None:
                break  # nothing left to drop; the check below raises
            dropped.append(msgs.pop(victim))
            # drop the rest of that exchange too, so the chat still opens with a user turn
            while victim < len(msgs) - 1 and msgs[victim].role not in ("user", "system"):
                dropped.append(msgs.pop(victim))
        truncation = None
        if dropped:
            truncation = Truncation(policy="drop_oldest", dropped_messages=tuple(dropped))
        if overflow == "drop_oldest":
            self._check_fits(len(ids), sampling)
        else:
            ids, truncation = self._fit_prompt_tokens(ids, sampling, overflow)
        return self._job(ids, sampling, truncation, decoding, opts.timeout)

    # ----------------------------------------------------------------- internals
    def _prepare(self, params: Mapping[str, Any], overflow: str, chat: bool) -> SamplingParams:
        engine = self._live()
        if overflow not in _OVERFLOW_POLICIES:
            raise ConfigError(f"overflow={overflow!r} is invalid; use one of "
                              f"{', '.join(_OVERFLOW_POLICIES)}")
        if overflow == "drop_oldest" and not chat:
            raise ConfigError("overflow='drop_oldest' drops chat messages; use it with "
                              "chat()/stream_chat(), or 'truncate_left' for a prompt")
        sampling = SamplingParams.from_options(params)
        vocab = engine.vocab_size
        bad = [t for t in sampling.logit_bias if t >= vocab]
        if bad:
            raise ConfigError(f"logit_bias token ids {bad} are out of range 0..{vocab - 1}")
        supported = engine.capabilities.sampling_params
        defaults = SamplingParams()
        for name in sampling.model_fields_set:
            if name not in supported and getattr(sampling, name) != getattr(defaults, name):
                raise UnsupportedFeatureError(
                    engine.backend_name, f"the sampling parameter {name!r}",
                    f"it supports: {', '.join(sorted(supported)) or 'none'}")
        return sampling

    def local_tokenizer(self) -> LocalTokenizer:
        """The runtime-independent tokenizer of this model (built on first use)."""
        if self._local_tokenizer is None:
            if self._tokenizer_factory is None:
                raise UnsupportedFeatureError(self._live().backend_name,
                                              "a localllm tokenizer for this model")
            self._local_tokenizer = self._tokenizer_factory()
        return self._local_tokenizer

    def _decoding(self, opts: _Options, tools: ToolSetup | None) -> _Decoding:
        """Decide native vs localllm sampling and compile any constraint, before compute."""
        engine = self._live()
        sampler, response_format, logprobs = opts.sampler, opts.response_format, opts.logprobs
        if sampler not in ("auto", "native", "localllm"):
            raise ConfigError(f"sampler={sampler!r} is invalid; use 'auto', 'native' or "
                              "'localllm'")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(
                logprobs, int) or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
            raise ConfigError(f"logprobs={logprobs!r} is invalid; give the number of "
                              f"alternatives per token, 0..{MAX_TOP_LOGPROBS}, or None")
        if tools is not None:
            if response_format is not None:
                raise ConfigError("tools and response_format cannot be combined: a tool "
                                  "call's arguments already follow the function's schema")
            response_format = tools.format
        processors = list(opts.processors or ())
        for proc in processors:
            if not callable(proc):
                raise ConfigError(f"logits processor {proc!r} is not callable")
        needs_logits = bool(processors) or response_format is not None or logprobs is not None
        if sampler == "native" and needs_logits:
            raise ConfigError("logits_processors, response_format, tools and logprobs run "
                              "on localllm's sampler; drop sampler='native'")
        if not needs_logits and sampler != "localllm":
            return _Decoding(native=True)
        if not engine.capabilities.logits:
            raise UnsupportedFeatureError(
                engine.backend_name, "logits access (needed for sampler='localllm', "
                "logits_processors, response_format, tools and logprobs)")
        grammar = None
        if response_format is not None:
            from ._structured import GrammarConstraint, grammar_for

            grammar = GrammarConstraint(self.local_tokenizer(), grammar_for(response_format),
                                        engine.vocab_size)
        return _Decoding(native=False, processors=processors, grammar=grammar,
                         logprobs=logprobs, tools=tools)

    def _fits(self, n_prompt: int, sampling: SamplingParams) -> bool:
        n_ctx = self._live().context_length
        need = sampling.max_tokens if sampling.max_tokens is not None else 1
        return n_prompt + need <= n_ctx

    def _check_fits(self, n_prompt: int, sampling: SamplingParams) -> None:
        if not self._fits(n_prompt, sampling):
            raise ContextOverflowError(n_prompt, sampling.max_tokens or 1,
                                       self._live().context_length)

    def _fit_prompt_tokens(self, ids: list[int], sampling: SamplingParams, overflow: str
                           ) -> tuple[list[int], Truncation | None]:
        if overflow == "error" or self._fits(len(ids), sampling):
            self._check_fits(len(ids), sampling)
            return ids, None
        engine = self._live()
        room = engine.context_length - (sampling.max_tokens or 1)
        keep_head = 1 if engine.add_bos and ids and not engine.token_bytes(ids[0]) else 0
        if room <= keep_head:
            raise ContextOverflowError(len(ids), sampling.max_tokens or 1,
                                       engine.context_length)
        cut = len(ids) - (room - keep_head)
        dropped = ids[keep_head:cut]
        kept = ids[:keep_head] + ids[cut:]
        text = self.tokenizer.decode(dropped)
        return kept, Truncation(policy="truncate_left", dropped_tokens=len(dropped),
                                dropped_text=text)

    def _job(self, prompt: list[int], sampling: SamplingParams, truncation: Truncation | None,
             decoding: _Decoding, timeout: float | None) -> _Job:
        if not prompt:
            raise ConfigError("the prompt is empty (no tokens); give at least one character")
        if self._live().pooling is not None:
            raise UnsupportedFeatureError(
                self._info.backend, "text generation with an embedding model",
                "this model turns text into vectors: use embed(), and load a generative "
                "model for completions")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} is invalid; give seconds > 0 or None")
        seed = sampling.seed if sampling.seed is not None else secrets.randbelow(2**32 - 1)
        budget = self._live().context_length - len(prompt)
        if sampling.max_tokens is not None:
            budget = min(budget, sampling.max_tokens)
        return _Job(prompt, sampling, seed, budget, truncation, decoding, timeout)

    def _submit(self, job: _Job, loop: asyncio.AbstractEventLoop | None = None) -> Request:
        self._live()
        deadline = time.monotonic() + job.timeout if job.timeout is not None else None
        request = Request(prompt=job.prompt, params=job.sampling, seed=job.seed,
                          budget=job.budget, native=job.decoding.native,
                          processors=job.decoding.processors, grammar=job.decoding.grammar,
                          logprobs=job.decoding.logprobs is not None, deadline=deadline,
                          outbox=Outbox(loop))
        return self._scheduler.submit(request)

    def _run(self, job: _Job) -> Iterator[StreamChunk]:
        request = self._submit(job)
        consumer = _Consumer(self._live(), job, self._load_s)
        try:  # errors arrive typed from the scheduler
            for token in request.tokens():
                chunk = consumer.feed(token)
                if chunk is not None:
                    yield chunk
                if consumer.over:
                    break
        finally:
            request.cancel()
        yield consumer.final(request.reused_tokens)


@dataclass
class _Job:
    """A validated request, ready to submit: the same for sync and async callers."""

    prompt: list[int]
    sampling: SamplingParams
    seed: int
    budget: int
    truncation: Truncation | None
    decoding: _Decoding
    timeout: float | None


class _Consumer:
    """Turns one request's tokens into what the caller sees: UTF-8-safe text, stop strings
    held back until they cannot match, tool calls, log probabilities, the finish reason,
    usage and timings."""

    def __init__(self, engine: Engine, job: _Job, load_s: float) -> None:
        from ._tools import ToolCallStream

        self.engine = engine
        self.job = job
        self.load_s = load_s
        self.detok = IncrementalDetokenizer()
        self.stops = StopMatcher(job.sampling.stop)
        tools = job.decoding.tools
        self.tools = ToolCallStream(tools) if tools is not None else None
        self.generated: list[int] = []
        self.emitted: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.unsent_logprobs = 0  # logprobs not yet attached to a chunk
        self.finish: FinishReason = "length"
        self.over = False
        self.t_start = self.t_first = time.perf_counter()

    def feed(self, item: int | tuple[int, Any]) -> StreamChunk | None:
        token, logits = item if isinstance(item, tuple) else (item, None)
        if not self.generated:
            self.t_first = time.perf_counter()
        self.generated.append(token)
        if logits is not None:
            self.logprobs.append(token_logprob(self.engine, logits, token,
                                               self.job.decoding.logprobs or 0))
            self.unsent_logprobs += 1
        if self.engine.is_end_of_generation(token):
            self.finish, self.over = "stop", True
            return None
        chunk = None
        text = self.stops.feed(self.detok.feed(self.engine.token_bytes(token)))
        if text:
            chunk = self._chunk(text)
        if self.stops.matched is not None:
            self.finish, self.over = "stop", True
        elif len(self.generated) >= self.job.budget:
            self.over = True
        return chunk

    def _chunk(self, text: str) -> StreamChunk | None:
        deltas: list[Any] = []
        if self.tools is not None:
            text, deltas = self.tools.feed(text)
        if not text and not deltas:
            return None
        self.emitted.append(text)
        # built without validation: the fields are ours, and this runs once per token
        return StreamChunk.model_construct(text=text, tool_calls=tuple(deltas),
                                           logprobs=self._take_logprobs())

    def _take_logprobs(self) -> tuple[TokenLogprob, ...]:
        n, self.unsent_logprobs = self.unsent_logprobs, 0
        return tuple(self.logprobs[len(self.logprobs) - n:]) if n else ()

    def final(self, reused_tokens: int) -> StreamChunk:
        stops, job = self.stops, self.job
        tail = stops.feed(self.detok.flush()) if stops.matched is None else ""
        tail += stops.flush()
        grammar = job.decoding.grammar
        complete = grammar is not None and grammar.done and stops.matched is None
        calls: tuple[ToolCall, ...] = ()
        deltas: list[Any] = []
        if self.tools is not None:
            tail, deltas = self.tools.feed(tail)
            shown, calls, last = self.tools.finish(complete)
            tail += shown
            deltas += last
        if calls:
            self.finish = "tool_calls"
        n_prompt, n_gen = len(job.prompt), len(self.generated)
        completion = Completion(
            text="".join(self.emitted) + tail,
            token_ids=tuple(self.generated),
            finish_reason=self.finish,
            stop_sequence=stops.matched,
            seed=job.seed,
            usage=Usage(prompt_tokens=n_prompt, completion_tokens=n_gen,
                        total_tokens=n_prompt + n_gen, cached_prompt_tokens=reused_tokens),
            timings=_timings(self.load_s, n_prompt, n_gen, self.t_start, self.t_first,
                             time.perf_counter()),
            truncation=job.truncation,
            tool_calls=calls,
            logprobs=tuple(self.logprobs) if job.decoding.logprobs is not None else None,
        )
        if grammar is not None and self.tools is None:
            completion._format = grammar.format
            completion._complete = complete
        return StreamChunk(text=tail, token_ids=(), finish_reason=completion.finish_reason,
                           completion=completion, tool_calls=tuple(deltas),
                           logprobs=self._take_logprobs())


def token_logprob(engine: Engine, logits: Any, token: int, top: int) -> TokenLogprob:
    """A token's log probability under the model (the raw logits, before sampling
    settings) and the ``top`` most likely tokens, in OpenAI's shape."""
    import numpy as np

    row = np.asarray(logits, dtype=np.float64)
    peak = float(row.max())
    logz = peak + float(np.log(np.exp(row - peak).sum()))

    def entry(tid: int) -> TopLogprob:
        raw = engine.token_bytes(tid)
        return TopLogprob(token=raw.decode("utf-8", errors="replace"), id=tid,
                          logprob=float(row[tid]) - logz, bytes=tuple(raw))

    alternatives: tuple[TopLogprob, ...] = ()
    if top:
        best = np.argpartition(-row, top)[:top]
        best = best[np.argsort(-row[best], kind="stable")]
        alternatives = tuple(entry(int(t)) for t in best)
    chosen = entry(token)
    return TokenLogprob(**chosen.model_dump(), top_logprobs=alternatives)


class _AsyncStream:
    """``async for`` over one request. Leaving the loop early, cancelling the task or
    dropping the iterator cancels the request, so its sequence is freed at once."""

    def __init__(self, model: Model, job: _Job) -> None:
        self._model = model
        self._job = job
        self._request: Request | None = None
        self._consumer: _Consumer | None = None
        self._tokens: AsyncIterator[int] | None = None
        self._done = False

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._done:
            raise StopAsyncIteration
        if self._request is None:
            self._request = self._model._submit(self._job, asyncio.get_running_loop())
            self._consumer = _Consumer(self._model._live(), self._job, self._model._load_s)
            self._tokens = self._request.atokens()
        assert self._consumer is not None and self._tokens is not None
        consumer = self._consumer
        try:
            while not consumer.over:
                try:
                    token = await self._tokens.__anext__()
                except StopAsyncIteration:
                    break
                chunk = consumer.feed(token)
                if chunk is not None:
                    return chunk
        except BaseException:  # a typed error from the scheduler, or the task cancelled
            self._close()
            raise
        self._close()
        return consumer.final(self._request.reused_tokens)

    def _close(self) -> None:
        self._done = True
        if self._request is not None:
            self._request.cancel()

    async def aclose(self) -> None:
        self._close()

    def __del__(self) -> None:
        self._close()


class _Decoding:
    """How one request picks tokens: the runtime's sampler, or localllm's with extras."""

    def __init__(self, native: bool, processors: Sequence[LogitsProcessor] = (),
                 grammar: Any = None, logprobs: int | None = None,
                 tools: ToolSetup | None = None) -> None:
        self.native = native
        self.processors = list(processors)
        self.grammar = grammar
        self.logprobs = logprobs
        self.tools = tools


@dataclass
class _Options:
    """The per-request choices besides sampling parameters, as the public methods got them."""

    overflow: str
    sampler: str
    processors: Sequence[LogitsProcessor]
    response_format: Any
    timeout: float | None
    logprobs: int | None
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: Any = None


def _timings(load_s: float, n_prompt: int, n_gen: int, t_start: float, t_first: float,
             t_end: float) -> Timings:
    ttft = (t_first - t_start) if n_gen else (t_end - t_start)
    gen_s = t_end - t_first if n_gen else 0.0
    return Timings(
        load_s=load_s,
        time_to_first_token_s=ttft,
        prompt_s=ttft,
        generation_s=gen_s,
        prompt_tokens_per_s=n_prompt / ttft if ttft > 0 else 0.0,
        generation_tokens_per_s=(n_gen - 1) / gen_s if n_gen > 1 and gen_s > 0 else 0.0,
    )


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
    assert final is not None  # _run always ends with a completion chunk
    return final
