"""Write the regression corpus of malformed model files, tests/data/malformed/.

Each entry is a tiny valid file (built by ``localllm.support.fuzz.samples``, never taken from a
real model) with one field damaged or cut, or an ONNX folder with one file wrong. The
manifest maps each entry to its class and to a fragment of the ModelFormatError message
it must raise; tests/test_fuzz.py loads every entry and checks both. Deterministic: run
it again after changing a builder and commit what changes.
Run: ``.venv/bin/python scripts/make_malformed_corpus.py`` (needs the onnx package).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

from localllm.support.fuzz.samples import (
    ARRAY,
    F32,
    I32,
    KV,
    Q4_0_TYPE,
    STRING,
    U32,
    U64,
    VOCAB,
    Built,
    Tensor,
    ggml,
    gguf,
    tiny_folder,
    tiny_ggjt,
    tiny_gguf,
    tiny_gpt2_ggml,
    tiny_kvs,
    tiny_tensors,
)

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "malformed"

Entry = tuple[str, bytes | dict[str, bytes], str]  # class, content, message fragment


def cut(built: Built, field: str) -> bytes:
    """The file cut inside ``field`` (after its first byte, or at its start if it has one
    byte or none)."""
    span = built.span(field)
    return bytes(built.data[:span.start + (1 if span.end - span.start > 1 else 0)])


def patch(built: Built, field: str, raw: bytes) -> bytes:
    """The file with ``field``'s bytes replaced by ``raw`` (of any length)."""
    span = built.span(field)
    return bytes(built.data[:span.start] + raw + built.data[span.end:])


def kv_index(built: Built, key: bytes) -> int:
    return next(int(s.name[3:s.name.index("]")]) for s in built.spans
                if s.name.endswith("] key") and built.data[s.start:s.end] == key)


def with_kv(kv: KV) -> bytes:
    return bytes(gguf(tiny_kvs({kv.key.decode(errors="replace"): kv}), tiny_tensors()).data)


