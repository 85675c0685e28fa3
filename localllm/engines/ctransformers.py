"""The ctransformers backend (0.2.27) — legacy: ctransformers is unmaintained upstream.

Its value today is running files current llama.cpp no longer reads: SentencePiece llama
GGUF files of versions 1 to 3, ggjt v3 llama and Falcon files and unversioned GGML files of GPT-2,
StarCoder, GPT-J, GPT-NeoX, MPT and Replit (recognised in ``_ggml.read_ggml``). It cannot
read BPE-vocabulary llama GGUFs (the default model) and says only "Failed to create LLM",
so localllm refuses those before calling it and names the backend to use. ctransformers is
driven with token ids and sampled by localllm's sampling layer on its logits, so every
sampling parameter works and a seed gives the same text as on any other logits backend.

Everything ctransformers-specific lives in this module, so it can be dropped cleanly.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any, ClassVar

import numpy as np

from .._errors import BackendError, ModelFormatError, UnsupportedModelError, import_runtime
from .._types import Capabilities, DevicePlacement
from ..core.engine import (
    BackendSpec,
    EngineOptions,
    LocalTokenizerEngine,
    distribution_version,
    sampled_by_localllm,
)
from ..models.ggml import LEGACY_GGML_ARCHITECTURES
from ..models.gguf import ModelFile
from . import SPECS

GGUF_ARCHITECTURES = frozenset({"llama", "falcon"})  # what its GGUF reader handles (#105)
LEGACY_ARCHITECTURES = frozenset(LEGACY_GGML_ARCHITECTURES)  # ctransformers' model_type names


class _LegacyVocab:
    """The text side of a legacy GGML file: its own vocabulary, ctransformers' tokenizer
    (legacy files carry no merges to rebuild a BPE from)."""

    add_bos = False
    bos_id = None

    def __init__(self, llm: Any, gguf: ModelFile) -> None:
        self._llm = llm
        self._pieces: list[bytes] = [
            str(t).encode("latin-1") for t in gguf.metadata["tokenizer.ggml.tokens"]]
        if gguf.architecture == "replit":  # SentencePiece pieces spell spaces as U+2581
            self._pieces = [p.replace("\u2581".encode(), b" ") for p in self._pieces]
        self.eos_id = int(llm.eos_token_id)
        self.eog_ids = frozenset({self.eos_id})
        self.vocab_size = len(self._pieces)
        self.backend = self  # token_text() asks backend.id_to_token

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True
               ) -> list[int]:
        """ctransformers' own ``tokenize()`` sizes its buffer by characters, but a
        byte-level vocabulary gives up to one token per UTF-8 byte: a heap overflow that
        aborts the process later. The buffer here is sized by bytes."""
        raw = text.encode("utf-8")
        buffer = (ctypes.c_int * (len(raw) + 2))()
        n = self._llm.ctransformers_llm_tokenize(raw, False, buffer)
        return [int(t) for t in buffer[:n]]

    def token_bytes(self, token: int) -> bytes:
        return self._pieces[token]

    def id_to_token(self, token: int) -> str:
        return self._pieces[token].decode("utf-8", errors="replace")

    def decode(self, ids: list[int]) -> str:
        return b"".join(self._pieces[t] for t in ids).decode("utf-8", errors="replace")


def _check_utf8_vocabulary(gguf: ModelFile) -> None:
    """ctransformers' MPT loader converts every token to a wide string and aborts the whole
    process (an uncaught std::range_error) on one that is not UTF-8: check first."""
    for i, token in enumerate(gguf.metadata["tokenizer.ggml.tokens"]):
        try:
            str(token).encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(
                f"{gguf.path.name}: token {i} ({token!r}) is not valid UTF-8; ctransformers' "
                "MPT loader would abort the process on it — the file is damaged or was "
                "written by a different converter") from None


def _check_falcon_merges(gguf: ModelFile) -> None:
    """ctransformers' Falcon loader (ggllm.cpp) reads the BPE merges of a ggjt file from the
    ``tokenizer.json`` beside it and calls ``exit(1)`` — ending the whole process — when
    that file is missing or not laid out as Hugging Face writes it: check first."""
    source = gguf.path.parent / "tokenizer.json"
    try:
        text = source.read_text(encoding="utf-8")
    except OSError:
        text = ""
    if not re.search(r'^\s*"merges": \[\s*$', text, flags=re.M):
        raise ModelFormatError(
            f"{gguf.path.name} is a Falcon ggjt file: ctransformers needs the model's "
            f"tokenizer.json (as Hugging Face publishes it) at {source} and would end the "
            "process without it; download it from the model's repository, or convert the "
            "model to GGUF")


def _cpu_library() -> str:
    """Pick ctransformers' prebuilt library for this CPU (never one it cannot execute)."""
    from ..hardware import probe_cpu

    cpu = probe_cpu()
    if cpu.architecture.lower() not in ("x86_64", "amd64"):
        return "basic"
    return "avx2" if cpu.has("avx2") else ("avx" if cpu.has("avx") else "basic")


