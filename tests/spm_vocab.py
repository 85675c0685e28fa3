"""Writes a small SentencePiece-style ("llama") vocabulary GGUF for tokenizer tests.

Pieces are learned from a fixed text by counting frequent substrings, so the merges are
realistic; byte tokens <0x00>..<0xFF> cover everything else, as in Llama 2 vocabularies.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import gguf

TEXT = ("the quick brown fox jumps over the lazy dog and the dog sleeps while the fox "
        "runs into the forest where other animals live together in peace " * 3 +
        "tokenizers split text into pieces; numbers like 1234 and 56 become digits. "
        "Übermäßig naïve café — 東京 is a city.")


def spm_pieces(n: int = 300) -> list[str]:
    text = "▁" + TEXT.replace(" ", "▁")
    counts: Counter[str] = Counter()
    for size in range(2, 8):
        for i in range(len(text) - size):
            counts[text[i:i + size]] += 1
    chars = sorted(set(text))
    pieces = [p for p, c in counts.most_common() if c >= 3][:n]
    return chars + [p for p in pieces if p not in chars]


def write_spm_vocab(path: Path) -> Path:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = spm_pieces()
    tokens += pieces
    types += [1] * len(pieces)
    # longer pieces made of frequent parts get better scores, as SentencePiece's do
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny spm vocab")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
