"""Reasoning models: their thinking kept apart from the answer, switched on or off with
the template's own flag, and held to a budget.

A reasoning model writes its thinking between markers before the answer (``<think>`` …
``</think>`` for Qwen3, QwQ, DeepSeek R1, SmolLM3 and most; ``[THINK]`` for Mistral's;
``<|START_THINKING|>`` for Command R7B). Some templates open the thinking in the
generation prompt themselves, so the answer starts inside it. The markers are found in
the chat template, as llama.cpp finds them; the split runs on the generated text, as it
streams, holding back a tail that might still become a marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from .._text import partial_tail

THINK_LEVELS = ("low", "medium", "high")


@dataclass(frozen=True)
class Thinking:
    """One family's thinking markers."""

    name: str
    open: str
    close: str
    #: headers that may start the answer and are not part of it (harmony's channels)
    answer_prefixes: tuple[str, ...] = ()
    #: the template can switch the thinking off (gpt-oss always reasons)
    can_disable: bool = True

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.open, self.close, *self.answer_prefixes)


#: gpt-oss's harmony format: the answer starts after ``<|start|>assistant``; thinking is
#: the analysis channel, the answer the final channel (or a call on the commentary one)
HARMONY = Thinking("harmony", "<|channel|>analysis<|message|>", "<|end|>",
                   answer_prefixes=("<|start|>assistant<|channel|>final<|message|>",
                                    "<|channel|>final<|message|>", "<|start|>assistant"),
                   can_disable=False)

#: in the order they are looked for in a template
THINKING: tuple[Thinking, ...] = (
    HARMONY,
    Thinking("cohere", "<|START_THINKING|>", "<|END_THINKING|>"),
    Thinking("mistral", "[THINK]", "[/THINK]"),
    Thinking("seed", "<seed:think>", "</seed:think>"),
    Thinking("think", "<think>", "</think>"),
)


def detect_thinking(template: str | None) -> Thinking | None:
    """The markers a template writes thinking with (None: not a reasoning template)."""
    for thinking in THINKING:
        if template and thinking.open in template and thinking.close in template:
            return thinking
    return None


def check_think(value: Any) -> Any:
    """``think=``: None (the template's default), a bool, or an effort level."""
    if value is None or isinstance(value, bool) or value in THINK_LEVELS:
        return value
    raise ConfigError(f"think={value!r} is invalid; use True, False or one of "
                      f"{', '.join(THINK_LEVELS)}")


def template_switch(think: Any) -> dict[str, Any]:
    """The template variables ``think`` sets: ``enable_thinking`` (Qwen3, SmolLM3, QwQ,
    DeepSeek R1 distills, Command R7B, GLM), ``thinking`` (Granite 3.3, DeepSeek V3.1)
    and, for a level, ``reasoning_effort`` (gpt-oss and others)."""
    if think is None:
        return {}
    on = think is not False
    out: dict[str, Any] = {"enable_thinking": on, "thinking": on}
    if isinstance(think, str):
        out["reasoning_effort"] = think
    return out


def opens_in_prompt(thinking: Thinking | None, prompt: str) -> bool:
    """Whether the rendered prompt leaves the thinking open: the answer starts inside."""
    if thinking is None:
        return False
    tail = prompt.rstrip()
    return tail.endswith(thinking.open)


