"""localllm: one Python API for local LLMs, whatever runtime runs them.

    >>> import localllm
    >>> with localllm.load() as model:                      # doctest: +SKIP
    ...     print(model.chat([{"role": "user", "content": "Hi!"}]).text)

Only re-exports live here; importing localllm loads no runtime.
"""

import logging as _logging

from ._backends import backend_names, register_backend
from ._chat import NAMED_TEMPLATES, render_chat
from ._errors import (
    BackendError,
    BackendUnavailableError,
    ChatTemplateError,
    ChecksumMismatchError,
    ConfigError,
    ContextOverflowError,
    LocalLLMError,
    ModelClosedError,
    ModelFormatError,
    ModelNotFoundError,
    OfflineError,
    StoreError,
    UnknownBackendError,
    UnsupportedFeatureError,
    UnsupportedModelError,
    WillNotFitError,
)
from ._gguf import GGUFFile, read_gguf
from ._loader import load, plan
from ._model import Model, Tokenizer
from ._planner import LoadPlan, MemoryEstimate
from ._store import CATALOG, DEFAULT_MODEL, CatalogEntry, HubSource, ModelStore, PyPISource
from ._types import (
    Capabilities,
    Completion,
    DevicePlacement,
    Message,
    ModelInfo,
    SamplingParams,
    StreamChunk,
    Timings,
    Truncation,
    Usage,
)

__version__ = "0.1.0"

# A library logs, the application decides what is shown: llama.cpp's chatter included.
_logging.getLogger("localllm").addHandler(_logging.NullHandler())

__all__ = [
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
    "DEFAULT_MODEL",
    "DevicePlacement",
    "GGUFFile",
    "HubSource",
    "LoadPlan",
    "LocalLLMError",
    "MemoryEstimate",
    "Message",
    "Model",
    "ModelClosedError",
    "ModelFormatError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelStore",
    "NAMED_TEMPLATES",
    "OfflineError",
    "PyPISource",
    "SamplingParams",
    "StoreError",
    "StreamChunk",
    "Timings",
    "Tokenizer",
    "Truncation",
    "UnknownBackendError",
    "UnsupportedFeatureError",
    "UnsupportedModelError",
    "Usage",
    "WillNotFitError",
    "backend_names",
    "load",
    "plan",
    "read_gguf",
    "register_backend",
    "render_chat",
]
