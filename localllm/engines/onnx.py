"""The ONNX Runtime backend for decoder-only models in the Optimum / onnxruntime-genai
layout (``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.*`` →
``logits``, ``present.N.*``), with names and KV shapes read from the session.

The KV cache is carried between steps (the prompt runs once). Text goes through localllm's
tokenizer (``tokenizer.json``) and tokens are picked by localllm's sampling layer, so
results agree with the other backends. External-data paths that leave the model folder
are refused before onnxruntime opens anything (CVE-2024-27318 class).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from .._errors import (
    BackendError,
    ConfigError,
    ModelFormatError,
    UnsupportedFeatureError,
    import_runtime,
)
from .._types import Capabilities, DevicePlacement
from ..core.engine import (
    BackendSpec,
    Engine,
    EngineOptions,
    LocalTokenizerEngine,
    distribution_version,
    sampled_by_localllm,
)
from ..hardware import GPU_PROVIDERS
from ..models.gguf import MAX_HPARAM, ModelFile, OnnxFolder, TensorInfo
from . import SPECS

_KV = re.compile(r"past_key_values\.(\d+)\.(key|value)")

#: CPU-side providers: OpenVINO accelerates x86 CPUs when its build is installed
CPU_PROVIDERS = ("OpenVINOExecutionProvider", "CPUExecutionProvider")


def choose_provider(available: list[str], *, gpu: bool, requested: str | None = None) -> str:
    """The execution provider for a plan: the GPU provider this onnxruntime build has when
    the plan puts the model on a GPU, else the best CPU one; a request is honoured or refused.
    """
    if requested is not None:
        if requested not in available:
            raise UnsupportedFeatureError(
                "onnxruntime", f"the execution provider {requested!r}",
                f"this onnxruntime build has {', '.join(available)}")
        return requested
    wanted = GPU_PROVIDERS if gpu else CPU_PROVIDERS
    found = next((p for p in wanted if p in available), None)
    if found is None:
        raise UnsupportedFeatureError(
            "onnxruntime", "GPU placement" if gpu else "CPU execution",
            f"this onnxruntime build has {', '.join(available)}; install onnxruntime-gpu, "
            "onnxruntime-directml or onnxruntime-openvino for an accelerator")
    return found


#: decoder files by preference: ours / onnxruntime-genai's, then Optimum's exports with a
#: KV cache (Optimum's ``decoder_model.onnx`` recomputes the whole sequence every step)
PREFERRED_FILES = ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx")


def model_file(folder: Path) -> Path:
    candidates = sorted(folder.glob("*.onnx"))
    if not candidates:
        raise ModelFormatError(f"{folder} holds no .onnx model")
    by_name = {c.name: c for c in candidates}
    return next((by_name[n] for n in PREFERRED_FILES if n in by_name), candidates[0])


def check_external_data(model_path: Path) -> int:
    """Refuse a file that is not an ONNX model, and external data that is outside the
    model's folder (path traversal), missing, or shorter than a tensor needs; return the
    external data's total size. onnxruntime would open these paths blindly."""
    import onnx

    folder = model_path.parent.resolve()
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, onnx's own checks
        raise ModelFormatError(
            f"{model_path} is not an ONNX model ({type(exc).__name__}: {exc}); export or "
            "download it again") from None
    if not proto.graph.node:
        raise ModelFormatError(
            f"{model_path} holds no ONNX graph (it may be an empty or foreign file); export "
            "or download it again")
    sizes: dict[Path, int] = {}
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location, offset, length = _external_record(model_path, tensor)
        target = _external_file(model_path, folder, tensor.name, location)
        if target not in sizes:
            try:
                is_file = target.is_file()
                sizes[target] = target.stat().st_size if is_file else 0
            except OSError as exc:  # a name too long for the file system
                raise ModelFormatError(f"{model_path} refers to external data {location!r:.80}"
                                       f", which cannot be opened: {exc.strerror}") from None
            if not is_file:
                raise ModelFormatError(
                    f"{model_path} keeps tensor {tensor.name!r} in {location!r}, which "
                    f"is not in {folder}; copy that file next to the model")
        if offset + length > sizes[target]:
            raise ModelFormatError(
                f"{model_path}: tensor {tensor.name!r} needs bytes up to {offset + length} "
                f"of {location!r}, which has {sizes[target]}; the data file is truncated "
                "— download or export it again")
    return sum(sizes.values())


