"""sentence-transformers BERT folder → GGUF that llama.cpp runs as an embedding model.

Why: llama.cpp's ``convert_hf_to_gguf.py`` needs torch and transformers, too much to pull in
for a 90 MB embedding model. This does the same with numpy and ``gguf`` only, following that
script's ``BertModel`` path (tensor names, which tensors stay F32, the phantom-space
WordPiece vocabulary, special tokens) so llama.cpp gives the vectors it would give for its
own conversion. The output is deterministic: the same folder always gives the same bytes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import BackendUnavailableError, ModelFormatError, UnsupportedModelError

__all__ = ["DTYPES", "convert_bert_to_gguf", "read_safetensors"]

DTYPES = ("f32", "f16", "q8_0")
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType ALL_F32, MOSTLY_F16, ...
_POOLING = {"mean": 1, "cls": 2}  # gguf.PoolingType
_ARCHITECTURES = ("BertModel", "BertForMaskedLM")
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5  # gguf.TokenType
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8",
              "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """All tensors of a ``.safetensors`` file, by name; BF16 comes back as float32.

    The format (8-byte little-endian header length, JSON header with each tensor's dtype,
    shape and byte range, raw data) needs no library, so the ``safetensors`` package stays
    out. Every range is checked so a truncated download fails with a clear message.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(raw) < 8:
        raise ModelFormatError(f"{path}: {len(raw)} bytes, too short for a safetensors file")
    (n_header,) = struct.unpack("<Q", raw[:8])
    if n_header > min(len(raw) - 8, 100 << 20):
        raise ModelFormatError(f"{path}: header length {n_header} does not fit the file "
                               f"({len(raw)} bytes); truncated or not safetensors")
    try:
        header = json.loads(raw[8:8 + n_header])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path}: header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: header is not a JSON object")
    data = memoryview(raw)[8 + n_header:]
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            np_dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(n) for n in info["shape"])
            start, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{path}: tensor {name!r} has a bad header entry "
                                   f"{info!r} (unknown dtype or missing field)") from exc
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=0) < 0 or not 0 <= start <= end <= len(data) or \
                end - start != count * np_dtype.itemsize:
            raise ModelFormatError(f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) "
                                   f"has bytes [{start}, {end}) outside or unlike the "
                                   f"{len(data)}-byte data section; truncated file?")
        array = np.frombuffer(data[start:end], dtype=np_dtype).reshape(shape)
        if info["dtype"] == "BF16":  # the top half of an IEEE float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    return out


def _json(path: Path, kind: type = dict) -> Any:
    """The JSON object (or list) in ``path``; a missing or unparsable file names itself."""
    if not path.is_file():
        raise ModelFormatError(f"{path} is missing; a sentence-transformers BERT folder needs it")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(value, kind):
        raise ModelFormatError(f"{path} does not hold a JSON {kind.__name__}")
    return value


def _hparams(src: Path) -> dict[str, Any]:
    """config.json, refused unless it describes a BERT encoder llama.cpp's graph matches."""
    cfg: dict[str, Any] = _json(src / "config.json")
    archs = cfg.get("architectures") or ["BertModel"]
    if cfg.get("model_type") != "bert" or not set(archs) <= set(_ARCHITECTURES):
        raise UnsupportedModelError(
            f"{src / 'config.json'}: model_type {cfg.get('model_type')!r}, architectures "
            f"{archs} is not a plain BERT encoder ({', '.join(_ARCHITECTURES)})")
    for key, want in (("position_embedding_type", "absolute"), ("hidden_act", "gelu")):
        if cfg.get(key, want) != want:  # llama.cpp's BERT graph only has these
            raise UnsupportedModelError(f"{src / 'config.json'}: {key} {cfg[key]!r} is not "
                                        f"supported; llama.cpp's BERT needs {want!r}")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "intermediate_size", "max_position_embeddings", "layer_norm_eps"):
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool):
            raise ModelFormatError(f"{src / 'config.json'}: {key!r} is missing or not a number")
    return cfg


