"""``load()``: from a name or a path to a running ``Model``, every choice checked.

The source is resolved (catalog name → verified store file, or a path), the file header
is validated by localllm before any runtime opens it, the backend is chosen from the
registry by file format and availability, and all options are validated up front.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .._defaults import DEFAULTS
from .._errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedFeatureError,
    UnsupportedModelError,
)
from .._types import ModelInfo
from ..core.engine import Engine, EngineOptions, LocalTokenizerEngine
from ..core.isolation import ProcessEngine, open_isolated, wants_process
from ..core.local import LocalGenerator
from ..core.model import Model
from ..core.speculation import Speculation, speculation_of
from ..decoding.tool_formats import ToolFormat, named_format
from ..engines import auto_candidates, backend_names, get_backend, is_installed
from ..templates.chat import resolve_template
from .ggml import read_ggml
from .gguf import ModelFile, read_gguf
from .projector import Projector
from .store import DEFAULT_MODEL, ModelStore

DEFAULT_BATCH = 512
POOLINGS = ("mean", "cls", "last")

if TYPE_CHECKING:
    from ..hardware import HardwareProfile
    from ..planning.planner import LoadPlan

Source = str | os.PathLike[str] | None


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
    if isinstance(source, str) and source.split(":", 1)[0] in SHORT_FORMS:
        return _on_disk(source)
    store = store or ModelStore()
    if isinstance(source, str) and source in store.catalog:
        return store.ensure(source)
    raise ModelNotFoundError(
        f"model file not found: {path}; pass an existing .gguf path or a catalog name "
        f"({', '.join(sorted(store.catalog))})")


SHORT_FORMS = ("ollama", "lmstudio", "gpt4all", "hf", "llamafile")


def _on_disk(source: str) -> Path:
    """A model in another tool's store, by its short form (see ``_discover``)."""
    from .discover import check_loadable, resolve_short_form

    found = resolve_short_form(source)
    check_loadable(found)
    if found.offset:
        raise UnsupportedModelError(
            f"{found.name}: its GGUF is stored uncompressed at byte {found.offset}, but "
            "llama.cpp opens model files by path from their first byte; run the llamafile "
            "itself (./FILE --server --port 8080) and use localllm.connect("
            "'http://127.0.0.1:8080', 'model'), or unzip its .gguf and load that")
    return found.path


def detect_format(path: Path) -> str:
    if path.is_dir():
        if any(path.glob("*.onnx")):
            return "onnx"
        raise ModelFormatError(f"{path} is a folder without an .onnx model; pass a model "
                               "file (.gguf) or an ONNX model folder")
    if path.suffix == ".onnx":
        return "onnx"
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"GGUF":
        return "gguf"
    if magic in (b"lmgg", b"tjgg"):  # 'ggml', 'ggjt' as little-endian uint32s: pre-GGUF
        return "ggml"
    if magic == b"fmgg":  # 'ggmf': llama.cpp's format of spring 2023
        raise UnsupportedModelError(
            f"{path} is a legacy llama GGML file (ggmf), which no runtime reads any more; "
            "convert it to GGUF with llama.cpp's convert_llama_ggml_to_gguf.py")
    if magic == b"ccgg":  # 'ggcc': ggllm.cpp's Falcon files
        raise UnsupportedModelError(
            f"{path} is a Falcon GGCC file (ggllm.cpp's later format), which no runtime "
            "localllm drives reads (ctransformers reads Falcon ggjt v3 files); convert the "
            "original model to GGUF — llama.cpp reads Falcon")
    raise ModelFormatError(
        f"{path} is not a model format localllm can load (first bytes {magic!r}); "
        "expected a GGUF file (magic b'GGUF')")


def choose_backend(name: str, file_format: str) -> type[Engine]:
    """The engine class for ``file_format``: the named backend, or with "auto" the first
    installed one that reads the format (chosen from the registry's facts; only the
    chosen backend's module is imported)."""
    if name == "auto":
        candidates = auto_candidates(file_format)
        for spec in candidates:
            if is_installed(spec):
                return get_backend(spec.name)
        if candidates:  # none installed: name the extra of the preferred one
            spec = candidates[0]
            raise BackendUnavailableError(spec.name, spec.name, spec.extra)
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


