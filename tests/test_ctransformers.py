"""The ctransformers backend (legacy) on a SentencePiece llama GGUF the suite writes with
random weights: logits against an independent numpy forward pass, generation through the
Model API, and the files it cannot read refused before it is called."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from legacy_ggml import (
    CTX,
    HEADS,
    LAYERS,
    E,
    falcon_forward,
    gpt2_forward,
    gptj_forward,
    make_falcon_weights,
    make_gptj_weights,
    make_mpt_weights,
    make_neox_weights,
    make_weights,
    mpt_forward,
    neox_forward,
    vocabulary,
    write_falcon_ggjt,
    write_ggml,
    write_gpt2_ggml,
    write_gptj_ggml,
    write_mpt_ggml,
    write_neox_ggml,
    write_replit_ggml,
)
from llama_reference import forward
from margins import TINY_NEAR_TIE, assert_greedy_agrees
from synthetic_models import Shape, write_ggjt_copy, write_gguf_v1_copy, write_model

import localllm
from localllm.models.ggml import GGMLFile, read_ggml
from localllm.models.gguf import GGUFFile, ModelFile, read_gguf
from localllm.models.loader import describe_source
from localllm.testing import BackendContract, next_token_logits
from localllm.tokenizer import tokenizer_from_gguf

TINY = Shape("ct-tiny", n_layer=2, n_embd=128, n_head=4, n_head_kv=2, n_ff=352,
             n_vocab=600, dtype="f32", n_ctx_train=512)
IDS = [1, 300, 301, 302, 450, 17, 599, 260, 261, 400]
LEGACY_IDS = [259, 260, 32, 97, 264, 100, 261, 10, 70]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(TINY, tmp_path_factory.mktemp("ct") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_llama_v2(tiny_llama: Path) -> Path:
    v2 = tiny_llama.with_name("tiny-v2.gguf")
    shutil.copy(tiny_llama, v2)
    with open(v2, "r+b") as handle:  # GGUF v2 and v3 differ only in the version field here
        handle.seek(4)
        handle.write(struct.pack("<I", 2))
    return v2


@pytest.fixture(scope="module")
def tiny_llama_v1(tiny_llama: Path) -> Path:
    return write_gguf_v1_copy(tiny_llama, tiny_llama.with_name("tiny-v1.gguf"))


class TestCTransformersContract(BackendContract):
    prompt = "the quick brown fox"

    @pytest.fixture
    def model(self, tiny_llama: Path) -> Iterator[localllm.Model]:
        with localllm.load(tiny_llama, backend="ctransformers", context_length=256, threads=2,
                           chat_template="chatml") as m:
            yield m


@pytest.mark.parametrize("version", ["v3", "v2", "v1"])
def test_logits_match_an_independent_numpy_forward_pass(
        tiny_llama: Path, tiny_llama_v2: Path, tiny_llama_v1: Path, version: str) -> None:
    path = {"v3": tiny_llama, "v2": tiny_llama_v2, "v1": tiny_llama_v1}[version]
    reference = forward(tiny_llama, IDS)  # the same weights in every version
    with localllm.load(path, backend="ctransformers", context_length=256,
                       chat_template="chatml") as model:
        engine = model._engine
        assert engine is not None
        logits = engine.start(IDS)
    error = float(np.abs(logits - reference).max())
    assert int(np.argmax(logits)) == int(np.argmax(reference))
    assert error < 1e-3 * max(1.0, float(np.abs(reference).max())), error


def test_the_oracle_agrees_with_llama_cpp_too(tiny_llama: Path) -> None:
    assert isinstance(describe_source(tiny_llama), GGUFFile)
    with localllm.load(tiny_llama, context_length=256, chat_template="chatml") as model:
        assert model._engine is not None
        logits = next_token_logits(model, IDS)
    reference = forward(tiny_llama, IDS)
    assert int(np.argmax(logits)) == int(np.argmax(reference))
    assert float(np.abs(logits - reference).max()) < 1e-3


def test_generation_matches_llama_cpp_greedy(tiny_llama: Path) -> None:
    """Both runtimes match the numpy oracle to 1e-3 (above), so their greedy tokens agree
    up to a step whose top-2 margin is below TINY_NEAR_TIE, if any: there ggml's old and
    new kernels (and each CPU's) may tip the choice either way."""
    with localllm.load(tiny_llama, backend="ctransformers", context_length=256,
                       chat_template="chatml") as ct, \
            localllm.load(tiny_llama, context_length=256, chat_template="chatml") as ref:
        a = ct.complete("the quick brown fox", max_tokens=12, temperature=0)
        assert_greedy_agrees(a.token_ids, ref, "the quick brown fox", max_tokens=12,
                             near_tie=TINY_NEAR_TIE)


def test_bpe_llama_gguf_is_refused_before_ctransformers_sees_it(
        default_model_path: Path) -> None:
    with pytest.raises(localllm.UnsupportedModelError, match=r"backend='llama\.cpp'") as info:
        localllm.load(default_model_path, backend="ctransformers", context_length=256)
    assert "BPE" in str(info.value)


def test_legacy_llama_and_falcon_files_are_named_as_such(tmp_path: Path) -> None:
    legacy = tmp_path / "old.bin"
    legacy.write_bytes(struct.pack("<I", 0x67676D66) + b"\0" * 64)  # 'ggmf'
    with pytest.raises(localllm.UnsupportedModelError, match="legacy llama GGML"):
        localllm.load(legacy)
    falcon = tmp_path / "falcon.bin"
    falcon.write_bytes(struct.pack("<II", 0x67676363, 1) + b"\0" * 64)  # 'ggcc' v1
    with pytest.raises(localllm.UnsupportedModelError, match="Falcon GGCC"):
        localllm.load(falcon)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    weights = make_weights()
    # named .gguf on purpose: the format comes from the header, never the extension
    return write_gpt2_ggml(tmp_path_factory.mktemp("g2") / "tiny-gpt2.gguf", weights), weights


def test_legacy_gpt2_logits_match_numpy(tiny_gpt2: tuple[Path, dict[str, np.ndarray]]
                                        ) -> None:
    path, weights = tiny_gpt2
    ids = [259, 260, 32, 97, 264, 100, 261, 10, 70]
    with localllm.load(path, chat_template="chatml", context_length=128) as model:
        assert (model.info.backend, model.info.format, model.info.architecture) == (
            "ctransformers", "ggml", "gpt2")
        assert model._engine is not None
        logits = next_token_logits(model, ids)
    reference = gpt2_forward(weights, ids)
    error = float(np.abs(logits - reference).max())
    assert int(np.argmax(logits)) == int(np.argmax(reference))
    assert error < 2e-3 * float(np.abs(reference).max()), error  # ggml's f16 GELU table


def test_gguf_v1_reads_like_v3_and_goes_to_the_runtime_that_still_reads_it(
        tiny_llama: Path, tiny_llama_v1: Path) -> None:
    old, new = read_gguf(tiny_llama_v1), read_gguf(tiny_llama)
    assert old.version == 1 and old.metadata == new.metadata
    assert [(t.name, t.shape, t.type_id) for t in old.tensors] == \
        [(t.name, t.shape, t.type_id) for t in new.tensors]
    with localllm.load(tiny_llama_v1, context_length=256, chat_template="chatml") as model:
        assert model.info.backend == "ctransformers"
        result = model.complete("the fox", max_tokens=4, seed=1)
        # whether a draw ends at the end-of-sequence token depends on the float path
        assert result.usage.completion_tokens == 4 or result.finish_reason == "stop"
    with pytest.raises(localllm.UnsupportedModelError, match="backend='ctransformers'"):
        localllm.load(tiny_llama_v1, backend="llama.cpp", chat_template="chatml")
    with pytest.raises(localllm.UnsupportedModelError, match="backend='ctransformers'"):
        localllm.load(tiny_llama_v1, backend="gpt4all", chat_template="chatml")


def test_llama_ggjt_v3_runs_through_ctransformers(tmp_path: Path) -> None:
    """llama.cpp's pre-GGUF format, read by ctransformers' old llama loader (whose RMSNorm
    epsilon is fixed at 5e-6, so the source model uses it too). Text goes through localllm's
    SentencePiece tokenizer: ctransformers' own aborts the process on this vocabulary."""
    shape = Shape("jt", n_layer=2, n_embd=128, n_head=4, n_head_kv=4, n_ff=352, n_vocab=600,
                  dtype="f32", n_ctx_train=512, rms_eps=5e-6)
    source = write_model(shape, tmp_path / "source.gguf")
    path = write_ggjt_copy(source, tmp_path / "llama-tiny.ggmlv3.f32.bin")
    with localllm.load(path, chat_template="chatml", context_length=256) as model:
        assert (model.info.backend, model.info.format, model.info.architecture) == (
            "ctransformers", "ggml", "llama")
        assert model._engine is not None
        logits = next_token_logits(model, IDS)
        assert model.tokenizer.encode("hello world") == \
            tokenizer_from_gguf(read_gguf(source)).encode("hello world")
        result = model.complete("hello world", max_tokens=5, temperature=0)
        # whether greedy meets the end-of-sequence token is a float-path detail
        assert result.usage.completion_tokens == 5 or result.finish_reason == "stop"
        assert "\u2581" not in result.text
    reference = forward(source, IDS)
    assert int(np.argmax(logits)) == int(np.argmax(reference))
    assert float(np.abs(logits - reference).max()) < 2e-3 * float(np.abs(reference).max())
    old = tmp_path / "old.bin"
    old.write_bytes(path.read_bytes()[:4] + struct.pack("<I", 2) + path.read_bytes()[8:])
    with pytest.raises(localllm.UnsupportedModelError, match="ggjt v2"):
        localllm.load(old, chat_template="chatml")


def test_falcon_ggjt_needs_its_tokenizer_json_then_matches_numpy(tmp_path: Path) -> None:
    """ctransformers' Falcon loader reads BPE merges from tokenizer.json beside the file and
    exit(1)s the process without one (or with one laid out differently): localllm refuses
    first, and the interpreter lives on."""
    weights = make_falcon_weights(seed=6)
    path = write_falcon_ggjt(tmp_path / "falcon-7b.ggmlv3.f32.bin", weights)
    with pytest.raises(localllm.ModelFormatError, match=r"tokenizer\.json"):
        localllm.load(path, chat_template="chatml")
    tokenizer = {"version": "1.0", "added_tokens": [],
                 "model": {"type": "BPE", "vocab": {}, "merges": ["t h", "th e"]}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))  # compact: not HF's
    with pytest.raises(localllm.ModelFormatError, match=r"tokenizer\.json"):
        localllm.load(path, chat_template="chatml")
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer, indent=2))
    assert_matches(legacy_logits(path, "falcon"), falcon_forward(weights, LEGACY_IDS))


