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

from .._errors import BackendError, ConfigError, ModelFormatError, UnsupportedFeatureError
from .._gguf import GGUFFile, TensorInfo
from .._types import Capabilities, DevicePlacement, SamplingParams
from ..hardware import GPU_PROVIDERS
from .base import (
    Engine,
    EngineOptions,
    LocalTokenizerEngine,
    distribution_version,
    import_runtime,
    sample_from_logits,
    sampled_by_localllm,
)

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
    """Refuse external-data locations outside the model's folder; return their total size."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    folder = model_path.parent.resolve()
    proto = onnx.load(str(model_path), load_external_data=False)
    files: set[Path] = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = ExternalDataInfo(tensor).location
        target = (folder / location).resolve()
        if Path(location).is_absolute() or ".." in Path(location).parts or \
                not target.is_relative_to(folder):
            raise ModelFormatError(
                f"{model_path} refers to external data {location!r} outside its folder; "
                "refusing to open it (path traversal)")
        files.add(target)
    return sum(f.stat().st_size for f in files if f.exists())


def describe_folder(folder: Path) -> GGUFFile:
    """The facts planning needs, from config.json and the weight files."""
    model = model_file(folder)
    weights = check_external_data(model) + model.stat().st_size
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{folder} has no readable config.json: {exc}") from None
    from .onnx_embed import ENCODER_TYPES

    arch = "bert" if cfg.get("model_type") in ENCODER_TYPES else "llama"
    n_head = int(cfg.get("num_attention_heads", 1))
    md: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": cfg.get("localllm_source", {}).get("name", folder.name),
        f"{arch}.context_length": int(cfg.get("max_position_embeddings", 4096)),
        f"{arch}.block_count": int(cfg.get("num_hidden_layers", 0)),
        f"{arch}.embedding_length": int(cfg.get("hidden_size", 0)),
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": int(cfg.get("num_key_value_heads", n_head)),
        f"{arch}.feed_forward_length": int(cfg.get("intermediate_size", 0)),
        "tokenizer.ggml.tokens": _vocabulary(folder, int(cfg.get("vocab_size", 0))),
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
    return GGUFFile(model, 0, md, tensors, 0, weights, container="onnx")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _vocabulary(folder: Path, size: int) -> list[str]:
    """Token strings by id from tokenizer.json (model vocabulary + added tokens)."""
    data = _read_json(folder / "tokenizer.json")
    vocab = dict(data.get("model", {}).get("vocab", {}))
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    tokens = [""] * max(size, len(vocab))
    for text, i in vocab.items():
        if 0 <= int(i) < len(tokens):
            tokens[int(i)] = text
    return tokens


class OnnxEngine(LocalTokenizerEngine):
    backend_name: ClassVar[str] = "onnxruntime"
    extra: ClassVar[str] = "onnx"
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    runtime_module: ClassVar[str] = "onnxruntime"
    capabilities: ClassVar[Capabilities] = sampled_by_localllm().model_copy(
        update={"embeddings": True})  # encoder folders: see onnx_embed
    options_accepted: ClassVar[dict[str, str]] = {
        "provider": "execution provider name, e.g. 'CUDAExecutionProvider' (default: the "
                    "plan's device: a GPU provider this build has, else OpenVINO or CPU)"}
    partial_offload: ClassVar[bool] = False

    @classmethod
    def gpu_offload_supported(cls) -> bool:
        ort = import_runtime("onnxruntime", "onnxruntime", "onnx")
        return any(p in GPU_PROVIDERS for p in ort.get_available_providers())

    @classmethod
    def open(cls, gguf: GGUFFile, options: EngineOptions) -> Engine:
        cls.check_options(options)
        if gguf.architecture == "bert":  # an encoder folder: sentence embeddings
            from .onnx_embed import OnnxEmbeddingEngine

            return OnnxEmbeddingEngine.open(gguf, options)
        if options.pooling is not None:
            raise UnsupportedFeatureError(
                "onnxruntime", "pooling a decoder's states",
                "embeddings run on encoder folders (config.json model_type bert and kin)")
        return cls(gguf, options)

    def __init__(self, gguf: GGUFFile, options: EngineOptions) -> None:
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

    def generate(self, prompt: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        return sample_from_logits(self, prompt, params, seed)

    def close(self) -> None:
        self._cache = {}
        self._session = None
