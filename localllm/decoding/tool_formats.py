"""Tool calls in each model family's own format: how a family writes a call, how its chat
template is recognised, and the grammar that holds a generated call to that shape.

A family's calls are literal text around a few slots: the function's name, its JSON
arguments, sometimes a call id or a running index. ``open`` comes before the first call,
``separator`` between calls and ``close`` after the last, so one description gives the
grammar (every call checked against its function's schema), the parser and the text an
earlier call is written back as. Families and their detection follow llama.cpp's chat
handlers (``common/chat.cpp``): the first family whose marker strings all occur in the
template source is the model's; a template that shows none gets localllm's own format.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .._errors import ConfigError


class Slot(enum.Enum):
    """A variable part of a call's text."""

    NAME = "name"        # the function's name, one of the tools'
    ARGS = "args"        # its arguments, a JSON object under the function's schema
    ID = "id"            # a call id the family writes itself (Mistral's 9 characters)
    INDEX = "index"      # a running number (Command R7B's tool_call_id, Kimi's call index)
    KEY = "key"          # an argument's name, in a family that writes one tag per argument
    VALUE = "value"      # its value: a string as it is, any other value as JSON


NAME, ARGS, ID, INDEX = Slot.NAME, Slot.ARGS, Slot.ID, Slot.INDEX
KEY, VALUE = Slot.KEY, Slot.VALUE
ToolSlot = Slot  # its public name (``localllm.ToolSlot``)
Piece = str | Slot


@dataclass(frozen=True)
class ToolFormat:
    """How one model family writes tool calls (see the module docstring)."""

    name: str
    models: str                          # which models use it, for the docs
    call: tuple[Piece, ...]
    open: str = ""
    separator: str = ""
    close: str = ""
    trigger: str = ""                    # what starts a call in free text (default: open
                                         # and the call's first literal)
    anchored: bool = False               # a call is the whole answer: text may not precede it
    one_call: bool = False               # the family writes one call per turn
    detect: tuple[str, ...] = ()         # all of these occur in its templates
    id_regex: str = "[A-Za-z0-9]{9}"
    #: JSON separators of the arguments, as the family's own template writes them
    item_separator: str = ", "
    key_separator: str = ": "
    #: the template describes the tools itself (else they go in the system message)
    template_tools: bool = True
    #: the template shows earlier calls (else they are written into the content as text)
    template_calls: bool = True
    #: arguments of earlier calls reach the template as a JSON object (else a string)
    object_arguments: bool = True
    #: the template takes the tools as this variable, a JSON text (FireFunction's
    #: ``functions``), with today's date as ``datetime``; empty: as ``tools``, a list
    tools_as_json: str = ""
    #: the arguments written one tag per argument (Qwen3-Coder's, GLM's and MiniMax's
    #: XML) rather than as one JSON object: these pieces, with KEY and VALUE, per argument
    param: tuple[Piece, ...] = ()
    #: what comes between KEY and VALUE for a value that is not a string, where the
    #: family marks it (DeepSeek's DSML: ``string="false"``); empty: as for a string
    param_json_between: str = ""

    def param_parts(self) -> tuple[str, str, str]:
        """A ``param``'s literals: before its KEY, between KEY and VALUE, after VALUE."""
        k, v = self.param.index(KEY), self.param.index(VALUE)
        text = ["".join(str(p) for p in part) for part in
                (self.param[:k], self.param[k + 1:v], self.param[v + 1:])]
        return text[0], text[1], text[2]

    def args_text(self, arguments: str) -> str:
        """Arguments (a JSON object's text) as the family writes them."""
        if not self.param:
            return arguments
        before, between, after = self.param_parts()
        out = []
        for key, value in json.loads(arguments).items():
            if isinstance(value, str):
                out.append(f"{before}{key}{between}{value}{after}")
            else:
                shown = json.dumps(value, ensure_ascii=False)
                out.append(f"{before}{key}{self.param_json_between or between}{shown}{after}")
        return "".join(out)

    def start(self) -> str:
        """The text that turns free text into a call."""
        if self.trigger:
            return self.trigger
        first = self.call[0]
        return self.open + (first if isinstance(first, str) else "")

    def write(self, calls: Sequence[tuple[str, str]]) -> str:
        """The text of ``calls`` (name, arguments JSON) in this format: how an earlier
        call is written back, and what the parser reads."""
        out = []
        for index, (name, arguments) in enumerate(calls):
            slots = {NAME: name, ARGS: self.args_text(arguments), ID: f"{index:09d}"[-9:],
                     INDEX: str(index)}
            out.append("".join(p if isinstance(p, str) else slots[p] for p in self.call))
        return self.open + self.separator.join(out) + self.close