def test_legacy_starcoder_is_told_apart_from_gpt2_and_matches_numpy(tmp_path: Path) -> None:
    """Same header and tensor layout as GPT-2; the separate output matrix (or FIM tokens
    in the vocabulary) identifies StarCoder."""
    weights = make_weights(seed=1, starcoder=True)
    path = write_gpt2_ggml(tmp_path / "tiny-starcoder.bin", weights)
    assert_matches(legacy_logits(path, "starcoder"), gpt2_forward(weights, LEGACY_IDS))


@pytest.mark.parametrize("kind", ["gpt_neox", "gpt_neox-sequential", "gptj", "mpt", "replit"])
def test_legacy_gptj_gpt_neox_and_mpt_match_numpy(kind: str, tmp_path: Path) -> None:
    """GPT-J (GPT4All-J), GPT-NeoX (Pythia, Dolly v2), MPT and Replit GGML files,
    recognised from their header layout and tensor names whatever the file is called."""
    if kind in ("mpt", "replit"):
        weights = make_mpt_weights(seed=4)
        write = write_mpt_ggml if kind == "mpt" else write_replit_ggml
        path = write(tmp_path / "model.bin", weights)
        reference = mpt_forward(weights, LEGACY_IDS)
    elif kind == "gptj":
        weights = make_gptj_weights(seed=2)
        path = write_gptj_ggml(tmp_path / "model.bin", weights)
        reference = gptj_forward(weights, LEGACY_IDS)
    else:
        par_res = int(kind == "gpt_neox")
        weights = make_neox_weights(seed=3)
        path = write_neox_ggml(tmp_path / "model.gguf", weights, par_res=par_res)
        reference = neox_forward(weights, LEGACY_IDS, par_res=par_res)
    assert_matches(legacy_logits(path, kind.split("-")[0]), reference)