def gguf_entries() -> dict[str, Entry]:
    base = tiny_gguf()
    # truncations past the header lie in late fields, so that the counts before them fit
    # the bytes left and each cut is found by the check of the field it falls in
    model = kv_index(base, b"tokenizer.ggml.model")
    tokens = kv_index(base, b"tokenizer.ggml.tokens")
    bos = kv_index(base, b"tokenizer.ggml.bos_token_id")
    truncations = {  # name: (field cut, what the field is, message fragment)
        "magic": ("magic", "the magic", "not a model format"),
        "version": ("version", "the version", "only 5 bytes long"),
        "tensor-count": ("tensor count", "the tensor count", "only 9 bytes long"),
        "kv-count": ("kv count", "the metadata count", "only 17 bytes long"),
        "key-length": (f"kv[{bos}] key length", "a key's length", "unexpected end of file"),
        "key": (f"kv[{bos}] key", "a key's bytes", "cannot fit"),
        "value-type": (f"kv[{bos}] value type", "a value type", "unexpected end of file"),
        "string-value": (f"kv[{model}] value", "a string value", "cannot fit"),
        "scalar-value": (f"kv[{bos}] value", "a uint32 value", "unexpected end of file"),
        "array-item-type": (f"kv[{tokens}] array item type", "an array's item type",
                            "unexpected end of file"),
        "array-length": (f"kv[{tokens}] array length", "an array's length",
                         "unexpected end of file"),
        "array-item": (f"kv[{tokens}] item[3]", "a string array item",
                       "runs past the end of the file"),
        "tensor-name": ("tensor[1] name", "a tensor name", "cannot fit"),
        "n-dims": ("tensor[1] n_dims", "a tensor's n_dims", "unexpected end of file"),
        "dim": ("tensor[0] dim[1]", "a tensor dimension", "unexpected end of file"),
        "type-id": ("tensor[1] type", "a tensor's type id", "unexpected end of file"),
        "offset": ("tensor[1] offset", "a tensor's data offset", "unexpected end of file"),
        "padding": ("padding", "the padding before the data", "needs bytes up to"),
        "data": ("tensor[1] data", "the tensor data", "needs bytes up to"),
    }
    entries: dict[str, Entry] = {
        f"gguf-truncated-{name}": (f"GGUF cut inside {what}", cut(base, field), fragment)
        for name, (field, what, fragment) in truncations.items()}
    first_tensor = [Tensor(b"token_embd.weight", (8, 4)), Tensor(b"output_norm.weight", (8,))]

    def tensors(*changed: Tensor) -> bytes:
        return bytes(gguf(tiny_kvs(), list(changed)).data)

    q = struct.pack
    entries.update({
        "gguf-bad-magic": ("GGUF magic misspelt", patch(base, "magic", b"GGUX"),
                           "not a model format"),
        "gguf-version-0": ("GGUF version 0", patch(base, "version", q("<I", 0)),
                           "GGUF version 0"),
        "gguf-version-4": ("GGUF version from the future", patch(base, "version", q("<I", 4)),
                           "GGUF version 4"),
        "gguf-version-1-truncated": (
            "GGUF v1 (32-bit counts) cut inside its tensor data",
            bytes(gguf(tiny_kvs(), tiny_tensors(), version=1).data[:-8]), "needs bytes up to"),
        "gguf-absurd-tensor-count": ("tensor count 2**40",
                                     patch(base, "tensor count", q("<Q", 1 << 40)),
                                     "absurd tensor count"),
        "gguf-absurd-kv-count": ("metadata count 2**50", patch(base, "kv count", q("<Q", 1 << 50)),
                                 "absurd metadata count"),
        "gguf-kv-count-past-eof": ("metadata count larger than the file can hold",
                                   patch(base, "kv count", q("<Q", 5000)), "cannot fit"),
        "gguf-absurd-key-length": ("key length 2**62", patch(base, "kv[0] key length",
                                                             q("<Q", 1 << 62)),
                                   "absurd string length"),
        "gguf-absurd-string-length": ("string value length 2**40", patch(
            base, f"kv[{model}] value length", q("<Q", 1 << 40)), "absurd string length"),
        "gguf-absurd-array-length": ("array length 2**60", patch(
            base, f"kv[{tokens}] array length", q("<Q", 1 << 60)), "absurd array length"),
        "gguf-absurd-array-item-length": ("string array item length 2**40", patch(
            base, f"kv[{tokens}] item[1] length", q("<Q", 1 << 40)), "absurd string length"),
        "gguf-absurd-dimension": ("a dimension of 2**40", tensors(
            Tensor(b"token_embd.weight", (8, 1 << 40), n_bytes=128)), "absurd shape"),
        "gguf-zero-dimension": ("a dimension of 0", tensors(
            Tensor(b"token_embd.weight", (8, 0), n_bytes=0)), "non-positive dimension"),
        "gguf-absurd-offset": ("tensor data offset 2**60", tensors(
            first_tensor[0], Tensor(b"output_norm.weight", (8,), offset=1 << 60)),
            "needs bytes up to"),
        "gguf-n-dims-0": ("a tensor with no dimensions", tensors(
            Tensor(b"token_embd.weight", (), n_bytes=4)), "has 0 dimensions"),
        "gguf-n-dims-5": ("a tensor with five dimensions", tensors(
            Tensor(b"token_embd.weight", (2, 2, 2, 2, 2))), "has 5 dimensions"),
        "gguf-bad-type-id": ("ggml type id 99", patch(base, "tensor[0] type", q("<I", 99)),
                             "unknown ggml type 99"),
        "gguf-removed-type-id": ("ggml type id 4 (Q4_2, removed from ggml)",
                                 patch(base, "tensor[0] type", q("<I", 4)),
                                 "unknown ggml type 4"),
        "gguf-row-not-whole-blocks": ("a Q4_0 row of 8 values (blocks hold 32)", tensors(
            Tensor(b"token_embd.weight", (8,), Q4_0_TYPE, n_bytes=18)), "not a multiple of 32"),
        "gguf-bad-value-type": ("metadata value type 13", patch(
            base, f"kv[{bos}] value type", q("<I", 13)), "unknown metadata value type 13"),
        "gguf-bad-array-item-type": ("array item type 13", patch(
            base, f"kv[{tokens}] array item type", q("<I", 13)), "unsupported array item type"),
        "gguf-nested-array": ("an array of arrays", patch(
            base, f"kv[{tokens}] array item type", q("<I", ARRAY)),
            "unsupported array item type 9"),
        "gguf-non-utf8-key": ("a key that is not UTF-8", patch(
            base, "kv[1] key", b"general.\xff\xfeme"), "not valid UTF-8"),
        "gguf-non-utf8-string": ("a string value that is not UTF-8", patch(
            base, f"kv[{model}] value", b"ll\xc3\x28a"), "not valid UTF-8"),
        "gguf-non-utf8-tensor-name": ("a tensor name that is not UTF-8", patch(
            base, "tensor[1] name", b"output_norm.\x80eight"), "not valid UTF-8"),
        "gguf-duplicate-key": ("a metadata key written twice", bytes(gguf(
            [*tiny_kvs(), KV(b"llama.context_length", U32, 4096)], tiny_tensors()).data),
            "'llama.context_length' appears twice"),
        "gguf-duplicate-tensor-name": ("two tensors with one name", tensors(
            first_tensor[0], Tensor(b"token_embd.weight", (8,))), "appears twice"),
        "gguf-overlapping-tensors": ("two tensors sharing data bytes", tensors(
            first_tensor[0], Tensor(b"output_norm.weight", (8,), offset=64)), "overlap"),
        "gguf-misaligned-offset": ("a tensor offset off the 32-byte alignment", tensors(
            first_tensor[0], Tensor(b"output_norm.weight", (8,), offset=132)), "misaligned"),
        "gguf-tensor-name-too-long": ("a 64-byte tensor name (ggml keeps 63)", tensors(
            Tensor(b"t" * 64, (8, 4))), "64 bytes long"),
        "gguf-alignment-0": ("general.alignment 0", with_kv(
            KV(b"general.alignment", U32, 0)), "'general.alignment' is uint32 0"),
        "gguf-alignment-not-power-of-two": ("general.alignment 48", with_kv(
            KV(b"general.alignment", U32, 48)), "a power of two"),
        "gguf-alignment-uint64": ("general.alignment stored as uint64 (llama.cpp aborts)",
                                  with_kv(KV(b"general.alignment", U64, 32)),
                                  "stored as a uint32"),
        "gguf-absurd-block-count": ("llama.block_count 4294967295 (planning allocates per "
                                    "layer)", with_kv(KV(b"llama.block_count", U32,
                                                         (1 << 32) - 1)), "block_count"),
        "gguf-context-length-string": ("llama.context_length stored as a string", with_kv(
            KV(b"llama.context_length", STRING, "4096")), "must be an integer"),
        "gguf-head-count-float": ("llama.attention.head_count stored as a float32", with_kv(
            KV(b"llama.attention.head_count", F32, 2.0)), "must be an integer"),
        "gguf-head-count-negative-array": ("a per-layer head count array with -1", with_kv(
            KV(b"llama.attention.head_count", ARRAY, [2, -1], I32)), "per-layer array"),
        "gguf-architecture-not-string": ("general.architecture stored as a uint32", with_kv(
            KV(b"general.architecture", U32, 7)), "must be a string"),
        "gguf-tokens-not-strings": ("tokenizer.ggml.tokens as an array of uint32", with_kv(
            KV(b"tokenizer.ggml.tokens", ARRAY, [1, 2, 3], U32)), "an array of strings"),
        "gguf-bos-id-string": ("tokenizer.ggml.bos_token_id stored as a string", with_kv(
            KV(b"tokenizer.ggml.bos_token_id", STRING, "0")), "must be an integer"),
    })
    return entries