_JSON_CALL = ('{"name": "', NAME, '", "arguments": ', ARGS, "}")

#: localllm's own format: for templates that show no tool format of their own. The tools
#: are described in the system message; calls are written back to back.
LOCALLLM = ToolFormat(
    "localllm", "any model whose template has no tool format (the default model)",
    ("<tool_call>", '{"name":"', NAME, '","arguments":', ARGS, "}</tool_call>"),
    item_separator=",", key_separator=":", template_tools=False, object_arguments=False)

def _dsml(name: str, models: str, block: str) -> ToolFormat:
    """DeepSeek's DSML calls, inside a ``block`` tag: one tag per argument, each marked
    as a string or as JSON by the family itself."""
    return ToolFormat(
        name, models, ('<｜DSML｜invoke name="', NAME, '">\n', ARGS, "</｜DSML｜invoke>\n"),
        open=f"<｜DSML｜{block}>\n", close=f"</｜DSML｜{block}>",
        detect=(f"dsml_token + '{block}>",),
        param=('<｜DSML｜parameter name="', KEY, '" string="true">', VALUE,
               "</｜DSML｜parameter>\n"), param_json_between='" string="false">')


#: in llama.cpp's order of checks: a more specific family before a general one
FAMILIES: tuple[ToolFormat, ...] = (
    # gpt-oss: the answer starts after ``<|start|>assistant``; a call goes to the
    # commentary channel with its recipient, and ``<|call|>`` (an end of generation) ends it
    ToolFormat("harmony", "gpt-oss (OpenAI's harmony format)",
               ("<|channel|>commentary to=functions.", NAME, " <|constrain|>json<|message|>",
                ARGS), one_call=True, detect=("<|channel|>", "<|call|>"),
               item_separator=",", key_separator=":"),
    ToolFormat("seed-oss", "ByteDance Seed-OSS",
               ("<seed:tool_call>\n<function=", NAME, ">\n", ARGS,
                "</function>\n</seed:tool_call>"), separator="\n",
               trigger="<seed:tool_call>", detect=("<seed:tool_call>", "<parameter="),
               param=("<parameter=", KEY, ">", VALUE, "</parameter>\n")),
    ToolFormat("qwen3-coder", "Qwen3-Coder, Qwen3.5, Nemotron 3 Nano, StepFun 3.5",
               ("<tool_call>\n<function=", NAME, ">\n", ARGS, "</function>\n</tool_call>"),
               separator="\n", trigger="<tool_call>",
               detect=("<tool_call>", "<function=", "<parameter="),
               param=("<parameter=", KEY, ">\n", VALUE, "\n</parameter>\n")),
    ToolFormat("glm-4.7", "GLM 4.7, Spark",
               ("<tool_call>", NAME, ARGS, "</tool_call>"), trigger="<tool_call>",
               detect=("</arg_key><arg_value>",),
               param=("<arg_key>", KEY, "</arg_key><arg_value>", VALUE, "</arg_value>")),
    ToolFormat("glm-4.5", "GLM 4.5 and 4.6, Ling, Laguna",
               ("<tool_call>", NAME, "\n", ARGS, "</tool_call>"), separator="\n",
               trigger="<tool_call>", detect=("<arg_key>", "<arg_value>"),
               param=("<arg_key>", KEY, "</arg_key>\n<arg_value>", VALUE, "</arg_value>\n")),
    ToolFormat("minimax-m2", "MiniMax M2",
               ('<invoke name="', NAME, '">\n', ARGS, "</invoke>\n"),
               open="<minimax:tool_call>\n", close="</minimax:tool_call>",
               detect=("<minimax:tool_call>", "<parameter name="),
               param=('<parameter name="', KEY, '">', VALUE, "</parameter>\n")),
    ToolFormat("apriel", "Apriel 1.5 and 1.6", _JSON_CALL, open="<tool_calls>[",
               separator=", ", close="]</tool_calls>", detect=("<tool_calls>[",)),
    _dsml("deepseek-v3.2", "DeepSeek V3.2 (DSML)", "function_calls"),
    _dsml("deepseek-v4", "DeepSeek V4 (DSML)", "tool_calls"),
    ToolFormat("deepseek-v3.1", "DeepSeek V3.1",
               ("<｜tool▁call▁begin｜>", NAME, "<｜tool▁sep｜>", ARGS, "<｜tool▁call▁end｜>"),
               open="<｜tool▁calls▁begin｜>", close="<｜tool▁calls▁end｜>",
               detect=("message['prefix'] is defined and message['prefix'] and thinking",),
               template_tools=False),
    ToolFormat("deepseek-r1", "DeepSeek R1 and its distills",
               ("<｜tool▁call▁begin｜>function<｜tool▁sep｜>", NAME, "\n```json\n", ARGS,
                "\n```<｜tool▁call▁end｜>"),
               open="<｜tool▁calls▁begin｜>", separator="\n", close="<｜tool▁calls▁end｜>",
               detect=("<｜tool▁calls▁begin｜>",)),
    ToolFormat("command-r7b", "Command R7B",
               ('{"tool_call_id": "', INDEX, '", "tool_name": "', NAME, '", "parameters": ',
                ARGS, "}"),
               open="<|START_ACTION|>[\n    ", separator=",\n    ",
               close="\n]<|END_ACTION|>", detect=("<|END_THINKING|><|START_ACTION|>",)),
    ToolFormat("granite-3.3", "IBM Granite 3.3",
               _JSON_CALL, open="<|tool_call|>[", separator=", ", close="]",
               detect=("elif thinking", "<|tool_call|>")),
    ToolFormat("hermes", "Hermes 2 Pro and 3, Qwen 2.5, Qwen 3, QwQ, Granite 4",
               ("<tool_call>\n", *_JSON_CALL, "\n</tool_call>"), separator="\n",
               trigger="<tool_call>", detect=("<tool_call>",)),
    ToolFormat("kimi-k2", "Kimi K2",
               ("<|tool_call_begin|>functions.", NAME, ":", INDEX,
                "<|tool_call_argument_begin|>", ARGS, "<|tool_call_end|>"),
               open="<|tool_calls_section_begin|>", close="<|tool_calls_section_end|>",
               detect=("<|tool_calls_section_begin|>", "<|tool_call_begin|>")),
    ToolFormat("firefunction-v2", "FireFunction v2",
               _JSON_CALL, open=" functools[", separator=", ", close="]",
               detect=(" functools[",), tools_as_json="functions"),
    ToolFormat("functionary-v3.1", "Functionary v3.1 (Llama 3.1)",
               ("<function=", NAME, ">", ARGS, "</function>"),
               trigger="<function=", detect=("<|start_header_id|>", "<function=")),
    ToolFormat("llama-3", "Llama 3.1, 3.2 and 3.3",
               ('{"name": "', NAME, '", "parameters": ', ARGS, "}"),
               trigger='{"name": "', anchored=True, one_call=True,
               detect=("<|start_header_id|>ipython<|end_header_id|>",)),
    ToolFormat("mistral-call-id", "Mistral Small 3.2",
               ("[TOOL_CALLS]", NAME, "[CALL_ID]", ID, "[ARGS]", ARGS),
               detect=("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")),
    ToolFormat("mistral-args", "Devstral, Ministral 3, Magistral",
               ("[TOOL_CALLS]", NAME, "[ARGS]", ARGS), detect=("[TOOL_CALLS]", "[ARGS]")),
    ToolFormat("mistral-nemo", "Mistral Nemo",
               ('{"name": "', NAME, '", "arguments": ', ARGS, ', "id": "', ID, '"}'),
               open="[TOOL_CALLS][", separator=", ", close="]", detect=("[TOOL_CALLS]",)),
)
BY_NAME: dict[str, ToolFormat] = {f.name: f for f in (*FAMILIES, LOCALLLM)}

