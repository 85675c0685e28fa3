"""Structured output: JSON schema, regex and grammar constraints enforced token by token.

The constraint engine is llguidance: a Rust library with no heavy dependencies (xgrammar
would pull in torch) that compiles JSON schemas, regexes and Lark grammars and computes
the set of allowed tokens for the next step in microseconds. It is driven by localllm's
own tokenizer, so every backend that exposes logits gets the same constraint.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import BackendUnavailableError, ConfigError
from .._text import partial_tail
from ..sampling import Logits

if TYPE_CHECKING:
    from ..tokenizer import LocalTokenizer

ResponseFormat = Mapping[str, Any] | type
# Compact JSON (no free whitespace): small models otherwise drift into endless indentation.
# A schema can override this with llguidance's "x-guidance" key.
JSON_DEFAULTS: dict[str, Any] = {"whitespace_flexible": False}

# JSON Schema leaves number length unbounded, and a sampling model can write digits until
# max_tokens cuts it ("lat": 38.08712430952793178...). Every JSON output is therefore also
# matched against this lexical grammar: a JSON number has at most what a float64 holds
# (17 digits in the mantissa, a leading "0." not counted; an exponent of at most 3 digits)
# or, written without fraction or exponent, what an int64 holds (19 digits). Structure and
# strings are plain JSON; the schema grammar decides everything else.
_INT64 = r"-?(0|[1-9][0-9]{0,18})"
_FLOAT64 = (r"-?(0(\.[0-9]{1,17})?|"
            + "|".join(rf"[1-9][0-9]{{{i}}}(\.[0-9]{{1,{16 - i}}})?" for i in range(16))
            + r"|[1-9][0-9]{16})([eE][+-]?[0-9]{1,3})?")
JSON_BOUNDS_LARK = r"""
start: value
value: object | array | STRING | NUMBER | "true" | "false" | "null"
object: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
array: "[" [value ("," value)*] "]"
STRING: /"(\\(["\\\/bfnrt]|u[0-9a-fA-F]{4})|[^"\\\x00-\x1f])*"/
""" + f"NUMBER: /{_INT64}/ | /{_FLOAT64}/\n"


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise BackendUnavailableError("structured output", "llguidance", "structured") from exc
    return llguidance


@dataclass(frozen=True)
class CompiledFormat:
    """A response format ready to enforce: grammars whose masks are intersected, and how
    the finished text is parsed (``json``: JSON, into ``model`` when one was given)."""

    grammars: tuple[str, ...]
    kind: str  # "json" or "text"
    model: type | None = None


def grammar_for(response_format: ResponseFormat) -> CompiledFormat:
    """Compile an OpenAI-style ``response_format`` (or a pydantic model class)."""
    llg = _llguidance()
    if isinstance(response_format, CompiledFormat):
        return response_format
    if isinstance(response_format, type):
        if not hasattr(response_format, "model_json_schema"):
            raise ConfigError(f"response_format={response_format.__name__} is a class but not "
                              "a pydantic model; pass a BaseModel subclass or a dict")
        schema = strict_schema(response_format.model_json_schema())
        return _json_format(llg, schema, model=response_format)
    if not isinstance(response_format, Mapping) or "type" not in response_format:
        raise ConfigError("response_format must be a pydantic model class or a dict with a "
                          "'type' of json_schema, json_object, regex or grammar")
    kind = response_format["type"]
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise ConfigError("response_format json_schema needs {'json_schema': "
                              "{'name': ..., 'schema': {...}}}")
        return _json_format(llg, strict_schema(schema))
    if kind == "json_object":
        return _json_format(llg, {"type": "object"})
    if kind == "regex":
        pattern = response_format.get("pattern")
        if not isinstance(pattern, str):
            raise ConfigError("response_format regex needs {'pattern': '...'}")
        return CompiledFormat((str(llg.LLMatcher.grammar_from_regex(pattern)),), "text")
    if kind == "grammar":
        lark = response_format.get("lark")
        if not isinstance(lark, str):
            raise ConfigError("response_format grammar needs {'lark': '...'} (Lark syntax)")
        return CompiledFormat((compile_lark(lark),), "text")
    raise ConfigError(f"response_format type {kind!r} is not supported; use json_schema, "
                      "json_object, regex or grammar")


def _json_format(llg: Any, schema: Any, model: type | None = None) -> CompiledFormat:
    grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_DEFAULTS)
    return CompiledFormat((str(grammar), _json_bounds()), "json", model)


@functools.cache
def _json_bounds() -> str:
    """The JSON bounds grammar, compiled once per process."""
    return compile_lark(JSON_BOUNDS_LARK)


def compile_lark(lark: str) -> str:
    """A Lark grammar (llguidance's dialect, with ``%json {schema}``) ready for a matcher."""
    try:
        return str(_llguidance().LLMatcher.grammar_from_lark(lark))
    except ValueError as exc:
        raise ConfigError(f"the grammar cannot be compiled: {exc}") from None


# Keys whose value is one subschema, a map of subschemas, or a list of subschemas.
_SUBSCHEMA = ("items", "additionalItems", "contains", "not", "if", "then", "else",
              "additionalProperties", "propertyNames", "unevaluatedItems",
              "unevaluatedProperties")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions",
                   "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")


def strict_schema(schema: Any) -> Any:
    """A copy of ``schema`` where an object that lists ``properties`` allows no other keys
    unless it says so (``additionalProperties``/``patternProperties``): OpenAI's strict
    semantics. Plain JSON Schema would let a model append keys until max_tokens."""
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA:
        if isinstance(out.get(key), Mapping):
            out[key] = strict_schema(out[key])
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {k: strict_schema(v) for k, v in out[key].items()}
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [strict_schema(v) for v in out[key]]
    if isinstance(out.get("properties"), Mapping) and not any(
            k in out for k in ("additionalProperties", "patternProperties",
                               "unevaluatedProperties")):
        out["additionalProperties"] = False
    return out


def ll_tokenizer(tokenizer: LocalTokenizer) -> Any:
    """llguidance's view of a localllm tokenizer (built once, ~1 s, then cached)."""
    cached = getattr(tokenizer, "_llguidance", None)
    if cached is None:
        llg = _llguidance()
        eos = sorted(tokenizer.eog_ids) or ([tokenizer.eos_id] if tokenizer.eos_id else [])
        cached = llg.LLTokenizer(tokenizer.to_json(), n_vocab=tokenizer.vocab_size,
                                 eos_token=eos)
        tokenizer._llguidance = cached  # type: ignore[attr-defined]
    return cached


class GrammarConstraint:
    """A logits processor that forbids every token some grammar does not allow next.

    Several grammars (the schema and the JSON bounds) each run their own matcher; a token
    is allowed only where all of them allow it."""

    def __init__(self, tokenizer: LocalTokenizer, compiled: CompiledFormat,
                 vocab_size: int) -> None:
        llg = _llguidance()
        self.format = compiled
        self.matchers = [llg.LLMatcher(ll_tokenizer(tokenizer), g, log_level=0)
                         for g in compiled.grammars]
        for matcher in self.matchers:
            if matcher.is_error():
                raise ConfigError(f"the response format cannot be enforced: "
                                  f"{matcher.get_error()}")
        self.vocab_size = vocab_size

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        bits: Any = None
        for matcher in self.matchers:
            if matcher.is_error():
                raise ConfigError(f"structured output failed: {matcher.get_error()}")
            mask = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
            bits = mask if bits is None else bits & mask
        allowed = np.unpackbits(bits, bitorder="little")[: logits.size].astype(bool)
        if not allowed.any():
            raise ConfigError("the grammar allows no token here; the schema may be "
                              "unsatisfiable")
        out = np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32)
        if not np.isfinite(out).any():
            raise ConfigError("the logits processors forbid every token the grammar "
                              "allows here; they cannot be combined this way")
        return out

    def allows(self, token: int) -> bool:
        """Whether every grammar takes ``token`` next (asked by a processor that would
        force one, before the grammar runs)."""
        return all(m.validate_tokens([token]) == 1 for m in self.matchers)

    def consume(self, token: int) -> None:
        for matcher in self.matchers:
            if not matcher.consume_token(token):
                raise ConfigError(f"structured output rejected token {token}: "
                                  f"{matcher.get_error()}")

    @property
    def done(self) -> bool:
        """True once the output is complete (the schema grammar has stopped or accepts)."""
        head = self.matchers[0]
        return bool(head.is_stopped() or head.is_accepting())


