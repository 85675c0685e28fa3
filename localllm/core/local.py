"""The local generator: a model file's engine under localllm's scheduler.

It renders a chat with the model's template, tokenizes once, decides the context budget
once (what fits, what is cut, how many tokens may follow), picks the sampler, compiles a
constraint, and hands the request to the scheduler; its run turns sampled tokens into
UTF-8-safe :class:`~localllm.core.request.Piece` events.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._defaults import DEFAULTS
from .._errors import (
    ChatTemplateError,
    ConfigError,
    ContextOverflowError,
    ModelClosedError,
    UnsupportedFeatureError,
)
from .._text import IncrementalDetokenizer
from .._types import (
    FinishReason,
    Message,
    ModelInfo,
    ModelStats,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Truncation,
)
from ..templates.chat import normalize_messages, render_chat
from .engine import Engine
from .media import ImagePrompt, has_images
from .request import Ending, GenerationRequest, Piece
from .scheduler import Outbox, Request, Scheduler

if TYPE_CHECKING:
    from ..decoding.tools import ToolSetup
    from ..tokenizer import LocalTokenizer
    from .embed import Embeddings

Messages = Sequence[Message | Mapping[str, Any]]


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


class LocalGenerator:
    """Generation on an engine in this process (or its isolation worker)."""

    #: a whole answer is never re-sent: nothing between here and the engine can break
    whole_tries = 1

    def __init__(self, engine: Engine, info: ModelInfo, chat_template: str | None,
                 bos_text: str, eos_text: str, load_s: float,
                 tokenizer_factory: Callable[[], LocalTokenizer] | None = None,
                 max_queue: int = DEFAULTS.max_queue, tool_family: Any = None,
                 speculation: Any = None, draft: Any = None) -> None:
        from ..decoding.reasoning import detect_thinking
        from ..decoding.tool_formats import named_format

        self.engine: Engine | None = engine
        self.info = info
        self.chat_template = chat_template
        #: how this model writes tool calls (load's tool_format, recorded in info)
        self.tool_family = tool_family or named_format(info.tool_format, chat_template)
        #: a reasoning model's thinking markers, from its template (None: it does not think)
        self.thinking = detect_thinking(chat_template)
        self.bos_text = bos_text
        self.eos_text = eos_text
        self.load_s = load_s
        #: the model's speculative decoding (load's speculative=), which requests override
        self.speculation = speculation
        self._lock = threading.Lock()
        self._embed_lock = threading.Lock()
        self.scheduler = Scheduler(engine, max_queue=max_queue, draft=draft)
        self.tokenizer = Tokenizer(engine)
        self._tokenizer_factory = tokenizer_factory
        self._local_tokenizer: LocalTokenizer | None = None

    # ----------------------------------------------------------------- lifecycle
    def retry_wait(self, attempt: int, exc: Exception) -> float | None:
        return None

    def close(self) -> None:
        with self._lock:
            engine, self.engine = self.engine, None
        if engine is not None:
            self.scheduler.close()
            engine.close()
            if self.scheduler.draft is not None:
                self.scheduler.draft.close()

    @property
    def closed(self) -> bool:
        return self.engine is None

    def live(self) -> Engine:
        if self.engine is None:
            raise ModelClosedError(f"{self.info.name!r} was closed; load it again to use it")
        return self.engine

    def describe(self) -> str:
        return "closed" if self.closed else self.info.backend

    @property
    def capabilities(self) -> Any:
        return self.live().capabilities

    @property
    def stats(self) -> ModelStats:
        scheduler = self.scheduler
        return ModelStats(active_sequences=scheduler.active_sequences,
                          queue_depth=scheduler.queue_depth, max_sequences=self.info.parallel,
                          decode_steps=scheduler.steps)

    def clear_cache(self) -> None:
        self.live()
        self.scheduler.clear_cache()

    def local_tokenizer(self) -> LocalTokenizer:
        if self._local_tokenizer is None:
            if self._tokenizer_factory is None:
                raise UnsupportedFeatureError(self.live().backend_name,
                                              "a localllm tokenizer for this model")
            self._local_tokenizer = self._tokenizer_factory()
        return self._local_tokenizer

    # ----------------------------------------------------------------- prompts
    def render_chat(self, messages: Messages, add_generation_prompt: bool,
                    tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> str:
        from ..decoding.tools import prepare, prompt_view

        setup = prepare(tools, tool_choice, self.tool_family)
        msgs, extra = prompt_view(normalize_messages(messages), setup, self.tool_family)
        return self._render(msgs, add_generation_prompt, extra)

    def _render(self, messages: Sequence[Message | Mapping[str, Any]],
                add_generation_prompt: bool = True, extra: Mapping[str, Any] | None = None
                ) -> str:
        from ..templates.chat import fold_system_message, resolve_template

        template = resolve_template(None, self.chat_template)

        def render(msgs: Sequence[Message | Mapping[str, Any]]) -> str:
            return render_chat(template, msgs, bos_token=self.bos_text,
                               eos_token=self.eos_text,
                               add_generation_prompt=add_generation_prompt, **(extra or {}))

        if self.info.system_message == "fold":
            return render(fold_system_message(messages))
        try:
            return render(messages)
        except ChatTemplateError as exc:
            checked = normalize_messages(messages)
            if not (checked and checked[0].role == "system"
                    and any(m.role == "user" for m in checked)):
                raise
            try:
                render(fold_system_message(messages))
            except ChatTemplateError:
                raise exc from None
            raise ChatTemplateError(
                f"{exc}. It renders these messages with the system text folded into the "
                "first user turn: load the model with system_message='fold' to do that"
            ) from None

    def count_tokens(self, text_or_messages: str | Messages,
                     tools: Sequence[Mapping[str, Any]] | None = None,
                     tool_choice: Any = None) -> int:
        """A text's tokens, or a chat's prompt tokens (its images' and tools' included)."""
        if isinstance(text_or_messages, str):
            return len(self.encode_prompt(text_or_messages))
        messages = normalize_messages(text_or_messages)
        if has_images(messages):
            media = ImagePrompt(messages, self.info.image_tokens, self.info.backend)
            text = self.render_chat(media.messages, True, tools, tool_choice)
            return len(media.encode(text, self.encode_prompt, self._tokenize_piece))
        return len(self.encode_prompt(self.render_chat(messages, True, tools, tool_choice)))

    def _tokenize_piece(self, text: str) -> list[int]:
        """A piece of a prompt after its start (no BOS), special tokens parsed."""
        return self.live().tokenize(text, add_special=False, parse_special=True)

    def encode_prompt(self, text: str) -> list[int]:
        engine = self.live()
        # A template that writes BOS itself must not get a second one from the tokenizer.
        add_special = not (engine.add_bos and self.bos_text and text.startswith(self.bos_text))
        return engine.tokenize(text, add_special=add_special, parse_special=True)

    def embed(self, texts: str | Sequence[str], normalize: bool, overflow: str
              ) -> Embeddings:
        from .embed import embed

        with self._embed_lock:
            return embed(self.live(), texts, normalize=normalize,
                         overflow=overflow)  # type: ignore[arg-type]  # embed() checks it

    # ----------------------------------------------------------------- preparation
    def prepare(self, request: GenerationRequest) -> LocalRun:
        """Check the request against this model, render and tokenize it, and fit it in
        the context: every error comes here, before any compute."""
        from ..decoding.tools import prepare

        sampling = self._check_sampling(request.sampling)
        tools = prepare(request.tools, request.tool_choice, self.tool_family,
                        request.parallel_tool_calls,
                        self.tool_specials if request.tools else None,
                        request.max_tool_calls) if request.chat else None
        switch = self._thinking_switch(request)
        decoding = self._decoding(request, tools)
        if request.chat:  # the markers the parsers read are shown even where special
            decoding.preserved = self.preserved_tokens(bool(tools))
        window = Window(self.live().context_length, request, sampling)
        truncation = None
        opened = False
        media = None
        if request.messages is not None:
            messages = list(request.messages)
            if has_images(messages):
                media = ImagePrompt(messages, self.info.image_tokens, self.info.backend)
                messages = media.messages
                if request.overflow == "truncate_left":
                    raise ConfigError("overflow='truncate_left' would cut through images; "
                                      "use 'drop_oldest' (whole turns) or 'error'")
            ids, truncation, opened = self._fit_chat(messages, tools, window, switch, media)
        else:
            assert request.prompt is not None
            ids = self.encode_prompt(request.prompt)
        if truncation is None:
            ids, truncation = self._fit_prompt(ids, window, request.overflow)
        if not ids:
            raise ConfigError("the prompt is empty (no tokens); give at least one character")
        if self.live().pooling is not None:
            raise UnsupportedFeatureError(
                self.info.backend, "text generation with an embedding model",
                "this model turns text into vectors: use embed(), and load a generative "
                "model for completions")
        seed = sampling.seed if sampling.seed is not None else secrets.randbelow(2**32 - 1)
        if decoding.budget is not None:
            decoding.budget.opened = opened
        run = LocalRun(self, ids, sampling, seed, window.budget(len(ids)), truncation,
                       decoding, request.timeout)
        run.images = media.used if media is not None else {}
        run.speculation = self.speculation if request.speculative == "default" \
            else request.speculative
        if run.speculation is not None and not self.live().batching:
            raise UnsupportedFeatureError(self.info.backend, "speculative decoding",
                                          "it decodes one token per step; use llama.cpp")
        if run.speculation is not None and run.speculation.mode == "draft" \
                and self.scheduler.draft is None:
            raise ConfigError("speculative='draft' needs a model loaded with a draft model "
                              "(load(..., draft=PATH)); or use speculative='ngram'")
        run.thinking = self.thinking if request.chat else None
        # a grammar that holds the answer from its first token (forced calls, a response
        # format) leaves no room to think, even where the prompt opened the thinking
        constrained = decoding.grammar is not None and not (tools and not tools.forced)
        run.thinking_opened = opened and not constrained
        return run

    @functools.cached_property
    def tool_specials(self) -> dict[str, int]:
        """The tool format's markers that are one special token here (text -> id), and
        the thinking's: free text before a call may hold those."""
        from ..decoding.tool_formats import literals

        return {**self.thinking_specials,
                **self._special_markers(literals(self.tool_family))}

    @functools.cached_property
    def thinking_specials(self) -> dict[str, int]:
        if self.thinking is None:
            return {}
        return self._special_markers(self.thinking.markers)

    def preserved_tokens(self, tools: bool) -> dict[int, bytes]:
        """Special tokens a chat's output is parsed by, with the text they stand for: a
        special token is otherwise shown as nothing (as llama.cpp's preserved tokens)."""
        found = self.tool_specials if tools else self.thinking_specials
        return {token: text.encode() for text, token in found.items()}

    def _special_markers(self, texts: Sequence[str]) -> dict[str, int]:
        """Which parts of ``texts`` are one special token of this vocabulary (a control
        token shows as no bytes; its spelling is the marker)."""
        engine = self.live()
        out: dict[str, int] = {}
        for text in texts:
            for token in engine.tokenize(text, add_special=False, parse_special=True):
                spelled = engine.token_text(token)
                if not engine.token_bytes(token) and spelled and spelled in text:
                    out[spelled] = token
        return out

    def _thinking_switch(self, request: GenerationRequest) -> dict[str, Any]:
        """The template variables ``think`` sets; asking a model that does not think is
        an error, not a silent no-op."""
        from ..decoding.reasoning import template_switch

        if (request.think is not None or request.reasoning_budget is not None) \
                and self.thinking is None:
            raise UnsupportedFeatureError(
                self.info.name, "think= and reasoning_budget=",
                "its chat template has no thinking markers (<think>, [THINK], ...): it is "
                "not a reasoning model")
        if request.think is False and self.thinking is not None \
                and not self.thinking.can_disable:
            raise UnsupportedFeatureError(
                self.info.name, "think=False",
                f"its template ({self.thinking.name}) always reasons; think='low' asks "
                "for the least thinking")
        think = request.think
        if think is None and request.reasoning_budget is not None:
            think = True  # a budget for the thinking asks for thinking
        return template_switch(think)

    def _check_sampling(self, sampling: SamplingParams) -> SamplingParams:
        engine = self.live()
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

    def _decoding(self, request: GenerationRequest, tools: ToolSetup | None) -> Decoding:
        """Decide native vs localllm sampling and compile any constraint, before compute."""
        engine = self.live()
        response_format, logprobs = request.response_format, request.logprobs
        if tools is not None:
            if response_format is not None:
                raise ConfigError("tools and response_format cannot be combined: a tool "
                                  "call's arguments already follow the function's schema")
            response_format = tools.format
        processors = list(request.processors)
        budget = None
        if request.reasoning_budget is not None and self.thinking is not None:
            from ..decoding.reasoning import ThinkingBudget

            def marker(text: str) -> list[int]:
                return self.tokenizer.encode(text, add_special=False)

            budget = ThinkingBudget(request.reasoning_budget, marker(self.thinking.open),
                                    marker(self.thinking.close))
            processors.append(budget)
        needs_logits = bool(processors) or response_format is not None or logprobs is not None
        if request.sampler == "native" and needs_logits:
            raise ConfigError("logits_processors, response_format, tools and logprobs run "
                              "on localllm's sampler; drop sampler='native'")
        # the runtime's own sampler where it has one (or nothing else: no logits to sample)
        runtime_samples = engine.native_sampling or not engine.capabilities.logits
        if not needs_logits and request.sampler != "localllm" and runtime_samples:
            return Decoding(native=True)
        if not engine.capabilities.logits:
            raise UnsupportedFeatureError(
                engine.backend_name, "logits access (needed for sampler='localllm', "
                "logits_processors, response_format, tools and logprobs)")
        grammar = None
        if response_format is not None:
            from ..decoding.structured import GrammarConstraint, grammar_for

            grammar = GrammarConstraint(self.local_tokenizer(), grammar_for(response_format),
                                        engine.vocab_size)
            if tools is not None and not tools.forced and not tools.family.anchored:
                grammar = self._lazy(grammar, tools)
            if budget is not None:
                budget.constraint = grammar
        return Decoding(native=False, processors=processors, grammar=grammar,
                        logprobs=logprobs, tools=tools, budget=budget)

    def _lazy(self, grammar: Any, tools: ToolSetup) -> Any:
        """Auto mode's grammar, run once the text may be starting a call."""
        from ..decoding.structured import LazyGrammar

        trigger = tools.family.start()
        special = next((s for s in tools.specials if trigger.startswith(s)), None)
        tokens = frozenset([tools.specials[special]]) if special else frozenset()
        return LazyGrammar(grammar, b"" if special else trigger.encode(), tokens,
                           self.live().token_bytes)

    def _fit_chat(self, msgs: list[Message], tools: ToolSetup | None, window: Window,
                  switch: Mapping[str, Any], media: ImagePrompt | None = None
                  ) -> tuple[list[int], Truncation | None, bool]:
        """Render and tokenize the chat; under ``drop_oldest``, drop the oldest exchanges
        until it fits. Also says whether the prompt leaves the thinking open."""
        from ..decoding.reasoning import opens_in_prompt
        from ..decoding.tools import prompt_view

        dropped: list[Message] = []
        while True:
            view, extra = prompt_view(msgs, tools, self.tool_family)
            text = self._render(view, True, {**switch, **extra})
            ids = self.encode_prompt(text) if media is None else media.encode(
                text, self.encode_prompt, self._tokenize_piece)
            if window.overflow != "drop_oldest" or window.fits(len(ids)):
                break
            victim = next((i for i, m in enumerate(msgs[:-1]) if m.role != "system"), None)
            if victim is None:
                break  # nothing left to drop; the check below raises
            dropped.append(msgs.pop(victim))
            # drop the rest of that exchange too, so the chat still opens with a user turn
            while victim < len(msgs) - 1 and msgs[victim].role not in ("user", "system"):
                dropped.append(msgs.pop(victim))
        opened = opens_in_prompt(self.thinking, text)
        if window.overflow != "drop_oldest":
            return ids, None, opened
        window.check(len(ids))
        return ids, (Truncation(policy="drop_oldest", dropped_messages=tuple(dropped))
                     if dropped else None), opened

    def _fit_prompt(self, ids: list[int], window: Window, overflow: str
                    ) -> tuple[list[int], Truncation | None]:
        if overflow != "truncate_left" or window.fits(len(ids)):
            window.check(len(ids))
            return ids, None
        engine = self.live()
        room = window.size - window.need
        keep_head = 1 if engine.add_bos and ids and not engine.token_bytes(ids[0]) else 0
        if room <= keep_head:
            window.check(len(ids))
        cut = len(ids) - (room - keep_head)
        dropped = ids[keep_head:cut]
        kept = ids[:keep_head] + ids[cut:]
        return kept, Truncation(policy="truncate_left", dropped_tokens=len(dropped),
                                dropped_text=self.tokenizer.decode(dropped))