class Resolved(NamedTuple):
    """A source found and its header read, once: the file, its format, the engine that
    runs it and the header's facts. Planning and loading both start from it."""

    path: Path
    file_format: str
    engine_cls: type[Engine]
    gguf: ModelFile


def resolve(source: Source, backend: str = "auto", store: ModelStore | None = None
            ) -> Resolved:
    """Find ``source``, pick its engine and read its header (the one read a load needs)."""
    if not isinstance(backend, str):
        raise ConfigError(f"backend must be a str, not {type(backend).__name__}")
    path = resolve_source(source, store)
    file_format = detect_format(path)
    engine_cls = choose_backend(backend, file_format)
    gguf = describe(path, file_format)
    if gguf.format == "gguf" and gguf.version == 1 and backend == "auto":
        engine_cls = choose_backend("ctransformers", file_format)  # the one that still reads it
    return Resolved(path, file_format, engine_cls, gguf)


def describe(path: Path, file_format: str) -> ModelFile:
    """The format's own descriptor of ``path`` (``detect_format`` named the format): a
    GGUFFile, a GGMLFile or an OnnxFolder, each validated by its reader."""
    if file_format == "onnx":
        from ..engines.onnx import describe_folder

        return describe_folder(path if path.is_dir() else path.parent)
    readers: dict[str, Callable[[Path], ModelFile]] = {"gguf": read_gguf, "ggml": read_ggml}
    return readers[file_format](path)


def describe_source(source: Source) -> ModelFile:
    """The header facts of a model (GGUF, GGML or ONNX folder), without loading it."""
    return resolve(source).gguf


def plan(
    source: Source = None,
    *,
    backend: str = "auto",
    context_length: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    gpu_layers: int | None = None,
    kv_type: str = "f16",
    parallel: int | None = None,
    allow_fallback: bool = False,
    store: ModelStore | None = None,
    profile: HardwareProfile | None = None,
    projector: str | os.PathLike[str] | bool | None = None,
) -> LoadPlan:
    """Decide how ``load()`` would run ``source`` here, reading only the file header
    (and a vision projector's, found or named as ``load()`` does).

    Raises ``WillNotFitError`` (with what would fit) when no placement fits in memory.
    """
    resolved = resolve(source, backend, store)
    return plan_resolved(resolved, context_length=context_length,
                         device=device, threads=threads, batch_size=batch_size,
                         gpu_layers=gpu_layers, kv_type=kv_type, parallel=parallel,
                         allow_fallback=allow_fallback, profile=profile,
                         projector=resolve_projector(projector, resolved))


def plan_resolved(resolved: Resolved, *, context_length: int | None = None,
                  device: str = "auto", threads: int | None = None,
                  batch_size: int | None = None, gpu_layers: int | None = None,
                  kv_type: str = "f16", parallel: int | None = None,
                  allow_fallback: bool = False, profile: HardwareProfile | None = None,
                  projector: Projector | None = None) -> LoadPlan:
    """:func:`plan` for a source already resolved (no second header read)."""
    gguf, engine_cls = resolved.gguf, resolved.engine_cls
    if threads is not None:
        _check_int("threads", threads, 1, 512, "use the number of physical cores")
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1, context_length or gguf.context_length or 1 << 30,
                   "it cannot exceed context_length")
    if parallel is not None:
        _check_int("parallel", parallel, 1, 256, "it is the number of requests decoded "
                   "together")
    if gpu_layers is not None:
        _check_int("gpu_layers", gpu_layers, 0, None, "0 keeps the model on the CPU")
        if not engine_cls.partial_offload and 0 < gpu_layers <= gguf.block_count:
            raise ConfigError(
                f"gpu_layers={gpu_layers}: {engine_cls.backend_name} places the whole model "
                "on one device; use gpu_layers=0 (CPU) or device='gpu' (all layers)")
    if context_length is not None:
        _check_int("context_length", context_length, 16, gguf.context_length or 1 << 30,
                   f"the model was trained on {gguf.context_length} tokens; longer contexts "
                   "degrade silently, so localllm refuses them")
    from ..hardware import probe
    from ..planning.planner import make_plan

    # Import the runtime first, so that the process's measured RSS (the plan's base)
    # includes what importing it costs on this machine: no constant to guess.
    runtime_loaded = False
    if engine_cls.runtime_module:
        try:
            importlib.import_module(engine_cls.runtime_module)
            runtime_loaded = True
        except (ImportError, ValueError):
            pass  # loading names the missing extra; the plan counts a typical import cost

    profile = profile or probe(runtimes=False)
    wants_gpu = device == "gpu" or bool(gpu_layers) or (device == "auto" and profile.has_gpu)
    offload = engine_cls.gpu_offload_supported() if wants_gpu else False
    return make_plan(gguf, profile, backend=engine_cls.backend_name,
                     gpu_offload_supported=offload, context_length=context_length,
                     device=device, threads=threads, batch_size=batch_size or DEFAULT_BATCH,
                     gpu_layers=gpu_layers, kv_type=kv_type,
                     allow_fallback=allow_fallback,
                     runtime_loaded=runtime_loaded or not engine_cls.runtime_module,
                     partial_offload=engine_cls.partial_offload, parallel=parallel,
                     batching=engine_cls.batching,
                     projector_bytes=projector.n_bytes if projector else 0,
                     image_tokens=projector.tokens_per_image if projector else 0)


