"""One generation request and the events it produces, whatever serves it.

Every public generation method of :class:`~localllm.Model` (sync, async, streamed, chat
or plain prompt), the server and the remote client build one :class:`GenerationRequest`;
a generator (local: ``_local``, remote: ``_remote_generator``) turns it into
:class:`Piece` events and an :class:`Ending`, and one :class:`Assembler` turns those into
what the caller sees (stop strings, tool calls, timings, the :class:`Completion`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._errors import ConfigError
from .._text import StopMatcher
from .._types import (
    Completion,
    FinishReason,
    Message,
    SamplingParams,
    StreamChunk,
    Timings,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Truncation,
    Usage,
)

if TYPE_CHECKING:
    from ..decoding.tools import ToolSetup
    from ..sampling import LogitsProcessor

SamplerChoice = Literal["auto", "native", "localllm"]
OVERFLOW_POLICIES = ("error", "truncate_left", "drop_oldest")
SAMPLERS = ("auto", "native", "localllm")
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate, checked once: a chat (``messages``) or a plain continuation
    (``prompt``), the sampling parameters, how to decode (``response_format``, ``tools``,
    ``logprobs``, ``processors``, ``sampler``) and the limits.

    ``clamp_to_context``: a ``max_tokens`` past the context's end is cut to it instead of
    being an error (the server does this, as llama-server does); ``context_limit``: a
    window smaller than the model's for this request alone (Ollama's ``num_ctx``), which
    clamps the same way."""

    sampling: SamplingParams
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    response_format: Any = None
    tools: tuple[Mapping[str, Any], ...] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    #: at most this many calls in one turn (None: no limit but max_tokens)
    max_tool_calls: int | None = None
    #: a reasoning model's thinking: None (the template's default), a bool, or an effort
    think: Any = None
    reasoning_budget: int | None = None
    logprobs: int | None = None
    processors: tuple[LogitsProcessor, ...] = ()
    sampler: SamplerChoice = "auto"
    overflow: str = "error"
    timeout: float | None = None
    clamp_to_context: bool = False
    context_limit: int | None = None
    #: speculative decoding for this request: "default" (the model's, from load), None
    #: (off) or "ngram"
    speculative: Any = "default"
    #: the wire fields the caller set, for a server that forwards only those
    given: frozenset[str] = field(default_factory=frozenset)

    @property
    def chat(self) -> bool:
        return self.messages is not None

    def with_seed_offset(self, offset: int) -> GenerationRequest:
        """The same request with ``seed + offset`` (the n-th of several choices); a
        request without a seed stays random."""
        seed = self.sampling.seed
        if seed is None or offset == 0:
            return self
        sampling = self.sampling.model_copy(update={"seed": (seed + offset) % (2**32 - 1)})
        return replace(self, sampling=sampling)


def build_request(*, prompt: str | None = None, messages: Sequence[Any] | None = None,
                  overflow: str = "error", sampler: str = "auto",
                  logits_processors: Sequence[LogitsProcessor] = (),
                  response_format: Any = None, timeout: float | None = None,
                  logprobs: int | None = None,
                  tools: Sequence[Mapping[str, Any]] | None = None, tool_choice: Any = None,
                  parallel_tool_calls: bool = True, max_tool_calls: int | None = None,
                  think: Any = None,
                  reasoning_budget: int | None = None, clamp_to_context: bool = False,
                  context_limit: int | None = None, speculative: Any = "default",
                  **params: Any) -> GenerationRequest:
    """A request from the public methods' keyword arguments, with every choice that does
    not depend on the model checked here (the generator checks the rest)."""
    from ..templates.chat import normalize_messages

    if overflow not in OVERFLOW_POLICIES:
        raise ConfigError(f"overflow={overflow!r} is invalid; use one of "
                          f"{', '.join(OVERFLOW_POLICIES)}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler={sampler!r} is invalid; use 'auto', 'native' or "
                          "'localllm'")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
        raise ConfigError(f"logprobs={logprobs!r} is invalid; give the number of "
                          f"alternatives per token, 0..{MAX_TOP_LOGPROBS}, or None")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
            timeout, (int, float)) or not timeout > 0):
        raise ConfigError(f"timeout={timeout!r} is invalid; give seconds > 0 or None")
    if context_limit is not None and (not isinstance(context_limit, int) or context_limit < 1):
        raise ConfigError(f"context_limit={context_limit!r} is invalid; give tokens >= 1")
    if max_tool_calls is not None and (isinstance(max_tool_calls, bool) or not isinstance(
            max_tool_calls, int) or max_tool_calls < 1):
        raise ConfigError(f"max_tool_calls={max_tool_calls!r} is invalid; give calls >= 1 "
                          "or None")
    from ..decoding.reasoning import check_think

    think = check_think(think)
    budget = reasoning_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 0):
        raise ConfigError(f"reasoning_budget={budget!r} is invalid; give tokens >= 0")
    if speculative != "default":
        from .speculation import speculation_of

        speculative = speculation_of(speculative)
    processors = tuple(logits_processors or ())
    for proc in processors:
        if not callable(proc):
            raise ConfigError(f"logits processor {proc!r} is not callable")
    if messages is None:
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be str, not {type(prompt).__name__}; "
                              "use chat() for a list of messages")
        if overflow == "drop_oldest":
            raise ConfigError("overflow='drop_oldest' drops chat messages; use it with "
                              "chat()/stream_chat(), or 'truncate_left' for a prompt")
        chat_messages = None
    else:
        chat_messages = tuple(normalize_messages(messages))
    return GenerationRequest(
        sampling=SamplingParams.from_options(params), messages=chat_messages, prompt=prompt,
        response_format=response_format, tools=None if tools is None else tuple(tools),
        tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
        max_tool_calls=max_tool_calls, logprobs=logprobs,
        processors=processors, think=think, reasoning_budget=budget,
        sampler=sampler,  # type: ignore[arg-type]  # checked above
        overflow=overflow, timeout=timeout, clamp_to_context=clamp_to_context,
        context_limit=context_limit, speculative=speculative, given=frozenset(params))