class Window:
    """The context budget of one request, decided once: the window (the model's context,
    or a smaller per-request limit), the tokens the answer needs room for (``max_tokens``,
    or one when the answer is clamped to the window's end), and the answer's budget."""

    def __init__(self, n_ctx: int, request: GenerationRequest, sampling: SamplingParams
                 ) -> None:
        limit = request.context_limit
        self.size = min(limit, n_ctx) if limit is not None else n_ctx
        self.max_tokens = sampling.max_tokens
        clamp = request.clamp_to_context or (limit is not None and limit < n_ctx)
        self.need = 1 if clamp or self.max_tokens is None else self.max_tokens
        self.overflow = request.overflow

    def fits(self, n_prompt: int) -> bool:
        return n_prompt + self.need <= self.size

    def check(self, n_prompt: int) -> None:
        if not self.fits(n_prompt):
            raise ContextOverflowError(n_prompt, self.max_tokens or 1, self.size)

    def budget(self, n_prompt: int) -> int:
        room = self.size - n_prompt
        return room if self.max_tokens is None else min(room, self.max_tokens)


class Decoding:
    """How one request picks tokens: the runtime's sampler, or localllm's with extras."""

    def __init__(self, native: bool, processors: Sequence[Any] = (), grammar: Any = None,
                 logprobs: int | None = None, tools: ToolSetup | None = None,
                 budget: Any = None) -> None:
        self.native = native
        self.processors = list(processors)
        self.grammar = grammar
        self.logprobs = logprobs
        self.tools = tools
        self.budget = budget  # the ThinkingBudget among the processors, if any
        self.preserved: dict[int, bytes] = {}  # special tokens shown as their text


