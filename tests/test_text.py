"""Incremental UTF-8 decoding and stop-string matching across token boundaries."""

from __future__ import annotations

import random

from localllm._text import IncrementalDetokenizer, StopMatcher


def test_multibyte_characters_split_across_tokens_never_emit_replacement() -> None:
    text = "a→🙂東京é"
    data = text.encode()
    detok = IncrementalDetokenizer()
    pieces = [detok.feed(bytes([b])) for b in data]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == text


def test_invalid_bytes_become_replacement_only_at_the_end() -> None:
    detok = IncrementalDetokenizer()
    assert detok.feed(b"ok\xf0\x9f") == "ok"
    assert detok.flush() == "\ufffd"


def run(stops: list[str], pieces: list[str]) -> tuple[str, str | None]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    if m.matched is None:
        out += m.flush()
    return out, m.matched


def test_stop_spanning_pieces_is_cut_and_never_emitted_early() -> None:
    m = StopMatcher(["</end>"])
    assert m.feed("hello </") == "hello "
    assert m.feed("en") == ""
    assert m.feed("d> tail") == ""
    assert m.matched == "</end>"


def test_partial_stop_that_does_not_complete_is_released() -> None:
    assert run(["STOP"], ["ST", "OP"]) == ("", "STOP")
    assert run(["STOP"], ["ST", "ill going"]) == ("STill going", None)
    assert run(["STOP"], ["the end ST"]) == ("the end ST", None)  # flushed at the end


def test_earliest_of_several_stops_wins() -> None:
    assert run(["bb", "a"], ["xxbba"]) == ("xx", "bb")
    assert run(["\n\n", "User:"], ["Hi.\nUser: x"]) == ("Hi.\n", "User:")


def test_random_splits_agree_with_a_plain_search() -> None:
    rng = random.Random(0)
    alphabet = "ab\n:é"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, 4)))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        found = [(text.find(s), s) for s in stops if s in text]
        expected = (text[: min(found)[0]], None) if found else (text, None)
        out, matched = run(stops, pieces)
        assert out == expected[0], (text, stops, pieces)
        assert (matched is not None) == bool(found)