def ggml_entries() -> dict[str, Entry]:
    ggjt, gpt2 = tiny_ggjt(), tiny_gpt2_ggml()
    q = struct.pack
    return {
        "ggjt-truncated-hparams": ("ggjt cut inside its hyper-parameters",
                                   cut(ggjt, "hparam[3]"), "unexpected end of file"),
        "ggjt-absurd-vocab-size": ("ggjt vocabulary size 2**31-1",
                                   patch(ggjt, "hparam[0]", q("<i", (1 << 31) - 1)),
                                   "absurd vocabulary size"),
        "ggjt-token-past-eof": ("ggjt token length past the end of the file",
                                patch(ggjt, "token[1] length", q("<I", 1 << 30)),
                                "vocabulary runs past the end"),
        "ggjt-truncated-data": ("ggjt cut inside its last tensor's data",
                                cut(ggjt, "tensor[1] data"), "runs past the end"),
        "ggjt-bad-type-id": ("ggjt tensor type 99", patch(ggjt, "tensor[0] type", q("<i", 99)),
                             "bad tensor header"),
        "ggjt-n-dims-3": ("ggjt tensor with three dimensions",
                          patch(ggjt, "tensor[1] n_dims", q("<i", 3)), "bad tensor header"),
        "ggjt-zero-dimension": ("ggjt tensor dimension 0",
                                patch(ggjt, "tensor[1] dim[0]", q("<i", 0)),
                                "non-positive dimension"),
        "ggjt-zero-heads": ("ggjt n_head 0", patch(ggjt, "hparam[3]", q("<i", 0)),
                            "n_head is 0"),
        "ggjt-more-layers-than-tensors": ("ggjt n_layer 2**31-1 with two tensors",
                                          patch(ggjt, "hparam[4]", q("<i", (1 << 31) - 1)),
                                          "n_layer"),
        "ggml-bad-type-id": ("GPT-2 GGML second tensor of type 99",
                             patch(gpt2, "tensor[1] type", q("<i", 99)), "bad tensor header"),
        "ggml-duplicate-tensor-name": ("GPT-2 GGML with one tensor name twice", bytes(ggml(
            b"lmgg", (4, 64, 8, 2, 1, 0), VOCAB, [Tensor(b"model/wte", (8, 4)),
                                                 Tensor(b"model/wte", (8,))],
            counted_vocab=True).data), "appears twice"),
        "ggml-truncated-data": ("GPT-2 GGML cut inside its last tensor's data",
                                cut(gpt2, "tensor[1] data"), "runs past the end"),
        "ggml-more-layers-than-tensors": ("GPT-2 GGML n_layer 1000 with two tensors",
                                          patch(gpt2, "hparam[4]", q("<i", 1000)), "n_layer"),
        "ggml-zero-context": ("GPT-2 GGML n_ctx 0", patch(gpt2, "hparam[1]", q("<i", 0)),
                              "n_ctx is 0"),
    }


