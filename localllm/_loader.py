"""``load()``: from a name or a path to a running ``Model``, every choice checked.

The source is resolved (catalog name → verified store file, or a path), the file header
is validated by localllm before any runtime opens it, the backend is chosen from the
registry by file format and availability, and all options are validated up front.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ._backends import auto_candidates, backend_names, get_backend
from ._backends.base import Engine, EngineOptions
from ._chat import resolve_template
from ._errors import (
    BackendUnavailableError,
    ConfigError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from ._gguf import GGUFFile, read_gguf
from ._model import Model
from ._store import DEFAULT_MODEL, ModelStore
from ._types import ModelInfo

DEFAULT_CONTEXT = 4096
DEFAULT_BATCH = 512

Source = str | os.PathLike[str] | None


def default_threads() -> int:
    """CPUs this process may use (respects affinity masks and container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_source(source: Source, store: ModelStore | None = None) -> Path:
    """A catalog name, a path or None (the default model) → an existing local file."""
    if source is None:
        source = DEFAULT_MODEL
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"source must be a path, a catalog name or None, "
                          f"not {type(source).__name__}")
    path = Path(source).expanduser()
    if path.exists():
        return path
    store = store or ModelStore()
    if isinstance(source, str) and source in store.catalog:
        return store.ensure(source)
    raise ModelNotFoundError(
        f"model file not found: {path}; pass an existing .gguf path or a catalog name "
        f"({', '.join(sorted(store.catalog))})")


def detect_format(path: Path) -> str:
    if path.is_dir():
        raise ModelFormatError(f"{path} is a folder; pass the model file itself (.gguf)")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"GGUF":
        return "gguf"
    raise ModelFormatError(
        f"{path} is not a model format localllm can load (first bytes {magic!r}); "
        "expected a GGUF file (magic b'GGUF')")


def choose_backend(name: str, file_format: str) -> type[Engine]:
    if name == "auto":
        candidates = auto_candidates(file_format)
        for cls in candidates:
            if cls.is_available():
                return cls
        if candidates:  # none installed: name the extra of the preferred one
            cls = candidates[0]
            raise BackendUnavailableError(cls.backend_name, cls.backend_name, cls.extra)
        raise UnsupportedModelError(f"no installed backend reads {file_format} files "
                                    f"(backends: {', '.join(backend_names())})")
    cls = get_backend(name)
    if file_format not in cls.formats:
        raise UnsupportedModelError(
            f"backend {name!r} cannot read {file_format} files (it reads "
            f"{', '.join(cls.formats)}); use backend='auto'")
    return cls


def _check_int(name: str, value: object, low: int, high: int | None, hint: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name}={value} is out of range {bound}; {hint}")
    return value


def engine_options(gguf: GGUFFile, context_length: int | None, threads: int | None,
                   batch_size: int | None, gpu_layers: int) -> EngineOptions:
    trained = gguf.context_length or DEFAULT_CONTEXT
    if context_length is None:
        context_length = min(trained, DEFAULT_CONTEXT)
    context_length = _check_int(
        "context_length", context_length, 16, trained,
        f"the model was trained on {trained} tokens; longer contexts degrade silently, "
        "so localllm refuses them")
    threads = _check_int("threads", default_threads() if threads is None else threads,
                         1, 512, "use the number of physical cores")
    batch = DEFAULT_BATCH if batch_size is None else batch_size
    batch = _check_int("batch_size", min(batch, context_length) if batch_size is None
                       else batch, 1, context_length, "it cannot exceed context_length")
    gpu_layers = _check_int("gpu_layers", gpu_layers, 0, None, "0 keeps the model on the CPU")
    return EngineOptions(context_length=context_length, threads=threads, batch_size=batch,
                         gpu_layers=gpu_layers)


def load(
    source: Source = None,
    *,
    backend: str = "auto",
    context_length: int | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
    gpu_layers: int = 0,
    chat_template: str | None = None,
    store: ModelStore | None = None,
) -> Model:
    """Load a model: a catalog name, a path to a ``.gguf``, or None for the default model.

    ``context_length`` defaults to the trained length capped at 4096; ``chat_template``
    overrides the file's template (a name such as ``"chatml"`` or a Jinja string) and is
    required for files that have none.
    """
    if not isinstance(backend, str):
        raise ConfigError(f"backend must be a str, not {type(backend).__name__}")
    started = time.perf_counter()
    path = resolve_source(source, store)
    file_format = detect_format(path)
    engine_cls = choose_backend(backend, file_format)
    gguf = read_gguf(path)
    template = resolve_template(chat_template, gguf.chat_template) \
        if chat_template is not None or gguf.chat_template is not None else None
    options = engine_options(gguf, context_length, threads, batch_size, gpu_layers)
    engine = engine_cls.open(gguf, options)
    try:
        info = ModelInfo(
            path=str(path.resolve()), name=gguf.name, format=file_format,
            architecture=gguf.architecture, parameter_count=gguf.parameter_count,
            quantization=gguf.quantization, file_size=gguf.file_size,
            vocab_size=engine.vocab_size, trained_context_length=gguf.context_length,
            context_length=engine.context_length, backend=engine.backend_name,
            backend_version=engine.backend_version, threads=options.threads,
            batch_size=options.batch_size, placement=engine.placement,
            has_chat_template=template is not None)
        bos = gguf.token_text(gguf.metadata.get("tokenizer.ggml.bos_token_id"))
        eos = gguf.token_text(gguf.metadata.get("tokenizer.ggml.eos_token_id"))
    except BaseException:
        engine.close()
        raise
    from .tokenizer import tokenizer_from_gguf

    return Model(engine, info, template, bos, eos, load_s=time.perf_counter() - started,
                 tokenizer_factory=lambda: tokenizer_from_gguf(gguf))