class LocalRun:
    """One prepared request: submitted to the scheduler when its pieces are first asked
    for; sampled tokens become UTF-8-safe text pieces."""

    def __init__(self, generator: LocalGenerator, prompt: list[int], sampling: SamplingParams,
                 seed: int, budget: int, truncation: Truncation | None, decoding: Decoding,
                 timeout: float | None) -> None:
        self.generator = generator
        self.engine = generator.live()
        self.prompt = prompt
        self.sampling = sampling
        self.seed = seed
        self.budget = budget
        self.truncation = truncation
        self.decoding = decoding
        self.timeout = timeout
        self.parse_tools = decoding.tools
        self.thinking: Any = None   # set by prepare for a chat with a reasoning model
        self.thinking_opened = False
        self.reasoning_asked = False  # the thinking is split here, from the text
        self.format = decoding.grammar.format if decoding.grammar is not None else None
        self.wants_logprobs = decoding.logprobs is not None
        self.request: Request | None = None
        self.detok = IncrementalDetokenizer()
        self.preserved = decoding.preserved
        self.images: dict[int, Any] = {}  # the prompt's images by key (placeholders)
        self.speculation: Any = None  # a Speculation when this run drafts tokens
        self.generated = 0
        self.finish: FinishReason = "length"
        self.done = False

    def _submit(self, loop: asyncio.AbstractEventLoop | None) -> Request:
        self.generator.live()
        decoding = self.decoding
        deadline = time.monotonic() + self.timeout if self.timeout is not None else None
        self.request = Request(prompt=self.prompt, params=self.sampling, seed=self.seed,
                               budget=self.budget, native=decoding.native,
                               processors=decoding.processors, grammar=decoding.grammar,
                               logprobs=decoding.logprobs is not None, deadline=deadline,
                               outbox=Outbox(loop), images=self.images,
                               speculation=self.speculation)
        return self.generator.scheduler.submit(self.request)

    def _piece(self, item: int | tuple[int, Any]) -> Piece:
        token, logits = item if isinstance(item, tuple) else (item, None)
        self.generated += 1
        logprobs: tuple[TokenLogprob, ...] = ()
        if logits is not None:
            logprobs = (token_logprob(self.engine, logits, token,
                                      self.decoding.logprobs or 0),)
        if self.engine.is_end_of_generation(token):
            self.finish, self.done = "stop", True
            return Piece("", (token,), logprobs)
        if self.generated >= self.budget:
            self.done = True
        raw = self.engine.token_bytes(token)
        if not raw and self.preserved:
            raw = self.preserved.get(token, raw)
        return Piece(self.detok.feed(raw), (token,), logprobs)

    def _tail(self) -> list[Piece]:
        """The bytes the detokenizer held back, once the run ended on its own."""
        tail = self.detok.flush()
        return [Piece(tail)] if tail else []

    def pieces(self) -> Iterator[Piece]:
        request = self._submit(None)
        try:  # errors arrive typed from the scheduler
            for item in request.tokens():
                yield self._piece(item)
                if self.done:
                    break
            yield from self._tail()
        finally:
            request.cancel()

    async def apieces(self) -> AsyncIterator[Piece]:
        request = self._submit(asyncio.get_running_loop())
        try:
            async for item in request.atokens():
                yield self._piece(item)
                if self.done:
                    break
            for piece in self._tail():
                yield piece
        finally:
            request.cancel()

    def cancel(self) -> None:
        if self.request is not None:
            self.request.cancel()

    def ending(self) -> Ending:
        grammar = self.decoding.grammar
        drafter = self.request.drafter if self.request is not None else None
        return Ending(finish=self.finish, prompt_tokens=len(self.prompt),
                      completion_tokens=self.generated, seed=self.seed,
                      cached_prompt_tokens=self.request.reused_tokens if self.request else 0,
                      load_s=self.generator.load_s, truncation=self.truncation,
                      format_complete=grammar.done if grammar is not None else None,
                      drafted_tokens=drafter.drafted if drafter is not None else 0,
                      accepted_tokens=drafter.accepted if drafter is not None else 0)


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

