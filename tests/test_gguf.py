"""GGUF header validation on files written by the ``gguf`` package and then damaged."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

import localllm
from localllm.models.gguf import FILE_TYPES, GGML_TYPES, read_gguf


def write_tiny(path: Path, *, template: str | None = None, n_layers: int = 2) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny test model")
    w.add_context_length(256)
    w.add_block_count(n_layers)
    w.add_embedding_length(32)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<s>", "</s>", "a", "b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    if template:
        w.add_chat_template(template)
    rng = np.random.default_rng(0)
    for i in range(n_layers):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((32, 32)).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reads_metadata_and_tensor_table(tmp_path: Path) -> None:
    g = read_gguf(write_tiny(tmp_path / "t.gguf", template="{{ messages }}"))
    assert g.architecture == "llama" and g.name == "tiny test model"
    assert g.context_length == 256 and g.block_count == 2 and g.vocab_size == 4
    assert g.parameter_count == 2 * 32 * 32 + 32
    assert g.quantization == "F16"
    assert g.chat_template == "{{ messages }}"
    assert {t.name for t in g.tensors} == {"blk.0.attn_q.weight", "blk.1.attn_q.weight",
                                           "output_norm.weight"}


def test_default_model_header(default_model_path: Path) -> None:
    g = read_gguf(default_model_path)
    assert (g.architecture, g.quantization, g.context_length, g.block_count) == (
        "llama", "Q4_1", 8192, 30)
    assert g.parameter_count == 134_515_008 and g.vocab_size == 49152
    assert g.metadata["tokenizer.ggml.pre"] == "smollm"


def test_type_tables_match_the_reference_implementation() -> None:
    for type_id, (name, block, size) in GGML_TYPES.items():
        ref = gguf.GGMLQuantizationType(type_id)
        assert ref.name == name
        assert gguf.GGML_QUANT_SIZES[ref] == (block, size)
    for value, name in FILE_TYPES.items():
        assert gguf.LlamaFileType(value).name in (f"MOSTLY_{name}", f"ALL_{name}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(localllm.ModelNotFoundError):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(FileNotFoundError):  # also a builtin FileNotFoundError
        localllm.load(tmp_path / "nope.gguf")


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"GGML" + b[4:], "not a GGUF file"),
    (lambda b: b[:4] + struct.pack("<I", 99) + b[8:], "version 99"),
    (lambda b: b[:8] + struct.pack("<Q", 2**40) + b[16:], "absurd tensor count"),
    (lambda b: b[:16] + struct.pack("<Q", 2**50) + b[24:], "absurd metadata count"),
    (lambda b: b[:16] + struct.pack("<Q", 5000) + b[24:], "metadata count 5000 cannot fit"),
    (lambda b: b[: len(b) // 2], "truncated"),
    (lambda b: b[:30], "truncated"),
    (lambda b: b[:200], "end of file|truncated"),
    (lambda b: b[:10], "only 10 bytes"),
])
def test_damaged_files_are_refused_before_any_runtime(tmp_path: Path, damage, message) -> None:
    good = write_tiny(tmp_path / "good.gguf").read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(good))
    with pytest.raises(localllm.ModelFormatError, match=message):
        read_gguf(bad)
    with pytest.raises(localllm.ModelFormatError):
        localllm.load(bad, backend="llama.cpp")


def test_absurd_string_length_is_refused(tmp_path: Path) -> None:
    good = write_tiny(tmp_path / "good.gguf").read_bytes()
    # the first metadata key's length field sits right after the 24-byte header
    bad = good[:24] + struct.pack("<Q", 2**62) + good[32:]
    (tmp_path / "bad.gguf").write_bytes(bad)
    with pytest.raises(localllm.ModelFormatError, match="absurd string length"):
        read_gguf(tmp_path / "bad.gguf")


def test_not_a_model_at_all(tmp_path: Path) -> None:
    p = tmp_path / "notes.gguf"
    p.write_text("hello, I am a text file pretending to be a model\n" * 10)
    with pytest.raises(localllm.ModelFormatError, match="GGUF"):
        localllm.load(p)
    with pytest.raises(localllm.ModelFormatError, match="folder"):
        localllm.load(tmp_path)


def test_string_arrays_decode_on_read_and_bad_utf8_is_a_format_error(tmp_path: Path) -> None:
    """The vocabulary is walked, not decoded, while the header is parsed; a token that is not
    UTF-8 is reported when the tokenizer reads it (llama.cpp itself takes raw bytes)."""
    from localllm.tokenizer import tokenizer_from_gguf

    good = read_gguf(write_tiny(tmp_path / "good.gguf"))
    tokens = good.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 4 and tokens[2] == "a" and tokens[-1] == "b"
    assert tokens[1:3] == ["</s>", "a"] and list(tokens) == ["<s>", "</s>", "a", "b"]
    assert tokens == ["<s>", "</s>", "a", "b"] and "b" in tokens and tokens.index("a") == 2
    with pytest.raises(IndexError):
        tokens[4]
    raw = (tmp_path / "good.gguf").read_bytes()
    at = raw.index(struct.pack("<Q", 1) + b"a")  # the token "a", length-prefixed
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(raw[:at + 8] + b"\xff" + raw[at + 9:])
    bad = read_gguf(damaged)
    assert bad.token_text(0) == "<s>"
    with pytest.raises(localllm.ModelFormatError, match=r"string 2 .* not valid UTF-8"):
        tokenizer_from_gguf(bad)
