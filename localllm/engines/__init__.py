"""The backend registry: names map to engine classes, imported only when asked for.

The core never imports a backend module by name; it asks :func:`get_backend`. Listing
backends imports no runtime, which keeps ``import localllm`` free of native libraries.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from .._errors import UnknownBackendError
from ..core.engine import BackendSpec

if TYPE_CHECKING:
    from ..core.engine import Engine

#: the built-in backends' facts, as data; order is the preference order of backend="auto"
SPECS: dict[str, BackendSpec] = {spec.name: spec for spec in (
    BackendSpec("llama.cpp", "localllm.engines.llamacpp:LlamaCppEngine", ("gguf",),
                "llama-cpp", "llama_cpp", batching=True, native_sampling=True),
    BackendSpec("gpt4all", "localllm.engines.gpt4all:GPT4AllEngine", ("gguf",), "gpt4all",
                "gpt4all", aborts_process=True, native_sampling=True),
    BackendSpec("ctransformers",  # legacy: the one runtime that still reads GGML files
                "localllm.engines.ctransformers:CTransformersEngine", ("gguf", "ggml"),
                "ctransformers", "ctransformers", aborts_process=True),
    BackendSpec("onnxruntime", "localllm.engines.onnx:OnnxEngine", ("onnx",), "onnx",
                "onnxruntime", partial_offload=False),
    BackendSpec("onnxruntime-genai", "localllm.engines.onnx_genai:GenAIEngine", ("onnx",),
                "onnx-genai", "onnxruntime_genai", auto=False),
    BackendSpec("fake", "localllm.engines.fake:FakeEngine", ("fake",), "fake",
                native_sampling=True, auto=False),
)}
_REGISTRY: dict[str, str] = {name: spec.target for name, spec in SPECS.items()}
BUILTIN_BACKENDS = tuple(_REGISTRY)  # before any third-party registration


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


def spec_of(name: str) -> BackendSpec:
    """A backend's facts: from the table for a built-in one (no import), else from its
    class."""
    if name in SPECS and _REGISTRY[name] == SPECS[name].target:
        return SPECS[name]
    return BackendSpec.of(get_backend(name), _REGISTRY[name])


def auto_candidates(file_format: str) -> list[BackendSpec]:
    """Backends that could open ``file_format``, in preference order (none imported)."""
    return [spec for spec in map(spec_of, _REGISTRY)
            if spec.auto and file_format in spec.formats]


def is_installed(spec: BackendSpec) -> bool:
    """Whether the backend's runtime can be imported here (found, not imported)."""
    return not spec.runtime_module or importlib.util.find_spec(spec.runtime_module) is not None