#: families whose call format localllm does not write yet: checked before the others
#: (their templates also hold markers such as ``<tool_call>``), they get localllm's own
#: format, described in the system message, rather than a wrong one
NOT_YET: tuple[tuple[tuple[str, ...], str], ...] = (
    (("]<]minimax[>[",), "MiniMax M3's tag per argument, named after the argument"),
    ((">>>all",), "Functionary v3.2 recipients"),
    (("<|tool_call>call:",), "Gemma 4 calls"),
)


def not_yet(template: str | None) -> str | None:
    """Why a template's own tool format is not written (None: it is, or it has none)."""
    for markers, reason in NOT_YET:
        if template and all(m in template for m in markers):
            return reason
    return None


def detect_format(template: str | None) -> ToolFormat:
    """The family whose markers the template holds, else localllm's own format. A
    family template that never reads ``tools`` (DeepSeek's R1 distills) gets the tools
    in the system message; one that never reads ``tool_calls`` gets earlier calls as text."""
    if not_yet(template):
        return LOCALLLM
    for family in FAMILIES:
        if template and all(marker in template for marker in family.detect):
            return adapted(family, template)
    return LOCALLLM


def adapted(family: ToolFormat, template: str | None) -> ToolFormat:
    """``family`` as this template can show it (see :func:`detect_format`)."""
    if family is LOCALLLM or not template:
        return family
    return replace(family,
                   template_tools=family.template_tools and "tools" in template,
                   template_calls="tool_calls" in template)


