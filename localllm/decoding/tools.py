"""Tool calling: function definitions in the prompt, a grammar for the call, parsing back.

One format for every model, so a call works the same whichever runtime or template runs
it: the tools are described in the system message and a call is written as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. The grammar makes the JSON
valid against the function's ``parameters``:

- ``required`` and a named choice constrain the whole answer to one call;
- ``auto`` lets the model answer in text, or start with ``<tool_call>`` and from that
  trigger on be constrained exactly like ``required`` (text that starts with ``<`` is
  the only thing auto mode rules out);
- ``none`` leaves the tools out of the prompt; no call can be made.

A turn makes at most one call. Earlier calls and their ``tool`` results in the history
are rendered in the same format, through the model's chat template.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError
from .._types import Message, ToolCall, ToolCallDelta
from .structured import (
    JSON_BOUNDS_LARK,
    JSON_DEFAULTS,
    CompiledFormat,
    compile_lark,
    strict_schema,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHOICES = ("auto", "none", "required")
# free text in auto mode: anything that does not open with "<" (the trigger's first char)
_FREE_TEXT = 'start: TEXT | call_block\nTEXT: /[^<][\\s\\S]*/\n'
_CALL_ONLY = "start: call_block\n"


@dataclass(frozen=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "parameters": self.parameters}


@dataclass(frozen=True)
class ToolSetup:
    """Validated tools and choice: what to tell the model and the grammar of a call."""

    tools: tuple[Tool, ...]
    choice: str                    # auto | required | a function name
    format: CompiledFormat

    @property
    def forced(self) -> bool:
        return self.choice != "auto"


def parse_tools(tools: Any) -> tuple[Tool, ...]:
    """Validate tool definitions in OpenAI's shape (``{"type": "function", "function":
    {...}}``) or the bare ``{"name", "description", "parameters"}``."""
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise ConfigError("tools must be a list of {'type': 'function', 'function': "
                          "{'name': ..., 'parameters': {...}}} dicts")
    out: list[Tool] = []
    for i, raw in enumerate(tools):
        spec = raw.get("function") if isinstance(raw, Mapping) and "function" in raw else raw
        if isinstance(raw, Mapping) and raw.get("type", "function") != "function":
            raise ConfigError(f"tools[{i}] has type {raw.get('type')!r}; only 'function' "
                              "tools exist")
        if not isinstance(spec, Mapping):
            raise ConfigError(f"tools[{i}] must be a dict with a 'function' entry")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"tools[{i}].function.name={name!r} is invalid; use 1-64 "
                              "letters, digits, '_' or '-'")
        params = spec.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, Mapping) or params.get("type", "object") != "object":
            raise ConfigError(f"tools[{i}] ({name}): parameters must be a JSON schema of "
                              "type 'object'")
        description = spec.get("description") or ""
        if not isinstance(description, str):
            raise ConfigError(f"tools[{i}] ({name}): description must be a string")
        out.append(Tool(name, description, dict(params)))
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"tools define {', '.join(dupes)} more than once")
    return tuple(out)


def prepare(tools: Any, tool_choice: Any) -> ToolSetup | None:
    """The setup for one request, or None when no call can be made (no tools, ``none``)."""
    choice = _choice(tool_choice)
    if tools is None or (isinstance(tools, Sequence) and len(tools) == 0):
        if choice not in ("auto", "none"):
            raise ConfigError(f"tool_choice={tool_choice!r} needs tools=[...]")
        return None
    parsed = parse_tools(tools)
    if choice == "none":
        return None
    callable_tools = parsed
    if choice not in ("auto", "required"):
        callable_tools = tuple(t for t in parsed if t.name == choice)
        if not callable_tools:
            raise ConfigError(f"tool_choice names {choice!r}, which is not among the tools "
                              f"({', '.join(t.name for t in parsed)})")
    return ToolSetup(parsed, choice, _call_format(callable_tools, free_text=choice == "auto"))


def _choice(tool_choice: Any) -> str:
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice in _CHOICES:
            return tool_choice
        raise ConfigError(f"tool_choice={tool_choice!r} is invalid; use 'auto', 'none', "
                          "'required' or {'type': 'function', 'function': {'name': ...}}")
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function", tool_choice)
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if isinstance(name, str) and name:
            return name
    raise ConfigError(f"tool_choice={tool_choice!r} is invalid; name a function as "
                      "{'type': 'function', 'function': {'name': ...}}")


def _call_format(tools: Sequence[Tool], *, free_text: bool) -> CompiledFormat:
    """Two grammars, intersected: the call's JSON schema, and JSON with bounded numbers."""
    calls = [{"type": "object",
              "properties": {"name": {"const": t.name},
                             "arguments": strict_schema(t.parameters)},
              "required": ["name", "arguments"], "additionalProperties": False}
             for t in tools]
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema = {**schema, "x-guidance": JSON_DEFAULTS}
    head = _FREE_TEXT if free_text else _CALL_ONLY
    block = f'call_block: "{OPEN}" call "{CLOSE}"\n'
    schema_lark = head + block + "call: %json " + json.dumps(schema) + "\n"
    bounds_lark = (head + f'call_block: "{OPEN}" value "{CLOSE}"\n'
                   + JSON_BOUNDS_LARK.replace("start: value\n", ""))
    try:
        return CompiledFormat((compile_lark(schema_lark), compile_lark(bounds_lark)), "tools")
    except ConfigError as exc:
        raise ConfigError(f"the tools' parameters cannot be enforced: {exc}") from None


