"""GGUF file inspection and validation, done in Python before any runtime sees the file.

Native runtimes trust the header: a truncated download or an absurd count makes them
abort or read out of bounds. ``read_gguf`` checks every count and extent against the
file size and raises ``ModelFormatError`` naming what is wrong, without reading weights.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, overload

from .._errors import ModelFormatError, ModelNotFoundError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (1, 2, 3)  # 1: 32-bit counts and dimensions (2023)
MAX_DIMS = 4
MAX_STRING_BYTES = 64 * 1024 * 1024
MAX_KV_COUNT = 1 << 20
MAX_TENSOR_COUNT = 1 << 20
DEFAULT_ALIGNMENT = 32
MAX_NAME_BYTES = 63  # ggml's GGML_MAX_NAME (64) less the terminating NUL
MAX_HPARAM = (1 << 32) - 1  # llama.cpp reads hyper-parameters as uint32
# the planner allocates and loops per layer: a file may claim at most one block per tensor
# (vocabulary-only files, which hold no tensors, carry their model's real block count)
MAX_BLOCKS_WITHOUT_TENSORS = 512

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

# general.file_type (llama_ftype) -> quantization name as users know it
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}

# GGUF metadata value types: id -> struct format (None for string/array)
_SCALARS: dict[int, str] = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_TYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
               "string", "array", "uint64", "int64", "float64")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # relative to the data section

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id][0]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        _, block, size = GGML_TYPES[self.type_id]
        return self.n_elements // block * size


@dataclass(frozen=True)
class ModelFile:
    """What localllm knows of a model before loading it, whatever its format: metadata in
    GGUF's key names (the common vocabulary every format's reader maps into, so planning,
    templates and tokenizers read one shape) and the tensor table. Each format has its own
    descriptor class: :class:`GGUFFile`, ``GGMLFile`` (legacy files, ``models.ggml``) and
    :class:`OnnxFolder`; ``format`` names it."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int
    #: each metadata key's GGUF value type (4 uint32, 5 int32, 6 float32, 7 bool, 8 string,
    #: 9 array...): runtimes abort on a key of the wrong type, so checks read this
    value_types: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    format: ClassVar[str] = "gguf"

    @property
    def container(self) -> str:
        """The format's name (older name of :attr:`format`)."""
        return self.format

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """Metadata under ``<architecture>.<key>``, e.g. ``context_length``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    @property
    def context_length(self) -> int:
        return int(self.arch_value("context_length", 0) or 0)

    @property
    def block_count(self) -> int:
        return int(self.arch_value("block_count", 0) or 0)

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def vocab_size(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        return len(tokens) if tokens is not None else 0

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value else None

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int) and file_type in FILE_TYPES:
            return FILE_TYPES[file_type]
        counts = Counter(t.type_name for t in self.tensors if len(t.shape) > 1)
        return counts.most_common(1)[0][0] if counts else "unknown"

    def token_text(self, token_id: int | None) -> str:
        tokens = self.metadata.get("tokenizer.ggml.tokens") or ()
        if token_id is None or not 0 <= token_id < len(tokens):
            return ""
        return str(tokens[token_id])

    @property
    def special_texts(self) -> tuple[str, str]:
        """The BOS and EOS tokens' text, which chat templates print ("" when absent)."""
        return (self.token_text(self.metadata.get("tokenizer.ggml.bos_token_id")),
                self.token_text(self.metadata.get("tokenizer.ggml.eos_token_id")))


class GGUFFile(ModelFile):
    """The parsed header of a GGUF file: its version, metadata, tensor table and where the
    tensor data starts."""

    format: ClassVar[str] = "gguf"


class OnnxFolder(ModelFile):
    """An ONNX model folder described in GGUF's vocabulary: its config and tokenizer files
    mapped into metadata keys, its initializers as the tensor table (``path`` is the
    ``.onnx`` file, ``file_size`` the weights' bytes)."""

    format: ClassVar[str] = "onnx"


class StringArray(Sequence[str]):
    """A GGUF string array, decoded when it is first read.

    Decoding a 49k-token vocabulary and its merges costs ~90 ms, and loading a model needs
    neither (the tokenizer is built on first use): the header parse only walks the lengths.
    Bytes that are not UTF-8 raise ``ModelFormatError`` when read."""

    def __init__(self, blob: bytes, starts: list[int], width: int, path: Path) -> None:
        self._blob, self._starts, self._width, self._path = blob, starts, width, path
        self._items: list[str] | None = None

    def _decode(self, i: int) -> str:
        end = self._starts[i + 1] - self._width if i + 1 < len(self._starts) else len(self._blob)
        try:
            return self._blob[self._starts[i]:end].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(f"{self._path} is not a valid GGUF file: string {i} of an "
                                   "array is not valid UTF-8") from None

    def _all(self) -> list[str]:
        if self._items is None:
            self._items = [self._decode(i) for i in range(len(self._starts))]
        return self._items

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return self._all()[index]
        if self._items is not None:
            return self._items[index]
        if index < 0:
            index += len(self._starts)
        if not 0 <= index < len(self._starts):
            raise IndexError(index)
        return self._decode(index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringArray, list, tuple)):
            return self._all() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"


