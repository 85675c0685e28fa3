"""What a new backend needs: subclass :class:`Engine` (or :class:`LocalTokenizerEngine`
for runtimes that take token ids), declare capabilities, and register it.

See docs/writing-a-backend.md and examples/custom_backend.py.
"""

from ._errors import import_runtime
from ._types import Capabilities, DevicePlacement
from .core.engine import (
    Engine,
    EngineOptions,
    LocalTokenizerEngine,
    sample_from_logits,
)
from .engines import backend_names, register_backend
from .models.gguf import GGUFFile, ModelFile

__all__ = [
    "Capabilities",
    "DevicePlacement",
    "Engine",
    "EngineOptions",
    "GGUFFile",
    "LocalTokenizerEngine",
    "ModelFile",
    "backend_names",
    "import_runtime",
    "register_backend",
    "sample_from_logits",
]