class CTransformersEngine(LocalTokenizerEngine):
    spec: ClassVar[BackendSpec | None] = SPECS["ctransformers"]
    capabilities: ClassVar[Capabilities] = sampled_by_localllm()


    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> CTransformersEngine:
        cls.check_options(options)
        if gguf.format == "ggml":
            if gguf.architecture not in LEGACY_ARCHITECTURES:
                raise UnsupportedModelError(f"legacy GGML {gguf.architecture!r} files are not "
                                            "supported; convert the model to GGUF")
            if gguf.architecture == "mpt":
                _check_utf8_vocabulary(gguf)
            if gguf.architecture == "falcon":
                _check_falcon_merges(gguf)
            return cls(gguf, options)
        if gguf.architecture not in GGUF_ARCHITECTURES:
            raise UnsupportedModelError(
                f"ctransformers reads GGUF files of architectures "
                f"{', '.join(sorted(GGUF_ARCHITECTURES))} only, not "
                f"{gguf.architecture!r}; use backend='llama.cpp'")
        if gguf.metadata.get("tokenizer.ggml.model") != "llama":
            raise UnsupportedModelError(
                f"ctransformers cannot read {gguf.path.name}: its vocabulary is "
                f"{gguf.metadata.get('tokenizer.ggml.model')!r} (BPE), and ctransformers' "
                "llama reader handles SentencePiece vocabularies only; use "
                "backend='llama.cpp'")
        return cls(gguf, options)

    def __init__(self, gguf: ModelFile, options: EngineOptions) -> None:
        from ..tokenizer import tokenizer_from_gguf

        llm_module = import_runtime("ctransformers", "ctransformers.llm", "ctransformers")
        self._options = options
        config = llm_module.Config(context_length=options.context_length,
                                   batch_size=options.batch_size, threads=options.threads,
                                   gpu_layers=0)
        try:
            self._llm = llm_module.LLM(str(gguf.path), gguf.architecture, config=config,
                                       lib=_cpu_library())
            if not self._llm.vocab_size:
                raise RuntimeError("the runtime reported an empty vocabulary")
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(f"ctransformers could not load {gguf.path.name}: {exc}"
                               ) from exc
        # legacy vocabularies without merges use ctransformers' tokenizer; SentencePiece
        # ones (GGUF, llama ggjt) localllm's own, which agrees with llama.cpp
        legacy = gguf.metadata.get("tokenizer.ggml.model") == "ggml-legacy"
        self._tokenizer = _LegacyVocab(self._llm, gguf) if legacy else tokenizer_from_gguf(gguf)
        self._n_vocab = int(self._llm.vocab_size)
        self._version = distribution_version("ctransformers")
        self._closed = False

    @property
    def placement(self) -> DevicePlacement:
        return DevicePlacement(device="cpu", gpu_layers=0, total_layers=0)

    @property
    def vocab_size(self) -> int:
        return self._n_vocab


    def _logits(self) -> Any:
        llm = self._llm
        ptr = llm.ctransformers_llm_logits_data()
        size = llm.ctransformers_llm_logits_size()
        row = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(row, shape=(size,)).astype(np.float32)

    def _eval(self, tokens: list[int]) -> None:
        try:
            self._llm.eval(tokens, batch_size=self._options.batch_size,
                           threads=self._options.threads)
        except RuntimeError as exc:
            raise BackendError(f"ctransformers failed to evaluate tokens: {exc}") from exc

    def start(self, prompt: list[int]) -> Any:
        self._llm._context.clear()  # what the deprecated LLM.reset() does, without warning
        self._llm.ctransformers_llm_reset()
        self._eval(list(prompt))
        return self._logits()

    def push(self, token: int) -> Any:
        self._eval([token])
        return self._logits()


    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._llm.ctransformers_llm_delete()
            self._llm._llm = None  # its __del__ must not free it twice