def _pooling_type(src: Path) -> int:
    """The pooling sentence-transformers applies, from the Pooling module's config."""
    pool_dir = "1_Pooling"
    if (src / "modules.json").is_file():
        modules = _json(src / "modules.json", list)
        pool_dir = next((str(m.get("path")) for m in modules if isinstance(m, dict)
                         and str(m.get("type", "")).endswith("Pooling")), pool_dir)
    path = src / pool_dir / "config.json"
    pooling = _json(path)
    mode = ("mean" if pooling.get("pooling_mode_mean_tokens") else
            "cls" if pooling.get("pooling_mode_cls_token") else pooling.get("pooling_mode"))
    if mode in _POOLING:
        return _POOLING[mode]
    raise UnsupportedModelError(f"{path}: only mean or CLS pooling converts to llama.cpp; "
                                f"this config asks for {pooling}")


def _vocab(src: Path, n_vocab: int) -> tuple[list[str], list[int], Any, dict[str, int]]:
    """Tokens and types as llama.cpp's converter makes them, the normalizer settings, and
    (vocab.txt only) the special ids tokenizer_config.json names.

    llama.cpp's WordPiece wants "phantom space" pieces: a word-initial piece is stored as
    "▁piece", a "##piece" continuation as "piece", control tokens as they are; ids missing
    from the vocabulary become "[PAD<id>]" of type UNUSED."""
    added: dict[str, tuple[int, bool]] = {}  # content -> (id, special)
    specials: dict[str, int] = {}
    if (src / "tokenizer.json").is_file():
        tok_json = _json(src / "tokenizer.json")
        model = tok_json["model"] if isinstance(tok_json.get("model"), dict) else {}
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise UnsupportedModelError(f"{src / 'tokenizer.json'}: model type "
                                        f"{model.get('type')!r} is not a WordPiece vocabulary")
        vocab: dict[str, int] = dict(model["vocab"])
        normalizer = tok_json.get("normalizer")
        try:
            for tok in tok_json.get("added_tokens") or []:
                added[str(tok["content"])] = (int(tok["id"]), bool(tok.get("special")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{src / 'tokenizer.json'}: an added_tokens entry lacks "
                                   f"an integer id or a content ({exc!r})") from exc
    elif (src / "vocab.txt").is_file():
        try:
            lines = (src / "vocab.txt").read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"{src / 'vocab.txt'} is not readable UTF-8 ({exc})") from exc
        vocab = {tok: i for i, tok in enumerate(lines[:-1] if lines[-1] == "" else lines)}
        config_path = src / "tokenizer_config.json"
        cfg = _json(config_path) if config_path.is_file() else {}
        for key, value in cfg.items():  # transformers registers these as special added tokens
            if key.endswith("_token") and isinstance(value, str) and value in vocab:
                added[value] = (vocab[value], True)
                specials[{"cls": "bos"}.get(key[:-6], key[:-6])] = vocab[value]
        if "sep" in specials:  # what gguf-py's SpecialVocab derives from tokenizer.json
            specials.setdefault("eos", specials["sep"])
        normalizer = {"type": "BertNormalizer", "lowercase": cfg.get("do_lower_case")}
    else:
        raise ModelFormatError(f"{src} has neither tokenizer.json nor vocab.txt")
    vocab.update({content: tid for content, (tid, _) in added.items()})
    ids = list(vocab.values())
    if not ids or not all(isinstance(i, int) and 0 <= i < n_vocab for i in ids):
        raise ModelFormatError(f"{src}: tokenizer ids run outside 0..{n_vocab - 1} "
                               "(config.json vocab_size)")
    reverse = {tid: tok for tok, tid in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        tok, kind = reverse.get(i, f"[PAD{i}]"), _NORMAL if i in reverse else _UNUSED
        if tok in added:  # special, or looking special as llama.cpp's converter judges it
            kind = _CONTROL if added[tok][1] or tok[:2] + tok[-2:] == "<||>" else _USER_DEFINED
            if kind == _USER_DEFINED:
                tok = tok.replace("\u2581", " ")
        if kind != _CONTROL:
            tok = tok[2:] if tok.startswith("##") else "\u2581" + tok
        tokens.append(tok)
        types.append(kind)
    return tokens, types, normalizer, specials


def _late_block(name: str, n_layers: int) -> bool:
    """Whether a tensor is in the second half of the blocks. q8_0 files keep those in F16:
    their rounding reaches the pooled vector least damped, and with every block in Q8_0
    a three-token input ("!!!") fell to cosine 0.9982 against the fp32 weights (0.9995
    with the last three of six blocks in F16, at 30 MB instead of 25 MB)."""
    parts = name.split(".")
    return parts[0] == "blk" and int(parts[1]) >= n_layers // 2


def convert_bert_to_gguf(source_dir: str | os.PathLike[str], out_path: str | os.PathLike[str],
                         *, dtype: str = "f16", name: str | None = None) -> Path:
    """Convert a sentence-transformers BERT folder to a llama.cpp embedding GGUF at
    ``out_path`` (written as ``<out_path>.part`` and renamed when complete). ``name`` is
    the model's ``general.name`` (default: the folder's name)."""
    try:
        import gguf
    except ImportError as exc:
        raise BackendUnavailableError("convert", "gguf", "rag") from exc
    if dtype not in DTYPES:
        raise UnsupportedModelError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    src, out = Path(source_dir), Path(out_path)
    cfg = _hparams(src)
    n_layers = int(cfg["num_hidden_layers"])
    weights_path = src / "model.safetensors"
    if not weights_path.is_file():
        raise ModelFormatError(f"{weights_path} is missing (torch .bin weights need torch)")
    weights = read_safetensors(weights_path)
    tokens, types, normalizer, specials = _vocab(src, int(cfg["vocab_size"]))

    w = gguf.GGUFWriter(path=None, arch="bert")
    _add_metadata(gguf, w, src, cfg, dtype, name or src.name)
    _add_tokenizer(gguf, w, src, tokens, types, normalizer, specials)
    shapes = _add_tensors(gguf, w, weights, weights_path, n_layers, dtype)
    _check_tensors(shapes, weights_path, n_layers, len(tokens))
    _write(w, out)
    return out


def _add_metadata(gguf: Any, w: Any, src: Path, cfg: dict[str, Any], dtype: str,
                  name: str) -> None:
    """The model keys llama.cpp's BERT loader reads, from config.json and the pooling
    config: a non-causal encoder whose output is pooled into one vector."""
    w.add_type("model")
    w.add_name(name)
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_layer_norm_eps(float(cfg["layer_norm_eps"]))
    w.add_file_type(_FILE_TYPES[dtype])
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType(_pooling_type(src)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_token_type_count(int(cfg.get("type_vocab_size", 1)))


def _add_tokenizer(gguf: Any, w: Any, src: Path, tokens: list[str], types: list[int],
                   normalizer: Any, specials: dict[str, int]) -> None:
    """The WordPiece vocabulary, special ids and normalizer flags, as llama.cpp's converter
    writes them."""
    w.add_tokenizer_model("bert")
    # llama.cpp reads tokenizer.ggml.pre only for BPE vocabularies; its converter derives a
    # name from a hash of transformers' output, which this module cannot compute.
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    try:  # special ids and add_bos/add_eos/add_sep, read exactly as llama.cpp's converter does
        special = gguf.SpecialVocab(src, n_vocab=len(tokens))
        found = {**specials, **special.special_token_ids}
        special.special_token_ids = {  # no cls key: llama.cpp takes CLS as BOS
            t: found[t] for t in special.special_token_types if t in found and t != "cls"}
        special.add_to_gguf(w, quiet=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{src}: special tokens in tokenizer_config.json / "
                               f"tokenizer.json are malformed ({exc})") from exc
    norm = normalizer if isinstance(normalizer, dict) else {}  # lower-casing, accents
    for key in ("lowercase", "strip_accents") if norm.get("type") == "BertNormalizer" else ():
        if isinstance(norm.get(key), bool):
            w.add_bool(f"tokenizer.ggml.normalizer.{key}", norm[key])


def _add_tensors(gguf: Any, w: Any, weights: dict[str, npt.NDArray[Any]], weights_path: Path,
                 n_layers: int, dtype: str) -> dict[str, tuple[int, ...]]:
    """Each tensor the embedding graph uses, under llama.cpp's name and in the type its
    converter would pick (sorted by name, so the bytes are deterministic); returns the
    shapes written, by GGUF name."""
    tmap, q = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers), gguf.GGMLQuantizationType
    shapes: dict[str, tuple[int, ...]] = {}
    for name in sorted(weights):
        hf = name.removeprefix("bert.")
        hf = hf[:-6] + ".weight" if hf.endswith(".gamma") else hf
        hf = hf[:-5] + ".bias" if hf.endswith(".beta") else hf
        if hf in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias") \
                or hf.startswith("cls."):
            continue  # not used for embeddings (llama.cpp's converter drops them too)
        new_name = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise UnsupportedModelError(f"{weights_path}: tensor {name!r} has no place in "
                                        "llama.cpp's BERT graph")
        data = weights[name]
        if data.dtype not in (np.float16, np.float32):
            data = data.astype(np.float32)
        # as llama.cpp's converter: norms, biases, 1-D tensors, position and token-type
        # embeddings stay F32 (llama.cpp reads them only as F32); the rest, token embeddings
        # included, take the requested type
        keep_f32 = (data.ndim <= 1 or new_name.endswith("_norm.weight")
                    or not new_name.endswith(".weight")
                    or new_name in ("position_embd.weight", "token_types.weight"))
        qtype = q.F32 if keep_f32 else getattr(q, dtype.upper())
        if dtype == "q8_0" and qtype != q.F32 and _late_block(new_name, n_layers):
            qtype = q.F16
        try:
            packed = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:  # rows not a multiple of 32: F16, as llama.cpp falls back
            qtype = q.F16
            packed = gguf.quants.quantize(data, qtype)
        w.add_tensor(new_name, packed, raw_dtype=qtype)
        shapes[new_name] = data.shape
    return shapes


def _check_tensors(shapes: dict[str, tuple[int, ...]], weights_path: Path, n_layers: int,
                   n_tokens: int) -> None:
    """Refuse weights that lack a tensor llama.cpp's BERT graph loads, or whose token
    embedding does not match the vocabulary."""
    need = {"token_embd.weight", "position_embd.weight", "token_types.weight",
            "token_embd_norm.weight", "token_embd_norm.bias"} | {
        f"blk.{i}.{part}.{kind}" for i in range(n_layers) for kind in ("weight", "bias")
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_output_norm",
                     "ffn_up", "ffn_down", "layer_output_norm")}
    if missing := sorted(need - shapes.keys()):
        raise ModelFormatError(f"{weights_path}: tensors for {', '.join(missing[:4])}"
                               f"{' …' if len(missing) > 4 else ''} are missing")
    if shapes["token_embd.weight"][0] != n_tokens:
        raise ModelFormatError(f"{weights_path}: {shapes['token_embd.weight'][0]} token "
                               f"embeddings but config.json vocab_size is {n_tokens}")


def _write(w: Any, out: Path) -> None:
    """Write the GGUF as ``<out>.part`` and rename it into place, so an interrupted or
    failed write never leaves a file at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    try:
        w.write_header_to_file(path=part)
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(part, out)
    except BaseException:
        w.close()
        part.unlink(missing_ok=True)
        raise
