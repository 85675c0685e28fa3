"""``Model``: the one place where generation logic lives, whatever the runtime.

Parameter validation, capability checks, tokenization, chat rendering, the context
budget, incremental UTF-8 decoding, stop strings, usage, timings and the per-model lock
are written here once; engines only evaluate tokens and sample.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._backends.base import Engine, sample_from_logits
from ._chat import normalize_messages, render_chat
from ._errors import (
    BackendError,
    ConfigError,
    ContextOverflowError,
    LocalLLMError,
    ModelClosedError,
    UnsupportedFeatureError,
)
from ._text import IncrementalDetokenizer, StopMatcher
from ._types import (
    Completion,
    FinishReason,
    Message,
    ModelInfo,
    OverflowPolicy,
    SamplingParams,
    StreamChunk,
    Timings,
    Truncation,
    Usage,
)

if TYPE_CHECKING:
    from .sampling import LogitsProcessor
    from .tokenizer import LocalTokenizer

Messages = Sequence[Message | Mapping[str, Any]]
SamplerChoice = Literal["auto", "native", "localllm"]
_OVERFLOW_POLICIES = ("error", "truncate_left", "drop_oldest")


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
    """A loaded local LLM. Thread-safe: requests on one model run one after another.

    Use it as a context manager, or call :meth:`close` (idempotent) to free memory.
    """

    def __init__(self, engine: Engine, info: ModelInfo, chat_template: str | None,
                 bos_text: str, eos_text: str, load_s: float,
                 tokenizer_factory: Callable[[], LocalTokenizer] | None = None) -> None:
        self._engine: Engine | None = engine
        self._info = info
        self._chat_template = chat_template
        self._bos_text = bos_text
        self._eos_text = eos_text
        self._load_s = load_s
        self._lock = threading.Lock()
        self._owner: int | None = None
        self.tokenizer = Tokenizer(engine)
        self._tokenizer_factory = tokenizer_factory
        self._local_tokenizer: LocalTokenizer | None = None

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the model. Waits for a running request; safe to call twice."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
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
    def capabilities(self) -> Any:
        return self._live().capabilities

    def _live(self) -> Engine:
        if self._engine is None:
            raise ModelClosedError(f"{self._info.name!r} was closed; load it again to use it")
        return self._engine

    # ----------------------------------------------------------------- prompts
    def render_chat(self, messages: Messages, *, add_generation_prompt: bool = True) -> str:
        """The exact prompt text the model sees for ``messages``."""
        from ._chat import resolve_template

        template = resolve_template(None, self._chat_template)
        return render_chat(template, messages, bos_token=self._bos_text,
                           eos_token=self._eos_text, add_generation_prompt=add_generation_prompt)

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

    # ----------------------------------------------------------------- public generation
    def complete(self, prompt: str, *, overflow: OverflowPolicy = "error",
                 sampler: SamplerChoice = "auto",
                 logits_processors: Sequence[LogitsProcessor] = (),
                 response_format: Any = None, **params: Any) -> Completion:
        """Continue ``prompt``.

        ``params`` are the :class:`SamplingParams` fields. ``response_format`` constrains
        the output (OpenAI ``json_schema`` dict, a pydantic model class, ``regex`` or
        ``grammar``); ``logits_processors`` are user :class:`LogitsProcessor` callables;
        both run on localllm's sampler, which ``sampler="localllm"`` also selects.
        """
        return _collect(self.stream(prompt, overflow=overflow, sampler=sampler,
                                    logits_processors=logits_processors,
                                    response_format=response_format, **params))

    def stream(self, prompt: str, *, overflow: OverflowPolicy = "error",
               sampler: SamplerChoice = "auto",
               logits_processors: Sequence[LogitsProcessor] = (),
               response_format: Any = None, **params: Any) -> Iterator[StreamChunk]:
        """Like :meth:`complete`, yielding text as it is generated."""
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be str, not {type(prompt).__name__}; "
                              "use chat() for a list of messages")
        sampling = self._prepare(params, overflow, chat=False)
        decoding = self._decoding(sampler, logits_processors, response_format)
        ids = self._encode_prompt(prompt)
        ids, truncation = self._fit_prompt_tokens(ids, sampling, overflow)
        return self._generate(ids, sampling, truncation, decoding)

    def chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
             sampler: SamplerChoice = "auto",
             logits_processors: Sequence[LogitsProcessor] = (),
             response_format: Any = None, **params: Any) -> Completion:
        """Answer a conversation, rendered with the model's chat template."""
        return _collect(self.stream_chat(messages, overflow=overflow, sampler=sampler,
                                         logits_processors=logits_processors,
                                         response_format=response_format, **params))

    def stream_chat(self, messages: Messages, *, overflow: OverflowPolicy = "error",
                    sampler: SamplerChoice = "auto",
                    logits_processors: Sequence[LogitsProcessor] = (),
                    response_format: Any = None, **params: Any) -> Iterator[StreamChunk]:
        """Like :meth:`chat`, yielding text as it is generated."""
        sampling = self._prepare(params, overflow, chat=True)
        decoding = self._decoding(sampler, logits_processors, response_format)
        msgs = normalize_messages(messages)
        dropped: list[Message] = []
        while True:
            ids = self._encode_prompt(self.render_chat(msgs))
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
        return self._generate(ids, sampling, truncation, decoding)

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

    def _decoding(self, sampler: str, processors: Sequence[LogitsProcessor],
                  response_format: Any) -> _Decoding:
        """Decide native vs localllm sampling and compile any constraint, before compute."""
        engine = self._live()
        if sampler not in ("auto", "native", "localllm"):
            raise ConfigError(f"sampler={sampler!r} is invalid; use 'auto', 'native' or "
                              "'localllm'")
        processors = list(processors or ())
        for proc in processors:
            if not callable(proc):
                raise ConfigError(f"logits processor {proc!r} is not callable")
        needs_logits = bool(processors) or response_format is not None
        if sampler == "native" and needs_logits:
            raise ConfigError("logits_processors and response_format run on localllm's "
                              "sampler; drop sampler='native'")
        if not needs_logits and sampler != "localllm":
            return _Decoding(native=True)
        if not engine.capabilities.logits:
            raise UnsupportedFeatureError(
                engine.backend_name, "logits access (needed for sampler='localllm', "
                "logits_processors and response_format)")
        grammar = None
        if response_format is not None:
            from ._structured import GrammarConstraint, grammar_for

            grammar = GrammarConstraint(self.local_tokenizer(), grammar_for(response_format),
                                        engine.vocab_size)
        return _Decoding(native=False, processors=processors, grammar=grammar)

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

    def _acquire(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise ConfigError("this thread is still iterating an unfinished stream of the "
                              "same model; finish it or call .close() on it first")
        self._lock.acquire()
        self._owner = me

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    def _generate(self, prompt: list[int], sampling: SamplingParams,
                  truncation: Truncation | None, decoding: _Decoding) -> Iterator[StreamChunk]:
        seed = sampling.seed if sampling.seed is not None else secrets.randbelow(2**32 - 1)
        budget = self._live().context_length - len(prompt)
        if sampling.max_tokens is not None:
            budget = min(budget, sampling.max_tokens)
        return self._run(prompt, sampling, seed, budget, truncation, decoding)

    def _run(self, prompt: list[int], sampling: SamplingParams, seed: int, budget: int,
             truncation: Truncation | None, decoding: _Decoding) -> Iterator[StreamChunk]:
        self._acquire()
        try:
            engine = self._live()
            detok = IncrementalDetokenizer()
            stops = StopMatcher(sampling.stop)
            generated: list[int] = []
            emitted: list[str] = []
            finish: FinishReason = "length"
            t_start = time.perf_counter()
            t_first = t_start
            tokens = (engine.generate(prompt, sampling, seed) if decoding.native
                      else sample_from_logits(engine, prompt, sampling, seed,
                                              decoding.processors, decoding.grammar))
            try:
                for token in tokens:
                    if not generated:
                        t_first = time.perf_counter()
                    generated.append(token)
                    if engine.is_end_of_generation(token):
                        finish = "stop"
                        break
                    text = stops.feed(detok.feed(engine.token_bytes(token)))
                    if text:
                        emitted.append(text)
                        yield StreamChunk(text=text, token_ids=(token,))
                    if stops.matched is not None:
                        finish = "stop"
                        break
                    if len(generated) >= budget:
                        break
            except LocalLLMError:
                raise
            except Exception as exc:  # a runtime failure surfaces typed, with its cause
                raise BackendError(f"{engine.backend_name} failed while generating: "
                                   f"{type(exc).__name__}: {exc}") from exc
            finally:
                close = getattr(tokens, "close", None)
                if close is not None:
                    close()
            tail = stops.feed(detok.flush()) if stops.matched is None else ""
            tail += stops.flush()
            t_end = time.perf_counter()
            completion = Completion(
                text="".join(emitted) + tail,
                token_ids=tuple(generated),
                finish_reason=finish,
                stop_sequence=stops.matched,
                seed=seed,
                usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(generated),
                            total_tokens=len(prompt) + len(generated)),
                timings=_timings(self._load_s, len(prompt), len(generated),
                                 t_start, t_first, t_end),
                truncation=truncation,
            )
            yield StreamChunk(text=tail, token_ids=(), finish_reason=completion.finish_reason,
                              completion=completion)
        finally:
            self._release()


class _Decoding:
    """How one request picks tokens: the runtime's sampler, or localllm's with extras."""

    def __init__(self, native: bool, processors: Sequence[LogitsProcessor] = (),
                 grammar: Any = None) -> None:
        self.native = native
        self.processors = list(processors)
        self.grammar = grammar


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


def _collect(chunks: Iterator[StreamChunk]) -> Completion:
    """Run a stream to its end and return its completion."""
    final: Completion | None = None
    for chunk in chunks:
        if chunk.completion is not None:
            final = chunk.completion
    assert final is not None  # _run always ends with a completion chunk
    return final
