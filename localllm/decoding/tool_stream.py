"""Reading tool calls back out of generated text, in any family's format, as it streams.

The grammar holds a call to its family's exact text, so reading it back needs no
guessing: literals are matched as written, a name or id runs to the next literal, and
arguments are one JSON object whose end its braces tell. The calls region is read again
from its start at each piece (it is short); free text before it is searched for the
trigger only where it has not been searched yet, holding back a tail that might still
become the trigger, as stop strings are.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._text import partial_tail
from .._types import ToolCall, ToolCallDelta
from .tool_formats import ARGS, Slot, ToolFormat


@dataclass
class PartialCall:
    name: str | None = None      # set once the name is whole
    arguments: str = ""          # the JSON text so far
    complete: bool = False


@dataclass
class Region:
    calls: list[PartialCall]
    done: bool                   # the format's close was read: nothing may follow
    valid: bool                  # False: the text left the format (it is text, not calls)


def read_region(fmt: ToolFormat, text: str, schemas: Mapping[str, Any] | None = None
                ) -> Region:
    """The calls in ``text``, which starts where the format's calls start. ``schemas``
    (function name -> parameters) say which arguments are strings, for a family that
    writes one tag per argument (a string is written as it is, so ``42`` may be one)."""
    calls: list[PartialCall] = []
    pos = _literal(text, 0, fmt.open)
    if pos is None:
        return Region(calls, False, False)
    if pos < 0:
        return Region(calls, False, True)
    while True:
        call = PartialCall()
        calls.append(call)
        pos = _read_call(fmt, text, pos, call, schemas or {})
        if pos is None:
            return Region(calls, False, False)
        if not call.complete:
            return Region(calls, False, True)
        rest = text[pos:]
        more = fmt.separator + (fmt.call[0] if isinstance(fmt.call[0], str) else "")
        if fmt.close and rest.startswith(fmt.close):
            return Region(calls, True, rest == fmt.close)
        if (fmt.separator and rest.startswith(fmt.separator)) or (
                not fmt.separator and more and rest.startswith(more)):
            pos += len(fmt.separator)
            continue
        if rest == "" or (fmt.close and fmt.close.startswith(rest)) or \
                (more and more.startswith(rest)):
            return Region(calls, False, True)
        return Region(calls, False, False)


def _literal(text: str, pos: int, literal: str) -> int | None:
    """Position after ``literal`` at ``pos``; -1 when the text ends inside it; None when
    the text says something else."""
    got = text[pos:pos + len(literal)]
    if got == literal:
        return pos + len(literal)
    return -1 if literal.startswith(got) and len(got) < len(literal) else None


def _read_call(fmt: ToolFormat, text: str, pos: int, call: PartialCall,
               schemas: Mapping[str, Any]) -> int | None:
    """Read one call from ``pos``: the position after it, or the text's end when it is
    not whole yet (``call.complete`` False); None when the text is not this format."""
    pieces = fmt.call
    for k, piece in enumerate(pieces):
        if piece is ARGS and fmt.param:
            following = next((p for p in pieces[k + 1:] if isinstance(p, str)), "")
            end = _read_params(fmt, text, pos, following, call, schemas)
            if end is None or end == len(text):
                return end
            pos = end
            continue
        if isinstance(piece, str):
            after = _literal(text, pos, piece)
            if after is None:
                return None
            if after < 0:
                return len(text)
            pos = after
        elif piece is ARGS:
            end = _json_end(text, pos)
            call.arguments = text[pos:end if end is not None else len(text)]
            if end is None:
                return len(text)
            pos = end
        else:
            ends = [p for p in pieces[k + 1:] if isinstance(p, str)][:1]
            if fmt.param and pieces[k + 1:k + 2] == (ARGS,):  # the first argument's tag
                ends.append(fmt.param_parts()[0])             # may follow the name
            found = [at for at in (text.find(end, pos) for end in ends) if at >= 0]
            if not found:
                return len(text)
            at = min(found)
            if piece is Slot.NAME:
                call.name = text[pos:at]
            pos = at
    call.complete = True
    return pos


def _read_params(fmt: ToolFormat, text: str, pos: int, following: str, call: PartialCall,
                 schemas: Mapping[str, Any]) -> int | None:
    """Read one tag per argument up to ``following``; the arguments become a JSON object
    once they are all read (so a stream sends them whole, never a prefix that changes)."""
    before, between, after = fmt.param_parts()
    properties = (schemas.get(call.name or "") or {}).get("properties") or {}
    values: dict[str, Any] = {}
    while True:
        rest = text[pos:]
        if following and rest.startswith(following):
            call.arguments = json.dumps(values, ensure_ascii=False)
            return pos
        if rest.startswith(before):
            marks = [(at, mark) for mark in {between, fmt.param_json_between} if mark
                     for at in [text.find(mark, pos + len(before))] if at >= 0]
            key_end, mark = min(marks) if marks else (-1, between)
            value_end = text.find(after, key_end + len(mark)) if key_end >= 0 else -1
            if value_end < 0:
                return len(text)
            key = text[pos + len(before):key_end]
            raw = text[key_end + len(mark):value_end]
            marked_json = bool(fmt.param_json_between) and mark == fmt.param_json_between
            values[key] = _param_value(raw, properties.get(key), marked_json,
                                       bool(fmt.param_json_between))
            pos = value_end + len(after)
            continue
        if following.startswith(rest) or before.startswith(rest):
            return len(text)
        return None


def _param_value(raw: str, schema: Any, marked_json: bool, marked: bool) -> Any:
    """A written argument's value: a string where the family marks it so (DSML) or the
    schema says so (or where it is not JSON), else the JSON it spells."""
    if (marked and not marked_json) or (
            not marked and isinstance(schema, Mapping) and schema.get("type") == "string"):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _json_end(text: str, pos: int) -> int | None:
    """Where the JSON object starting at ``pos`` ends (None: not yet)."""
    depth, in_string, escaped = 0, False, False
    for i in range(pos, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class ToolCallStream:
    """Splits generated text into content and tool calls, streaming the calls in OpenAI's
    delta shape: each call's id and name first (with its own index), then fragments of
    its arguments. Text that leaves the format, or a call cut short, stays text."""

    def __init__(self, fmt: ToolFormat, *, forced: bool,
                 schemas: Mapping[str, Any] | None = None) -> None:
        self.fmt = fmt
        self.schemas = schemas or {}
        self.trigger = fmt.start()
        self.buffer = ""
        self.region_at: int | None = 0 if forced else None
        self.shown = 0            # content characters handed out
        self.searched = 0         # where the next trigger search starts
        self.decided = False      # an anchored format's text can no longer become a call
        self.ids: list[str] = []
        self.sent_names = 0
        self.sent_args: list[int] = []

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """Content text to show and call deltas, for newly generated ``text``."""
        self.buffer += text
        if self.region_at is None:
            self._find_trigger()
        if self.region_at is None:
            return self._content(len(self.buffer) - self._held()), []
        content = self._content(self.region_at)
        region = read_region(self.fmt, self.buffer[self.region_at:], self.schemas)
        return content, self._deltas(region) if region.valid else []

    def finish(self, complete: bool) -> tuple[str, tuple[ToolCall, ...], list[ToolCallDelta]]:
        """At the end: the content left, the finished calls and the last deltas. Calls
        that are not whole (or text that left the format) come back as text."""
        if self.region_at is None:
            return self._content(len(self.buffer)), (), []
        region = read_region(self.fmt, self.buffer[self.region_at:], self.schemas)
        whole = region.valid and region.calls and all(c.complete for c in region.calls) \
            and (region.done or not self.fmt.close)
        if not (complete and whole):
            return self._content(len(self.buffer)), (), []
        deltas = self._deltas(region)
        calls = []
        for index, call in enumerate(region.calls):
            json.loads(call.arguments)  # the grammar made it JSON; a failure here is a bug
            calls.append(ToolCall(id=self.ids[index], name=call.name or "",
                                  arguments=call.arguments))
        return self._content(self.region_at), tuple(calls), deltas

    # ------------------------------------------------------------------ internals
    def _find_trigger(self) -> None:
        if self.fmt.anchored:
            if self.decided:
                return
            if self.buffer.startswith(self.trigger):
                self.region_at = 0
            elif not self.trigger.startswith(self.buffer):
                self.decided = True  # text: a call can no longer start
            return
        at = self.buffer.find(self.trigger, max(0, self.searched - len(self.trigger)))
        if at >= 0:
            self.region_at = at
        self.searched = len(self.buffer)

    def _held(self) -> int:
        """How many trailing characters might still become the trigger."""
        if self.fmt.anchored:
            return 0 if self.decided else len(self.buffer)
        return partial_tail(self.buffer, self.trigger)

    def _content(self, upto: int) -> str:
        out = self.buffer[self.shown:upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return out

    def _deltas(self, region: Region) -> list[ToolCallDelta]:
        deltas: list[ToolCallDelta] = []
        for index, call in enumerate(region.calls):
            if call.name is None:
                break
            if index >= self.sent_names:
                self.ids.append("call_" + secrets.token_hex(12))
                self.sent_args.append(0)
                deltas.append(ToolCallDelta(index=index, id=self.ids[index], name=call.name))
                self.sent_names = index + 1
            if len(call.arguments) > self.sent_args[index]:
                deltas.append(ToolCallDelta(index=index,
                                            arguments=call.arguments[self.sent_args[index]:]))
                self.sent_args[index] = len(call.arguments)
        return deltas
