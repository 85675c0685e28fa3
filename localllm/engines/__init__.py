"""The backend registry: names map to engine classes, imported only when asked for.

The core never imports a backend module by name; it asks :func:`get_backend`. Listing
backends imports no runtime, which keeps ``import localllm`` free of native libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .._errors import UnknownBackendError

if TYPE_CHECKING:
    from ..core.engine import Engine

# name -> "module:Class"; order is the preference order of backend="auto"
_REGISTRY: dict[str, str] = {
    "llama.cpp": "localllm.engines.llamacpp:LlamaCppEngine",
    "gpt4all": "localllm.engines.gpt4all:GPT4AllEngine",
    "ctransformers": "localllm.engines.ctransformers:CTransformersEngine",  # legacy
    "onnxruntime": "localllm.engines.onnx:OnnxEngine",
    "onnxruntime-genai": "localllm.engines.onnx_genai:GenAIEngine",
    "fake": "localllm.engines.fake:FakeEngine",
}
BUILTIN_BACKENDS = tuple(_REGISTRY)  # before any third-party registration
_AUTO_EXCLUDED = {"fake", "onnxruntime-genai"}  # never chosen unless named


def backend_names() -> list[str]:
    return list(_REGISTRY)


def register_backend(name: str, target: str) -> None:
    """Add a third-party backend: ``target`` is ``"package.module:EngineClass"``."""
    if ":" not in target:
        raise ValueError(f"target {target!r} must look like 'package.module:EngineClass'")
    _REGISTRY[name] = target


def get_backend(name: str) -> type[Engine]:
    if name not in _REGISTRY:
        raise UnknownBackendError(name, backend_names())
    module_name, _, class_name = _REGISTRY[name].partition(":")
    cls: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return cls


def auto_candidates(file_format: str) -> list[type[Engine]]:
    """Backends that could open ``file_format``, in preference order."""
    out = []
    for name in _REGISTRY:
        if name in _AUTO_EXCLUDED:
            continue
        cls = get_backend(name)
        if file_format in cls.formats:
            out.append(cls)
    return out
