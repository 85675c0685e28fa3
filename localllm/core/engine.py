"""The narrow hook a runtime implements; everything user-facing lives in ``Model``.

An engine turns token ids into sampled token ids and answers tokenizer questions. Its
generation methods are only called from its model's scheduler thread, so engines hold
their runtime state without locks of their own.

The contract is one batched decode step (``decode_batch`` and the ``seq_*`` methods): the
scheduler has that one path. A runtime that decodes several sequences at once implements
it (``batching``); a runtime that generates one sequence at a time implements ``start`` and
``push`` (logits) or ``generate`` (its own sampler) instead, and the default step below
adapts them, so the scheduler, its sampler stage and its prefix reuse are written once.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .._errors import (
    BackendError,
    ConfigError,
    UnsupportedFeatureError,
)
from .._types import Capabilities, DevicePlacement, SamplingParams
from ..models.gguf import ModelFile

T = TypeVar("T")


@dataclass(frozen=True)
class EngineOptions:
    """What the loader decided; every engine gets the same, already validated."""

    context_length: int
    threads: int
    batch_size: int
    gpu_layers: int = 0
    kv_type: str = "f16"
    parallel: int = 1  # sequences generated at once (a KV cache of parallel x context)
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    #: "mean", "cls" or "last": load as an embedding model pooled this way (None: as the
    #: file says; a file that declares no pooling is a generative model)
    pooling: str | None = None
    #: a checked vision projector (``mmproj*.gguf``) to read images with, if any
    projector: str | None = None


@dataclass
class SeqInput:
    """One sequence's part of a batched decode step."""

    seq: int
    tokens: Sequence[int]
    pos: int              # position of tokens[0] in the sequence
    output: bool          # the next-token distribution after the last token is wanted
    native_sampler: Any = None  # when set (and output), return its sampled token
    #: the images whose placeholder ids (``localllm.images``) are among ``tokens``
    images: Mapping[int, Any] | None = None
    #: the last ``verify`` tokens are drafts (speculative decoding): the output is one per
    #: position from the one before them on, the runtime's samples (stopping at the first
    #: that differs from the draft) or logits rows (a 2-D array)
    verify: int = 0


@functools.cache
def sampled_by_localllm() -> Capabilities:
    """What an engine that exposes logits and lets localllm's sampling layer pick the
    tokens supports: streaming, logits and every sampling parameter. (A function, so that
    ``import localllm`` does not build the pydantic model.)"""
    return Capabilities(streaming=True, logits=True,
                        sampling_params=frozenset(SamplingParams.model_fields))


@dataclass(frozen=True)
class BackendSpec:
    """What the registry knows of a backend without importing it (``localllm.engines``
    holds one per built-in backend): where its class is, which formats it opens, how to
    install and find its runtime, and the facts planning and isolation decide by. An
    engine class names its spec (``spec = SPECS["name"]``) and reads these facts from it,
    so they are written once."""

    name: str
    target: str                      # "package.module:EngineClass"
    formats: tuple[str, ...]         # file formats it opens, e.g. ("gguf",)
    extra: str                       # pip extra that installs the runtime
    runtime_module: str = ""         # found (not imported) to say whether it is installed
    aborts_process: bool = False     # seen to abort the process: isolation="auto" isolates
    partial_offload: bool = True     # False: the whole model on one device, no layer split
    batching: bool = False           # decodes several sequences in one step
    native_sampling: bool = False    # has a sampler of its own
    auto: bool = True                # considered by backend="auto"

    @classmethod
    def of(cls, engine_cls: type[Engine], target: str) -> BackendSpec:
        """The spec of a third-party engine class that declares its facts itself."""
        return cls(engine_cls.backend_name, target, engine_cls.formats, engine_cls.extra,
                   engine_cls.runtime_module, engine_cls.aborts_process,
                   engine_cls.partial_offload, engine_cls.batching,
                   engine_cls.native_sampling)