def named_format(name: str | ToolFormat, template: str | None) -> ToolFormat:
    """``tool_format=``: "auto" (detected), a family's name, "localllm", or a
    :class:`ToolFormat` of the caller's own (for a model no family describes)."""
    if isinstance(name, ToolFormat):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"tool_format={name!r} is invalid; use 'auto', a family's name "
                          "or a ToolFormat")
    if name == "auto":
        return detect_format(template)
    if name not in BY_NAME:
        raise ConfigError(f"tool_format={name!r} is not a known format; use 'auto' or one "
                          f"of {', '.join(sorted(BY_NAME))}")
    return adapted(BY_NAME[name], template)


# ------------------------------------------------------------------------------ grammar
def call_grammar(fmt: ToolFormat, tools: Sequence[tuple[str, Mapping[str, Any]]], *,
                 free_text: bool, parallel: bool, args_rule: str | None = None,
                 specials: Mapping[str, int] | None = None, count: int | None = None,
                 max_calls: int | None = None) -> str:
    """A Lark grammar (llguidance's dialect) for one answer in format ``fmt``.

    ``tools`` are (name, parameters schema) pairs. With ``free_text`` the answer is text
    until the format's trigger, and constrained from there (it may never hold the trigger
    otherwise); without it the answer is calls only. ``parallel`` allows several calls.
    ``args_rule`` replaces every schema by one rule (the JSON bounds grammar runs the same
    structure with ``value``). ``specials`` maps marker texts that are one special token
    in the model's vocabulary to its id: the grammar names them as that token, which is
    how the model was trained to write them (spelled out as text they would be other
    tokens, and a special token is not text a text rule can match). ``count`` asks for
    exactly that many calls, ``max_calls`` for at most that many."""
    specials = specials or {}
    lit = _Literal(specials)
    trigger = fmt.start()
    special_trigger = next((s for s in specials if trigger.startswith(s)), None)
    head = fmt.call[0] if isinstance(fmt.call[0], str) else ""
    tail = fmt.call[1:] if head else fmt.call
    lines: list[str] = []
    for i, (name, schema) in enumerate(tools):
        if fmt.param:
            args = _params_rule(fmt, schema, lit, args_rule, lines, f"{i}")
        else:
            args = args_rule or "%json " + json.dumps(_with_separators(fmt, schema),
                                                      ensure_ascii=False)
        rest = " ".join(_piece(p, name, args, lit) for p in tail)
        lines.append(f"call_{i}: {lit(head)} {rest}")
        if free_text and not fmt.anchored:  # the first call, after the trigger's text
            after = (fmt.open + head)[len(special_trigger or trigger):]
            lines.append(f"first_{i}: {lit(after)} {rest}")
    lines.append("call: " + " | ".join(f"call_{i}" for i in range(len(tools))))
    more = "" if fmt.one_call or not parallel else f"({lit(fmt.separator)} call)*"
    if more and max_calls is not None:
        more = f"({lit(fmt.separator)} call){{0,{max_calls - 1}}}"
    if count is not None and count > 1 and not fmt.one_call:
        more = f"({lit(fmt.separator)} call){{{count - 1}}}"
    if not free_text:
        lines.insert(0, f"start: {lit(fmt.open)} call {more} {lit(fmt.close)}")
    elif fmt.anchored:
        lines.insert(0, f"start: TEXT | {lit(fmt.open)} call {more} {lit(fmt.close)}")
        lines.append(f"TEXT: /(?s:.*)/ & ~/{_regex(trigger)}(?s:.*)/")
    elif special_trigger:
        lines.insert(0, f"start: free | free {lit(special_trigger)} first {more} "
                        f"{lit(fmt.close)}")
        lines.append("first: " + " | ".join(f"first_{i}" for i in range(len(tools))))
        lines += _free_text(specials, special_trigger, trigger[len(special_trigger):])
    else:
        if not (fmt.open + head).startswith(trigger):
            raise ConfigError(f"tool format {fmt.name}: its trigger {trigger!r} does not "
                              "start its calls")
        lines.insert(0, f"start: TEXT | head first {more} {lit(fmt.close)}")
        lines.append("first: " + " | ".join(f"first_{i}" for i in range(len(tools))))
        lines.append("ANY: /(?s:.*)/")
        lines.append(f"head[lazy]: ANY {lit(trigger)}")
        lines.append(f"TEXT: /(?s:.*)/ & ~/(?s:.*){_regex(trigger)}(?s:.*)/")
    lines.append(f"ID: /{fmt.id_regex}/")
    lines.append("INDEX: /[0-9]{1,4}/")
    return "\n".join(lines) + "\n"