class _Reader:
    """Bounds-checked little-endian reader over a memory map."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path, kind: str = "GGUF") -> None:
        self.kind = kind
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path
        self.length = "Q"  # counts, string lengths and dimensions; "I" in GGUF version 1

    def fail(self, what: str) -> ModelFormatError:
        return ModelFormatError(
            f"{self.path} is not a valid {self.kind} file: {what} (at byte {self.pos}); "
            "the file may be truncated or corrupt — download it again"
        )

    def unpack(self, fmt: str) -> Any:
        width = struct.calcsize("<" + fmt)
        if self.pos + width > self.size:
            raise self.fail("unexpected end of file in the header")
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += width
        return value[0] if len(value) == 1 else value

    def count(self, what: str, limit: int, min_item_bytes: int = 1) -> int:
        n = int(self.unpack(self.length))
        remaining = self.size - self.pos
        if n > limit:
            raise self.fail(f"absurd {what} {n}")
        if n * min_item_bytes > remaining:
            raise self.fail(f"{what} {n} cannot fit in the {remaining} bytes left (truncated?)")
        return n

    def string(self) -> str:
        n = self.count("string length", MAX_STRING_BYTES)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not valid UTF-8") from None

    def strings(self, n: int) -> StringArray:
        """Walk ``n`` length-prefixed strings (vocabularies hold ~100k of them), checking
        every length against the file; decoding waits until the strings are read."""
        buf, start, pos, size = self.buf, self.pos, self.pos, self.size
        length_of = struct.Struct("<" + self.length)
        length_at, width = length_of.unpack_from, length_of.size
        starts: list[int] = []
        record = starts.append
        try:
            for _ in range(n):
                (length,) = length_at(buf, pos)
                pos += width
                if length > MAX_STRING_BYTES or pos + length > size:
                    self.pos = pos
                    raise self.fail(f"absurd string length {length}" if length > MAX_STRING_BYTES
                                    else f"string length {length} runs past the end of the file")
                record(pos - start)
                pos += length
        except struct.error:
            self.pos = pos
            raise self.fail("unexpected end of file in a string array") from None
        self.pos = pos
        return StringArray(bytes(buf[start:pos]), starts, width, self.path)

    def value(self, type_id: int, depth: int = 0) -> Any:
        if type_id in _SCALARS:
            return self.unpack(_SCALARS[type_id])
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY and depth == 0:
            item_type = int(self.unpack("I"))
            if item_type in _SCALARS:
                width = struct.calcsize("<" + _SCALARS[item_type])
                n = self.count("array length", self.size, width)
                fmt = f"<{n}{_SCALARS[item_type]}"
                items = struct.unpack_from(fmt, self.buf, self.pos)
                self.pos += n * width
                return list(items)
            if item_type == _STRING:
                return self.strings(self.count("array length", self.size,
                                               struct.calcsize(self.length)))
            raise self.fail(f"unsupported array item type {item_type}")
        raise self.fail(f"unknown metadata value type {type_id}")


def read_gguf(path: str | os.PathLike[str], *, offset: int = 0,
              size: int | None = None) -> GGUFFile:
    """Parse and validate a GGUF header; raise ``ModelFormatError`` on anything odd.
    ``offset`` and ``size`` read a GGUF held inside a bigger file (a llamafile's zip
    entry); offsets in the result are then relative to ``offset``."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFormatError(f"{path} is not a regular file")
    if offset or size is not None:
        return _read_embedded(path, offset, size)
    file_size = path.stat().st_size
    if file_size < 24:
        raise ModelFormatError(
            f"{path} is not a valid GGUF file: only {file_size} bytes long; "
            "the file may be truncated — download it again"
        )
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _parse(_Reader(mm, path), path, file_size)


def _read_embedded(path: Path, offset: int, size: int | None) -> GGUFFile:
    total = path.stat().st_size
    size = total - offset if size is None else size
    if offset < 0 or size < 24 or offset + size > total:
        raise ModelFormatError(f"{path}: no GGUF of {size} bytes fits at offset {offset} of "
                               f"a {total}-byte file")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)[offset:offset + size]
        try:
            return _parse(_Reader(view, path), path, size)  # type: ignore[arg-type]
        finally:
            view.release()