def onnx_entries() -> dict[str, Entry]:
    def folder(**changes: bytes | None) -> dict[str, bytes]:
        """The tiny folder with files replaced (keyword: the file name, dots written as
        underscores) or, given None, removed; with model_onnx_data, its weights are
        external."""
        files = tiny_folder(external="model_onnx_data" in changes)
        for key, content in changes.items():
            name = key.replace("_", ".")
            if content is None:
                files.pop(name, None)
            else:
                files[name] = content
        return files

    def config(**values: object) -> bytes:
        data = json.loads(tiny_folder()["config.json"])
        data.update(values)
        return json.dumps(data).encode()

    def tokenizer(**values: object) -> bytes:
        data = json.loads(tiny_folder()["tokenizer.json"])
        data.update(values)
        return json.dumps(data).encode()

    def external(*added: tuple[str, str], **entries: str) -> bytes:
        """The tiny model with its external-data entries changed, or more ``added``."""
        import onnx

        model = onnx.load_from_string(tiny_folder(external=True)["model.onnx"])
        tensor = model.graph.initializer[0]
        for entry in tensor.external_data:
            if entry.key in entries:
                entry.value = entries[entry.key]
        for key, value in added:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return bytes(model.SerializeToString())

    data = struct.pack("<32f", *([0.5] * 32))
    return {
        "onnx-garbage-model": ("model.onnx that is not protobuf", folder(
            model_onnx=b"\xff\xff\xff\xffnot a model at all"), "is not an ONNX model"),
        "onnx-empty-model": ("model.onnx of zero bytes", folder(model_onnx=b""),
                             "holds no ONNX graph"),
        "onnx-config-missing": ("no config.json", folder(config_json=None),
                                "has no config.json"),
        "onnx-config-not-json": ("config.json that is not JSON", folder(
            config_json=b"{'model_type': llama"), "is not valid JSON"),
        "onnx-config-is-a-list": ("config.json holding a list", folder(
            config_json=b"[1, 2, 3]"), "holds a JSON list"),
        "onnx-config-hidden-size-string": ("config.json hidden_size as a string", folder(
            config_json=config(hidden_size="4096")), "hidden_size"),
        "onnx-config-absurd-layers": ("config.json num_hidden_layers 10**9", folder(
            config_json=config(num_hidden_layers=10**9)), "num_hidden_layers"),
        "onnx-config-absurd-vocab": ("config.json vocab_size 10**12", folder(
            config_json=config(vocab_size=10**12)), "vocab_size"),
        "onnx-config-deep-nesting": ("config.json nested 3000 deep", folder(
            config_json=b"[" * 3000), "is not valid JSON"),
        "onnx-tokenizer-vocab-string": ("tokenizer.json model.vocab as a string", folder(
            tokenizer_json=tokenizer(model={"type": "BPE", "vocab": "abc"})), "model.vocab"),
        "onnx-tokenizer-added-tokens-shape": ("tokenizer.json added_tokens of strings", folder(
            tokenizer_json=tokenizer(added_tokens=["<s>"])), "added_tokens"),
        "onnx-tokenizer-id-not-int": ("tokenizer.json token id as a string", folder(
            tokenizer_json=tokenizer(model={"type": "BPE", "vocab": {"a": "1"}})),
            "token ids"),
        "onnx-external-data-missing": ("external data file absent", folder(
            model_onnx_data=None), "is not in"),
        "onnx-external-data-truncated": ("external data shorter than its tensor", folder(
            model_onnx_data=data[:64]), "needs bytes up to 128"),
        "onnx-external-data-traversal": ("external data location ../outside.data", folder(
            model_onnx=external(location="../outside.data"), model_onnx_data=data),
            "outside its folder"),
        "onnx-external-data-bad-offset": ("external data offset 'abc'", folder(
            model_onnx=external(offset="abc"), model_onnx_data=data), "not a byte count"),
        "onnx-external-data-name-too-long": ("external data file name of 300 bytes", folder(
            model_onnx=external(location="d" * 300), model_onnx_data=data),
            "cannot be opened"),
        "onnx-external-data-two-locations": ("two external-data location entries", folder(
            model_onnx=external(("location", "../outside.data")), model_onnx_data=data),
            "two external-data 'location' entries"),
    }