# ---------------------------------------------------------------------------- events
@dataclass(slots=True)
class Piece:
    """Output as it comes: text, the token ids that wrote it (local runs), log
    probabilities, and what a server parsed already: tool-call pieces and thinking
    (``reasoning``, which a server splits off itself; a local run's thinking is in its
    text, split by the assembler)."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()
    reasoning: str = ""


@dataclass
class Ending:
    """How a run ended, asked for once its pieces stop (ended, or cut by a stop string):
    the finish reason the generator saw (None: none yet, as when a stop string cut it),
    the counts, the seed used, what was cut to fit, and whether a constrained answer is
    complete (None: complete when it ended on its own). ``reasoning_tokens`` is a
    server's count of its thinking (a local run's is counted as its text is split)."""

    finish: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    seed: int
    cached_prompt_tokens: int = 0
    load_s: float = 0.0
    truncation: Truncation | None = None
    format_complete: bool | None = None
    reasoning_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0


class Run(Protocol):
    """One prepared request on a generator. ``pieces``/``apieces`` are called at most once;
    ``cancel`` frees what the run holds (idempotent, callable from any thread);
    ``ending`` is read after the pieces stop."""

    #: tools whose calls the assembler parses out of the text (None: the generator's
    #: pieces carry calls already, or there are no tools)
    parse_tools: ToolSetup | None
    #: how ``Completion.parsed`` reads the answer (None: no response format)
    format: Any
    #: whether ``Completion.logprobs`` is a tuple (asked for) or None
    wants_logprobs: bool
    #: a reasoning model's thinking markers, whose text the assembler splits off, and
    #: whether the prompt opened the thinking (None: no split here)
    thinking: Any
    thinking_opened: bool
    #: the caller asked about thinking (think=, reasoning_budget=) of a generator whose
    #: pieces carry it split already: the completion's reasoning is then a string even
    #: when none came (a server refuses such a request for a model that does not think)
    reasoning_asked: bool

    def pieces(self) -> Iterator[Piece]: ...

    def apieces(self) -> AsyncIterator[Piece]: ...

    def cancel(self) -> None: ...

    def ending(self) -> Ending: ...


class Assembler:
    """Pieces → :class:`StreamChunk`s and the final :class:`Completion`: stop strings
    held back until they cannot match, tool calls parsed or gathered, log probabilities
    attached to the text they belong to, the finish reason, usage and timings."""

    def __init__(self, run: Run, stops: Sequence[str]) -> None:
        from ..decoding.tool_stream import ToolCallStream

        self.run = run
        self.stops = StopMatcher(stops)
        setup = run.parse_tools
        self.tools = (ToolCallStream(setup.family, forced=setup.forced, schemas={
            t.name: t.parameters for t in setup.tools}) if setup is not None else None)
        from ..decoding.reasoning import ThinkingSplit

        self.split = (ThinkingSplit(run.thinking, opened=run.thinking_opened)
                      if run.thinking is not None else None)
        self.reasoning: list[str] = []
        self.gathered: dict[int, dict[str, str]] = {}  # calls a server parsed
        self.token_ids: list[int] = []
        self.emitted: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.unsent_logprobs = 0
        self.over = False  # a stop string matched: read no further
        self.t_start = time.perf_counter()
        self.t_first: float | None = None

    def feed(self, piece: Piece) -> StreamChunk | None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        if piece.token_ids:
            self.token_ids.extend(piece.token_ids)
        if piece.logprobs:
            self.logprobs.extend(piece.logprobs)
            self.unsent_logprobs += len(piece.logprobs)
        for delta in piece.tool_calls:
            self._gather(delta)
        text, thought = piece.text, piece.reasoning
        if thought:  # a server split it off already
            self.reasoning.append(thought)
        elif self.split is not None and text:
            thought, text = self.split.feed(text, len(piece.token_ids))
            self.reasoning.append(thought)
        text = self.stops.feed(text) if text else ""
        if self.stops.matched is not None:
            self.over = True
        # a local token's log probability waits for the text it helps write; a server's
        # arrive with their text already
        return self._chunk(text, piece.tool_calls, eager_logprobs=not piece.token_ids,
                           thought=thought)

    def _gather(self, delta: ToolCallDelta) -> None:
        state = self.gathered.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        state["id"] = state["id"] or (delta.id or "")
        state["name"] += delta.name or ""
        state["arguments"] += delta.arguments

    def _chunk(self, text: str, calls: Sequence[ToolCallDelta], eager_logprobs: bool,
               thought: str = "") -> StreamChunk | None:
        deltas: list[Any] = list(calls)
        if self.tools is not None and text:
            text, parsed = self.tools.feed(text)
            deltas += parsed
        if not text and not deltas and not thought and not (
                eager_logprobs and self.unsent_logprobs):
            return None
        self.emitted.append(text)
        # built without validation: the fields are ours, and this runs once per token
        return StreamChunk.model_construct(text=text, token_ids=(), finish_reason=None,
                                           completion=None, tool_calls=tuple(deltas),
                                           logprobs=self._take_logprobs(), reasoning=thought)

    def _take_logprobs(self) -> tuple[TokenLogprob, ...]:
        n, self.unsent_logprobs = self.unsent_logprobs, 0
        return tuple(self.logprobs[len(self.logprobs) - n:]) if n else ()

    def final(self) -> StreamChunk:
        """The last chunk, carrying the :class:`Completion`."""
        end = self.run.ending()
        stops = self.stops
        thought = ""
        if self.split is not None:
            thought, held = self.split.finish()
            self.reasoning.append(thought)
            if held and stops.matched is None:
                stops.feed(held)
        tail = stops.flush() if stops.matched is None else ""
        deltas: list[Any] = []
        calls: tuple[ToolCall, ...] = ()
        finish: FinishReason = "stop" if stops.matched is not None else (end.finish or "stop")
        format_complete = end.format_complete if end.format_complete is not None else (
            finish == "stop" and end.finish is not None)
        format_complete = format_complete and stops.matched is None
        if self.tools is not None:
            tail, deltas = self.tools.feed(tail)
            shown, calls, last = self.tools.finish(format_complete)
            tail += shown
            deltas += last
        elif self.gathered:
            calls = tuple(ToolCall(id=c["id"] or f"call_{i}", name=c["name"],
                                   arguments=c["arguments"] or "{}")
                          for i, c in sorted(self.gathered.items()))
        if calls:
            finish = "tool_calls"
        t_end = time.perf_counter()
        n_prompt, n_gen = end.prompt_tokens, end.completion_tokens
        completion = Completion(
            text="".join(self.emitted) + tail,
            token_ids=tuple(self.token_ids),
            finish_reason=finish,
            stop_sequence=stops.matched,
            seed=end.seed,
            usage=Usage(prompt_tokens=n_prompt, completion_tokens=n_gen,
                        total_tokens=n_prompt + n_gen,
                        cached_prompt_tokens=end.cached_prompt_tokens,
                        reasoning_tokens=self.split.reasoning_tokens if self.split
                        else end.reasoning_tokens),
            timings=timings(end.load_s, n_prompt, n_gen, self.t_start,
                            self.t_first or t_end, t_end).model_copy(update={
                                "drafted_tokens": end.drafted_tokens,
                                "accepted_tokens": end.accepted_tokens}),
            truncation=end.truncation,
            tool_calls=calls,
            reasoning="".join(self.reasoning) if self.split is not None or self.reasoning
            or self.run.reasoning_asked else None,
            logprobs=tuple(self.logprobs) if self.run.wants_logprobs else None,
        )
        if self.run.format is not None and self.tools is None:
            completion._format = self.run.format
            completion._complete = format_complete
        return StreamChunk(text=tail, token_ids=(), finish_reason=finish,
                           completion=completion, tool_calls=tuple(deltas),
                           logprobs=self._take_logprobs(), reasoning=thought)


def timings(load_s: float, n_prompt: int, n_gen: int, t_start: float, t_first: float,
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
