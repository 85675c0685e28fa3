"""A runtime-free backend for tests and documentation examples.

``FakeEngine`` has a byte-level vocabulary (one token per UTF-8 byte, so multi-byte
characters always span tokens) plus ``<s>``, ``</s>`` and the chatml markers. It answers
with a scripted reply, repeated, ending with ``</s>``. It is deterministic and says so:
it declares no sampling parameters, so asking it for temperature or top-k raises
``UnsupportedFeatureError`` instead of pretending.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from .._errors import BackendError
from .._types import Capabilities, DevicePlacement, SamplingParams
from ..core.engine import BackendSpec, Engine, EngineOptions, SeqInput, sampled_by_localllm
from ..models.gguf import ModelFile
from . import SPECS

SPECIALS = ("<s>", "</s>", "<|im_start|>", "<|im_end|>")
BOS, EOS = 256, 257
DEFAULT_REPLY = "Hello from the fake model! Ünïcödé → 🙂 done."
FAKE_TEMPLATE = "chatml"


class FakeEngine(Engine):
    spec: ClassVar[BackendSpec | None] = SPECS["fake"]
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, sampling_params=frozenset({"max_tokens", "stop", "seed"}))

    def __init__(self, options: EngineOptions, reply: str = DEFAULT_REPLY) -> None:
        self._options = options
        self.reply = reply
        self.prompts: list[list[int]] = []  # every prompt it was given, for assertions
        self.closed = False

    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> FakeEngine:
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


class BatchingFakeEngine(FakeEngine):
    """A fake that implements the batched contract itself: several sequences in one KV
    cache, prefix copies, logits. Its next token is a function of the sequence's whole
    history, so a position fed twice, a token fed to the wrong sequence or a stale cached
    prefix changes the text: the contract suite's batching section runs on it without a
    runtime. Every next token is a letter or a space, so texts are printable."""

    spec: ClassVar[BackendSpec | None] = replace(
        SPECS["fake"], name="fake-batching", target=f"{__name__}:BatchingFakeEngine",
        batching=True, native_sampling=False)
    capabilities: ClassVar[Capabilities] = sampled_by_localllm()
    shares_prefixes = True
    ALPHABET = b"abcdefghijklmnopqrstuvwxyz "

    def __init__(self, options: EngineOptions, reply: str = DEFAULT_REPLY) -> None:
        super().__init__(options, reply)
        self.kv: dict[int, list[int]] = {seq: [] for seq in range(options.parallel)}
        self.steps_with: list[int] = []  # sequences in each decode step, for assertions

    @property
    def max_sequences(self) -> int:
        return self._options.parallel

    @property
    def kv_capacity(self) -> int:
        return self._options.context_length * self._options.parallel

    @property
    def batch_size(self) -> int:
        return self._options.batch_size

    def _logits(self, history: list[int]) -> Any:
        import numpy as np

        digest = hashlib.blake2b(bytes(str(history), "ascii"), digest_size=4).digest()
        row = np.full(self.vocab_size, -8.0, dtype=np.float32)
        row[self.ALPHABET[int.from_bytes(digest, "little") % len(self.ALPHABET)]] = 8.0
        return row

    def decode_batch(self, inputs: Sequence[SeqInput]) -> list[Any]:
        if sum(len(inp.tokens) for inp in inputs) > self.batch_size:
            raise BackendError("the batch holds more tokens than batch_size")
        if len({inp.seq for inp in inputs}) != len(inputs):
            raise BackendError("a sequence appears twice in one batch")
        out: list[Any] = []
        for inp in inputs:
            cache = self.kv[inp.seq]
            if inp.pos != len(cache):
                raise BackendError(f"sequence {inp.seq} holds {len(cache)} positions; "
                                   f"a batch wrote at {inp.pos}")
            cache.extend(inp.tokens)
            if inp.output and inp.verify:  # drafts: a row for each position from the last
                import numpy as np

                end = len(cache)
                out.append(np.stack([self._logits(cache[:end - inp.verify + k])
                                     for k in range(inp.verify + 1)]))
            else:
                out.append(self._logits(cache) if inp.output else None)
        self.steps_with.append(len(inputs))
        return out

    def seq_remove(self, seq: int, start: int) -> None:
        del self.kv[seq][start:]

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        if self.kv[dst]:
            raise BackendError(f"sequence {dst} is not empty; remove it before a copy")
        self.kv[dst] = list(self.kv[src][:n])

    def reusable_prefix(self, seq: int, n: int) -> int:
        return min(n, len(self.kv[seq]))
