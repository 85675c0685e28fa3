"""The llama.cpp backend, driven through llama-cpp-python's low-level C API.

Using the C API directly (not ``llama_cpp.Llama``) keeps the per-token path to a handful
of ctypes calls, gives per-request sampler chains (seed, penalty window, logit bias per
call) and lets the KV cache keep the longest common prefix between requests.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from .._errors import BackendError, UnsupportedFeatureError, UnsupportedModelError, import_runtime
from .._types import Capabilities, DevicePlacement, SamplingParams
from ..core.engine import BackendSpec, Engine, EngineOptions, SeqInput
from ..models.gguf import ModelFile
from . import SPECS
from ._compute import LLAMA_CPP

T = TypeVar("T")

log = logging.getLogger("localllm.llama_cpp")

_NATIVE_PARAMS = frozenset({
    "max_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
    "repeat_last_n", "frequency_penalty", "presence_penalty", "logit_bias", "seed", "stop",
})
#: llama_pooling_type ids; 0 is NONE (per-token states) and 4 RANK (rerankers)
POOLING_IDS = {"mean": 1, "cls": 2, "last": 3}
#: sequences one embedding run packs together
EMBED_SEQUENCES = 64
# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the last line)
_LOG_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING,
               4: logging.ERROR}


def _penalties_active(p: SamplingParams) -> bool:
    return bool(p.repeat_last_n) and (
        p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0)


def build_sampler_chain(lib: Any, p: SamplingParams, seed: int, n_vocab: int) -> Any:
    """llama.cpp's sampler chain for ``p``, in llama.cpp's (and llama-cpp-python's) default
    order so a seed gives the same text. The caller frees it (``llama_sampler_free``)."""
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    add = lib.llama_sampler_chain_add
    if p.logit_bias:
        biases = (lib.llama_logit_bias * len(p.logit_bias))()
        for i, (token, bias) in enumerate(p.logit_bias.items()):
            biases[i].token = token
            biases[i].bias = max(min(bias, 3.0e38), -3.0e38)  # -inf bans → lowest float
        add(chain, lib.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases))
    if _penalties_active(p):
        add(chain, lib.llama_sampler_init_penalties(p.repeat_last_n, p.repeat_penalty,
                                                    p.frequency_penalty, p.presence_penalty))
    if p.temperature == 0.0:
        add(chain, lib.llama_sampler_init_greedy())
        return chain
    add(chain, lib.llama_sampler_init_top_k(p.top_k))
    add(chain, lib.llama_sampler_init_typical(p.typical_p, 1))
    add(chain, lib.llama_sampler_init_top_p(p.top_p, 1))
    add(chain, lib.llama_sampler_init_min_p(p.min_p, 1))
    add(chain, lib.llama_sampler_init_temp(p.temperature))
    add(chain, lib.llama_sampler_init_dist(seed))
    return chain


class _Runtime:
    """llama_cpp imported once per process, with its log output routed into ``logging``."""

    _lock = threading.Lock()
    _module: Any = None
    _callback: Any = None  # kept alive: the C side holds a pointer to it
    recent: ClassVar[deque[str]] = deque(maxlen=40)  # last log lines, quoted in load errors
    _last_level = logging.DEBUG

    @classmethod
    def get(cls) -> Any:
        with cls._lock:
            if cls._module is None:
                lib = import_runtime("llama.cpp", "llama_cpp", "llama-cpp")
                cls._callback = lib.llama_log_callback(cls._on_log)
                lib.llama_log_set(cls._callback, ctypes.c_void_p(0))
                lib.llama_backend_init()
                cls._module = lib
            return cls._module

    @classmethod
    def _on_log(cls, level: int, text: bytes, _user: Any) -> None:
        # level 5 (GGML_LOG_LEVEL_CONT) continues the previous message
        py_level = cls._last_level if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
        cls._last_level = py_level
        line = text.decode("utf-8", errors="replace").rstrip("\n")
        if line:
            cls.recent.append(line)
            log.log(py_level, "%s", line)


def _pooling(gguf: ModelFile, options: EngineOptions) -> str | None:
    """The pooling asked for, else the file's (``<arch>.pooling_type``); None: generative."""
    if options.pooling is not None:
        return options.pooling
    declared = int(gguf.arch_value("pooling_type", 0) or 0)
    if declared == 4:
        raise UnsupportedModelError(
            f"{gguf.path.name} is a reranking model (pooling type 'rank'); localllm runs "
            "generative and embedding models, not rerankers")
    return {v: k for k, v in POOLING_IDS.items()}.get(declared)


class LlamaCppEngine(Engine):
    spec: ClassVar[BackendSpec | None] = SPECS["llama.cpp"]
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, sampling_params=_NATIVE_PARAMS, logits=True, gpu_offload=True,
        embeddings=True, images=True)


    @classmethod
    def gpu_offload_supported(cls) -> bool:
        return bool(_Runtime.get().llama_supports_gpu_offload())

    options_accepted: ClassVar[dict[str, str]] = {
        "flash_attention": "True/False forces flash attention on or off (default: auto)"}

    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> LlamaCppEngine:
        cls.check_options(options)
        if gguf.version < 2:
            raise UnsupportedModelError(
                f"{gguf.path.name} is GGUF version 1, which llama.cpp stopped reading in "
                "2023; load it with backend='ctransformers' (pip install "
                "'localllm[ctransformers]'), which still reads it, or convert it again with "
                "a current llama.cpp")
        lib = _Runtime.get()
        if options.gpu_layers and not lib.llama_supports_gpu_offload():
            raise UnsupportedFeatureError(
                "llama.cpp", f"GPU offload (gpu_layers={options.gpu_layers})",
                "the installed llama-cpp-python was built for the CPU only; rebuild it with "
                "a GPU backend (e.g. CMAKE_ARGS='-DGGML_CUDA=on') or load with gpu_layers=0")
        return cls(lib, gguf, options)

    def __init__(self, lib: Any, gguf: ModelFile, options: EngineOptions) -> None:
        self._lib = lib
        self._options = options
        self._total_layers = gguf.block_count
        _Runtime.recent.clear()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = options.gpu_layers
        self._model = LLAMA_CPP.run(lib.llama_model_load_from_file,
                                   str(Path(gguf.path)).encode(), mparams)
        if not self._model:
            raise BackendError(f"llama.cpp could not load {gguf.path}: {self._last_log()}")
        # what llama.cpp actually did, from its own report ("offloaded 31/31 layers to GPU")
        self._offloaded = 0
        for line in _Runtime.recent:
            found = re.search(r"offloaded (\d+)/(\d+) layers to GPU", line)
            if found:
                self._offloaded = int(found.group(1))
        cparams = lib.llama_context_default_params()
        self.pooling = _pooling(gguf, options)
        # one unified KV cache shared by `parallel` sequences of up to context_length each
        self._n_seq = options.parallel
        cparams.n_ctx = options.context_length * options.parallel
        cparams.n_seq_max = options.parallel
        cparams.kv_unified = True
        # sliding-window layers keep each sequence's window, not its whole context (the
        # plan sizes them so); continuing a cached prefix is then checked, see below
        cparams.swa_full = False
        cparams.n_batch = options.batch_size
        cparams.n_ubatch = options.batch_size
        self._n_batch = options.batch_size
        if self.pooling is not None:
            # an embedding run holds whole sequences in one micro-batch (non-causal
            # attention sees all of a sequence at once), several sequences per run
            self._n_seq = 1
            self._n_batch = max(options.batch_size, options.context_length)
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self._n_batch
            cparams.n_seq_max = EMBED_SEQUENCES
            cparams.embeddings = True
            cparams.pooling_type = POOLING_IDS[self.pooling]
        cparams.n_threads = options.threads
        cparams.n_threads_batch = options.threads
        cparams.no_perf = True
        if options.kv_type != "f16":  # ggml type ids of the KV cache
            kv = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}[options.kv_type]
            cparams.type_k = cparams.type_v = kv
        fa = options.backend_options.get("flash_attention")
        if fa is not None:  # default: llama.cpp decides (on for the CPU)
            cparams.flash_attn_type = 1 if fa else 0
        self._ctx = LLAMA_CPP.run(lib.llama_init_from_model, self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise BackendError(
                f"llama.cpp could not create a context of {options.context_length} tokens "
                f"for {gguf.path}: {self._last_log()}")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._memory = lib.llama_get_memory(self._ctx)
        self._n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        self._n_ctx_total = lib.llama_n_ctx(self._ctx)
        self._n_ctx = min(options.context_length, self._n_ctx_total)
        self._n_swa = int(lib.llama_model_n_swa(self._model))
        self.shares_prefixes = self._n_swa == 0
        self._batch = lib.llama_batch_init(self._n_batch, 0, 1)
        self._add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._closed = False
        self._vision: Any = None
        if options.projector:
            from .llamacpp_vision import Vision

            try:
                self._vision = Vision(lib, self._model, self._ctx, Path(options.projector),
                                      threads=options.threads, use_gpu=options.gpu_layers > 0,
                                      flash_attention=fa, log_callback=_Runtime._callback)
            except BaseException:
                self.close()
                raise
            self.accepts_images = True

    @staticmethod
    def _last_log() -> str:
        lines = [ln for ln in _Runtime.recent if ln.strip()]
        return " | ".join(lines[-4:]) or "no details from the runtime"

    # ---------------------------------------------------------------- facts
    @property
    def backend_version(self) -> str:
        return str(getattr(self._lib, "__version__", "unknown"))

    @property
    def placement(self) -> DevicePlacement:
        gpu = self._offloaded
        return DevicePlacement(device="gpu" if gpu else "cpu", gpu_layers=gpu,
                               total_layers=self._total_layers)

    @property
    def context_length(self) -> int:
        return int(self._n_ctx)

    @property
    def vocab_size(self) -> int:
        return int(self._n_vocab)

    @property
    def add_bos(self) -> bool:
        return self._add_bos

    # ---------------------------------------------------------------- tokenizer
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 2
        for _ in range(2):
            buf = (self._lib.llama_token * size)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size,
                                         add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n
        raise BackendError(f"llama.cpp could not tokenize a text of {len(data)} bytes")

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token, False)
        return piece

    def token_text(self, token: int) -> str:
        return self._piece(token, True).decode("utf-8", errors="replace")

    def decode(self, ids: list[int]) -> str:
        lib = self._lib
        arr = (lib.llama_token * max(1, len(ids)))(*ids)
        size = 16 + 8 * len(ids)
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = lib.llama_detokenize(self._vocab, arr, len(ids), buf, size, True, False)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise BackendError(f"llama.cpp could not detokenize {len(ids)} tokens")

    def is_end_of_generation(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        return eog

    # ---------------------------------------------------------------- batched decoding
    @property
    def max_sequences(self) -> int:
        return int(self._n_seq)

    @property
    def kv_capacity(self) -> int:
        return int(self._n_ctx_total)

    @property
    def batch_size(self) -> int:
        return int(self._options.batch_size)

    def on_compute_thread(self, fn: Callable[[], T]) -> T:
        return LLAMA_CPP.run(fn)

    def compute_waiting(self) -> bool:
        return LLAMA_CPP.waiting()

    def decode_batch(self, inputs: Sequence[SeqInput]) -> list[Any]:
        # a prompt chunk holding image rows is decoded on its own, in runs of text and
        # image rows (llama.cpp takes tokens or embeddings in one batch, not both)
        with_images = [i for i, inp in enumerate(inputs) if inp.images]
        if not with_images:
            return self._decode_tokens(inputs)
        out: list[Any] = [None] * len(inputs)
        for i in with_images:
            out[i] = self._decode_with_images(inputs[i])
        rest = [i for i, inp in enumerate(inputs) if not inp.images]
        for i, result in zip(rest, self._decode_tokens([inputs[i] for i in rest]),
                             strict=True):
            out[i] = result
        return out

    def _decode_tokens(self, inputs: Sequence[SeqInput]) -> list[Any]:
        if not inputs:
            return []
        rows = self._fill_and_decode(inputs)
        return [self._output(inp, row) for inp, row in zip(inputs, rows, strict=True)]

    def _fill_and_decode(self, inputs: Sequence[SeqInput]) -> list[int]:
        """One llama_decode of the inputs' tokens; each input's last batch row (-1 when it
        wants no output)."""
        lib, batch = self._lib, self._batch
        token, pos, n_seq, seq_id, want = (batch.token, batch.pos, batch.n_seq_id,
                                           batch.seq_id, batch.logits)
        n = 0
        rows: list[int] = []
        for inp in inputs:
            for k, t in enumerate(inp.tokens):
                token[n] = t
                pos[n] = inp.pos + k
                n_seq[n] = 1
                seq_id[n][0] = inp.seq
                want[n] = 0
                n += 1
            if inp.output:
                for k in range(n - 1 - inp.verify, n):
                    want[k] = 1
            rows.append(n - 1 if inp.output else -1)
        batch.n_tokens = n
        self._check_decode(LLAMA_CPP.run(lib.llama_decode, self._ctx, batch))
        return rows

    def _verified(self, inp: SeqInput, last_row: int) -> Any:
        """A drafted input's output: the runtime's samples up to the first that differs
        from the draft, or the logits rows of every drafted position."""
        lib, first = self._lib, last_row - inp.verify
        if inp.native_sampler is not None:
            tokens: list[int] = []
            for k in range(inp.verify + 1):
                tokens.append(int(lib.llama_sampler_sample(inp.native_sampler, self._ctx,
                                                           first + k)))
                if k == inp.verify or tokens[-1] != inp.tokens[1 + k]:
                    break
            return tokens
        return np.stack([np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, first + k),
                                               shape=(self._n_vocab,))
                         for k in range(inp.verify + 1)])

    def _output(self, inp: SeqInput, row: int) -> Any:
        """What one input gives after its decode: nothing, a sampled token or logits."""
        if row < 0:
            return None
        if inp.verify:
            return self._verified(inp, row)
        if inp.native_sampler is not None:
            return int(self._lib.llama_sampler_sample(inp.native_sampler, self._ctx, row))
        logits = self._lib.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).copy()

    def _decode_with_images(self, inp: SeqInput) -> Any:
        if self._vision is None:
            raise UnsupportedFeatureError("llama.cpp", "image input without a projector")
        assert inp.images is not None
        tokens, start, row = list(inp.tokens), 0, -1
        while start < len(tokens):
            image = tokens[start] < 0
            end = start
            while end < len(tokens) and (tokens[end] < 0) == image:
                end += 1
            last = end == len(tokens) and inp.output
            run = tokens[start:end]
            if image:
                row = self._vision.decode_rows(run, inp.images, inp.seq, inp.pos + start, last)
            else:
                row = self._fill_and_decode([SeqInput(inp.seq, run, inp.pos + start, last)])[0]
            start = end
        return self._output(inp, row if inp.output else -1)

    # ---------------------------------------------------------------- embeddings
    @property
    def embedding_dim(self) -> int:
        return int(self._lib.llama_model_n_embd(self._model))

    def embed_batch(self, sequences: Sequence[Sequence[int]]) -> Any:
        if self.pooling is None:
            raise UnsupportedFeatureError("llama.cpp", "embeddings with a generative model",
                                          "load it with pooling='last' or 'mean'")
        out = np.empty((len(sequences), self.embedding_dim), dtype=np.float32)
        run: list[int] = []
        used = 0
        for i, seq in enumerate(sequences):
            if run and (used + len(seq) > self._n_batch or len(run) == EMBED_SEQUENCES):
                self._embed_run(sequences, run, out)
                run, used = [], 0
            run.append(i)
            used += len(seq)
        if run:
            self._embed_run(sequences, run, out)
        return out

    def _embed_run(self, sequences: Sequence[Sequence[int]], run: list[int], out: Any) -> None:
        """One llama_decode of several whole sequences, then each one's pooled vector."""
        lib, batch = self._lib, self._batch
        n = 0
        for slot, i in enumerate(run):
            seq = sequences[i]
            for k, t in enumerate(seq):
                batch.token[n] = t
                batch.pos[n] = k
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot
                batch.logits[n] = True  # pooling reads every token's state
                n += 1
        batch.n_tokens = n
        if self._memory:  # decoders keep a KV cache; encoders (BERT) have none
            lib.llama_memory_clear(self._memory, True)
        self._check_decode(LLAMA_CPP.run(lib.llama_decode, self._ctx, batch))
        dim = out.shape[1]
        for slot, i in enumerate(run):
            vector = lib.llama_get_embeddings_seq(self._ctx, slot)
            if not vector:
                raise BackendError(f"llama.cpp returned no pooled embedding for input {i}")
            out[i] = np.ctypeslib.as_array(vector, shape=(dim,))

    def seq_remove(self, seq: int, start: int) -> None:
        if not self._lib.llama_memory_seq_rm(self._memory, seq, start, -1):
            raise BackendError(f"llama.cpp could not free sequence {seq} from {start}")

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        self._lib.llama_memory_seq_cp(self._memory, src, dst, 0, n)

    def reusable_prefix(self, seq: int, n: int) -> int:
        """Asked of the cache itself (a worker restarted after a crash holds nothing).
        With a sliding window the cache drops a sequence's oldest positions; continuing
        at ``n`` needs the window before it (llama-server's check)."""
        if n == 0:
            return 0
        n = min(n, int(self._lib.llama_memory_seq_pos_max(self._memory, seq)) + 1)
        if not self._n_swa or n <= 0:
            return max(n, 0)
        oldest = int(self._lib.llama_memory_seq_pos_min(self._memory, seq))
        return n if 0 <= oldest <= max(0, n - self._n_swa) else 0

    def native_sampler(self, params: SamplingParams, seed: int, prompt: list[int]) -> Any:
        chain = build_sampler_chain(self._lib, params, seed, self._n_vocab)
        if _penalties_active(params):  # the prompt counts as history, as in llama-server
            for token in prompt[-params.repeat_last_n:]:
                if token >= 0:  # image rows are no tokens
                    self._lib.llama_sampler_accept(chain, token)
        return chain

    def free_native_sampler(self, sampler: Any) -> None:
        self._lib.llama_sampler_free(sampler)

    # ---------------------------------------------------------------- generation
    def _check_decode(self, rc: int) -> None:
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc} ({self._last_log()})")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._vision is not None:
            self._vision.close()
        self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self._ctx)
        self._lib.llama_model_free(self._model)

    def __del__(self) -> None:
        # A model dropped without close() still gives its memory back (peers leak it).
        # interpreter shutdown may have torn down ctypes already
        with contextlib.suppress(Exception):
            self.close()
