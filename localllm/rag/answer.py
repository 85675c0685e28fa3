"""Answering a question from an :class:`Index` with a chat model, citing its sources.

The retrieved chunks go into the prompt whole, numbered ``[1]``, ``[2]`` ..., best first,
as many as the context holds after the question, the instructions and the answer's
``max_tokens``. A chunk that does not fit is left out whole and reported in
``Answer.left_out``: nothing is cut silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, ContextOverflowError

if TYPE_CHECKING:
    from .._types import Completion
    from ..core.model import Model
    from .index import Hit, Index

INSTRUCTIONS = ("Answer the question using only the numbered sources below. Cite the "
                "sources you use as [1], [2] and so on. If the sources do not contain the "
                "answer, say that you do not know.")


@dataclass(frozen=True)
class Answer:
    """The model's answer, the sources it was shown (``sources[i]`` is ``[i+1]``) and the
    retrieved chunks that did not fit the context."""

    text: str
    sources: tuple[Hit, ...]
    left_out: tuple[Hit, ...]
    completion: Completion


def with_sources(conversation: Sequence[Mapping[str, Any]], hits: Sequence[Hit]
                 ) -> list[dict[str, Any]]:
    """``conversation`` with the numbered sources put in its system message (after the
    caller's own system prompt, if it opens with one)."""
    numbered = "\n\n".join(f"[{i}] ({hit.location})\n{hit.text}"
                           for i, hit in enumerate(hits, 1))
    rest = [dict(m) for m in conversation]
    own = rest.pop(0)["content"] + "\n\n" if rest and rest[0].get("role") == "system" else ""
    return [{"role": "system", "content": f"{own}{INSTRUCTIONS}\n\nSources:\n\n{numbered}"},
            *rest]


def fit_sources(conversation: Sequence[Mapping[str, Any]], hits: Sequence[Hit],
                model: Model, max_tokens: int
                ) -> tuple[list[dict[str, Any]], list[Hit], list[Hit]]:
    """The chat to send and the sources it shows and leaves out: retrieved chunks go in
    whole, best first, while the prompt and ``max_tokens`` fit the model's context; a
    chunk that does not fit is left out (a later, shorter one may still fit). Raises
    ``ContextOverflowError`` when not even the conversation fits without sources."""
    budget = model.info.context_length - max_tokens
    bare = model.count_tokens(with_sources(conversation, []))
    if bare > budget:
        raise ContextOverflowError(bare, max_tokens, model.info.context_length)
    shown: list[Hit] = []
    left_out: list[Hit] = []
    for hit in hits:
        if model.count_tokens(with_sources(conversation, [*shown, hit])) <= budget:
            shown.append(hit)
        else:
            left_out.append(hit)
    return with_sources(conversation, shown), shown, left_out


def answer(question: str, index: Index, model: Model, *, k: int = 5, max_tokens: int = 256,
           **params: Any) -> Answer:
    """Retrieve ``k`` chunks for ``question`` and answer from those that fit.

    ``params`` go to ``model.chat`` (temperature, seed, ...). Raises
    ``ContextOverflowError`` when not even the question and the instructions fit."""
    if not isinstance(question, str) or not question.strip():
        raise ConfigError("the question must be a non-empty str")
    hits = index.search(question, k=k)
    messages, shown, left_out = fit_sources([{"role": "user", "content": question}], hits,
                                            model, max_tokens)
    completion = model.chat(messages, max_tokens=max_tokens, **params)
    return Answer(completion.text, tuple(shown), tuple(left_out), completion)