class LazyGrammar:
    """Tools in auto mode: the answer is free text until the call format's trigger, so
    the grammar (whose free text may hold anything but the trigger) is not run until the
    text could be starting one: the generated text ends with part of the trigger, or the
    trigger's special token was written. Then it is given every token so far and holds
    the rest of the answer, as it would have from the start (llama.cpp's lazy grammars).
    Computing no mask per token for plain text is what makes a request with tools as
    fast as one without.

    A single token holding the whole trigger and more than a call may start with (which
    the grammar would have refused) cannot be taken back: the grammar is then dropped and
    the answer stays text (the parser reads no call from text that left the format)."""

    def __init__(self, grammar: GrammarConstraint, trigger: bytes,
                 trigger_tokens: frozenset[int], token_bytes: Any) -> None:
        self.grammar = grammar
        self.format = grammar.format
        self.trigger = trigger
        self.trigger_tokens = trigger_tokens
        self.token_bytes = token_bytes
        self.pending: list[int] = []
        self.tail = b""
        self.active = False
        self.abandoned = False

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        return self.grammar(input_ids, logits) if self.active else logits

    def consume(self, token: int) -> None:
        if self.active:
            self.grammar.consume(token)
            return
        if self.abandoned:
            return
        self.pending.append(token)
        may_start = token in self.trigger_tokens
        if self.trigger:  # the trigger whole in this token's window, or its start at the end
            window = self.tail + self.token_bytes(token)
            may_start = may_start or self.trigger in window or \
                partial_tail(window, self.trigger) > 0
            self.tail = window[-len(self.trigger):]
        if may_start:
            self.active = True
            try:
                for held in self.pending:
                    self.grammar.consume(held)
            except ConfigError:
                self.active, self.abandoned = False, True
            self.pending = []

    def allows(self, token: int) -> bool:
        return self.grammar.allows(token) if self.active else True

    @property
    def done(self) -> bool:
        return self.grammar.done if self.active else True