def _free_text(specials: Mapping[str, int], trigger: str, after: str) -> list[str]:
    """Rules for free text when a call starts with the model's special token
    ``trigger`` followed by the text ``after``: text runs and the model's other special
    tokens (a harmony answer's channel markers), and ``trigger`` where what follows it is
    not ``after`` (a special token is not text, so a text rule cannot hold one)."""
    others = [f"<[{i}]> CHUNK?" for s, i in specials.items() if s != trigger]
    if after:
        others.append(f"<[{specials[trigger]}]> NOT_CALL?")
    lines = ["free: CHUNK? " + (f"({' | '.join(others)})*" if others else ""),
             "CHUNK: /(?s:.+)/"]
    if after:
        lines.append(f"NOT_CALL: /(?s:.+)/ & ~/{_regex(after)}(?s:.*)/")
    return lines


def _params_rule(fmt: ToolFormat, schema: Mapping[str, Any], lit: Callable[[str], str],
                 args_rule: str | None, lines: list[str], tag: str) -> str:
    """The arguments of one function, one tag per argument in the schema's order (the
    required ones always, the others optionally): a string as raw text that cannot hold
    the tag's end, any other value as JSON under its own schema."""
    before, between, after = fmt.param_parts()
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    items = []
    for j, (key, sub) in enumerate(properties.items()):
        if _string_choices(sub):
            value = "(" + " | ".join(lit(c) for c in _string_choices(sub)) + ")"
        elif isinstance(sub, Mapping) and sub.get("type") == "string" and \
                {"pattern", "format"} & set(sub):
            raise ConfigError(f"the {fmt.name} format writes {key!r} as raw text, where "
                              "its pattern or format cannot be enforced; drop it from the "
                              "schema or use tool_format='localllm'")
        elif isinstance(sub, Mapping) and sub.get("type") == "string":
            # the text up to the tag's first end, and that end: lazy, so it stops there
            terminal = f"str_{tag}_{j}"
            low, high = sub.get("minLength", 0), sub.get("maxLength", "")
            lines.append(f"{terminal}[lazy]: /(?s:.{{{low},{high}}}){_regex(after)}/")
            items.append(_optional(f"{lit(before + key + between)} {terminal}",
                                   key in required))
            continue
        elif args_rule is not None:
            value = args_rule
        else:
            value = "%json " + json.dumps(_with_separators(fmt, sub), ensure_ascii=False)
        if not _string_choices(sub):  # a JSON value, marked so where the family marks it
            between_json = fmt.param_json_between or between
            item = f"{lit(before + key + between_json)} {value} {lit(after)}"
            items.append(_optional(item, key in required))
            continue
        item = f"{lit(before + key + between)} {value} {lit(after)}"
        items.append(_optional(item, key in required))
    return " ".join(items) if items else '""'