def legacy_logits(path: Path, architecture: str) -> np.ndarray:
    """Load through the Model API (the architecture recognised from the header), generate
    a few tokens, and return the logits after LEGACY_IDS. The file is described by the
    legacy format's own descriptor, in the metadata names every format shares."""
    described = describe_source(path)
    assert isinstance(described, GGMLFile) and isinstance(described, ModelFile)
    assert (described.format, described.architecture) == ("ggml", architecture)
    with localllm.load(path, chat_template="chatml", context_length=128) as model:
        assert (model.info.backend, model.info.architecture) == ("ctransformers", architecture)
        assert model._engine is not None
        logits = next_token_logits(model, LEGACY_IDS)
        result = model.complete("the fox", max_tokens=4, temperature=0,
                                logit_bias={t: 50.0 for t in (256, 257, 258)})  # " the" …
        assert result.usage.completion_tokens == 4
        assert " " in result.text and "\u2581" not in result.text  # SentencePiece spaces
    return np.asarray(logits)


def assert_matches(logits: np.ndarray, reference: np.ndarray) -> None:
    """Same argmax; max error within ggml's f16 GELU table's reach (0.2 % of the scale)."""
    assert int(np.argmax(logits)) == int(np.argmax(reference))
    assert float(np.abs(logits - reference).max()) < 2e-3 * float(np.abs(reference).max())


