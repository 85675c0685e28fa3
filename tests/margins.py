"""Greedy text that every x86-64 CPU writes alike, checked by its top-2 logit margins.

ggml picks its float kernels by CPU (AVX2, AVX-512, AMX), and its CPU flash attention
accumulates in fp16 in KV-cell order, so one model's logits differ slightly between
machines (and between batch shapes). A greedy step is the same everywhere only where its
top-1 minus top-2 logit margin is wide. Tests assert specific greedy text only after
``wide_greedy_prefix`` has checked every step up to that text, and compare two runtimes'
greedy tokens with ``assert_greedy_agrees``, which lets them part only at a near tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from localllm import Model
from localllm.sampling import LogitsProcessor
from localllm.testing import NEAR_TIE, first_divergence, greedy_with_margins

#: Well beyond the few tenths by which float-path differences were seen to move a margin.
WIDE = 1.0
#: NEAR_TIE for the suite's tiny random-weight models: their logits span about ±1 and
#: runtimes agree on them to about 1e-3 (llama.cpp keeps its KV cache in fp16).
TINY_NEAR_TIE = 5e-3


def wide_greedy_prefix(model: Model, prompt: str | Sequence[Any], needle: str, *,
                       max_tokens: int, logits_processors: Sequence[LogitsProcessor] = (),
                       min_margin: float = WIDE) -> list[float]:
    """Run ``prompt`` (a string, or chat messages) greedily, alone, through ``model``'s
    logits; assert that its text reaches ``needle`` within ``max_tokens`` and that every
    step up to the one completing ``needle`` had a top-2 margin of at least ``min_margin``
    (after ``logits_processors``). Returns those margins.

    Then any greedy run of the same prompt on any CPU starts with the same tokens, so a
    test may assert that its text contains ``needle``."""
    text = prompt if isinstance(prompt, str) else model.render_chat(prompt)
    ids, margins = greedy_with_margins(model, text, max_tokens, logits_processors)
    end = next((k for k in range(1, len(ids) + 1)
                if needle in model.tokenizer.decode(list(ids[:k]))), None)
    assert end is not None, (f"greedy text {model.tokenizer.decode(list(ids))!r} never "
                             f"reaches {needle!r}")
    assert min(margins[:end]) >= min_margin, (needle, [round(m, 3) for m in margins[:end]])
    return margins[:end]


def assert_greedy_agrees(tokens: Sequence[int], reference: Model, prompt: str, *,
                         max_tokens: int, near_tie: float = NEAR_TIE) -> int | None:
    """``tokens`` (another runtime's greedy run of ``prompt``) equal ``reference``'s
    greedy tokens, up to a step where ``reference``'s top-2 margin is below ``near_tie``,
    if any: there rounding (the other runtime's kernels, another CPU's) may tip the choice
    either way, and the runs part. Returns that step, or None when they agree."""
    ours, margins = greedy_with_margins(reference, prompt, max_tokens)
    at = first_divergence(tuple(tokens), ours)
    assert at is not None or len(tokens) == len(ours), (prompt, tokens, ours)
    assert at is None or margins[at] < near_tie, (prompt, at, [round(m, 4) for m in margins])
    return at