def load(
    source: Source = None,
    *,
    backend: str = "auto",
    context_length: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    gpu_layers: int | None = None,
    kv_type: str = "f16",
    parallel: int | None = None,
    max_queue: int = DEFAULTS.max_queue,
    allow_fallback: bool = False,
    chat_template: str | None = None,
    system_message: str = "template",
    pooling: str | None = None,
    backend_options: Mapping[str, Any] | None = None,
    store: ModelStore | None = None,
    isolation: str = "none",
    tool_format: str | ToolFormat = "auto",
    projector: str | os.PathLike[str] | bool | None = None,
    speculative: str | Speculation | None = None,
    draft: str | os.PathLike[str] | None = None,
) -> Model:
    """Load a model: a catalog name, a path to a ``.gguf``, or None for the default model.

    Loading is plan, then act: :func:`plan` picks the device placement and the context
    (the largest that fits, up to the trained length, unless ``context_length`` is
    given), and the runtime's real placement is checked against the plan afterwards.
    ``device`` is "auto", "cpu" or "gpu"; a GPU that cannot be used is an error unless
    ``allow_fallback=True``. ``chat_template`` overrides the file's template (a name such
    as ``"chatml"`` or a Jinja string) and is required for files that have none.
    ``system_message="fold"`` folds a leading system message into the first user turn
    before the template renders (as llama-server does for templates such as Gemma 2's
    that refuse a system role); the default "template" hands it to the template as is.
    ``kv_type`` ("f16", "q8_0", "q4_0", "f32") sets the KV cache precision: q8_0 halves its
    memory. ``parallel`` is how many requests are decoded together (continuous batching;
    default: up to 4 as memory allows, see the plan's reasons); each gets up to
    ``context_length`` tokens. ``max_queue`` bounds the requests waiting beyond those
    (``QueueFullError`` past it). ``pooling`` ("mean", "cls", "last") loads the model as
    an embedding model pooled that way, for decoders whose file declares no pooling;
    embedding files (BERT-family GGUF, sentence-transformers ONNX folders) need none.
    ``backend_options`` are the chosen backend's own settings (unknown ones are errors).
    ``isolation="process"`` runs the runtime in a worker process: a segfault or abort there
    raises ``BackendCrashedError`` instead of ending the application, and the next call
    starts a new worker; ``"auto"`` does so for runtimes known to abort (gpt4all,
    ctransformers). ``tool_format`` is how the model writes tool calls: "auto" detects its
    family from the chat template (Hermes/Qwen, Llama 3, Mistral, DeepSeek, ...; localllm's
    own format where the template has none), or name one (``model.info.tool_format``), or
    give a :class:`localllm.ToolFormat` of your own. ``projector`` is a vision projector
    (``mmproj*.gguf``) to read images in messages with (llama.cpp); by default one found
    beside the model (LM Studio, Hugging Face) or in its Ollama manifest is used, and
    ``projector=False`` loads the text model alone. ``speculative="ngram"`` drafts tokens
    by prompt lookup and checks them in one decode step (the same tokens, faster when the
    answer copies from the prompt; a request's ``speculative=`` overrides it).
    ``draft`` is a smaller model with the same vocabulary (a path or catalog name) that
    drafts for it (``speculative="draft"``, the default when a draft is given); a draft
    whose vocabulary differs is a DraftModelError.

    A source ``"http://host:port[/v1]#MODEL"`` is a model on a server, with ``backend``
    "auto", "openai" or "ollama" and ``backend_options`` as :func:`localllm.connect`'s
    keywords (api_key, timeout, retries, capabilities); the local options do not apply.
    """
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        from ..remote.generator import RemoteGenerator, split_source

        url, model = split_source(source)
        api = "auto" if backend == "auto" else backend
        return Model(RemoteGenerator(url, model, api=api, **dict(backend_options or {})))
    started = time.perf_counter()
    resolved = resolve(source, backend, store)
    vision = resolve_projector(projector, resolved, pooling)
    the_plan = plan_resolved(resolved, context_length=context_length, device=device,
                             threads=threads, batch_size=batch_size, gpu_layers=gpu_layers,
                             kv_type=kv_type, parallel=parallel, allow_fallback=allow_fallback,
                             projector=vision)
    return open_planned(resolved, the_plan, max_queue=max_queue, allow_fallback=allow_fallback,
                        chat_template=chat_template, system_message=system_message,
                        pooling=pooling, backend_options=backend_options,
                        isolation=isolation, started=started, tool_format=tool_format,
                        projector=vision, speculative=speculative, draft=draft,
                        store=store)