class ThinkingSplit:
    """Generated text → (thinking, answer) as it streams. Thinking is what the model
    writes between the markers at the start of its answer (or from the start, when the
    prompt opened it) up to the close marker; everything after is the answer."""

    def __init__(self, thinking: Thinking, *, opened: bool) -> None:
        self.thinking = thinking
        self.state = "inside" if opened else "start"   # start | inside | after
        self.buffer = ""
        self.reasoning_tokens = 0
        self.trim = False  # the newlines right after the close marker are not the answer
        self.headed = not thinking.answer_prefixes  # the answer's header was taken off

    def feed(self, text: str, tokens: int = 0) -> tuple[str, str]:
        """(thinking text, answer text) ready from newly generated ``text``."""
        if self.state == "inside":
            self.reasoning_tokens += tokens
        self.buffer += text
        reasoning = answer = ""
        if self.state == "start":
            stripped = self.buffer.lstrip()
            if stripped.startswith(self.thinking.open):
                self.state = "inside"
                self.buffer = stripped[len(self.thinking.open):]
                self.reasoning_tokens += tokens
            elif self.thinking.open.startswith(stripped):
                return "", ""  # it may still be the open marker
            else:
                self.state = "after"
        if self.state == "inside":
            at = self.buffer.find(self.thinking.close)
            if at < 0:
                keep = partial_tail(self.buffer, self.thinking.close)
                reasoning, self.buffer = self.buffer[:len(self.buffer) - keep], \
                    self.buffer[len(self.buffer) - keep:]
                return reasoning, ""
            reasoning = self.buffer[:at]
            self.buffer = self.buffer[at + len(self.thinking.close):]
            self.state, self.trim = "after", True
        if self.state == "after":
            if self.trim:
                self.buffer = self.buffer.lstrip("\n")
                self.trim = not self.buffer
            if not self.headed and not self._take_header():
                return reasoning, ""
            answer, self.buffer = self.buffer, ""
        return reasoning, answer

    def _take_header(self) -> bool:
        """Drop the answer's channel header; False while the text may still become one."""
        prefixes = self.thinking.answer_prefixes
        if any(p.startswith(self.buffer) and p != self.buffer for p in prefixes):
            return False
        for prefix in prefixes:  # the longest first, as listed
            if self.buffer.startswith(prefix):
                self.buffer = self.buffer[len(prefix):]
                break
        self.headed = True
        return True

    def finish(self) -> tuple[str, str]:
        """What is held at the end: an unclosed thinking stays thinking."""
        if self.state == "after" and not self.headed:
            self.headed = True
            self.buffer = next((self.buffer[len(p):] for p in self.thinking.answer_prefixes
                                if self.buffer.startswith(p)), self.buffer)
        held, self.buffer = self.buffer, ""
        if self.state == "inside":
            return held, ""
        return "", held


class ThinkingBudget:
    """A logits processor that ends the thinking after ``budget`` tokens: it then forces
    the close marker, token by token, and lets the answer run (never a silent cut)."""

    def __init__(self, budget: int, open_ids: Sequence[int], close_ids: Sequence[int]
                 ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ConfigError(f"reasoning_budget={budget!r} is invalid; give tokens >= 0")
        self.budget = budget
        self.open_ids = list(open_ids)
        self.close_ids = list(close_ids)
        self.opened = False            # set before the run when the prompt opens it
        self.inside = False
        self.start = 0                 # history length where the thinking began
        self.prompt_len: int | None = None
        self.forcing: int | None = None
        self.done = False
        #: a grammar that runs after this processor: where it refuses the close marker
        #: (it is writing one itself, or its own text), the grammar leads
        self.constraint: Any = None

    def __call__(self, input_ids: Sequence[int], logits: Any) -> Any:
        import numpy as np

        if self.prompt_len is None:
            self.prompt_len = len(input_ids)
            self.inside, self.start = self.opened, len(input_ids)
        if self.done:
            return logits
        generated = len(input_ids) - self.prompt_len
        if not self.inside:  # thinking opens at the very start of an answer, or never
            n = len(self.open_ids)
            if n and generated >= n and list(input_ids[-n:]) == self.open_ids:
                self.inside, self.start = True, len(input_ids)
            elif generated > n + 1:
                self.done = True
            return logits
        n = len(self.close_ids)
        if len(input_ids) - self.start >= n and list(input_ids[-n:]) == self.close_ids:
            self.done = True  # closed, by the model or by the forced marker
            return logits
        if self.forcing is None and len(input_ids) - self.start >= self.budget:
            self.forcing = 0
        if self.forcing is None or self.forcing >= n:
            return logits
        if self.constraint is not None and \
                not self.constraint.allows(self.close_ids[self.forcing]):
            self.done = True
            return logits
        forced = np.full_like(logits, -np.inf)
        forced[self.close_ids[self.forcing]] = 0.0
        self.forcing += 1
        return forced
