"""The gpt4all backend (Python bindings 2.8.2), with its silent failures made loud.

gpt4all bundles an older llama.cpp. localllm checks a file against what that build can
read *before* handing it over (architecture, pre-tokenizer, GGUF version, quantization)
and raises ``UnsupportedModelError`` naming the feature and a backend that can load it.
Its native messages ("LLaMA ERROR: ...") are captured from the C++ stderr into logging
and into the exceptions. Tokenization and detokenization of results use localllm's own
tokenizer (same vocabulary), so token ids and text agree with every other backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from .._errors import BackendError, UnsupportedModelError, import_runtime
from .._types import Capabilities, DevicePlacement, SamplingParams
from ..core.engine import (
    BackendSpec,
    EngineOptions,
    LocalTokenizerEngine,
    distribution_version,
)
from ..models.gguf import ModelFile, copy_with_metadata
from . import SPECS

log = logging.getLogger("localllm.gpt4all")

# What the llama.cpp inside gpt4all 2.8.2 (Aug 2024) reads.
KNOWN_ARCHITECTURES = frozenset({
    "baichuan", "bert", "bloom", "codeshell", "command-r", "falcon", "gemma", "gemma2",
    "gpt2", "gptj", "gptneox", "internlm2", "llama", "mpt", "nomic-bert", "olmo", "orion",
    "persimmon", "phi2", "phi3", "plamo", "qwen", "qwen2", "qwen2moe", "refact",
    "stablelm", "starcoder", "starcoder2", "minicpm", "xverse", "deepseek2", "chatglm",
})
KNOWN_PRE_TOKENIZERS = frozenset({
    "default", "llama3", "llama-bpe", "llama-v3", "deepseek-llm", "deepseek-coder", "falcon",
    "mpt", "starcoder", "gpt-2", "gpt2", "refact", "command-r", "qwen2", "stablelm2", "olmo",
    "dbrx", "smaug-bpe", "poro-chat", "jais", "chatglm-bpe", "viking", "tekken", "bloom",
    "gpt3-finnish", "codeshell",
})
KNOWN_TENSOR_TYPES = frozenset(range(0, 31)) - {4, 5}
# pre-tokenizers that behave exactly like one gpt4all knows (same regexes in llama.cpp)
EQUIVALENT_PRE = {"smollm": "starcoder", "exaone": "starcoder", "minerva-7b": "starcoder"}
_NATIVE_PARAMS = frozenset({"max_tokens", "temperature", "top_k", "top_p", "min_p",
                            "repeat_penalty", "repeat_last_n", "stop"})


def compatibility_problems(gguf: ModelFile) -> list[str]:
    """Features of ``gguf`` the bundled runtime cannot read (empty: loadable)."""
    problems = []
    if gguf.architecture not in KNOWN_ARCHITECTURES:
        problems.append(f"architecture {gguf.architecture!r}")
    pre = gguf.metadata.get("tokenizer.ggml.pre")
    if gguf.metadata.get("tokenizer.ggml.model") == "gpt2" and pre is not None \
            and pre not in KNOWN_PRE_TOKENIZERS:
        problems.append(f"pre-tokenizer {pre!r}")
    if gguf.version not in (2, 3):
        problems.append(f"GGUF version {gguf.version}")
    odd = sorted({t.type_name for t in gguf.tensors if t.type_id not in KNOWN_TENSOR_TYPES})
    if odd:
        problems.append(f"tensor types {', '.join(odd)}")
    return problems


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 (gpt4all prints its errors)."""
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", errors="replace").splitlines():
                if line.strip():
                    lines.append(line)
                    log.info("%s", line)


def compat_copy(gguf: ModelFile, pre: str) -> Path:
    """A cached copy of the file with ``tokenizer.ggml.pre`` rewritten; the original stays."""
    from .._defaults import default_home

    stat = gguf.path.stat()
    key = hashlib.sha256(f"{gguf.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{pre}"
                         .encode()).hexdigest()[:16]
    dest = default_home() / "compat" / key / gguf.path.name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_with_metadata(gguf.path, dest, {"tokenizer.ggml.pre": pre})
    return dest


