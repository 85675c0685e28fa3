"""onnxruntime-genai as the engine for folders that carry a ``genai_config.json``.

genai runs the decoder and keeps the KV cache; localllm's tokenizer (``tokenizer.json``) and
sampling layer pick the tokens through genai's logits, so results match the other backends.
Chosen with ``backend="onnxruntime-genai"``; ``backend="auto"`` uses plain onnxruntime.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._errors import BackendError, UnsupportedModelError, import_runtime
from .._types import Capabilities, DevicePlacement
from ..core.engine import (
    BackendSpec,
    EngineOptions,
    LocalTokenizerEngine,
    distribution_version,
    sampled_by_localllm,
)
from ..models.gguf import ModelFile
from . import SPECS


class GenAIEngine(LocalTokenizerEngine):
    spec: ClassVar[BackendSpec | None] = SPECS["onnxruntime-genai"]
    capabilities: ClassVar[Capabilities] = sampled_by_localllm()

    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> GenAIEngine:
        cls.check_options(options)
        if not (gguf.path.parent / "genai_config.json").is_file():
            raise UnsupportedModelError(
                f"{gguf.path.parent} has no genai_config.json; use backend='onnxruntime' "
                "or convert with `localllm convert`, which writes one")
        return cls(gguf, options)

    def __init__(self, gguf: ModelFile, options: EngineOptions) -> None:
        from ..tokenizer import tokenizer_from_folder
        from .onnx import check_external_data

        og = import_runtime("onnxruntime-genai", "onnxruntime_genai", "onnx-genai")
        check_external_data(gguf.path)
        self._og = og
        self._options = options
        folder = gguf.path.parent
        try:
            config = og.Config(str(folder))
            config.clear_providers()
            self._model = og.Model(config)
        except Exception as exc:  # genai raises plain RuntimeErrors with its message
            raise BackendError(f"onnxruntime-genai could not load {folder}: {exc}") from exc
        self._tokenizer = tokenizer_from_folder(folder)
        self._version = distribution_version("onnxruntime-genai")
        self._generator: Any = None

    @property
    def placement(self) -> DevicePlacement:
        return DevicePlacement(device="cpu", gpu_layers=0, total_layers=0)

    def _new_generator(self) -> Any:
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=self._options.context_length, do_sample=False)
        return self._og.Generator(self._model, params)

    def _last_logits(self) -> Any:
        logits = np.asarray(self._generator.get_logits(), dtype=np.float32)
        return logits.reshape(-1, logits.shape[-1])[-1]

    def start(self, prompt: list[int]) -> Any:
        self._generator = self._new_generator()
        try:
            self._generator.append_tokens(list(prompt))
        except Exception as exc:
            raise BackendError(f"onnxruntime-genai failed: {exc}") from exc
        return self._last_logits()

    def push(self, token: int) -> Any:
        try:
            self._generator.append_tokens([token])
        except Exception as exc:
            raise BackendError(f"onnxruntime-genai failed: {exc}") from exc
        return self._last_logits()


    def close(self) -> None:
        self._generator = None
        self._model = None
