"""Tool calling: the tools shown to the model, a grammar for its calls, parsing them back.

Each model family has its own call format (``tool_formats``): the tools and earlier calls
are rendered through the model's own chat template, which knows how to show them, and a
call is held by grammar to the family's text, its arguments valid against the function's
``parameters``. A template that shows no format of its own gets localllm's: the tools are
described in the system message and a call is ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>``.

- ``required`` and a named choice constrain the whole answer to calls;
- ``auto`` leaves the answer free text until the family's trigger appears, and
  constrains it from there (the trigger cannot appear in plain text);
- ``none`` leaves the tools out of the prompt; no call can be made.

Several calls per turn are allowed (``parallel_tool_calls``, on by default as in
OpenAI's API) where the family can write them; each is checked against its own schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError
from .._types import Message
from .structured import JSON_BOUNDS_LARK, CompiledFormat, compile_lark
from .tool_formats import ID, LOCALLLM, ToolFormat, call_grammar

OPEN = "<tool_call>"  # localllm's own format's trigger
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHOICES = ("auto", "none", "required")


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
    family: ToolFormat = LOCALLLM  # how the model writes a call
    parallel: bool = True          # several calls per turn allowed
    #: the format's markers that are one special token of the model (text -> id): written
    #: as that token, and shown as text to the parser
    specials: Mapping[str, int] = field(default_factory=dict)

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


def prepare(tools: Any, tool_choice: Any, family: ToolFormat = LOCALLLM,
            parallel: bool = True, specials: Mapping[str, int] | None = None,
            max_calls: int | None = None) -> ToolSetup | None:
    """The setup for one request, or None when no call can be made (no tools, ``none``).
    ``specials``: which of the format's markers are special tokens of the model;
    ``max_calls``: at most that many calls in the turn (the grammar ends the calls there,
    so a model that would repeat calls stops)."""
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
    if not isinstance(parallel, bool):
        raise ConfigError(f"parallel_tool_calls must be true or false, not {parallel!r}")
    specials = dict(specials or {})
    grammar = _call_format(family, callable_tools, free_text=choice == "auto",
                           parallel=parallel and max_calls != 1, specials=specials,
                           max_calls=max_calls)
    return ToolSetup(parsed, choice, grammar, family, parallel, specials)


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


def _call_format(family: ToolFormat, tools: Sequence[Tool], *, free_text: bool,
                 parallel: bool, specials: Mapping[str, int], max_calls: int | None = None
                 ) -> CompiledFormat:
    """Two grammars, intersected: the calls with each function's JSON schema, and the
    same structure with JSON whose numbers are bounded."""
    pairs = [(t.name, t.parameters) for t in tools]
    schema_lark = call_grammar(family, pairs, free_text=free_text, parallel=parallel,
                               specials=specials, max_calls=max_calls)
    bounds_lark = (call_grammar(family, pairs, free_text=free_text, parallel=parallel,
                                args_rule="value", specials=specials, max_calls=max_calls)
                   + bounds_rules(family))
    try:
        return CompiledFormat((compile_lark(schema_lark), compile_lark(bounds_lark)), "tools")
    except ConfigError as exc:
        raise ConfigError(f"the tools' parameters cannot be enforced: {exc}") from None


def bounds_rules(family: ToolFormat) -> str:
    """The JSON bounds grammar's rules with the family's separators (``", "``, ``": "``)."""
    item, key = json.dumps(family.item_separator), json.dumps(family.key_separator)
    return (JSON_BOUNDS_LARK.replace("start: value\n", "")
            .replace('("," pair)', f"({item} pair)").replace('("," value)', f"({item} value)")
            .replace('STRING ":" value', f"STRING {key} value"))


def system_text(setup: ToolSetup) -> str:
    """The instructions and function list the model reads, for a format its template
    does not describe itself."""
    fmt = setup.family
    lines = ["You can call these functions:"]
    lines += [json.dumps(t.spec(), ensure_ascii=False) for t in setup.tools]
    call = fmt.write([("<function name>", "<arguments as a JSON object>")])
    several = (" To call several functions at once, write one call after the other."
               if setup.parallel and not fmt.one_call else "")
    if setup.choice == "auto":
        lines.append(f"To call a function, answer with only {call}.{several} Otherwise "
                     "answer normally.")
    elif setup.choice == "required":
        lines.append(f"Answer by calling a function: {call}{several}")
    else:
        lines.append(f"Answer by calling {setup.choice}: {call}")
    return "\n".join(lines)


def prompt_view(messages: list[Message], setup: ToolSetup | None, family: ToolFormat
                ) -> tuple[list[Message | dict[str, Any]], dict[str, Any]]:
    """The messages and variables the chat template renders, in the model's format.

    localllm's own format (and a family whose template does not describe tools) gets
    the tools in the system message; earlier calls are written as the family writes
    them when the template cannot show them. A template with a format of its own gets
    ``tools`` and the calls as structured data, as the family's template expects them
    (arguments as an object; Mistral's 9-character call ids; one call per message where
    the family makes one call per turn)."""
    if family is LOCALLLM:
        out: list[Message | dict[str, Any]] = [_as_text(m, family) for m in messages]
        return _with_system_text(out, setup), {}
    ids = _IdMap(family)
    views: list[Message | dict[str, Any]] = []
    for m in messages:
        views.extend(_native_views(m, family, ids))
    extra: dict[str, Any] = {}
    listed = [{"type": "function", "function": t.spec()} for t in setup.tools] if setup else []
    if family.tools_as_json:  # the template reads it whether or not there are tools
        import time

        extra[family.tools_as_json] = json.dumps(listed, indent=2, ensure_ascii=False)
        extra["datetime"] = time.strftime("%b %d %Y %H:%M:%S GMT", time.gmtime())
    elif family.template_tools:  # a list, empty without tools: as llama.cpp leaves it
        extra["tools"] = listed   # unset, which a template iterates as empty
    elif setup is not None:
        views = _with_system_text(views, setup)
    return views, extra


def _with_system_text(out: list[Message | dict[str, Any]], setup: ToolSetup | None
                      ) -> list[Message | dict[str, Any]]:
    if setup is None:
        return out
    text = system_text(setup)
    first = out[0] if out else None
    role = first.role if isinstance(first, Message) else (first or {}).get("role")
    if role == "system":
        prior = first.text if isinstance(first, Message) else first.get("content")  # type: ignore[union-attr]
        out[0] = Message(role="system", content=f"{prior}\n\n{text}")
    else:
        out.insert(0, Message(role="system", content=text))
    return out


def _as_text(message: Message, family: ToolFormat) -> Message:
    if not message.tool_calls:
        return message
    calls = family.write([(c.name, c.arguments) for c in message.tool_calls])
    return Message(role="assistant", content=(message.text or "") + calls)


class _IdMap:
    """Call ids as the family's template takes them: Mistral's templates refuse any id
    that is not 9 letters and digits, so others are mapped to such ids, consistently
    between a call and its result."""

    def __init__(self, family: ToolFormat) -> None:
        self.strict = ID in family.call
        self.seen: dict[str, str] = {}

    def __call__(self, call_id: str | None) -> str | None:
        if call_id is None or not self.strict or re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
            return call_id
        if call_id not in self.seen:
            import hashlib

            digest = hashlib.sha256(call_id.encode()).hexdigest()
            self.seen[call_id] = digest[:9]
        return self.seen[call_id]


def _native_views(m: Message, family: ToolFormat, ids: _IdMap) -> list[Message | dict[str, Any]]:
    if m.tool_calls and not family.template_calls:
        return [_as_text(m, family)]
    if m.role == "tool" and ids.strict:
        view = m.template_view()
        view["tool_call_id"] = ids(m.tool_call_id)
        return [view]
    if not m.tool_calls:
        return [m]
    view = m.template_view()
    calls = []
    for c in m.tool_calls:
        arguments: Any = json.loads(c.arguments) if family.object_arguments else c.arguments
        calls.append({"id": ids(c.id), "type": "function",
                      "function": {"name": c.name, "arguments": arguments}})
    view.setdefault("content", "")
    if view["content"] is None:
        view["content"] = ""
    if family.one_call and len(calls) > 1:  # one call per assistant message
        return [{**view, "tool_calls": [call], "content": view["content"] if i == 0 else ""}
                for i, call in enumerate(calls)]
    view["tool_calls"] = calls
    return [view]
