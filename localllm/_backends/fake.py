"""A runtime-free backend for tests and documentation examples.

``FakeEngine`` has a byte-level vocabulary (one token per UTF-8 byte, so multi-byte
characters always span tokens) plus ``<s>``, ``</s>`` and the chatml markers. It answers
with a scripted reply, repeated, ending with ``</s>``. It is deterministic and says so:
it declares no sampling parameters, so asking it for temperature or top-k raises
``UnsupportedFeatureError`` instead of pretending.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from .._gguf import GGUFFile
from .._types import Capabilities, DevicePlacement, SamplingParams
from .base import Engine, EngineOptions

SPECIALS = ("<s>", "</s>", "<|im_start|>", "<|im_end|>")
BOS, EOS = 256, 257
DEFAULT_REPLY = "Hello from the fake model! Ünïcödé → 🙂 done."
FAKE_TEMPLATE = "chatml"


class FakeEngine(Engine):
    backend_name: ClassVar[str] = "fake"
    extra: ClassVar[str] = "fake"
    formats: ClassVar[tuple[str, ...]] = ("fake",)
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, sampling_params=frozenset({"max_tokens", "stop", "seed"}))
    native_sampling: ClassVar[bool] = True

    def __init__(self, options: EngineOptions, reply: str = DEFAULT_REPLY) -> None:
        self._options = options
        self.reply = reply
        self.prompts: list[list[int]] = []  # every prompt it was given, for assertions
        self.closed = False

    @classmethod
    def open(cls, gguf: GGUFFile, options: EngineOptions) -> FakeEngine:
        return cls(options)

    @property
    def backend_version(self) -> str:
        return "0"

    @property
    def placement(self) -> DevicePlacement:
        return DevicePlacement(device="cpu", gpu_layers=0, total_layers=1)

    @property
    def context_length(self) -> int:
        return self._options.context_length

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIALS)

    @property
    def add_bos(self) -> bool:
        return True

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        out = [BOS] if add_special else []
        i = 0
        while i < len(text):
            special = next((s for s in SPECIALS if parse_special and text.startswith(s, i)),
                           None)
            if special is not None:
                out.append(256 + SPECIALS.index(special))
                i += len(special)
            else:
                out.extend(text[i].encode("utf-8"))
                i += 1
        return out

    def token_bytes(self, token: int) -> bytes:
        return bytes([token]) if token < 256 else b""

    def token_text(self, token: int) -> str:
        if token < 256:
            return bytes([token]).decode("latin-1")
        return SPECIALS[token - 256]

    def is_end_of_generation(self, token: int) -> bool:
        return token in (EOS, 256 + SPECIALS.index("<|im_end|>"))

    def generate(self, prompt: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        self.prompts.append(list(prompt))
        data = self.reply.encode("utf-8")
        while True:
            yield from data
            yield EOS

    def close(self) -> None:
        self.closed = True