def _external_record(model_path: Path, tensor: Any) -> tuple[str, int, int]:
    """A tensor's external-data location, offset and length. Read here rather than by
    onnx's ExternalDataInfo, which fails with a TypeError on keys that are not UTF-8
    (protobuf hands those over as bytes)."""
    record: dict[str, str] = {}
    for entry in tensor.external_data:
        if not isinstance(entry.key, str) or not isinstance(entry.value, str):
            raise ModelFormatError(
                f"{model_path} has an external-data record for tensor {tensor.name!r} that "
                "is not UTF-8 text; export the model again")
        if entry.key in record:  # which one would onnxruntime follow? neither
            raise ModelFormatError(
                f"{model_path} gives tensor {tensor.name!r} two external-data "
                f"{entry.key!r} entries; export the model again")
        record[entry.key] = entry.value
    numbers = []
    for key in ("offset", "length"):
        text = record.get(key, "0")
        if not re.fullmatch(r"[0-9]{1,19}", text):
            raise ModelFormatError(
                f"{model_path}: the external data {key} of tensor {tensor.name!r} is "
                f"{text[:40]!r}, not a byte count; export the model again")
        numbers.append(int(text))
    return record.get("location", ""), numbers[0], numbers[1]


def _external_file(model_path: Path, folder: Path, tensor: str, location: str) -> Path:
    """The file an external-data location names, if it is a plain relative path that
    stays inside the model's folder (symbolic links resolved)."""
    where = f"{model_path} refers to external data {location!r}"
    if not location or "\0" in location:
        raise ModelFormatError(f"{where} for tensor {tensor!r}, which is no file name; "
                               "export the model again")
    try:
        target = (folder / location).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # loops, names too long
        raise ModelFormatError(f"{where}, which cannot be resolved: {exc}") from None
    if Path(location).is_absolute() or ".." in Path(location).parts or \
            not target.is_relative_to(folder) or target == folder:
        raise ModelFormatError(
            f"{where} outside its folder; refusing to open it (path traversal)")
    return target


