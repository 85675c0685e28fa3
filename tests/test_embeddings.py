"""Embeddings: the default embedder (all-MiniLM-L6-v2) through llama.cpp (f16 and q8_0
GGUF converted here from the original safetensors) and through onnxruntime (the int8 ONNX
export), each checked against a numpy forward pass of the original fp32 weights on 50
sentences. Then the API's contract: normalisation, batching, too-long inputs, errors, a
decoder with pooling, threads and asyncio. Real models and runtimes throughout."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bert_oracle import BertOracle

import localllm
from localllm import cli
from localllm.models.convert_bert import convert_bert_to_gguf
from localllm.models.store import PINNED_MINILM_F16, ModelStore

pytestmark = pytest.mark.real_model
SENTENCES = (Path(__file__).parent / "data" / "embed_sentences.txt").read_text(
    encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def st_folder() -> Path:
    return ModelStore().ensure("all-minilm-l6-v2-st").parent


@pytest.fixture(scope="module")
def oracle(st_folder: Path) -> BertOracle:
    return BertOracle(st_folder)


@pytest.fixture(scope="module")
def f16() -> Iterator[localllm.Model]:
    with localllm.load("all-minilm-l6-v2", threads=2) as model:
        yield model


@pytest.fixture(scope="module")
def onnx_int8() -> Iterator[localllm.Model]:
    with localllm.load("all-minilm-l6-v2-onnx-int8", threads=2) as model:
        yield model


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def oracle_vectors(model: localllm.Model, oracle: BertOracle) -> np.ndarray:
    ids = [model.tokenizer.encode(s, parse_special=False) for s in SENTENCES]
    return oracle.embed(ids)


def test_sentence_set_has_fifty_varied_inputs() -> None:
    assert len(SENTENCES) == 50 and len(set(SENTENCES)) == 50
    assert any(not s.isascii() for s in SENTENCES)


def test_f16_gguf_matches_the_numpy_oracle(f16: localllm.Model, oracle: BertOracle) -> None:
    got = f16.embed(SENTENCES, normalize=False).vectors
    worst = cosines(got, oracle_vectors(f16, oracle)).min()
    print(f"\nllama.cpp f16 vs oracle: worst cosine {worst:.6f}")
    assert worst >= 0.9999


def test_q8_0_gguf_matches_the_numpy_oracle(st_folder: Path, oracle: BertOracle,
                                            tmp_path: Path) -> None:
    path = convert_bert_to_gguf(st_folder, tmp_path / "minilm-q8_0.gguf", dtype="q8_0")
    with localllm.load(path, threads=2) as q8:
        got = q8.embed(SENTENCES).vectors
        worst = cosines(got, oracle_vectors(q8, oracle)).min()
    print(f"\nllama.cpp q8_0 vs oracle: worst cosine {worst:.6f}")
    assert worst >= 0.999


def test_onnx_int8_matches_the_numpy_oracle(onnx_int8: localllm.Model,
                                            oracle: BertOracle) -> None:
    got = onnx_int8.embed(SENTENCES).vectors
    worst = cosines(got, oracle_vectors(onnx_int8, oracle)).min()
    print(f"\nonnxruntime int8 vs oracle: worst cosine {worst:.6f}")
    assert worst >= 0.995
    assert onnx_int8.info.backend == "onnxruntime" and onnx_int8.info.pooling == "mean"


def test_both_runtimes_tokenize_alike(f16: localllm.Model,
                                      onnx_int8: localllm.Model) -> None:
    for sentence in SENTENCES:
        ids = f16.tokenizer.encode(sentence, parse_special=False)
        assert ids == onnx_int8.tokenizer.encode(sentence, parse_special=False), sentence
        assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]


def test_f16_conversion_is_deterministic_and_pinned(st_folder: Path, tmp_path: Path) -> None:
    out = convert_bert_to_gguf(st_folder, tmp_path / "again.gguf", dtype="f16",
                               name="all-MiniLM-L6-v2")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == PINNED_MINILM_F16
    assert not list(tmp_path.glob("*.part"))


def test_vectors_are_unit_length_and_similar_texts_are_close(f16: localllm.Model) -> None:
    result = f16.embed(["A cat sits on the mat.", "A kitten is resting on a rug.",
                        "Interest rates were left unchanged by the central bank."])
    v = result.vectors
    assert v.dtype == np.float32 and v.shape == (3, 384) and result.dim == 384
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.5 > 0.2 > v[0] @ v[2]
    raw = f16.embed("A cat sits on the mat.", normalize=False).vectors[0]
    assert abs(np.linalg.norm(raw) - 1.0) > 0.1 and not result.truncated
    assert np.allclose(raw / np.linalg.norm(raw), v[0], atol=1e-5)
    expected = sum(len(f16.tokenizer.encode(s, parse_special=False)) for s in
                   ["A cat sits on the mat.", "A kitten is resting on a rug.",
                    "Interest rates were left unchanged by the central bank."])
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected


def test_batched_equals_one_at_a_time(f16: localllm.Model, onnx_int8: localllm.Model) -> None:
    for model in (f16, onnx_int8):
        together = model.embed(SENTENCES).vectors
        alone = np.stack([model.embed(s).vectors[0] for s in SENTENCES])
        assert cosines(together, alone).min() > 0.99999, model.info.backend


def test_too_long_input_is_an_error_unless_a_policy_cuts_it(f16: localllm.Model) -> None:
    long = "alpha beta gamma " * 300  # ~900 tokens; the model reads 512
    with pytest.raises(localllm.ContextOverflowError, match="texts\\[1\\] has"):
        f16.embed(["short", long])
    n = len(f16.tokenizer.encode(long, parse_special=False))
    for policy in ("truncate_right", "truncate_left"):
        result = f16.embed(["short", long], overflow=policy)
        assert set(result.truncated) == {1}
        cut = result.truncated[1]
        assert cut.policy == policy and cut.dropped_tokens == n - 512
        assert "alpha" in cut.dropped_text
    body = f16.tokenizer.encode(long, add_special=False, parse_special=False)
    kept = {"truncate_right": body[:510], "truncate_left": body[-510:]}  # + [CLS], [SEP]
    for policy, ids in kept.items():
        cut_vector = f16.embed(long, overflow=policy).vectors[0]  # type: ignore[arg-type]
        assert f16.embed(f16.tokenizer.decode(ids)).vectors[0] @ cut_vector > 0.9999


def test_bad_inputs_are_typed_errors(f16: localllm.Model, shared_model: localllm.Model
                                     ) -> None:
    with pytest.raises(localllm.ConfigError, match="texts\\[1\\] must be str"):
        f16.embed(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(localllm.ConfigError, match="overflow"):
        f16.embed("x", overflow="drop_oldest")  # type: ignore[arg-type]
    with pytest.raises(localllm.ConfigError, match="a str or a list"):
        f16.embed(42)  # type: ignore[arg-type]
    assert f16.embed([]).vectors.shape == (0, 384)
    with pytest.raises(localllm.UnsupportedFeatureError, match="embedding model"):
        f16.complete("Once upon a time")
    with pytest.raises(localllm.UnsupportedFeatureError, match="generative model"):
        shared_model.embed("hello")
    assert shared_model.info.pooling is None and f16.info.pooling == "mean"
    with pytest.raises(localllm.ConfigError, match="pooling"):
        localllm.load("all-minilm-l6-v2", pooling="max")


def test_a_decoder_loaded_with_pooling_embeds(default_model_path: Path) -> None:
    with localllm.load(default_model_path, pooling="last", threads=2) as last, \
            localllm.load(default_model_path, pooling="mean", threads=2) as mean:
        a = last.embed(["The sea is calm.", "The ocean is quiet.", "Tax forms are due."])
        b = mean.embed("The sea is calm.")
        assert a.vectors.shape == (3, 576)  # SmolLM2-135M's hidden size
        assert np.isfinite(a.vectors).all() and a.pooling == "last" and b.pooling == "mean"
        assert np.allclose(last.embed("The sea is calm.").vectors[0], a.vectors[0],
                           atol=1e-4)
        assert float(a.vectors[0] @ b.vectors[0]) < 0.999  # another pooling, another vector


def test_threads_and_asyncio_share_an_embedder(f16: localllm.Model) -> None:
    expected = f16.embed(SENTENCES).vectors
    results: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        results[i] = f16.embed(SENTENCES[i::4]).vectors

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(4):
        assert cosines(results[i], expected[i::4]).min() > 0.99999

    async def main() -> list[np.ndarray]:
        parts = await asyncio.gather(*(f16.aembed(SENTENCES[i::2]) for i in range(2)))
        return [p.vectors for p in parts]

    for i, got in enumerate(asyncio.run(main())):
        assert cosines(got, expected[i::2]).min() > 0.99999


def test_converter_refuses_bad_folders(st_folder: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(localllm.ModelFormatError, match=r"config\.json"):
        convert_bert_to_gguf(empty, tmp_path / "x.gguf")
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    config = (st_folder / "config.json").read_text().replace('"bert"', '"roberta"')
    (roberta / "config.json").write_text(config)
    with pytest.raises(localllm.UnsupportedModelError):
        convert_bert_to_gguf(roberta, tmp_path / "x.gguf")
    with pytest.raises(localllm.UnsupportedModelError, match="dtype"):
        convert_bert_to_gguf(st_folder, tmp_path / "x.gguf", dtype="q4_0")
    assert not list(tmp_path.glob("*.gguf*"))


def test_convert_command_writes_a_loadable_gguf(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "minilm-q8.gguf"
    assert cli.main(["convert", "all-minilm-l6-v2-st", str(out), "--dtype", "q8_0"]) == 0
    assert str(out) in capsys.readouterr().out
    with localllm.load(out) as model:
        assert model.info.pooling == "mean" and model.embed("hi").dim == 384