def _optional(item: str, required: bool) -> str:
    return item if required else f"({item})?"


def _string_choices(schema: Any) -> list[str]:
    """The strings an ``enum`` or ``const`` allows, written as they are (empty: none)."""
    if not isinstance(schema, Mapping):
        return []
    choices = schema["enum"] if "enum" in schema else (
        [schema["const"]] if "const" in schema else [])
    return choices if choices and all(isinstance(c, str) for c in choices) else []


def _with_separators(fmt: ToolFormat, schema: Mapping[str, Any]) -> dict[str, Any]:
    from .structured import JSON_DEFAULTS, strict_schema

    guidance = {**JSON_DEFAULTS, "item_separator": fmt.item_separator,
                "key_separator": fmt.key_separator}
    return {**strict_schema(schema), "x-guidance": guidance}


def _piece(piece: Piece, name: str, args: str, lit: Callable[[str], str]) -> str:
    if piece is NAME:
        return lit(name)
    if piece is ARGS:
        return args
    if piece is ID:
        return "ID"
    if piece is INDEX:
        return "INDEX"
    assert isinstance(piece, str)
    return lit(piece)


@dataclass
class _Literal:
    """Literal text in a grammar: quoted text, with special tokens named as tokens."""

    specials: Mapping[str, int]
    _order: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._order = sorted(self.specials, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        parts: list[str] = []
        rest = text
        while rest:
            hits = [(rest.find(s), s) for s in self._order if s in rest]
            if not hits:
                parts.append(json.dumps(rest, ensure_ascii=False))
                break
            at, special = min(hits, key=lambda hit: hit[0])
            if at:
                parts.append(json.dumps(rest[:at], ensure_ascii=False))
            parts.append(f"<[{self.specials[special]}]>")
            rest = rest[at + len(special):]
        return " ".join(parts)


def literals(fmt: ToolFormat) -> tuple[str, ...]:
    """Every fixed text of the format: where its special tokens are looked for."""
    pieces = (fmt.open, fmt.separator, fmt.close, fmt.trigger,
              *(p for p in fmt.call if isinstance(p, str)))
    return tuple(p for p in pieces if p)


_REGEX_META = set("\\.+*?()|[]{}^$#&-~\"/")


def _regex(text: str) -> str:
    """``text`` as a literal in llguidance's regex syntax (``<`` and ``>`` stay as they
    are: escaped they would be word boundaries)."""
    return "".join("\\" + c if c in _REGEX_META else c for c in text).replace("\n", "\\n")