def resolve_projector(projector: str | os.PathLike[str] | bool | None, resolved: Resolved,
                      pooling: str | None = None) -> Projector | None:
    """The checked vision projector to load with a model: the one named, else (None) one
    found where the model's app keeps it; ``False``: none."""
    from .projector import check_projector, find_projector

    gguf, engine_cls = resolved.gguf, resolved.engine_cls
    if projector is False:
        return None
    named = projector not in (None, True)
    if not named:
        found = find_projector(resolved.path) if gguf.format == "gguf" and pooling is None \
            and gguf.metadata.get("general.architecture") != "clip" else None
        if found is None:
            if projector is True:
                raise ConfigError(f"no vision projector (mmproj*.gguf) was found beside "
                                  f"{resolved.path.name}; pass projector=PATH")
            return None
        projector = found
    if not engine_cls.capabilities.images:
        if not named:
            return None  # found beside the model, but this backend reads text only
        raise UnsupportedFeatureError(engine_cls.backend_name, "image input",
                                      "load the model with backend='llama.cpp'")
    assert not isinstance(projector, bool) and projector is not None
    return check_projector(Path(projector), int(gguf.arch_value("embedding_length", 0) or 0))


def open_planned(resolved: Resolved, the_plan: LoadPlan, *, max_queue: int = DEFAULTS.max_queue,
                 allow_fallback: bool = False, chat_template: str | None = None,
                 system_message: str = "template", pooling: str | None = None,
                 backend_options: Mapping[str, Any] | None = None, isolation: str = "none",
                 started: float | None = None, tool_format: str | ToolFormat = "auto",
                 projector: Projector | None = None,
                 speculative: str | Speculation | None = None,
                 draft: str | os.PathLike[str] | None = None,
                 store: ModelStore | None = None) -> Model:
    """Open a resolved source as ``the_plan`` says (the act half of :func:`load`): the
    server plans once and hands its plan here."""
    started = time.perf_counter() if started is None else started
    path, file_format, engine_cls, gguf = resolved
    template = resolve_template(chat_template, gguf.chat_template) \
        if chat_template is not None or gguf.chat_template is not None else None
    family = named_format(tool_format, template)
    if system_message not in ("template", "fold"):
        raise ConfigError(f"system_message={system_message!r} is not one of 'template' (the "
                          "chat template gets the system message) or 'fold' (it is folded "
                          "into the first user turn)")
    _check_int("max_queue", max_queue, 0, None, "0 refuses any request beyond the running ones")
    speculation = speculation_of("draft" if draft is not None and speculative is None
                                 else speculative)
    if speculation is not None and not engine_cls.batching:
        raise UnsupportedFeatureError(engine_cls.backend_name, "speculative decoding",
                                      "it decodes one token per step; use llama.cpp")
    if speculation is not None and speculation.mode == "draft" and draft is None:
        raise ConfigError("speculative='draft' needs a draft model: load(..., draft=PATH) "
                          "with a smaller model of the same vocabulary")
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
    options = EngineOptions(context_length=the_plan.context_length, threads=the_plan.threads,
                            batch_size=the_plan.batch_size, gpu_layers=the_plan.gpu_layers,
                            kv_type=the_plan.kv_type, parallel=the_plan.parallel,
                            backend_options=dict(backend_options or {}), pooling=pooling,
                            projector=str(projector.path) if projector else None)
    for reason in the_plan.reasons:
        if "CPU-only build" in reason:  # a GPU is here but will not be used: say it loudly
            logging.getLogger("localllm").warning("%s", reason)
    isolated = wants_process(isolation, engine_cls)
    drafter = None
    if draft is not None:
        from .draft import open_draft

        drafter = open_draft(draft, resolved, the_plan, isolated=isolated, store=store)
    try:
        engine: Engine = open_isolated(engine_cls, gguf, options) if isolated \
            else engine_cls.open(gguf, options)
    except BaseException:
        if drafter is not None:
            drafter.close()
        raise
    try:
        _verify_placement(engine, the_plan, allow_fallback)
        info = ModelInfo(
            path=str(path.resolve()), name=gguf.name, format=file_format,
            architecture=gguf.architecture, parameter_count=gguf.parameter_count,
            quantization=gguf.quantization, file_size=gguf.file_size,
            vocab_size=engine.vocab_size, trained_context_length=gguf.context_length,
            context_length=engine.context_length, backend=engine.backend_name,
            backend_version=engine.backend_version, threads=options.threads,
            batch_size=options.batch_size, placement=engine.placement,
            parallel=engine.max_sequences,
            has_chat_template=template is not None, pooling=engine.pooling, plan=the_plan,
            system_message=system_message, tool_format=family.name,
            isolation="process" if isinstance(engine, ProcessEngine) else "none",
            projector=str(projector.path) if projector else None,
            image_tokens=projector.tokens_per_image if projector else None,
            speculative=speculation.mode if speculation else None,
            draft=drafter.name if drafter else None)
        bos, eos = gguf.special_texts
    except BaseException:
        engine.close()
        if drafter is not None:
            drafter.close()
        raise
    return Model(LocalGenerator(
        engine, info, template, bos, eos, load_s=time.perf_counter() - started,
        tokenizer_factory=lambda: _local_tokenizer(engine, gguf), max_queue=max_queue,
        tool_family=family, speculation=speculation, draft=drafter))


def _local_tokenizer(engine: Engine, gguf: ModelFile) -> Any:
    """The engine's own localllm tokenizer when it has one (ONNX folders have no GGUF
    vocabulary to rebuild it from); else one built from the file header."""
    if isinstance(engine, LocalTokenizerEngine):
        return engine._tokenizer
    if isinstance(engine, ProcessEngine) and gguf.format == "onnx":
        from ..tokenizer import tokenizer_from_folder

        return tokenizer_from_folder(gguf.path.parent)
    from ..tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(gguf)


def _verify_placement(engine: Engine, the_plan: LoadPlan, allow_fallback: bool) -> None:
    """The runtime must have done what the plan said: never a silent CPU run."""
    actual = engine.placement.gpu_layers
    planned = min(the_plan.gpu_layers, engine.placement.total_layers)
    if actual >= planned:
        return
    message = (f"{engine.backend_name} placed {actual} layers on the GPU but the plan asked "
               f"for {planned}; the runtime may lack GPU support or memory")
    if not allow_fallback:
        raise BackendError(message + " (pass allow_fallback=True to accept this)")
    logging.getLogger("localllm").warning("%s; continuing because allow_fallback=True", message)
