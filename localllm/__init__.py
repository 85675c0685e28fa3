"""localllm: one Python API for local LLMs, whatever runtime runs them.

    >>> import localllm
    >>> with localllm.load() as model:                      # doctest: +SKIP
    ...     print(model.chat([{"role": "user", "content": "Hi!"}]).text)

Only re-exports live here; importing localllm loads no runtime.
"""

import logging as _logging

from ._errors import (
    AuthenticationError,
    BackendCrashedError,
    BackendError,
    BackendUnavailableError,
    ChatTemplateError,
    ChecksumMismatchError,
    ConfigError,
    ContextOverflowError,
    DraftModelError,
    IndexFileError,
    LocalLLMError,
    ModelClosedError,
    ModelFormatError,
    ModelNotFoundError,
    OfflineError,
    QueueFullError,
    RemoteBusyError,
    RemoteConnectionError,
    RemoteError,
    RemoteTimeoutError,
    RequestError,
    RequestTimeoutError,
    StoreError,
    StructuredOutputError,
    UnknownBackendError,
    UnsupportedFeatureError,
    UnsupportedModelError,
    WillNotFitError,
)
from ._types import (
    Capabilities,
    Completion,
    DevicePlacement,
    ImagePart,
    Message,
    ModelInfo,
    ModelStats,
    SamplingParams,
    StreamChunk,
    TextPart,
    Timings,
    Truncation,
    Usage,
)
from .core.model import Model, Tokenizer
from .core.request import GenerationRequest, build_request
from .engines import backend_names, register_backend
from .models.gguf import GGUFFile, read_gguf
from .models.loader import load, plan
from .models.store import (
    CATALOG,
    DEFAULT_EMBEDDER,
    DEFAULT_MODEL,
    CatalogEntry,
    HubSource,
    ModelStore,
    PyPISource,
)
from .templates.chat import NAMED_TEMPLATES, render_chat

__version__ = "0.1.0"

# A library logs, the application decides what is shown: llama.cpp's chatter included.
_logging.getLogger("localllm").addHandler(_logging.NullHandler())

__all__ = [
    "AddReport",
    "Answer",
    "AuthenticationError",
    "BackendCrashedError",
    "BackendError",
    "BackendUnavailableError",
    "CATALOG",
    "Capabilities",
    "CatalogEntry",
    "ChatTemplateError",
    "ChecksumMismatchError",
    "Completion",
    "ConfigError",
    "ContextOverflowError",
    "DEFAULT_EMBEDDER",
    "DEFAULT_MODEL",
    "DevicePlacement",
    "DraftModelError",
    "Embeddings",
    "FoundModel",
    "GGUFFile",
    "GenerationRequest",
    "Hit",
    "HubSource",
    "ImagePart",
    "Index",
    "IndexFileError",
    "LoadPlan",
    "LocalLLMError",
    "MemoryEstimate",
    "Message",
    "Model",
    "ModelClosedError",
    "ModelFacts",
    "ModelFormatError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelStats",
    "ModelStore",
    "NAMED_TEMPLATES",
    "OfflineError",
    "PyPISource",
    "QueueFullError",
    "RECOMMENDED",
    "Recommendation",
    "RemoteBusyError",
    "RemoteConnectionError",
    "RemoteError",
    "RemoteModel",
    "RemoteServer",
    "RemoteTimeoutError",
    "RequestError",
    "RequestTimeoutError",
    "SamplingParams",
    "Speculation",
    "StoreError",
    "StreamChunk",
    "StructuredOutputError",
    "TextPart",
    "Timings",
    "Tokenizer",
    "ToolFormat",
    "ToolSlot",
    "Truncation",
    "UnknownBackendError",
    "UnsupportedFeatureError",
    "UnsupportedModelError",
    "Usage",
    "WillNotFitError",
    "answer",
    "backend_names",
    "build_request",
    "connect",
    "discover",
    "load",
    "plan",
    "read_gguf",
    "recommend",
    "register_backend",
    "render_chat",
]

# Loaded on first use: planning and the model catalog build pydantic schemas and read
# the machine, which `import localllm` should not pay for.
_LAZY = {
    "LoadPlan": ".planning.planner", "MemoryEstimate": ".planning.planner",
    "RECOMMENDED": ".planning.recommend", "ModelFacts": ".planning.recommend",
    "Recommendation": ".planning.recommend", "recommend": ".planning.recommend",
    "Embeddings": ".core.embed", "Index": ".rag.index", "Hit": ".rag.index",
    "AddReport": ".rag.index", "Answer": ".rag.answer", "answer": ".rag.answer",
    "RemoteModel": ".remote.generator", "connect": ".remote.generator",
    "RemoteServer": ".remote.generator", "FoundModel": ".models.discover",
    "discover": ".models.discover", "ToolFormat": ".decoding.tool_formats",
    "ToolSlot": ".decoding.tool_formats", "Speculation": ".core.speculation",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'localllm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
