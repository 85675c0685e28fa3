"""A deterministic multilingual corpus for tokenizer agreement tests and benchmarks.

It covers what breaks tokenizers: English prose, code, numbers, whitespace runs, emoji
(including ZWJ sequences), CJK, Arabic, Cyrillic, Devanagari, mixed scripts, contractions,
and text that spells special tokens.
"""

from __future__ import annotations

import random

WORDS = (
    "the of and to in is was for on that with as by at from his it an were are which "
    "this be or had not but first one their its new after who they have her she two "
    "been other when there all during into school time may years more most only over "
    "city some world would where later up such used many can state about national out "
    "known university united then made "
).split()
CODE = [
    "def f(x):\n    return x**2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "const x = await fetch(`/api/${id}`);", "SELECT * FROM users WHERE id = 42;",
    "if err != nil {\n\treturn err\n}", "print(f\"{name!r:>10}\")", "#include <stdio.h>",
    "x = {'a': [1, 2, 3], \"b\": None}", "fn main() -> Result<(), Box<dyn Error>> {",
    "    \t  indented\ttabs\t\t", "<div class=\"x\">&nbsp;</div>", "a && b || !c",
]
SCRIPTS = [
    "東京は日本の首都です。", "我爱自然语言处理", "한국어 문장입니다", "مرحبا بالعالم، كيف حالك؟",
    "Привет, мир! Как дела?", "नमस्ते दुनिया", "Ελληνικά γράμματα", "שלום עולם", "ภาษาไทย",
    "Tiếng Việt có dấu", "naïve café résumé", "Straße Größe", "¿Qué tal? ¡Bien!",
]
EMOJI = ["🙂", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "❤️", "🤖🦙", "✨"]
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "[INST]", "<unk>"]
SPACES = [" ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n", "\u00a0", "\u3000", "\u2003"]


def _number(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return str(rng.randrange(10 ** rng.randint(1, 12)))
    if kind == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 6)}f}"
    if kind == 2:
        return f"{rng.randrange(1, 10**6):,}"
    if kind == 3:
        return f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"{rng.random():.3e}"


def _piece(rng: random.Random) -> str:
    kind = rng.randrange(9)
    if kind <= 2:
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.append(rng.choice(["I'm", "don't", "WE'LL", "it's", "they've", "You'D"]))
        return " ".join(words) + rng.choice(["", ".", "!", "?", ",", ":", "..."])
    return [lambda: rng.choice(CODE), lambda: _number(rng), lambda: rng.choice(SCRIPTS),
            lambda: "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 3))),
            lambda: rng.choice(SPECIAL),
            lambda: "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 6)))
            ][kind - 3]()


def tokenizer_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """``n`` distinct strings mixing the categories above, always the same for a seed."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        parts = [_piece(rng) for _ in range(rng.randint(1, 4))]
        glue = [rng.choice(SPACES) if rng.random() < 0.4 else " " for _ in parts]
        text = "".join(p + g for p, g in zip(parts, glue, strict=True))
        if rng.random() < 0.5:
            text = text.rstrip(" ")
        if rng.random() < 0.1:
            text = rng.choice(SPACES) * rng.randint(1, 4) + text
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out