def _all_tensors(proto: Any) -> Iterator[Any]:
    """Every tensor of a model that may hold its data externally: initializers and the
    tensors of node attributes, in subgraphs and functions too."""
    graphs = [proto.graph]
    nodes = [node for function in proto.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            yield from (sparse.values for sparse in graph.sparse_initializer)
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


#: more layers than any model has: planning allocates per layer
MAX_LAYERS = 512
#: more tokens than any vocabulary has: the token table is allocated at this size
MAX_VOCAB = 1 << 22


def describe_folder(folder: Path) -> ModelFile:
    """The facts planning needs, from config.json and the weight files. Every value read
    is checked here: a folder is downloaded data, and a wrong value must be named before
    it fails inside the planner or onnxruntime."""
    model = model_file(folder)
    weights = check_external_data(model) + model.stat().st_size
    cfg = _read_json(folder / "config.json", required=True)
    from .onnx_embed import ENCODER_TYPES

    model_type = cfg.get("model_type")
    arch = "bert" if isinstance(model_type, str) and model_type in ENCODER_TYPES else "llama"
    n_head = _config_int(folder, cfg, "num_attention_heads", 1)
    source = cfg.get("localllm_source")
    name = source.get("name") if isinstance(source, dict) else None
    md: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": name if isinstance(name, str) and name else folder.name,
        f"{arch}.context_length": _config_int(folder, cfg, "max_position_embeddings", 4096),
        f"{arch}.block_count": _config_int(folder, cfg, "num_hidden_layers", 0, MAX_LAYERS),
        f"{arch}.embedding_length": _config_int(folder, cfg, "hidden_size", 0),
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": _config_int(folder, cfg, "num_key_value_heads",
                                                       n_head),
        f"{arch}.feed_forward_length": _config_int(folder, cfg, "intermediate_size", 0),
        "tokenizer.ggml.tokens": _vocabulary(
            folder, _config_int(folder, cfg, "vocab_size", 0, MAX_VOCAB)),
    }
    tok_cfg = _read_json(folder / "tokenizer_config.json")
    if isinstance(tok_cfg.get("chat_template"), str):
        md["tokenizer.chat_template"] = tok_cfg["chat_template"]
    tokens = md["tokenizer.ggml.tokens"]
    for key in ("bos", "eos"):
        value = tok_cfg.get(f"{key}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value in tokens:
            md[f"tokenizer.ggml.{key}_token_id"] = tokens.index(value)
    tensors = (TensorInfo("onnx weights", (max(1, weights // 4),), 0, 0),)
    return OnnxFolder(model, 0, md, tensors, 0, weights)


def _config_int(folder: Path, cfg: dict[str, Any], key: str, default: int,
                limit: int = MAX_HPARAM) -> int:
    value = cfg.get(key)
    if value is None:  # absent, or null as some exporters write
        return default
    if type(value) is not int or not 0 <= value <= limit:
        raise ModelFormatError(
            f"{folder / 'config.json'}: {key} is {value!r:.80} but must be an integer from 0 "
            f"to {limit}; fix the value or export the model again")
    return value


def _read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    """A JSON object file of the folder: absent is empty unless ``required``; present, it
    must be a readable JSON object (a broken tokenizer file is no silent empty one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ModelFormatError(f"{path.parent} has no {path.name}; copy it from the "
                                   "model's repository next to the .onnx file") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({str(exc)[:200]}); download or "
                               "export it again") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} holds a JSON {type(data).__name__}, not an object; "
                               "download or export it again")
    return data


def _vocabulary(folder: Path, size: int) -> list[str]:
    """Token strings by id from tokenizer.json (model vocabulary + added tokens)."""
    path = folder / "tokenizer.json"
    data = _read_json(path)

    def bad(what: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: {what}; download or export the tokenizer again")

    model = data.get("model", {})
    vocab = model.get("vocab", {}) if isinstance(model, dict) else None
    if isinstance(vocab, list):  # Unigram: [piece, score] pairs, the id is the position
        if not all(isinstance(e, list) and e and isinstance(e[0], str) for e in vocab):
            raise bad("model.vocab must list [token, score] pairs")
        entries = [(e[0], i) for i, e in enumerate(vocab)]
    elif isinstance(vocab, dict):
        entries = list(vocab.items())
    else:
        raise bad("model.vocab must be an object (token → id) or a list of [token, score]")
    added = data.get("added_tokens", [])
    if not isinstance(added, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) for t in added):
        raise bad("added_tokens must be a list of objects with a string 'content'")
    entries += [(t["content"], t.get("id")) for t in added]
    if not all(type(i) is int and 0 <= i <= MAX_VOCAB for _, i in entries):
        raise bad(f"token ids must be integers from 0 to {MAX_VOCAB}")
    id_of = dict(entries)  # a token listed twice keeps its last id, as tokenizers do
    tokens = [""] * max(size, len(id_of))
    for text, i in id_of.items():
        if i < len(tokens):
            tokens[i] = text
    return tokens


class OnnxEngine(LocalTokenizerEngine):
    spec: ClassVar[BackendSpec | None] = SPECS["onnxruntime"]
    capabilities: ClassVar[Capabilities] = sampled_by_localllm().model_copy(
        update={"embeddings": True})  # encoder folders: see onnx_embed
    options_accepted: ClassVar[dict[str, str]] = {
        "provider": "execution provider name, e.g. 'CUDAExecutionProvider' (default: the "
                    "plan's device: a GPU provider this build has, else OpenVINO or CPU)"}

    @classmethod
    def gpu_offload_supported(cls) -> bool:
        ort = import_runtime("onnxruntime", "onnxruntime", "onnx")
        return any(p in GPU_PROVIDERS for p in ort.get_available_providers())

    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> Engine:
        cls.check_options(options)
        if gguf.architecture == "bert":  # an encoder folder: sentence embeddings
            from .onnx_embed import OnnxEmbeddingEngine

            return OnnxEmbeddingEngine.open(gguf, options)
        if options.pooling is not None:
            raise UnsupportedFeatureError(
                "onnxruntime", "pooling a decoder's states",
                "embeddings run on encoder folders (config.json model_type bert and kin)")
        return cls(gguf, options)

    def __init__(self, gguf: ModelFile, options: EngineOptions) -> None:
        from ..tokenizer import tokenizer_from_folder

        ort = import_runtime("onnxruntime", "onnxruntime", "onnx")
        np = import_runtime("onnxruntime", "numpy", "onnx")
        self._np = np
        self._options = options
        folder = gguf.path.parent
        check_external_data(gguf.path)  # again: the folder may have changed since planning
        requested = options.backend_options.get("provider")
        provider = choose_provider(ort.get_available_providers(), gpu=options.gpu_layers > 0,
                                   requested=None if requested is None else str(requested))
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.log_severity_level = 3
        try:
            # nodes the accelerator lacks kernels for run on the CPU provider, as usual
            providers = [provider] + ["CPUExecutionProvider"] * (
                provider != "CPUExecutionProvider")
            self._session = ort.InferenceSession(str(gguf.path), sess_options=so,
                                                 providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime could not open {gguf.path}: {exc}") from exc
        if self._session.get_providers()[0] != provider:  # never a silent CPU run
            raise BackendError(f"onnxruntime did not enable {provider} (it runs on "
                               f"{', '.join(self._session.get_providers())})")
        self._provider = provider
        self._ort = ort
        self._binding = self._session.io_binding()
        self._device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self._tokenizer = tokenizer_from_folder(folder)
        self._inputs = {i.name: i for i in self._session.get_inputs()}
        self._past = sorted((n for n in self._inputs if _KV.fullmatch(n)),
                            key=lambda n: (int(_KV.fullmatch(n).group(1)),  # type: ignore[union-attr]
                                           n.endswith("value")))
        for name in ("input_ids", "attention_mask"):
            if name not in self._inputs:
                raise ModelFormatError(f"{gguf.path} has no {name!r} input; not a decoder in "
                                       "the Optimum / onnxruntime-genai layout")
        if not self._past:
            raise ModelFormatError(
                f"{gguf.path} has no past_key_values inputs: it was exported without a KV "
                "cache, so every token would recompute the whole text; export it with one "
                "(optimum-cli export onnx --task text-generation-with-past)")
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._present = {n: n.replace("past_key_values", "present") for n in self._past}
        self._version = distribution_version("onnxruntime")
        self._cache: dict[str, Any] = {}
        self._n_past = 0

    @property
    def placement(self) -> DevicePlacement:
        gpu = self._provider in GPU_PROVIDERS
        layers = len(self._past) // 2 + 1  # the output layer counts, as in llama.cpp
        return DevicePlacement(device="gpu" if gpu else "cpu", gpu_layers=layers if gpu else 0,
                               total_layers=layers, provider=self._provider)

    def _empty_past(self, name: str) -> Any:
        meta = self._inputs[name]  # [batch, kv_heads, past, head_dim]
        dtype = self._np.float16 if meta.type == "tensor(float16)" else self._np.float32
        return self._ort.OrtValue.ortvalue_from_numpy(
            self._np.zeros((1, int(meta.shape[1]), 0, int(meta.shape[3])), dtype=dtype))

    def _run(self, tokens: list[int]) -> Any:
        """One forward pass through IO binding: the KV cache stays in onnxruntime's own
        buffers (on the GPU under CUDA) and goes back in as the next step's past, so only
        the logits are copied out."""
        np = self._np
        n = len(tokens)
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input("input_ids", np.array([tokens], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, self._n_past + n), dtype=np.int64))
        if "position_ids" in self._inputs:
            binding.bind_cpu_input("position_ids", np.arange(
                self._n_past, self._n_past + n, dtype=np.int64)[None])
        if "use_cache_branch" in self._inputs:  # Optimum's merged decoder: past or not
            binding.bind_cpu_input("use_cache_branch", np.array([self._n_past > 0]))
        for name in self._past:
            value = self._cache.get(name)
            binding.bind_ortvalue_input(name, value if value is not None
                                        else self._empty_past(name))
        for name in self._outputs:
            binding.bind_output(name, self._device)
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        results = dict(zip(self._outputs, binding.get_outputs(), strict=True))
        self._cache = {name: results[present] for name, present in self._present.items()}
        self._n_past += n
        return results["logits"].numpy()[0, -1].astype(np.float32)

    def start(self, prompt: list[int]) -> Any:
        if not prompt:
            raise ConfigError("the prompt is empty")
        self._cache, self._n_past = {}, 0
        return self._run(list(prompt))

    def push(self, token: int) -> Any:
        return self._run([token])


    def close(self) -> None:
        self._cache = {}
        self._session = None