def system_text(setup: ToolSetup) -> str:
    """The instructions and function list the model reads."""
    lines = ["You can call these functions:"]
    lines += [json.dumps(t.spec(), ensure_ascii=False) for t in setup.tools]
    call = f'{OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{CLOSE}'
    if setup.choice == "auto":
        lines.append(f"To call a function, answer with only {call}. Otherwise answer "
                     "normally.")
    elif setup.choice == "required":
        lines.append(f"Answer by calling one function: {call}")
    else:
        lines.append(f"Answer by calling {setup.choice}: {call}")
    return "\n".join(lines)


def with_tools(messages: list[Message], setup: ToolSetup | None) -> list[Message]:
    """The messages as the template renders them: tool instructions in the system turn,
    earlier calls written in the call format."""
    out = [_as_text(m) for m in messages]
    if setup is None:
        return out
    text = system_text(setup)
    if out and out[0].role == "system":
        out[0] = Message(role="system", content=f"{out[0].text}\n\n{text}")
    else:
        out.insert(0, Message(role="system", content=text))
    return out


def _as_text(message: Message) -> Message:
    if not message.tool_calls:
        return message
    calls = "".join(f"{OPEN}{_call_json(c.name, c.arguments)}{CLOSE}"
                    for c in message.tool_calls)
    return Message(role="assistant", content=(message.text or "") + calls)


def _call_json(name: str, arguments: str) -> str:
    return '{"name":' + json.dumps(name) + ',"arguments":' + arguments + "}"


class ToolCallStream:
    """Splits generated text into content and one tool call, streaming the call in
    OpenAI's delta shape: id and name first, then argument fragments.

    The grammar fixes the call's text to ``<tool_call>{"name":"N","arguments":{...}}
    </tool_call>``, so the fragments are the text between ``"arguments":`` and the final
    ``}``; the last characters are held back until it is clear they are not the end."""

    _HEAD = re.compile(r'^\{"name":("(?:[^"\\]|\\.)*"),"arguments":')
    _TAIL = "}" + CLOSE

    def __init__(self, setup: ToolSetup) -> None:
        self.setup = setup
        self.mode: str | None = "call" if setup.forced else None  # None: not decided yet
        self.buffer = ""
        self.id = "call_" + secrets.token_hex(12)
        self.name: str | None = None
        self.sent = 0  # argument characters already streamed

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """Content text to show and call deltas, for newly generated ``text``."""
        if self.mode is None and text:
            self.mode = "call" if text.startswith("<") else "text"
        if self.mode != "call":
            return text, []
        self.buffer += text
        deltas: list[ToolCallDelta] = []
        body = self.buffer[len(OPEN):] if self.buffer.startswith(OPEN) else ""
        head = self._HEAD.match(body)
        if head is None:
            return "", deltas
        if self.name is None:
            self.name = json.loads(head.group(1))
            deltas.append(ToolCallDelta(index=0, id=self.id, name=self.name))
        args = body[head.end():]
        ready = len(args) - len(self._TAIL)
        if ready > self.sent:
            deltas.append(ToolCallDelta(index=0, arguments=args[self.sent:ready]))
            self.sent = ready
        return "", deltas

    def finish(self, complete: bool) -> tuple[str, tuple[ToolCall, ...], list[ToolCallDelta]]:
        """At the end: the content, the finished call (if the grammar completed it) and
        the last argument fragment. An incomplete call stays visible as text."""
        if self.mode != "call":
            return "", (), []
        if not complete or self.name is None or not self.buffer.endswith(self._TAIL):
            return self.buffer, (), []
        body = self.buffer[len(OPEN):-len(CLOSE)]
        head = self._HEAD.match(body)
        assert head is not None  # the grammar wrote the head before the arguments
        arguments = body[head.end():-1]
        json.loads(arguments)  # the grammar made it JSON; a failure here is a bug
        deltas = []
        if len(arguments) > self.sent:
            deltas.append(ToolCallDelta(index=0, arguments=arguments[self.sent:]))
        return "", (ToolCall(id=self.id, name=self.name, arguments=arguments),), deltas
