"""The fuzz targets: one fuzz input in, the same reading ``load()`` does before a runtime.

Each target takes the input bytes and a scratch folder (the readers need paths), and
either returns or raises. A :class:`~localllm.LocalLLMError` is the expected way to refuse
an input; any other exception, a slow input or a crash is a bug the fuzzer reports. The
targets import no fuzzer, so a finding can be replayed with plain Python::

    from localllm.support.fuzz.targets import Scratch, TARGETS
    TARGETS["gguf"](Scratch.create(), open("crash-…", "rb").read())
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...models.ggml import read_ggml
from ...models.gguf import ModelFile, read_gguf
from ...models.loader import detect_format
from ...planning.planner import ModelShape
from ...templates.chat import render_chat
from .samples import FOLDER_FILES, SEPARATOR, split_folder

ROLES = ("user", "assistant", "system", "tool")


@dataclass(frozen=True)
class Scratch:
    """A folder for the files a target writes; each input overwrites the last one's."""

    root: Path

    @classmethod
    def create(cls) -> Scratch:
        shm = Path("/dev/shm")  # RAM-backed where available: no disk writes per input
        parent = shm if shm.is_dir() and _writable(shm) else None
        return cls(Path(tempfile.mkdtemp(prefix="localllm-fuzz-", dir=parent)))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def file(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def folder(self, files: dict[str, bytes]) -> Path:
        folder = self.root / "folder"
        folder.mkdir(exist_ok=True)
        for name in FOLDER_FILES:
            path = folder / name
            if name in files:
                path.write_bytes(files[name])
            else:
                path.unlink(missing_ok=True)
        return folder


def _writable(folder: Path) -> bool:
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def use_description(gguf: ModelFile) -> None:
    """Read every fact of a description that loading reads before a runtime opens the
    file: a reader must not hand over values that break these later."""
    _ = (gguf.architecture, gguf.name, gguf.context_length, gguf.block_count,
         gguf.parameter_count, gguf.vocab_size, gguf.chat_template, gguf.quantization)
    _ = gguf.special_texts
    for t in gguf.tensors:
        _ = (t.type_name, t.n_bytes)
    ModelShape.from_gguf(gguf)


def model_file(scratch: Scratch, data: bytes) -> None:
    """A single model file (GGUF, GGML or ggjt, told apart by its magic, as load does)."""
    path = scratch.file("model.bin", data)
    file_format = detect_format(path)
    use_description(read_ggml(path) if file_format == "ggml" else read_gguf(path))


def onnx_folder(scratch: Scratch, data: bytes) -> None:
    """An ONNX model folder whose files are the input's separated parts."""
    from ...engines.onnx import describe_folder

    folder = scratch.folder(split_folder(data))
    detect_format(folder)
    use_description(describe_folder(folder))


def chat_template(scratch: Scratch, data: bytes) -> None:
    """A chat template (the first part) and messages (the others: the first byte picks
    the role, and a set high bit drops the content; the rest is the content), rendered
    with the default limits: a hostile template must be stopped well inside the
    fuzzer's 1 s per input."""
    parts = data.split(SEPARATOR)
    template = parts[0].decode("utf-8", errors="replace")
    messages: list[dict[str, str | None]] = []
    for part in parts[1:]:
        head = part[0] if part else 0
        content = part[1:].decode("utf-8", errors="replace")
        messages.append({"role": ROLES[head % len(ROLES)],
                         "content": None if head & 0x80 else content})
    render_chat(template, messages or [{"role": "user", "content": "Hi!"}],
                bos_token="<s>", eos_token="</s>", add_generation_prompt=len(parts) % 2 == 1)


def image(scratch: Scratch, data: bytes) -> None:
    """An image file as a message carries it, decoded and checked as a model does before
    its runtime sees pixels (a smaller pixel limit keeps each input inside the fuzzer's
    memory and time limits)."""
    from ...images import decode_image

    decode_image(data, max_pixels=4_000_000)


Target = Callable[[Scratch, bytes], None]
#: target name → function; "gguf" and "ggml" run the same reader dispatch from different
#: seeds, so each explores its own container
TARGETS: dict[str, Target] = {
    "gguf": model_file,
    "ggml": model_file,
    "onnx-folder": onnx_folder,
    "chat-template": chat_template,
    "image": image,
}