class GPT4AllEngine(LocalTokenizerEngine):
    spec: ClassVar[BackendSpec | None] = SPECS["gpt4all"]
    capabilities: ClassVar[Capabilities] = Capabilities(streaming=True,
                                                        sampling_params=_NATIVE_PARAMS)
    options_accepted: ClassVar[dict[str, str]] = {
        "compat_copy": "True: run a cached copy whose pre-tokenizer name gpt4all knows, "
                       "for files whose pre-tokenizer is an equivalent newer name (smollm)",
        "check_compatibility": "False: skip localllm's pre-load check (gpt4all may fail)",
        "device": "gpt4all device string, e.g. 'cpu', 'kompute', 'cuda', 'gpu'",
    }

    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> GPT4AllEngine:
        cls.check_options(options)
        opts = options.backend_options
        path = gguf.path
        if opts.get("check_compatibility", True):
            problems = compatibility_problems(gguf)
            pre = gguf.metadata.get("tokenizer.ggml.pre")
            fixable = problems == [f"pre-tokenizer {pre!r}"] and pre in EQUIVALENT_PRE
            if fixable and opts.get("compat_copy"):
                path = compat_copy(gguf, EQUIVALENT_PRE[str(pre)])
            elif problems:
                hint = (f"; its pre-tokenizer behaves like {EQUIVALENT_PRE.get(str(pre))!r}: "
                        "pass backend_options={'compat_copy': True} to run a rewritten copy"
                        if fixable else "")
                other = "ctransformers" if gguf.version < 2 else "llama.cpp"
                raise UnsupportedModelError(
                    f"gpt4all 2.8.2 cannot load {gguf.path.name}: unsupported "
                    f"{'; '.join(problems)}. The {other} backend can load it "
                    f"(backend='{other}'){hint}")
        return cls(gguf, path, options)

    def __init__(self, gguf: ModelFile, path: Path, options: EngineOptions) -> None:
        from ..tokenizer import tokenizer_from_gguf

        with captured_stderr():  # the import prints CUDA library probing failures
            module = import_runtime("gpt4all", "gpt4all._pyllmodel", "gpt4all")
        self._module = module
        self._options = options
        self._tokenizer = tokenizer_from_gguf(gguf)
        device = str(options.backend_options.get("device",
                                                 "gpu" if options.gpu_layers else "cpu"))
        # gpt4all's own mapping on Linux/Windows: the kompute build also runs on the CPU
        backend, gpu_name = "kompute", None
        if device.startswith("cuda"):
            backend, gpu_name = "cuda", device.partition(":")[2] or "gpu"
        elif device != "cpu":
            gpu_name = device.removeprefix("kompute:")
        ngl = options.gpu_layers if gpu_name else 0
        with captured_stderr() as lines:
            try:
                self._model = module.LLModel(str(path), options.context_length, ngl, backend)
                if gpu_name:
                    self._model.init_gpu(gpu_name)
                loaded = self._model.load_model()
            except (RuntimeError, ValueError) as exc:
                raise BackendError(f"gpt4all could not load {path.name}: {exc}") from exc
        if not loaded:  # GPT4All.__init__ ignores this; localllm does not
            detail = " | ".join(ln for ln in lines if "ERROR" in ln.upper()) or \
                " | ".join(lines[-3:]) or "no details"
            self._model.close()
            raise BackendError(f"gpt4all failed to load {path.name}: {detail}")
        self._model.set_thread_count(options.threads)
        self._version = distribution_version("gpt4all")
        self._closed = False

    @property
    def placement(self) -> DevicePlacement:
        name = self._model.backend
        return DevicePlacement(device="cpu" if name == "cpu" else f"gpu ({name})",
                               gpu_layers=0 if name == "cpu" else self._options.gpu_layers,
                               total_layers=0, provider=str(name))


    def generate(self, prompt: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        """gpt4all takes text: the prompt ids are decoded back to it, special tokens
        spelled out and parsed again on gpt4all's side (``special=True``)."""
        text = "".join(self.token_text(t) if not self.token_bytes(t) else
                       self.token_bytes(t).decode("utf-8", errors="replace") for t in prompt)
        out: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()

        def on_token(token_id: int, response: str) -> bool:
            if token_id == -1:  # gpt4all reports errors as text through the callback
                out.put(("error", response))
                return False
            out.put(("token", token_id))
            return not stop.is_set()

        def run() -> None:
            try:
                self._model.prompt_model(
                    text, "%1", on_token, n_predict=self._options.context_length,
                    top_k=params.top_k if params.temperature > 0 else 1,
                    top_p=params.top_p, min_p=params.min_p, temp=params.temperature,
                    n_batch=self._options.batch_size, repeat_penalty=params.repeat_penalty,
                    repeat_last_n=params.repeat_last_n, reset_context=True, special=True)
                out.put(("end", None))
            except Exception as exc:  # surfaces in the consuming thread, typed
                out.put(("error", f"{type(exc).__name__}: {exc}"))

        worker = threading.Thread(target=run, name="gpt4all-generate", daemon=True)
        worker.start()
        produced = 0
        try:
            while True:
                kind, value = out.get()
                if kind == "token":
                    produced += 1
                    yield int(value)
                elif kind == "error":
                    raise BackendError(f"gpt4all failed while generating: {value}")
                else:
                    if self._tokenizer.eos_id is not None:
                        yield self._tokenizer.eos_id  # gpt4all ended by itself: EOS
                    return
        finally:
            stop.set()
            while worker.is_alive():  # drain so the callback never blocks, then join
                with contextlib.suppress(queue.Empty):
                    out.get(timeout=0.05)
            worker.join()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._model.close()