def test_mpt_vocabulary_that_would_abort_ctransformers_is_refused(tmp_path: Path) -> None:
    """Raw high bytes as tokens: ctransformers' MPT loader would kill the interpreter."""
    raw = struct.pack("<5i2fi", E, CTX, HEADS, LAYERS, len(vocabulary()), 8.0, 0.0, 0)
    path = write_ggml(tmp_path / "mpt.bin", struct.unpack("<8i", raw), make_mpt_weights(),
                      counted_vocab=False)
    with pytest.raises(localllm.ModelFormatError, match="not valid UTF-8"):
        localllm.load(path, chat_template="chatml")


def test_legacy_ggml_of_another_layout_is_named_not_guessed(tmp_path: Path) -> None:
    """A Falcon-style file (n_vocab, n_embd, n_head, n_head_kv, n_layer, ftype; scored
    tokens; ``transformer.word_embeddings.weight``): not a layout localllm reads."""
    odd = tmp_path / "falcon.bin"
    vocab = vocabulary()
    body = b"".join(struct.pack("<I", len(p)) + p + struct.pack("<f", -1.0) for p in vocab)
    name = b"transformer.word_embeddings.weight"
    odd.write_bytes(struct.pack("<I6i", 0x67676D6C, len(vocab), E, HEADS, 1, LAYERS, 0)
                    + body + struct.pack("<5i", 2, len(name), 0, E, len(vocab)) + name
                    + b"\0" * (4 * E * len(vocab)))
    with pytest.raises(localllm.UnsupportedModelError,
                       match="gpt2, starcoder, gptj, gpt_neox, mpt, replit"):
        localllm.load(odd, chat_template="chatml")


def test_legacy_gpt2_generates_through_the_model_api(
        tiny_gpt2: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, weights = tiny_gpt2
    with localllm.load(path, chat_template="chatml", context_length=128) as model:
        ids = model.tokenizer.encode("the fox", add_special=False)
        result = model.complete("the fox", max_tokens=6, temperature=0)
        seeded = [model.complete("the fox", max_tokens=6, seed=3).text for _ in range(2)]
    expected = int(np.argmax(gpt2_forward(weights, ids)))
    assert result.token_ids[0] == expected
    assert result.usage.completion_tokens == 6 or result.finish_reason == "stop"
    assert seeded[0] == seeded[1]


def test_multibyte_text_gets_a_buffer_for_every_byte(
        tiny_gpt2: tuple[Path, dict[str, np.ndarray]]) -> None:
    """Byte-level vocabulary: 3 tokens per CJK character, more than ctransformers'
    own tokenize() makes room for (one int per character)."""
    path, _ = tiny_gpt2
    text = "日本語のテキスト" * 40
    with localllm.load(path, chat_template="chatml", context_length=128) as model:
        ids = model.tokenizer.encode(text, add_special=False)
        assert len(ids) == len(text.encode()) and model.tokenizer.decode(ids) == text


def test_damaged_legacy_headers_raise_typed_errors(
        tiny_gpt2: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    """900 random corruptions of GPT-2, GPT-NeoX and Falcon headers: each file is read or
    refused with a localllm error, never another exception or a hang; a negative tensor
    dimension (which would walk the parser backwards) is refused."""
    rng = np.random.default_rng(7)
    sources = [tiny_gpt2[0], write_neox_ggml(tmp_path / "neox.bin", make_neox_weights()),
               write_falcon_ggjt(tmp_path / "falcon.bin", make_falcon_weights())]
    case = tmp_path / "case.bin"
    for source in sources:
        data = source.read_bytes()
        for _ in range(300):
            damaged = bytearray(data)
            for pos in rng.integers(4, 4000, size=int(rng.integers(1, 5))):
                damaged[int(pos)] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                damaged = damaged[:int(rng.integers(8, len(damaged)))]
            case.write_bytes(bytes(damaged))
            with contextlib.suppress(localllm.ModelFormatError, localllm.UnsupportedModelError):
                read_ggml(case)
    data = bytearray(tiny_gpt2[0].read_bytes())
    at = data.find(b"model/ln_f/g")
    struct.pack_into("<i", data, at - 4, -64)  # the 1-D tensor's only dimension
    case.write_bytes(bytes(data))
    with pytest.raises(localllm.ModelFormatError, match="non-positive dimension"):
        read_ggml(case)


def test_truncated_legacy_file_is_refused(tiny_gpt2: tuple[Path, dict[str, np.ndarray]],
                                          tmp_path: Path) -> None:
    broken = tmp_path / "broken.bin"
    broken.write_bytes(tiny_gpt2[0].read_bytes()[:5000])
    with pytest.raises(localllm.ModelFormatError, match="truncated"):
        localllm.load(broken, chat_template="chatml")
