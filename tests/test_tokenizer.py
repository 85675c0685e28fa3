"""The localllm tokenizer against llama.cpp's on the same files (real default model, and a
SentencePiece vocabulary the suite writes), plus streaming and folder loading."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from spm_vocab import write_spm_vocab

import localllm
from localllm.models.gguf import read_gguf
from localllm.support.corpus import tokenizer_corpus
from localllm.tokenizer import LocalTokenizer, tokenizer_from_folder, tokenizer_from_gguf

CORPUS = tokenizer_corpus(2000)


@pytest.fixture(scope="module")
def bpe(default_model_path: Path) -> LocalTokenizer:
    return tokenizer_from_gguf(read_gguf(default_model_path))


class VocabOnly:
    """llama.cpp's tokenizer on a GGUF loaded with vocab_only (no weights needed)."""

    def __init__(self, path: Path) -> None:
        import llama_cpp as lib

        self.lib = lib
        params = lib.llama_model_default_params()
        params.vocab_only = True
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, "llama.cpp could not load the vocabulary"
        self.vocab = lib.llama_model_get_vocab(self.model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        size = len(data) + 8
        buf = (self.lib.llama_token * size)()
        n = self.lib.llama_tokenize(self.vocab, data, len(data), buf, size, add_special,
                                    parse_special)
        return list(buf[:n])

    def close(self) -> None:
        self.lib.llama_model_free(self.model)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spm_vocab(tmp_path_factory.mktemp("spm") / "spm.gguf")


def agreement(ours: Any, theirs: Any, parse_special: bool) -> tuple[float, list[str]]:
    differ = [s for s in CORPUS
              if ours(s, add_special=True, parse_special=parse_special)
              != theirs(s, add_special=True, parse_special=parse_special)]
    return 1 - len(differ) / len(CORPUS), differ


@pytest.mark.parametrize("parse_special", [False, True])
def test_bpe_ids_agree_with_llama_cpp(bpe: LocalTokenizer, shared_model: localllm.Model,
                                      parse_special: bool) -> None:
    engine = shared_model._engine
    assert engine is not None
    rate, differ = agreement(bpe.encode, engine.tokenize, parse_special)
    assert rate >= 0.999, differ[:5]


@pytest.mark.parametrize("parse_special", [False, True])
def test_spm_ids_agree_with_llama_cpp(spm_path: Path, parse_special: bool) -> None:
    ref = VocabOnly(spm_path)
    try:
        rate, differ = agreement(tokenizer_from_gguf(read_gguf(spm_path)).encode,
                                 ref.tokenize, parse_special)
    finally:
        ref.close()
    assert rate >= 0.999, differ[:5]


def test_round_trip_is_exact_for_the_whole_corpus(bpe: LocalTokenizer, spm_path: Path) -> None:
    spm = tokenizer_from_gguf(read_gguf(spm_path))
    for tok in (bpe, spm):
        for s in CORPUS:
            assert tok.decode(tok.encode(s, add_special=False, parse_special=False)) == s


def test_special_tokens_parse_only_when_asked(bpe: LocalTokenizer) -> None:
    assert bpe.encode("<|im_end|>", add_special=False) == [2]
    plain = bpe.encode("<|im_end|>", add_special=False, parse_special=False)
    assert 2 not in plain and len(plain) > 1
    assert bpe.decode([1, 9690, 2]) == bpe.decode([9690])  # control tokens render as nothing


def stream(tok: LocalTokenizer, ids: list[int]) -> Iterator[str]:
    decoder = tok.stream_decoder()
    for t in ids:
        yield decoder.feed(t)
    yield decoder.flush()


def test_stream_decoder_is_utf8_safe_and_follows_spm_space_rules(
        bpe: LocalTokenizer, spm_path: Path) -> None:
    text = "naïve 東京 🙂 done"
    ids = bpe.encode(text, add_special=False)
    pieces = list(stream(bpe, ids))
    assert "\ufffd" not in "".join(pieces) and "".join(pieces) == text
    assert any(p == "" for p in pieces)  # some token carried half a character
    spm = tokenizer_from_gguf(read_gguf(spm_path))
    ids = spm.encode("the fox", add_special=True)
    assert ids[0] == 1  # BOS added, as the file asks
    assert "".join(stream(spm, ids)) == "the fox"  # the SentencePiece prefix space is dropped


def test_hugging_face_folder_round_trip(bpe: LocalTokenizer, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(bpe.to_json(), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
        "add_bos_token": False, "chat_template": "{{ messages[0]['content'] }}"}))
    folder = tokenizer_from_folder(tmp_path)
    assert folder.eos_id == 2 and folder.chat_template == "{{ messages[0]['content'] }}"
    for s in CORPUS[:300]:
        assert folder.encode(s) == bpe.encode(s)
        assert folder.decode(folder.encode(s, parse_special=False)) == s
    with pytest.raises(localllm.ModelFormatError, match=r"tokenizer\.json"):
        tokenizer_from_folder(tmp_path / "nothing")


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("mystery-regex")
    w.add_token_list(["a", "b"])
    w.add_token_merges(["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(localllm.UnsupportedModelError, match="mystery-regex"):
        tokenizer_from_gguf(read_gguf(tmp_path / "x.gguf"))
