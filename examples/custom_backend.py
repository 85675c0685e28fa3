"""A complete (toy) backend: it "predicts" the token after the last one, drawn through
localllm's sampler. It passes the backend contract suite (tests/test_custom_backend.py).

Run: .venv/bin/python examples/custom_backend.py
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

import localllm
from localllm.backends import (
    Capabilities,
    DevicePlacement,
    EngineOptions,
    GGUFFile,
    LocalTokenizerEngine,
    register_backend,
)


class CountingEngine(LocalTokenizerEngine):
    backend_name: ClassVar[str] = "counting"
    extra: ClassVar[str] = "none"
    formats: ClassVar[tuple[str, ...]] = ("gguf",)
    # logits=True: structured output and logits processors work too
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, logits=True,
        sampling_params=frozenset(localllm.SamplingParams.model_fields))

    @classmethod
    def open(cls, gguf: GGUFFile, options: EngineOptions) -> CountingEngine:
        cls.check_options(options)
        return cls(gguf, options)

    def __init__(self, gguf: GGUFFile, options: EngineOptions) -> None:
        from localllm.tokenizer import tokenizer_from_gguf

        self._tokenizer = tokenizer_from_gguf(gguf)  # the model's own vocabulary
        self._options = options
        self._version = "1.0"
        self._last = 0

    @property
    def placement(self) -> DevicePlacement:
        return DevicePlacement(device="cpu")

    def _logits(self) -> Any:
        row = np.full(self.vocab_size, -5.0, dtype=np.float32)
        row[(self._last + 1) % self.vocab_size] = 5.0
        return row

    def start(self, prompt: list[int]) -> Any:
        self._last = prompt[-1]
        return self._logits()

    def push(self, token: int) -> Any:
        self._last = token
        return self._logits()

    def close(self) -> None:
        self._last = 0


register_backend("counting", f"{__name__}:CountingEngine")


def main() -> None:
    with localllm.load(backend="counting", context_length=256) as model:
        result = model.complete("The capital of France is", max_tokens=8, temperature=0)
        print(model.info.backend, result.token_ids)


if __name__ == "__main__":
    main()