class Engine(ABC):
    """One loaded model inside one runtime."""

    #: the registry's facts about this backend; a subclass that names one gets
    #: backend_name, formats, extra, runtime_module, aborts_process, partial_offload,
    #: batching and native_sampling from it (a third-party class may declare them itself)
    spec: ClassVar[BackendSpec | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("spec")
        if spec is not None:
            cls.backend_name, cls.formats, cls.extra = spec.name, spec.formats, spec.extra
            cls.runtime_module, cls.aborts_process = spec.runtime_module, spec.aborts_process
            cls.partial_offload, cls.batching = spec.partial_offload, spec.batching
            cls.native_sampling = spec.native_sampling

    backend_name: ClassVar[str]
    #: pip extra that installs the runtime, used in BackendUnavailableError
    extra: ClassVar[str]
    #: file formats the backend opens, e.g. ("gguf",)
    formats: ClassVar[tuple[str, ...]]
    capabilities: ClassVar[Capabilities]
    #: backend-specific load options: name -> what it does (anything else is an error)
    options_accepted: ClassVar[dict[str, str]] = {}

    @classmethod
    def check_options(cls, options: EngineOptions) -> None:
        unknown = set(options.backend_options) - set(cls.options_accepted)
        if unknown:
            valid = "; ".join(f"{k}: {v}" for k, v in cls.options_accepted.items()) or "none"
            raise ConfigError(f"backend {cls.backend_name!r} has no option(s) "
                              f"{', '.join(sorted(unknown))}; it accepts: {valid}")

    #: top-level module of the runtime; availability is checked without importing it
    runtime_module: ClassVar[str] = ""

    @classmethod
    def is_available(cls) -> bool:
        """True when the runtime can be imported here (found, not imported)."""
        import importlib.util

        return not cls.runtime_module or importlib.util.find_spec(cls.runtime_module) is not None

    #: True for runtimes seen to abort or exit the whole process on bad input; the server
    #: (and ``load(isolation="auto")``) runs them in a worker process
    aborts_process: ClassVar[bool] = False

    #: False when the runtime puts the whole model on one device (no per-layer split)
    partial_offload: ClassVar[bool] = True

    @classmethod
    def gpu_offload_supported(cls) -> bool:
        """Whether the installed runtime build can place layers on a GPU."""
        return False

    @classmethod
    @abstractmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> Engine:
        """Load the model; raise a localllm error (never a bare runtime one)."""

    @property
    @abstractmethod
    def backend_version(self) -> str: ...

    @property
    @abstractmethod
    def placement(self) -> DevicePlacement: ...

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def add_bos(self) -> bool: ...

    @abstractmethod
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...

    @abstractmethod
    def token_bytes(self, token: int) -> bytes:
        """The bytes a token contributes to output text (control tokens give b"")."""

    @abstractmethod
    def is_end_of_generation(self, token: int) -> bool: ...

    def decode(self, ids: list[int]) -> str:
        """Text of a token sequence (SentencePiece engines drop the prefix space)."""
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

    @abstractmethod
    def token_text(self, token: int) -> str:
        """The token's spelling in the vocabulary (``<|im_end|>`` for specials)."""

    #: True when the runtime has a sampler of its own (``generate``, or ``native_sampler``
    #: for a batching engine); others are sampled by localllm's sampler on their logits
    native_sampling: ClassVar[bool] = False

    def generate(self, prompt: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        """Evaluate ``prompt`` and yield tokens sampled by the runtime's own sampler until
        the caller stops iterating (only for ``native_sampling`` single-sequence engines).

        The first ``next()`` does the prompt processing. The engine never decides to
        stop by itself: end-of-generation, stop strings and limits are ``Model``'s job.
        """
        raise UnsupportedFeatureError(self.backend_name, "its own sampler",
                                      "localllm's sampler is used on its logits")

    def start(self, prompt: list[int]) -> Any:
        """Evaluate ``prompt``; return the logits row (numpy float32) for the next token.

        Only for backends declaring ``capabilities.logits``; the localllm sampler,
        user logits processors and structured output drive generation through it."""
        raise UnsupportedFeatureError(self.backend_name, "logits access")

    def push(self, token: int) -> Any:
        """Append one token; return the logits row for the token after it."""
        raise UnsupportedFeatureError(self.backend_name, "logits access")

    # ------------------------------------------------------------ the batched step
    #: True when the engine decodes several sequences in one step (it implements
    #: decode_batch and the seq_* methods itself); the defaults below run one sequence
    batching: ClassVar[bool] = False

    @property
    def max_sequences(self) -> int:
        """Sequences that can be generated at once (1: requests run one after another)."""
        return 1

    @property
    def kv_capacity(self) -> int:
        """Tokens the KV cache holds across all sequences."""
        return self.context_length

    @property
    def batch_size(self) -> int:
        """Tokens one decode step takes at most."""
        return 512

    def decode_batch(self, inputs: Sequence[SeqInput]) -> list[Any]:
        """Decode one batch; per input, ``None`` (no output wanted), the sampled token
        (``native_sampler`` given; :data:`SEQUENCE_ENDED` when the runtime ended the
        sequence itself) or the logits row (numpy float32, the caller's to keep)."""
        return [self._one_sequence().decode(inp) for inp in inputs]

    def on_compute_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the thread where the runtime computes, for its result. The
        scheduler runs a burst of steps through it at once, so a runtime that computes on
        a thread of its own pays one hand-off per burst, not per step (default: here)."""
        return fn()

    def compute_waiting(self) -> bool:
        """Whether someone else waits for the runtime's compute thread: a burst of steps
        yields to them between two steps."""
        return False

    def seq_remove(self, seq: int, start: int) -> None:
        """Drop sequence ``seq``'s KV entries from position ``start`` on."""
        self._one_sequence().truncate(start)

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """Share the first ``n`` KV entries of ``src`` with ``dst`` (a common prefix)."""
        raise UnsupportedFeatureError(self.backend_name, "sharing a cached prefix")

    #: False when a sequence's cached prefix cannot be copied to another (one sequence
    #: only, or a KV cache that keeps only a sliding window of each sequence)
    shares_prefixes: bool = False

    def reusable_prefix(self, seq: int, n: int) -> int:
        """How many of the first ``n`` positions of ``seq`` the KV cache holds so that a
        request may continue from there (a runtime run one sequence at a time: none)."""
        return 0

    def native_sampler(self, params: SamplingParams, seed: int, prompt: list[int]) -> Any:
        """The runtime's sampler for one request (prompt counted as penalty history)."""
        return (params, seed)

    def free_native_sampler(self, sampler: Any) -> None:
        self._one_sequence().truncate(0)

    def _one_sequence(self) -> _OneSequence:
        state: _OneSequence | None = self.__dict__.get("_single_sequence")
        if state is None:
            state = self.__dict__["_single_sequence"] = _OneSequence(self)
        return state

    #: True when the engine reads images: a projector is loaded and ``decode_batch``
    #: decodes the placeholder ids of :class:`SeqInput` ``images``
    accepts_images: bool = False

    # ------------------------------------------------------------ embeddings
    #: how an embedding model pools token states into one vector ("mean", "cls" or
    #: "last"); None for a generative model, which has no embed_batch
    pooling: str | None = None

    @property
    def embedding_dim(self) -> int:
        raise UnsupportedFeatureError(self.backend_name, "embeddings")

    def embed_batch(self, sequences: Sequence[Sequence[int]]) -> Any:
        """Pooled, un-normalised vectors (numpy float32, one row per sequence) of token
        sequences that each fit the context; the engine packs them into runs."""
        raise UnsupportedFeatureError(self.backend_name, "embeddings")

    @abstractmethod
    def close(self) -> None:
        """Free the runtime's memory; called once."""


#: The engine protocol as process isolation forwards it (``localllm.core.isolation``): facts
#: are read once when a worker starts, calls go to the worker each time. A new engine
#: method is written in ``Engine`` and named here; the isolation forwards it unchanged.
ENGINE_FACTS = ("backend_version", "placement", "context_length", "vocab_size", "add_bos",
                "max_sequences", "kv_capacity", "batch_size", "pooling", "shares_prefixes",
                "embedding_dim", "accepts_images")
ENGINE_CALLS = ("tokenize", "decode", "token_text", "decode_batch", "seq_remove", "seq_copy",
                "reusable_prefix", "native_sampler", "free_native_sampler", "embed_batch")


def sample_from_logits(engine: Engine, prompt: list[int], params: SamplingParams, seed: int,
                       processors: Sequence[Any] = (), grammar: Any = None, *,
                       with_logits: bool = False) -> Iterator[Any]:
    """Deprecated: an engine with ``start``/``push`` needs no ``generate`` any more (the
    core samples its logits with localllm's sampler). Kept so older backends still run."""
    import warnings

    from ..sampling import Sampler

    warnings.warn("sample_from_logits is deprecated: an engine with start() and push() "
                  "needs no generate(); remove it", DeprecationWarning, stacklevel=2)
    sampler = Sampler(params, seed, [*processors, *([grammar] if grammar is not None else [])])
    history = list(prompt)
    logits = engine.start(prompt)
    while True:
        token = sampler.sample(history, logits)
        if grammar is not None:
            grammar.consume(token)
        yield (token, logits.copy()) if with_logits else token
        history.append(token)
        logits = engine.push(token)


#: ``decode_batch``'s output for a sequence the runtime ended by itself (no token)
SEQUENCE_ENDED = -1


class _OneSequence:
    """The batched step over a runtime that runs one sequence at a time.

    A prompt may arrive in several chunks (``output`` false); it is held and handed to
    ``start`` (or ``generate``, for the runtime's own sampler) whole with the last one.
    After that each step brings the token sampled last, which ``push`` evaluates; with
    the runtime's sampler the runtime has already taken it, so the next token is drawn.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.prompt: list[int] = []
        self.started = False
        self.tokens: Iterator[int] | None = None

    def decode(self, inp: SeqInput) -> Any:
        if not self.started:
            if inp.pos != len(self.prompt):
                raise BackendError(f"{self.engine.backend_name} runs one sequence from its "
                                   f"start; position {inp.pos} follows {len(self.prompt)}")
            self.prompt.extend(inp.tokens)
            if not inp.output:
                return None
            self.started = True
            if inp.native_sampler is None:  # copies: a runtime may reuse its logits row
                return self.engine.start(self.prompt).copy()
            params, seed = inp.native_sampler
            self.tokens = self.engine.generate(self.prompt, params, seed)
            return next(self.tokens, SEQUENCE_ENDED)
        if self.tokens is not None:  # the runtime's sampler took its own token already
            return next(self.tokens, SEQUENCE_ENDED)
        logits = None
        for token in inp.tokens:
            logits = self.engine.push(token)
        return None if logits is None else logits.copy()

    def truncate(self, start: int) -> None:
        """Forget the sequence (a runtime run this way cannot keep part of it)."""
        if start and not self.started:
            del self.prompt[start:]
            return
        if self.tokens is not None:
            close = getattr(self.tokens, "close", None)
            if close is not None:
                close()
        self.prompt, self.started, self.tokens = [], False, None


class LocalTokenizerEngine(Engine):
    """An engine whose text side is localllm's own tokenizer (``self._tokenizer``), for
    runtimes that take token ids or whose tokenizer cannot read the model."""

    _tokenizer: Any  # LocalTokenizer, set by the subclass before use
    _options: EngineOptions
    _version: str

    @property
    def backend_version(self) -> str:
        return self._version

    @property
    def context_length(self) -> int:
        return self._options.context_length

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.vocab_size)

    @property
    def add_bos(self) -> bool:
        return bool(self._tokenizer.add_bos)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special=add_special,
                                                parse_special=parse_special)
        return ids

    def token_bytes(self, token: int) -> bytes:
        data: bytes = self._tokenizer.token_bytes(token)
        return data

    def token_text(self, token: int) -> str:
        return str(self._tokenizer.backend.id_to_token(token))

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._tokenizer.eog_ids

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids))


def distribution_version(name: str) -> str:
    """Installed version of a PyPI distribution, from its metadata (no import)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
