"""Structured output: JSON schema, regex and grammar constraints enforced token by token.

The constraint engine is llguidance: a Rust library with no heavy dependencies (xgrammar
would pull in torch) that compiles JSON schemas, regexes and Lark grammars and computes
the set of allowed tokens for the next step in microseconds. It is driven by localllm's
own tokenizer, so every backend that exposes logits gets the same constraint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import BackendUnavailableError, ConfigError
from .sampling import Logits

if TYPE_CHECKING:
    from .tokenizer import LocalTokenizer

ResponseFormat = Mapping[str, Any] | type
# Compact JSON (no free whitespace): small models otherwise drift into endless indentation.
# A schema can override this with llguidance's "x-guidance" key.
JSON_DEFAULTS: dict[str, Any] = {"whitespace_flexible": False}


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:
        raise BackendUnavailableError("structured output", "llguidance", "structured") from exc
    return llguidance


def grammar_for(response_format: ResponseFormat) -> str:
    """Compile an OpenAI-style ``response_format`` (or a pydantic model class) to a grammar."""
    llg = _llguidance()
    schema: Any
    if isinstance(response_format, type):
        if not hasattr(response_format, "model_json_schema"):
            raise ConfigError(f"response_format={response_format.__name__} is a class but not "
                              "a pydantic model; pass a BaseModel subclass or a dict")
        schema = response_format.model_json_schema()
        return str(llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS))
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
        return str(llg.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                            defaults=JSON_DEFAULTS))
    if kind == "json_object":
        return str(llg.LLMatcher.grammar_from_json_schema({"type": "object"},
                                                            defaults=JSON_DEFAULTS))
    if kind == "regex":
        pattern = response_format.get("pattern")
        if not isinstance(pattern, str):
            raise ConfigError("response_format regex needs {'pattern': '...'}")
        return str(llg.LLMatcher.grammar_from_regex(pattern))
    if kind == "grammar":
        lark = response_format.get("lark")
        if not isinstance(lark, str):
            raise ConfigError("response_format grammar needs {'lark': '...'} (Lark syntax)")
        return str(llg.LLMatcher.grammar_from_lark(lark))
    raise ConfigError(f"response_format type {kind!r} is not supported; use json_schema, "
                      "json_object, regex or grammar")


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
    """A logits processor that forbids every token the grammar does not allow next."""

    def __init__(self, tokenizer: LocalTokenizer, grammar: str, vocab_size: int) -> None:
        llg = _llguidance()
        self.matcher = llg.LLMatcher(ll_tokenizer(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise ConfigError(f"the response format cannot be enforced: "
                              f"{self.matcher.get_error()}")
        self.vocab_size = vocab_size

    def __call__(self, input_ids: Sequence[int], logits: Logits) -> Logits:
        if self.matcher.is_error():
            raise ConfigError(f"structured output failed: {self.matcher.get_error()}")
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: logits.size].astype(bool)
        if not allowed.any():
            raise ConfigError("the grammar allows no token here; the schema may be "
                              "unsatisfiable")
        return np.where(allowed, logits, np.float32(-np.inf)).astype(np.float32)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ConfigError(f"structured output rejected token {token}: "
                              f"{self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        return bool(self.matcher.is_stopped())
