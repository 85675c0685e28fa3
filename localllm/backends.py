"""What a new backend needs: subclass :class:`Engine` (or :class:`LocalTokenizerEngine`
for runtimes that take token ids), declare capabilities, and register it.

See docs/writing-a-backend.md and examples/custom_backend.py.
"""

from ._backends import backend_names, register_backend
from ._backends.base import (
    Engine,
    EngineOptions,
    LocalTokenizerEngine,
    import_runtime,
    sample_from_logits,
)
from ._gguf import GGUFFile
from ._types import Capabilities, DevicePlacement

__all__ = [
    "Capabilities",
    "DevicePlacement",
    "Engine",
    "EngineOptions",
    "GGUFFile",
    "LocalTokenizerEngine",
    "backend_names",
    "import_runtime",
    "register_backend",
    "sample_from_logits",
]
