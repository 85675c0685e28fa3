"""The helpers that compare a greedy run from another float path (a batch, a server, a
worker process) with the same prompt run alone, on the real default model's tokenizer.

The traces here are written by hand from a run seen on a 2-core AMD EPYC machine, where a
batched server answer parted from its solo run at a near tie (margin 0.09) to a token
whose text the solo token's text is a prefix of."""

from __future__ import annotations

import pytest

import localllm
from localllm.testing import GreedyTrace, text_divergence

SOLO = "Sodium is a chemical element with the atomic number 11 and a chemical"
BATCHED = "Sodium is a chemical element with the atomic number of 11 and a"


def trace_of(model: localllm.Model, text: str, ties: dict[int, str]) -> GreedyTrace:
    """A trace whose tokens are ``text``'s, with the near-tied rivals ``ties`` (step ->
    rival text) and a wide margin everywhere else."""
    tok = model.tokenizer
    ids = tuple(tok.encode(text, add_special=False))
    contenders = [{i} for i in ids]
    margins = [5.0] * len(ids)
    for step, rival in ties.items():
        (rival_id,) = tok.encode(rival, add_special=False)
        contenders[step].add(rival_id)
        margins[step] = 0.09
    return GreedyTrace(ids, margins, [frozenset(c) for c in contenders])


def step_of(model: localllm.Model, text: str, piece: str, after: str) -> int:
    """The step at which ``text``'s tokens write ``piece`` right after ``after``."""
    tok = model.tokenizer
    ids = tok.encode(text, add_special=False)
    for k in range(1, len(ids)):
        if tok.decode(ids[:k]) == after and tok.decode(ids[k:k + 1]) == piece:
            return k
    raise AssertionError(f"{text!r} has no token {piece!r} after {after!r}")


def test_the_fork_is_found_where_the_solo_token_is_a_prefix_of_the_rival(
        shared_model: localllm.Model) -> None:
    """The case from the fresh machine: solo ``' number', ' ', '1', '1'``, the batch took
    ``' of'`` (0.09 below ``' '``). The longest common text prefix ends one step later,
    after ``' '``, where only digits are near the top: comparing there fails a correct
    batch. The fork is the step of ``' '``."""
    tok = shared_model.tokenizer
    fork = step_of(shared_model, SOLO, " ", "Sodium is a chemical element with the atomic "
                   "number")
    trace = trace_of(shared_model, SOLO, {fork: " of"})
    prefixes = [tok.decode(list(trace.ids[:k])) for k in range(len(trace.ids) + 1)]
    longest = max(k for k, p in enumerate(prefixes) if BATCHED.startswith(p))
    assert longest == fork + 1  # the trap: text agrees one token past the fork
    assert text_divergence(tok, trace, BATCHED) == fork


def test_the_fork_is_found_where_the_rival_is_a_prefix_of_the_solo_token(
        shared_model: localllm.Model) -> None:
    """The mirror case: solo ``' of'``, the batch took ``' '`` (a prefix of it)."""
    tok = shared_model.tokenizer
    fork = step_of(shared_model, BATCHED, " of", "Sodium is a chemical element with the "
                   "atomic number")
    trace = trace_of(shared_model, BATCHED, {fork: " "})
    assert text_divergence(tok, trace, SOLO) == fork


def test_equal_text_and_a_text_cut_by_max_tokens_agree(shared_model: localllm.Model) -> None:
    tok = shared_model.tokenizer
    trace = trace_of(shared_model, SOLO, {})
    assert text_divergence(tok, trace, SOLO) is None
    assert text_divergence(tok, trace, SOLO + " element") is None


def test_a_fork_with_no_near_tie_fails(shared_model: localllm.Model) -> None:
    """Text that parts from the solo run where no rival was near the top means another
    sequence's data leaked in: the helper must fail, naming both texts."""
    tok = shared_model.tokenizer
    fork = step_of(shared_model, SOLO, " ", "Sodium is a chemical element with the atomic "
                   "number")
    untied = trace_of(shared_model, SOLO, {})
    with pytest.raises(AssertionError, match="no near-tied token explains it"):
        text_divergence(tok, untied, BATCHED)
    # a rival near the top at another step does not explain this fork
    elsewhere = trace_of(shared_model, SOLO, {fork - 2: " of"})
    with pytest.raises(AssertionError, match="no near-tied token explains it"):
        text_divergence(tok, elsewhere, BATCHED)


def test_an_answer_that_ends_at_a_near_tied_end_of_generation(
        shared_model: localllm.Model) -> None:
    """A batch may stop where the solo run went on, when end-of-generation was near the
    top: the answer is then a prefix of the solo text ending at that step."""
    tok = shared_model.tokenizer
    trace = trace_of(shared_model, SOLO, {})
    ended = tok.decode(list(trace.ids[:5]))
    eog = min(shared_model.local_tokenizer().eog_ids)
    assert tok.decode([eog]) == ""  # control tokens write nothing
    contenders = list(trace.contenders)
    contenders[5] = contenders[5] | {eog}
    tied = GreedyTrace(trace.ids, trace.margins, contenders)
    assert text_divergence(tok, tied, ended) == 5
    with pytest.raises(AssertionError):
        text_divergence(tok, trace, ended)
