"""A tokenizer that belongs to localllm, not to a runtime.

:func:`tokenizer_from_gguf` rebuilds a model's tokenizer from the GGUF metadata alone
(tokens, merges, scores, token types, ``tokenizer.ggml.pre``) on Hugging Face's
``tokenizers`` library, reproducing llama.cpp's pre-tokenizer regexes, so the same file
gives the same token ids whichever runtime executes it. :func:`tokenizer_from_folder`
loads a Hugging Face ``tokenizer.json`` (+ ``tokenizer_config.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ModelFormatError, UnsupportedModelError
from ._text import IncrementalDetokenizer
from .models.gguf import ModelFile

if TYPE_CHECKING:
    import tokenizers

__all__ = ["LocalTokenizer", "StreamDecoder", "tokenizer_from_folder", "tokenizer_from_gguf"]

_GPT2 = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)")
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
           r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> the regexes llama.cpp applies one after another (llama-vocab.cpp)
PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt-2": (_GPT2,), "gpt2": (_GPT2,), "mpt": (_GPT2,), "olmo": (_GPT2,), "jais": (_GPT2,),
    "starcoder": (r"\p{N}", _GPT2), "smollm": (r"\p{N}", _GPT2), "refact": (r"\p{N}", _GPT2),
    "command-r": (r"\p{N}", _GPT2), "codeshell": (r"\p{N}", _GPT2),
    "exaone": (r"\p{N}", _GPT2), "minerva-7b": (r"\p{N}", _GPT2),
    "llama3": (_LLAMA3,), "llama-bpe": (_LLAMA3,), "llama-v3": (_LLAMA3,), "dbrx": (_LLAMA3,),
    "smaug-bpe": (_LLAMA3,),
    "qwen2": (_QWEN2,), "stablelm2": (_QWEN2,),
}

# llama.cpp token types
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


class LocalTokenizer:
    """Text ↔ token ids with the model's own vocabulary, independent of any runtime."""

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_id: int | None,
                 eos_id: int | None, add_bos: bool, add_eos: bool, kind: str,
                 strip_leading_space: bool = False, chat_template: str | None = None,
                 eog_ids: Sequence[int] = ()) -> None:
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.kind = kind
        self.chat_template = chat_template
        self.eog_ids = frozenset(eog_ids)
        self._strip_leading_space = strip_leading_space
        self._bytes_cache: dict[int, bytes] = {}

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True
               ) -> list[int]:
        """Token ids of ``text``; ``parse_special`` turns ``<|im_end|>``-like text into
        control tokens (as llama.cpp's ``parse_special``)."""
        backend = self.backend
        backend.encode_special_tokens = not parse_special
        ids: list[int] = backend.encode(text, add_special_tokens=False).ids
        if add_special:
            if self.add_bos and self.bos_id is not None:
                ids.insert(0, self.bos_id)
            if self.add_eos and self.eos_id is not None:
                ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, parse_special: bool = True
                     ) -> list[list[int]]:
        self.backend.encode_special_tokens = not parse_special
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token adds to the output (control tokens add none)."""
        cached = self._bytes_cache.get(token)
        if cached is None:
            cached = self._bytes_cache[token] = self._compute_bytes(token)
        return cached

    def _compute_bytes(self, token: int) -> bytes:
        piece = self.backend.id_to_token(token)
        if piece is None:
            raise IndexError(f"token id {token} is not in the vocabulary")
        added = self._added.get(token)
        if added is not None:
            return b"" if added else piece.encode("utf-8")
        if self.kind == "bpe":
            return bytes(_BYTE_DECODER.get(ch, ord(ch) & 0xFF) for ch in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    @cached_property
    def _added(self) -> dict[int, bool]:
        """id -> special? for added tokens (special ones render as nothing)."""
        return {i: bool(t.special) for i, t in self.backend.get_added_tokens_decoder().items()}

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``: the bytes of every token, UTF-8 decoded as a whole."""
        data = b"".join(self.token_bytes(t) for t in ids)
        text = data.decode("utf-8", errors="replace")
        if self._strip_leading_space and text.startswith(" "):
            text = text[1:]
        return text

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def to_json(self) -> str:
        """The tokenizer as Hugging Face ``tokenizer.json`` text."""
        return str(self.backend.to_str())


