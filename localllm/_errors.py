"""The one exception tree of localllm.

Every failure a caller can act on is a subclass of :class:`LocalLLMError`. Where callers
already catch a builtin for the same situation, the class also derives from it, so
``except FileNotFoundError`` keeps working around ``localllm.load``::

    LocalLLMError
    ├── ConfigError (ValueError)              bad parameter, option or template choice
    │   ├── UnknownBackendError               backend name not in the registry
    │   └── RequestError                      a wire request breaks its API's rules
    ├── ModelNotFoundError (FileNotFoundError) no such file / catalog entry
    ├── ModelFormatError (ValueError)          file is not a valid model file
    ├── UnsupportedModelError                  valid file, but this backend cannot run it
    ├── BackendUnavailableError (ImportError)  runtime not installed (says which extra)
    ├── BackendError (RuntimeError)            the runtime failed while working
    ├── UnsupportedFeatureError                parameter/feature the backend cannot honour
    ├── ContextOverflowError (ValueError)      prompt + max_tokens exceed the context
    ├── StructuredOutputError (ValueError)     constrained output cut before it was complete
    ├── QueueFullError                         too many requests waiting (a server's 503)
    ├── RequestTimeoutError (TimeoutError)     a request ran past its timeout
    ├── WillNotFitError (MemoryError)          the model will not fit in this machine's memory
    ├── ChatTemplateError (ValueError)         missing, failing or unsafe chat template
    ├── ModelClosedError (RuntimeError)        model used after close()
    └── StoreError                              download / verification / offline failures
        ├── ChecksumMismatchError
        └── OfflineError
"""

from __future__ import annotations

from types import ModuleType


class LocalLLMError(Exception):
    """Base class of every error raised on purpose by localllm."""


class ConfigError(LocalLLMError, ValueError):
    """An option, parameter or setting has an invalid value."""


class RequestError(ConfigError):
    """A request in a wire API (OpenAI's, Ollama's...) breaks that API's rules: ``param``
    names the field, ``code`` a machine-readable reason; a server answers it with 400."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None
                 ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class UnknownBackendError(ConfigError):
    """The requested backend name is not registered."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(
            f"unknown backend {name!r}; valid backends are: {', '.join(valid)} "
            "(or 'auto' to let localllm choose)"
        )


class ModelNotFoundError(LocalLLMError, FileNotFoundError):
    """The model file or catalog entry does not exist."""


class ModelFormatError(LocalLLMError, ValueError):
    """The file exists but is not a valid model file (bad magic, truncated, corrupt)."""


class UnsupportedModelError(LocalLLMError):
    """The file is valid but the chosen backend cannot run it."""


class BackendUnavailableError(LocalLLMError, ImportError):
    """The runtime a backend needs is not installed; the message names the extra."""

    def __init__(self, backend: str, module: str, extra: str) -> None:
        self.backend = backend
        self.module_name = module
        self.extra = extra
        super().__init__(
            f"backend {backend!r} needs the Python module {module!r}, which is not "
            f'installed; fix: pip install "localllm[{extra}]"'
        )


class BackendError(LocalLLMError, RuntimeError):
    """The runtime reported a failure while loading or generating."""


class BackendCrashedError(BackendError):
    """The runtime's worker process died (a segfault, an abort, a kill) while running the
    call; with ``isolation="process"`` the application lives on and the next call starts a
    new worker."""


class UnsupportedFeatureError(LocalLLMError):
    """A parameter or feature was asked for that the backend cannot honour."""

    def __init__(self, backend: str, feature: str, hint: str = "") -> None:
        self.backend = backend
        self.feature = feature
        message = f"backend {backend!r} does not support {feature}"
        super().__init__(message + (f"; {hint}" if hint else ""))


class DraftModelError(ConfigError):
    """The draft model given for speculative decoding cannot draft for this model: its
    vocabulary differs (its token ids would mean other text), or its runtime cannot
    decode several sequences at once."""


class ContextOverflowError(LocalLLMError, ValueError):
    """The prompt plus the requested completion does not fit in the context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int,
                 message: str | None = None) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        if message is not None:
            super().__init__(message)
            return
        if prompt_tokens >= context_length:
            need = f"the prompt alone has {prompt_tokens} tokens"
        else:
            need = f"prompt {prompt_tokens} + max_tokens {max_tokens} tokens are needed"
        super().__init__(
            f"{need} but the context holds {context_length}; shorten the prompt, lower "
            "max_tokens, load with a larger context_length, or pass "
            "overflow='truncate_left' / 'drop_oldest' to drop input explicitly"
        )


class StructuredOutputError(LocalLLMError, ValueError):
    """A constrained output is not a complete value (cut by max_tokens, the context end or
    a stop string), so ``Completion.parsed`` refuses to pass it off as valid."""


class QueueFullError(LocalLLMError):
    """The model's request queue is full; retry later (a server answers 503)."""

    def __init__(self, max_queue: int, running: int) -> None:
        self.max_queue = max_queue
        self.running = running
        self.retry_after_s = 1.0
        super().__init__(
            f"{max_queue} requests are already waiting ({running} running); retry shortly, "
            "or load with a larger max_queue")


class RequestTimeoutError(LocalLLMError, TimeoutError):
    """The request ran past its ``timeout``; the tokens generated so far are discarded."""

    def __init__(self, generated: int) -> None:
        self.generated = generated
        super().__init__(f"the request timed out after generating {generated} tokens; "
                         "give a larger timeout or a smaller max_tokens")


class WillNotFitError(LocalLLMError, MemoryError):
    """The plan found no placement that fits; the message says what would fit."""


class ChatTemplateError(LocalLLMError, ValueError):
    """The chat template is missing, failed to render or tried something unsafe."""


class ModelClosedError(LocalLLMError, RuntimeError):
    """The model was used after ``close()``."""


class StoreError(LocalLLMError):
    """The model store could not provide a verified file."""


class ChecksumMismatchError(StoreError):
    """A downloaded or cached file does not have the expected sha256."""


class OfflineError(StoreError):
    """A fetch was needed but ``LOCALLLM_OFFLINE=1`` forbids network access."""


class IndexFileError(LocalLLMError):
    """An index file cannot be used: built by another embedder, damaged, or not an index."""


class AuthenticationError(LocalLLMError):
    """A server refused the credentials (HTTP 401/403): a missing or wrong API key."""


class RemoteError(BackendError):
    """A model server failed, timed out or could not be reached."""


class RemoteConnectionError(RemoteError, ConnectionError):
    """The server's URL could not be reached (refused, unresolvable, reset)."""


class RemoteTimeoutError(RemoteError, TimeoutError):
    """The server did not answer within the remote model's ``timeout``."""


class RemoteBusyError(RemoteError):
    """The server stayed busy (429/503, or 502/504 from a proxy) through every retry."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


def import_runtime(backend: str, module: str, extra: str) -> ModuleType:
    """Import a runtime module, turning its absence into ``BackendUnavailableError``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(backend, module, extra) from exc