def check(path: Path, fragment: str) -> str | None:
    """What reading ``path`` the way load() does raises, if not the expected error."""
    from localllm import ModelFormatError
    from localllm.models.gguf import read_ggml, read_gguf
    from localllm.models.loader import detect_format
    from localllm.support.fuzz.targets import use_description

    reader: Callable[[Path], object]
    try:
        kind = detect_format(path)
        if kind == "onnx":
            from localllm.engines.onnx import describe_folder as reader
        else:
            reader = read_ggml if kind == "ggml" else read_gguf
        use_description(reader(path))  # type: ignore[arg-type]
    except ModelFormatError as exc:
        return None if fragment in str(exc) else f"message lacks {fragment!r}: {exc}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    manifest: dict[str, dict[str, str]] = {}
    failures = []
    for name, (what, content, fragment) in {**gguf_entries(), **ggml_entries(),
                                            **onnx_entries()}.items():
        if isinstance(content, dict):
            path = OUT / name
            path.mkdir()
            for file, data in content.items():
                (path / file).write_bytes(data)
        else:
            path = OUT / f"{name}.bin"
            path.write_bytes(content)
        manifest[path.name] = {"class": what, "error": fragment}
        problem = check(path, fragment)
        if problem:
            failures.append(f"{path.name}: {problem}")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"{OUT}: {len(manifest)} malformed files")
    for failure in failures:
        print("  NOT AS EXPECTED", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