def _parse(r: _Reader, path: Path, file_size: int) -> GGUFFile:
    magic = bytes(r.buf[0:4])
    if magic != GGUF_MAGIC:
        raise ModelFormatError(
            f"{path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r}); "
            "localllm's llama.cpp backend needs .gguf files"
        )
    r.pos = 4
    version = int(r.unpack("I"))
    if version not in SUPPORTED_VERSIONS:
        raise ModelFormatError(
            f"{path} uses GGUF version {version}; supported versions are "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    if version == 1:
        r.length = "I"
    n_tensors = r.count("tensor count", MAX_TENSOR_COUNT, 24)
    n_kv = r.count("metadata count", MAX_KV_COUNT, 12)
    metadata: dict[str, Any] = {}
    types: dict[str, int] = {}
    for _ in range(n_kv):
        at = r.pos
        key = r.string()
        if key in metadata:  # llama.cpp refuses these; a dict would keep the last silently
            r.pos = at
            raise r.fail(f"metadata key {key!r} appears twice")
        types[key] = int(r.unpack("I"))
        metadata[key] = r.value(types[key])
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for _ in range(n_tensors):
        at = r.pos
        tensors.append(_tensor_info(r))
        if tensors[-1].name in names:
            r.pos = at
            raise r.fail(f"tensor name {tensors[-1].name!r} appears twice")
        names.add(tensors[-1].name)
    _check_metadata(r, metadata, types, n_tensors)
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_offset = (r.pos + alignment - 1) // alignment * alignment
    _check_tensor_data(path, tensors, data_offset, alignment, file_size)
    return GGUFFile(path, version, metadata, tuple(tensors), data_offset, file_size,
                    types)


_STRINGS = ("general.architecture", "general.name", "tokenizer.ggml.model",
            "tokenizer.ggml.pre", "tokenizer.chat_template")
_TOKEN_IDS = ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id")
# per-architecture hyper-parameters, which some architectures give per layer (arrays)
_SCALAR_HPARAMS = ("context_length", "block_count", "embedding_length",
                   "attention.key_length", "attention.value_length")
_LAYERED_HPARAMS = ("feed_forward_length", "attention.head_count", "attention.head_count_kv")


def _check_metadata(r: _Reader, md: dict[str, Any], types: dict[str, int],
                    n_tensors: int) -> None:
    """The values localllm and the runtimes read must have the type they are read as:
    a hyper-parameter stored as a string or a float would fail far from the file (or,
    for ``general.alignment``, abort llama.cpp), and an absurd one would make planning
    allocate per layer for billions of layers."""

    def fail(key: str, expected: str) -> ModelFormatError:
        value = md[key]
        shown = f"{_TYPE_NAMES[types[key]]} {value!r}" if types[key] != _ARRAY else (
            f"an array of {len(value)} {_item_kind(value)}")
        return ModelFormatError(
            f"{r.path} is not a valid GGUF file: metadata {key!r} is {shown[:120]} but must "
            f"be {expected}; the converter that wrote it is broken — convert the model again")

    arch = md.get("general.architecture", "unknown")
    for key in _STRINGS:
        if key in md and types[key] != _STRING:
            raise fail(key, "a string")
    alignment = md.get("general.alignment")
    if alignment is not None and (types["general.alignment"] != _UINT32 or alignment <= 0
                                  or alignment & (alignment - 1)):
        raise fail("general.alignment", "a power of two stored as a uint32")
    limits = dict.fromkeys(_TOKEN_IDS, MAX_HPARAM)
    limits.update((f"{arch}.{k}", MAX_HPARAM) for k in _SCALAR_HPARAMS + _LAYERED_HPARAMS)
    limits[f"{arch}.block_count"] = max(n_tensors, MAX_BLOCKS_WITHOUT_TENSORS)
    for key, limit in limits.items():
        value = md.get(key)
        if value is None:
            continue
        layered = key.removeprefix(f"{arch}.") in _LAYERED_HPARAMS
        values = value if layered and isinstance(value, list) else [value]
        if not all(type(v) is int and 0 <= v <= limit for v in values):
            either = ", or a per-layer array of them" if layered else ""
            raise fail(key, f"an integer from 0 to {limit}{either}")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if key in md and not isinstance(md[key], StringArray):
            raise fail(key, "an array of strings")
    arrays: tuple[tuple[str, tuple[type, ...], str], ...] = (
        ("tokenizer.ggml.scores", (int, float), "numbers"),
        ("tokenizer.ggml.token_type", (int,), "integers"))
    for key, kinds, expected in arrays:
        value = md.get(key)  # one item type per array: its first item shows it
        if value is not None and not (isinstance(value, list) and all(
                type(v) in kinds for v in value[:1])):
            raise fail(key, f"an array of {expected}")


def _item_kind(value: Sequence[Any]) -> str:
    if isinstance(value, StringArray):
        return "strings"
    kinds = {type(v).__name__ for v in value}
    return f"{'/'.join(sorted(kinds))} values" if kinds else "items"


def _check_tensor_data(path: Path, tensors: list[TensorInfo], data_offset: int,
                       alignment: int, file_size: int) -> None:
    """Each tensor's data must start aligned, end inside the file and not share bytes with
    another tensor's: a runtime maps the data as laid out and trusts every extent."""
    for t in tensors:
        if t.offset % alignment:
            raise ModelFormatError(
                f"{path} is corrupt: tensor {t.name!r} starts at data offset {t.offset}, "
                f"which is misaligned (not a multiple of the alignment {alignment}); "
                "download it again")
        end = data_offset + t.offset + t.n_bytes
        if end > file_size:
            raise ModelFormatError(
                f"{path} is truncated or corrupt: tensor {t.name!r} needs bytes up to "
                f"{end} but the file has {file_size}; download it again"
            )
    by_start = sorted(tensors, key=lambda t: t.offset)
    for before, after in itertools.pairwise(by_start):
        if after.offset < before.offset + before.n_bytes:
            raise ModelFormatError(
                f"{path} is corrupt: the data of tensors {before.name!r} (bytes "
                f"{before.offset}-{before.offset + before.n_bytes}) and {after.name!r} "
                f"(from {after.offset}) overlap; download it again")


def _tensor_info(r: _Reader) -> TensorInfo:
    at = r.pos
    name = r.string()
    if len(name.encode()) > MAX_NAME_BYTES:
        r.pos = at
        raise r.fail(f"tensor name {name[:80]!r} is {len(name.encode())} bytes long; ggml "
                     f"takes at most {MAX_NAME_BYTES}")
    n_dims = int(r.unpack("I"))
    if not 1 <= n_dims <= MAX_DIMS:
        raise r.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    shape = tuple(int(r.unpack(r.length)) for _ in range(n_dims))
    type_id = int(r.unpack("I"))
    offset = int(r.unpack("Q"))
    if type_id not in GGML_TYPES:
        raise r.fail(f"tensor {name!r} has unknown ggml type {type_id}")
    n = 1
    for d in shape:
        if d <= 0:
            raise r.fail(f"tensor {name!r} has a non-positive dimension in {shape}")
        n *= d
        if n > r.size * 256:  # far more elements than any quantization can pack in the file
            raise r.fail(f"tensor {name!r} has absurd shape {shape}")
    block = GGML_TYPES[type_id][1]
    if shape[0] % block:
        raise r.fail(f"tensor {name!r} row length {shape[0]} is not a multiple of {block}")
    return TensorInfo(name, shape, type_id, offset)


def copy_with_metadata(src: str | os.PathLike[str], dest: str | os.PathLike[str],
                       updates: dict[str, str]) -> None:
    """Write a copy of ``src`` with string metadata values replaced or added.

    The header is re-emitted entry by entry (untouched entries byte for byte), the data
    section is copied unchanged after re-aligning: tensor offsets are relative to it.
    """
    src, dest = Path(src), Path(dest)
    gguf = read_gguf(src)  # validates first: never copy a broken file
    alignment = int(gguf.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    with open(src, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        r = _Reader(mm, src)
        r.pos = 8
        n_tensors = int(r.unpack("Q"))
        n_kv = int(r.unpack("Q"))
        entries = bytearray()
        pending = dict(updates)
        for _ in range(n_kv):
            start = r.pos
            key = r.string()
            r.value(int(r.unpack("I")))
            if key in pending:
                entries += _kv_string(key, pending.pop(key))
            else:
                entries += mm[start:r.pos]
        for key, value in pending.items():
            entries += _kv_string(key, value)
        tensors_start = r.pos
        for _ in range(n_tensors):
            _tensor_info(r)
        header = bytearray(mm[0:8]) + struct.pack("<QQ", n_tensors, n_kv + len(pending))
        header += entries + mm[tensors_start:r.pos]
        header += b"\0" * (-len(header) % alignment)
        part = dest.with_name(dest.name + ".part")
        with open(part, "wb") as out:
            out.write(header)
            for at in range(gguf.data_offset, gguf.file_size, 1 << 24):
                out.write(mm[at:min(at + (1 << 24), gguf.file_size)])
        os.replace(part, dest)


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", _STRING, len(v)) + v
