"""The narrow hook a runtime implements; everything user-facing lives in ``Model``.

An engine turns token ids into sampled token ids and answers tokenizer questions. Its
generation methods are only called from its model's scheduler thread, so engines hold
their runtime state without locks of their own. An engine that can decode several
sequences in one step (``batching``) implements the multi-sequence hook below; the
others generate one request at a time through ``generate``/``start``/``push``.
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar

from .._errors import BackendUnavailableError, ConfigError, UnsupportedFeatureError
from .._gguf import GGUFFile
from .._types import Capabilities, DevicePlacement, SamplingParams


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


@dataclass
class SeqInput:
    """One sequence's part of a batched decode step."""

    seq: int
    tokens: Sequence[int]
    pos: int              # position of tokens[0] in the sequence
    output: bool          # the next-token distribution after the last token is wanted
    native_sampler: Any = None  # when set (and output), return its sampled token


@functools.cache
def sampled_by_localllm() -> Capabilities:
    """What an engine that exposes logits and lets localllm's sampling layer pick the
    tokens supports: streaming, logits and every sampling parameter. (A function, so that
    ``import localllm`` does not build the pydantic model.)"""
    return Capabilities(streaming=True, logits=True,
                        sampling_params=frozenset(SamplingParams.model_fields))


class Engine(ABC):
    """One loaded model inside one runtime."""

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
    def open(cls, gguf: GGUFFile, options: EngineOptions) -> Engine:
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

    @abstractmethod
    def generate(self, prompt: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        """Evaluate ``prompt`` and yield sampled tokens until the caller stops iterating.

        The first ``next()`` does the prompt processing. The engine never decides to
        stop by itself: end-of-generation, stop strings and limits are ``Model``'s job.
        """

    def start(self, prompt: list[int]) -> Any:
        """Evaluate ``prompt``; return the logits row (numpy float32) for the next token.

        Only for backends declaring ``capabilities.logits``; the localllm sampler,
        user logits processors and structured output drive generation through it."""
        raise UnsupportedFeatureError(self.backend_name, "logits access")

    def push(self, token: int) -> Any:
        """Append one token; return the logits row for the token after it."""
        raise UnsupportedFeatureError(self.backend_name, "logits access")

    # ------------------------------------------------------------ multi-sequence hook
    #: True when the engine implements decode_batch and the seq_* methods below
    batching: ClassVar[bool] = False
    #: changes whenever something other than the batch hook rewrote the KV cache
    kv_epoch: int = 0

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
        (``native_sampler`` given) or the logits row (numpy float32)."""
        raise UnsupportedFeatureError(self.backend_name, "batched decoding")

    def seq_remove(self, seq: int, start: int) -> None:
        """Drop sequence ``seq``'s KV entries from position ``start`` on."""
        raise UnsupportedFeatureError(self.backend_name, "batched decoding")

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """Share the first ``n`` KV entries of ``src`` with ``dst`` (a common prefix)."""
        raise UnsupportedFeatureError(self.backend_name, "batched decoding")

    #: False when a sequence's cached prefix cannot be copied to another (a KV cache that
    #: keeps only a sliding window of each sequence has dropped the prefix's start)
    shares_prefixes: bool = True

    def reusable_prefix(self, seq: int, n: int) -> int:
        """How many of the first ``n`` cached positions of ``seq`` a request may continue
        from: ``n``, or 0 where the cache no longer holds what the next tokens attend to."""
        return n

    def native_sampler(self, params: SamplingParams, seed: int, prompt: list[int]) -> Any:
        """The runtime's sampler for one request (prompt counted as penalty history)."""
        raise UnsupportedFeatureError(self.backend_name, "batched decoding")

    def free_native_sampler(self, sampler: Any) -> None:
        raise UnsupportedFeatureError(self.backend_name, "batched decoding")

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


def sample_from_logits(engine: Engine, prompt: list[int], params: SamplingParams, seed: int,
                       processors: Sequence[Any] = (), grammar: Any = None, *,
                       with_logits: bool = False) -> Iterator[Any]:
    """Generation through localllm's sampler on an engine's logits (start, then push);
    ``with_logits`` yields ``(token, logits row)`` pairs, for log probabilities."""
    from ..sampling import Sampler

    sampler = Sampler(params, seed, [*processors, *([grammar] if grammar is not None else [])])
    history = list(prompt)
    logits = engine.start(prompt)
    while True:
        token = sampler.sample(history, logits)
        if grammar is not None:
            grammar.consume(token)
        yield (token, logits.copy()) if with_logits else token  # the runtime reuses rows
        history.append(token)
        logits = engine.push(token)


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


def import_runtime(backend: str, module: str, extra: str) -> ModuleType:
    """Import a runtime module, turning its absence into ``BackendUnavailableError``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(backend, module, extra) from exc
