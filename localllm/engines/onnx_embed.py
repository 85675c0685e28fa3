"""ONNX Runtime for sentence-embedding encoders: sentence-transformers-style folders whose
``model.onnx`` takes ``input_ids``, ``attention_mask`` (and ``token_type_ids``) and gives
``last_hidden_state``, pooled here as ``1_Pooling/config.json`` says (mean, cls or last).

Text goes through the folder's ``tokenizer.json`` with its own post-processor (``[CLS]``
... ``[SEP]`` for BERT), so the ids are the ones the model was trained on. Inputs are
sorted by length and run in padded batches, which keeps padding (wasted work) small.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from .._errors import (
    BackendError,
    ConfigError,
    ModelFormatError,
    UnsupportedFeatureError,
    import_runtime,
)
from .._types import Capabilities, DevicePlacement, SamplingParams
from ..core.engine import BackendSpec, Engine, EngineOptions, distribution_version
from ..models.gguf import ModelFile
from . import SPECS

#: Hugging Face model types that are encoders (embedding models, never generative)
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "nomic_bert")
#: one batched run holds at most this many sequences and tokens (sequences x padded
#: length): onnxruntime's CPU kernels slow down on bigger tensors (100 sentences took
#: 700 ms as one run, 435 ms in runs of 32)
RUN_SEQUENCES = 32
RUN_TOKENS = 2048


def folder_pooling(folder: Path) -> str:
    """The pooling a sentence-transformers folder declares (mean when it says nothing)."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not readable JSON: {exc}") from None
    modes = [m for m, key in (("mean", "pooling_mode_mean_tokens"),
                              ("cls", "pooling_mode_cls_token"),
                              ("last", "pooling_mode_lasttoken")) if cfg.get(key)]
    if len(modes) != 1:
        raise ModelFormatError(
            f"{path} asks for pooling {modes or 'of an unsupported kind'}; localllm pools "
            "with exactly one of mean, cls or last (pass pooling= to load() to choose)")
    return modes[0]


class OnnxEmbeddingEngine(Engine):
    spec: ClassVar[BackendSpec | None] = SPECS["onnxruntime"]
    capabilities: ClassVar[Capabilities] = Capabilities(streaming=False, embeddings=True)

    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> OnnxEmbeddingEngine:
        return cls(gguf, options)

    def __init__(self, gguf: ModelFile, options: EngineOptions) -> None:
        from .onnx import check_external_data, choose_provider

        ort = import_runtime("onnxruntime", "onnxruntime", "onnx")
        self._np = import_runtime("onnxruntime", "numpy", "onnx")
        tokenizers = import_runtime("onnxruntime", "tokenizers", "onnx")
        self._options = options
        folder = gguf.path.parent
        check_external_data(gguf.path)
        requested = options.backend_options.get("provider")
        self._provider = choose_provider(
            ort.get_available_providers(), gpu=options.gpu_layers > 0,
            requested=None if requested is None else str(requested))
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(gguf.path), sess_options=so,
                providers=[self._provider] + ["CPUExecutionProvider"] * (
                    self._provider != "CPUExecutionProvider"))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime could not open {gguf.path}: {exc}") from exc
        self._inputs = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise ModelFormatError(f"{gguf.path} lacks the input_ids/attention_mask inputs of "
                                   "a sentence-embedding encoder")
        outputs = self._session.get_outputs()
        self._output = next((o.name for o in outputs if o.name == "last_hidden_state"),
                            outputs[0].name)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelFormatError(f"{folder} has no tokenizer.json; an embedding folder "
                                   "needs the tokenizer its model was trained with")
        self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.pooling = options.pooling or folder_pooling(folder)
        self._dim = int(gguf.arch_value("embedding_length", 0))
        self._version = distribution_version("onnxruntime")

    # ---------------------------------------------------------------- facts
    @property
    def backend_version(self) -> str:
        return self._version

    @property
    def placement(self) -> DevicePlacement:
        from ..hardware import GPU_PROVIDERS

        gpu = self._provider in GPU_PROVIDERS
        return DevicePlacement(device="gpu" if gpu else "cpu", gpu_layers=int(gpu),
                               total_layers=1, provider=self._provider)

    @property
    def context_length(self) -> int:
        return self._options.context_length

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def add_bos(self) -> bool:
        return False

    # ---------------------------------------------------------------- tokenizer
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        self._tokenizer.encode_special_tokens = not parse_special
        return list(self._tokenizer.encode(text, add_special_tokens=add_special).ids)

    def token_bytes(self, token: int) -> bytes:
        return str(self._tokenizer.decode([token])).encode("utf-8")

    def token_text(self, token: int) -> str:
        return str(self._tokenizer.id_to_token(token))

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids))

    def is_end_of_generation(self, token: int) -> bool:
        return False

    def generate(self, prompt: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        raise UnsupportedFeatureError("onnxruntime", "text generation with an encoder",
                                      "this folder holds an embedding model; use embed()")

    # ---------------------------------------------------------------- embeddings
    @property
    def embedding_dim(self) -> int:
        return self._dim

    def embed_batch(self, sequences: Sequence[Sequence[int]]) -> Any:
        np = self._np
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = np.empty((len(sequences), self._dim), dtype=np.float32)
        start = 0
        while start < len(order):
            longest = len(sequences[order[start]])
            end = start
            while end < len(order) and end - start < RUN_SEQUENCES and (
                    end - start + 1) * max(longest, len(sequences[order[end]])) <= max(
                    RUN_TOKENS, longest):
                longest = max(longest, len(sequences[order[end]]))
                end += 1
            picked = order[start:end]
            out[picked] = self._run([sequences[i] for i in picked])
            start = end
        return out

    def _run(self, batch: list[Sequence[int]]) -> Any:
        np = self._np
        width = max(len(s) for s in batch)
        if width == 0:
            raise ConfigError("an input has no tokens")
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, seq in enumerate(batch):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        try:
            states = self._session.run([self._output], feed)[0]
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        if states.ndim == 2:  # the graph pools itself (a sentence_embedding output)
            return states.astype(np.float32)
        if self.pooling == "cls":
            return states[:, 0].astype(np.float32)
        if self.pooling == "last":
            return states[np.arange(len(batch)), mask.sum(axis=1) - 1].astype(np.float32)
        weights = mask[:, :, None].astype(np.float32)
        summed = (states * weights).sum(axis=1)
        return (summed / np.maximum(weights.sum(axis=1), 1.0)).astype(np.float32)

    def close(self) -> None:
        self._session = None