class StreamDecoder:
    """Incremental detokenizer: UTF-8 safe, with SentencePiece's leading-space rule."""

    def __init__(self, tokenizer: LocalTokenizer) -> None:
        self._tok = tokenizer
        self._detok = IncrementalDetokenizer()
        self._first = tokenizer._strip_leading_space

    def feed(self, token: int) -> str:
        text = self._detok.feed(self._tok.token_bytes(token))
        if self._first and text:
            self._first = False
            if text.startswith(" "):
                text = text[1:]
        return text

    def flush(self) -> str:
        return self._detok.flush()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte ↔ printable character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


def _import_tokenizers() -> Any:
    from ._errors import import_runtime

    return import_runtime("localllm tokenizer", "tokenizers", "all")


#: token texts llama.cpp's vocabulary loader treats as control tokens whatever type the
#: file gives them (end-of-turn, end-of-generation and fill-in-the-middle markers; it logs
#: "control-looking token ... its type will be overridden"): unless parse_special is set,
#: text spelling them is tokenized as text. Gemma 3 stores "</s>" as user-defined, say.
CONTROL_LOOKING = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<｜end▁of▁sentence｜>",
    "<end_of_utterance>", "<|eom_id|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "</s>", "<eos>", "<turn|>", "<|tool_response>", "[e~[",
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
    "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
    "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>",
    "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
    "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>"})


def tokenizer_from_gguf(gguf: ModelFile) -> LocalTokenizer:
    """Build the tokenizer described by a GGUF file's metadata."""
    md = gguf.metadata
    model = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ModelFormatError(f"{gguf.path} has no tokenizer.ggml.tokens")
    types = list(md.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))
    for i, tok in enumerate(tokens):
        if tok in CONTROL_LOOKING and types[i] in (_NORMAL, _USER_DEFINED):
            types[i] = _CONTROL
    if model == "gpt2":
        backend, kind, strip = _bpe_backend(gguf, tokens, types), "bpe", False
    elif model == "llama":
        backend, kind = _spm_backend(gguf, tokens, types), "spm"
        strip = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    else:
        raise UnsupportedModelError(
            f"{gguf.path}: tokenizer model {model!r} is not supported by the localllm "
            "tokenizer (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")
    bos = md.get("tokenizer.ggml.bos_token_id")
    eos = md.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", model == "llama"))
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
    eog = {i for i in (eos, md.get("tokenizer.ggml.eot_token_id"),
                       md.get("tokenizer.ggml.eom_token_id")) if isinstance(i, int)}
    # llama.cpp also ends generation on these control tokens when the vocab has them
    for i, (tok, typ) in enumerate(zip(tokens, types, strict=False)):
        if typ == _CONTROL and tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>",
                                       "<end_of_turn>", "<|end|>", "</s>"):
            eog.add(i)
    return LocalTokenizer(backend, bos_id=bos, eos_id=eos, add_bos=add_bos, add_eos=add_eos,
                          kind=kind, strip_leading_space=strip,
                          chat_template=gguf.chat_template, eog_ids=sorted(eog))


def _special_tokens(tokens: Sequence[str], types: Sequence[int]) -> list[Any]:
    tk = _import_tokenizers()
    out = []
    for tok, typ in zip(tokens, types, strict=False):
        if typ in (_CONTROL, _UNKNOWN):
            out.append(tk.AddedToken(tok, special=True, normalized=False))
        elif typ == _USER_DEFINED:
            out.append(tk.AddedToken(tok, special=False, normalized=False))
    return out


