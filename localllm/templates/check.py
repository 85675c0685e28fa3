"""The conformance conversations, and the check ``localllm info`` makes of a template.

A chat template is code shipped in the model file, and the commonest way it fails is
silent: it renders, but drops a turn or takes a branch meant for another kind of message,
and the model answers a prompt nobody wrote. So every template localllm reports on is run
through one fixed set of conversations (plain, with a system turn, several turns, with
tools, with earlier tool calls and their results, with and without the generation prompt),
and each rendering is checked for what holds whatever the template's format: it renders,
and every message's text and every call's function name appear in it.

The test suite renders the same set with the reference renderer (transformers) and
requires identical text; this module needs no reference and runs on any model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ChatTemplateError

SYSTEM = {"role": "system", "content": "You are terse."}
ASK = {"role": "user", "content": "Name a colour."}
ANSWER = {"role": "assistant", "content": "Teal."}
AGAIN = {"role": "user", "content": "Another one?"}
WEATHER = {"role": "user", "content": "What is the weather in Paris?"}
TOOLS: tuple[dict[str, Any], ...] = ({
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "description": "The city"}},
                       "required": ["city"]},
    },
},)
# Tool-call messages carry an empty content, as llama-server writes them (many templates
# read message.content unconditionally); ids are 9 letters and digits, which Mistral's
# templates require.
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call00001", "type": "function",
     "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
#: the same call in OpenAI's wire shape, its arguments as JSON text
CALL_AS_TEXT = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call00001", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "call00001", "name": "get_weather",
          "content": "18 C and sunny"}
REPLY = {"role": "assistant", "content": "It is sunny in Paris."}
BOTH = {"role": "user", "content": "And in Lyon and Nice?"}
TWO_CALLS = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call00002", "type": "function",
     "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}},
    {"id": "call00003", "type": "function",
     "function": {"name": "get_weather", "arguments": {"city": "Nice"}}}]}
RESULTS = ({"role": "tool", "tool_call_id": "call00002", "name": "get_weather",
            "content": "15 C and cloudy"},
           {"role": "tool", "tool_call_id": "call00003", "name": "get_weather",
            "content": "21 C and clear"})


@dataclass(frozen=True)
class Conversation:
    """One input of the conformance set."""

    name: str
    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[dict[str, Any], ...] | None = None
    add_generation_prompt: bool = True
    #: False for a shape that localllm itself never hands a template (call arguments as
    #: JSON text: it gives them as objects); still compared with the reference renderer
    checked_by_info: bool = True


CONVERSATIONS: tuple[Conversation, ...] = (
    Conversation("one user turn", (ASK,)),
    Conversation("one user turn, no generation prompt", (ASK,), add_generation_prompt=False),
    Conversation("system and user", (SYSTEM, ASK)),
    Conversation("multi-turn", (SYSTEM, ASK, ANSWER, AGAIN)),
    Conversation("multi-turn without system", (ASK, ANSWER, AGAIN)),
    Conversation("ending with the assistant", (SYSTEM, ASK, ANSWER),
                 add_generation_prompt=False),
    Conversation("tools offered", (WEATHER,), TOOLS),
    Conversation("tools offered, with system", (SYSTEM, WEATHER), TOOLS),
    Conversation("a tool call and its result", (WEATHER, CALL, RESULT), TOOLS),
    Conversation("a tool call with its arguments as JSON text, and its result",
                 (WEATHER, CALL_AS_TEXT, RESULT), TOOLS, checked_by_info=False),
    Conversation("a tool call, its result, the answer, a new turn",
                 (SYSTEM, WEATHER, CALL, RESULT, REPLY, BOTH), TOOLS),
    Conversation("two calls in one turn and their results",
                 (WEATHER, CALL, RESULT, REPLY, BOTH, TWO_CALLS, *RESULTS), TOOLS),
)


@dataclass(frozen=True)
class ConversationResult:
    """How one conversation rendered: ``ok``, ``refused`` (the template raised; its
    message in ``detail``) or ``lost`` (it rendered without some of the messages' text,
    named in ``detail``). ``tools``: the conversation offers tools."""

    conversation: str
    status: str
    detail: str = ""
    tools: bool = False


@dataclass(frozen=True)
class TemplateReport:
    """The conformance check of one template. It passes when every conversation without
    tools renders with every message; the ones with tools say whether the template writes
    tools and calls itself (``chat(tools=...)`` writes them in localllm's own format, as
    text, so a template without tool support still serves tool calling)."""

    results: tuple[ConversationResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.status == "ok" for r in self.results if not r.tools)

    @property
    def handles_tools(self) -> bool:
        return all(r.status == "ok" for r in self.results if r.tools)

    def summary(self) -> str:
        """One line for ``localllm info``."""
        parts = []
        for tools, label in ((False, "conversations without tools"),
                             (True, "with tools and tool calls")):
            group = [r for r in self.results if r.tools == tools]
            ok = sum(r.status == "ok" for r in group)
            problems = [f"{r.conversation}: {r.status} ({r.detail[:120]})" for r in group
                        if r.status != "ok"]
            parts.append(f"{ok} of {len(group)} {label} render with every message"
                         + ("" if not problems else " (" + "; ".join(problems) + ")"))
        return "; ".join(parts)


def expected_pieces(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The texts a faithful rendering holds: each message's content and each tool call's
    function name."""
    pieces: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and content:
            pieces.append(content)
        for call in message.get("tool_calls") or ():
            pieces.append(call["function"]["name"])
    return pieces


def missing_pieces(text: str, pieces: Sequence[str]) -> list[str]:
    """The ``pieces`` that ``text`` holds fewer times than they were given. Order is not
    checked: some templates move the system text to the last user turn on purpose."""
    missing = []
    for piece in dict.fromkeys(pieces):
        lacking = pieces.count(piece) - text.count(piece)
        missing += [piece] * max(lacking, 0)
    return missing


def check_template(template: str, *, bos_token: str = "", eos_token: str = "",
                   fold_system: bool = False) -> TemplateReport:
    """Render every conformance conversation with ``template`` and check each.
    ``fold_system`` checks it as loaded with ``system_message="fold"``."""
    from .chat import fold_system_message, render_chat

    results = []
    for conv in (c for c in CONVERSATIONS if c.checked_by_info):
        messages: Sequence[Any] = conv.messages
        if fold_system:
            messages = fold_system_message(messages)
        try:
            text = render_chat(template, messages, bos_token=bos_token, eos_token=eos_token,
                               add_generation_prompt=conv.add_generation_prompt,
                               tools=conv.tools)
        except ChatTemplateError as exc:
            results.append(ConversationResult(conv.name, "refused", str(exc)[:200],
                                              conv.tools is not None))
            continue
        lost = missing_pieces(text, expected_pieces(messages))
        if lost:
            results.append(ConversationResult(conv.name, "lost",
                                              ", ".join(repr(p) for p in lost),
                                              conv.tools is not None))
        else:
            results.append(ConversationResult(conv.name, "ok", "", conv.tools is not None))
    return TemplateReport(tuple(results))