def _bpe_backend(gguf: ModelFile, tokens: Sequence[str], types: Sequence[int]) -> Any:
    tk = _import_tokenizers()
    pre = str(gguf.metadata.get("tokenizer.ggml.pre", "default"))
    regexes = PRE_TOKENIZER_REGEXES.get(pre)
    if regexes is None:
        raise UnsupportedModelError(
            f"{gguf.path}: pre-tokenizer {pre!r} is not known to the localllm tokenizer; "
            f"known: {', '.join(sorted(PRE_TOKENIZER_REGEXES))}")
    merges = [tuple(m.split(" ", 1)) for m in gguf.metadata.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = tk.models.BPE(vocab=vocab, merges=merges, ignore_merges=False)
    backend = tk.Tokenizer(bpe)
    splits = [tk.pre_tokenizers.Split(tk.Regex(r), behavior="isolated") for r in regexes]
    backend.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [*splits, tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = tk.decoders.ByteLevel()
    backend.add_tokens(_special_tokens(tokens, types))
    return backend


def _spm_backend(gguf: ModelFile, tokens: Sequence[str], types: Sequence[int]) -> Any:
    """SentencePiece vocabularies as BPE with score-ranked merges (as HF's Llama converter)."""
    tk = _import_tokenizers()
    scores = gguf.metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges: list[tuple[float, int, str, str]] = []
    for tok, score in zip(tokens, scores, strict=False):
        local = []
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        merges.extend((-score, vocab[tok], left, right) for _, _, left, right in local)
    merges.sort(key=lambda m: (m[0], m[1]))
    unk = gguf.metadata.get("tokenizer.ggml.unknown_token_id")
    bpe = tk.models.BPE(vocab=vocab, merges=[(m[2], m[3]) for m in merges],
                        unk_token=tokens[unk] if isinstance(unk, int) else None,
                        byte_fallback=True, fuse_unk=True)
    backend = tk.Tokenizer(bpe)
    steps = [tk.normalizers.Replace(" ", "\u2581")]
    if gguf.metadata.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, tk.normalizers.Prepend("\u2581"))
    backend.normalizer = tk.normalizers.Sequence(steps)
    backend.decoder = tk.decoders.Sequence([
        tk.decoders.Replace("\u2581", " "), tk.decoders.ByteFallback(), tk.decoders.Fuse()])
    backend.add_tokens(_special_tokens(tokens, types))
    return backend


def tokenizer_from_folder(folder: str | Path) -> LocalTokenizer:
    """Load ``tokenizer.json`` (+ ``tokenizer_config.json``) from a Hugging Face folder."""
    tk = _import_tokenizers()
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelFormatError(f"{folder} has no tokenizer.json")
    backend = tk.Tokenizer.from_file(str(path))
    config: dict[str, Any] = {}
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))

    def token_id(key: str) -> int | None:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return backend.token_to_id(value) if isinstance(value, str) else None

    spec = json.loads(backend.to_str())
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or \
        "ByteLevel" in json.dumps(spec.get("decoder"))
    # SentencePiece-style: a "▁" is prepended on encoding, so decoding drops one space
    prepends = "Prepend" in json.dumps(spec.get("normalizer")) or \
        '"prepend_scheme": "first"' in json.dumps(spec.get("pre_tokenizer"))
    template = config.get("chat_template")
    return LocalTokenizer(
        backend, bos_id=token_id("bos_token"), eos_id=token_id("eos_token"),
        add_bos=bool(config.get("add_bos_token", False)),
        add_eos=bool(config.get("add_eos_token", False)),
        kind="bpe" if byte_level else "spm", strip_leading_space=not byte_level and prepends,
        chat_template=template if isinstance(template, str) else None,
        # localllm's converter records every end-of-generation id; else the EOS token
        eog_ids=config.get("localllm_eog_ids") or
        [i for i in (token_id("eos_token"),) if i is not None])
