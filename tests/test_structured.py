"""Structured output on the real default model: 20 schemas x 5 seeds x 2 temperatures must
all finish, parse and validate; impossible or unsupported schemas fail before any compute.

These hold on every CPU by construction: whatever tokens a seed draws on a given float
path, the grammar only lets through tokens that keep the output valid and bounded."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import jsonschema
import numpy as np
import pytest
from pydantic import BaseModel, Field

import localllm
from localllm.decoding.structured import strict_schema


def obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False}


NAME = {"type": "string", "maxLength": 24}
SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("person", obj({"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("enum", obj({"color": {"enum": ["red", "green", "blue"]}})),
    ("bool", obj({"ok": {"type": "boolean"}, "reason": NAME})),
    ("number", obj({"price": {"type": "number", "minimum": 0, "maximum": 1000}})),
    ("array", obj({"tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3}})),
    ("nested", obj({"user": obj({"id": {"type": "integer"}, "email": {
        "type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}})})),
    ("array_of_objects", obj({"items": {"type": "array", "maxItems": 2, "items": obj(
        {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
         "qty": {"type": "integer", "minimum": 1, "maximum": 9}})}})),
    ("optional", obj({"title": NAME, "subtitle": NAME}, required=["title"])),
    ("date", obj({"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}})),
    ("null_union", obj({"middle_name": {"anyOf": [NAME, {"type": "null"}]}})),
    ("const", obj({"version": {"const": 2}, "name": NAME})),
    ("integer_enum", obj({"stars": {"enum": [1, 2, 3, 4, 5]}})),
    ("matrix", obj({"m": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "integer"}}}})),
    ("deep", obj({"a": obj({"b": obj({"c": {"type": "string", "enum": ["x", "y"]}})})})),
    ("coords", obj({"lat": {"type": "number", "minimum": -90, "maximum": 90},
                    "lon": {"type": "number", "minimum": -180, "maximum": 180}})),
    ("status", obj({"status": {"enum": ["open", "closed"]},
                    "count": {"type": "integer", "minimum": 0, "maximum": 99}})),
    ("phone", obj({"phone": {"type": "string", "pattern": "^\\+[0-9]{6,12}$"}})),
    ("list_of_enums", obj({"days": {"type": "array", "maxItems": 3,
                                    "items": {"enum": ["mon", "tue", "wed"]}}})),
    ("top_level_array", {"type": "array", "maxItems": 3, "items": {
        "type": "integer", "minimum": 0, "maximum": 9}}),
    ("mixed", obj({"id": {"type": "string", "pattern": "^[a-f0-9]{4}$"},
                   "active": {"type": "boolean"},
                   "score": {"type": "number", "minimum": 0, "maximum": 1},
                   "labels": {"type": "array", "maxItems": 2, "items": NAME}})),
]


@pytest.mark.parametrize("name, schema", SCHEMAS, ids=[n for n, _ in SCHEMAS])
def test_schema_outputs_always_parse_and_validate(shared_model: localllm.Model, name: str,
                                                  schema: dict[str, Any]) -> None:
    """Every seed and temperature ends (EOS, not max_tokens) with JSON that validates:
    numbers are bounded, no free whitespace, no keys beyond the listed properties."""
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
    for temperature in (0.7, 1.0):
        for seed in (1, 2, 3, 4, 5):
            result = shared_model.chat(
                [{"role": "user", "content": f"Reply with a JSON {name.replace('_', ' ')}."}],
                response_format=fmt, max_tokens=128, seed=seed, temperature=temperature)
            assert result.finish_reason == "stop", (temperature, seed, result.text)
            jsonschema.validate(result.parsed, schema)
            assert result.parsed == json.loads(result.text)


def test_keys_beyond_properties_need_explicit_permission(shared_model: localllm.Model) -> None:
    """A schema with ``required`` but no ``additionalProperties`` gets OpenAI's strict
    semantics: only the listed keys, so the model cannot append keys until max_tokens."""
    schema = {"type": "object", "required": ["person"], "properties": {"person": {
        "type": "object", "required": ["name", "age"],
        "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0}}}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    for seed in range(4):
        result = shared_model.chat(
            [{"role": "user", "content": "Describe a person and Paris in JSON."}],
            response_format=fmt, max_tokens=96, seed=seed, temperature=1.0)
        assert result.finish_reason == "stop", result.text
        assert set(result.parsed) == {"person"} and set(result.parsed["person"]) == {
            "name", "age"}
    # an explicit permission is honoured
    open_schema = {**schema, "additionalProperties": {"type": "integer"}}
    assert strict_schema(open_schema)["additionalProperties"] == {"type": "integer"}


def test_strict_schema_walks_subschemas_only() -> None:
    """Property maps are not schemas: a property literally named "properties" is kept."""
    schema = {"type": "object", "properties": {"properties": {"type": "string"}},
              "$defs": {"X": {"properties": {"a": {"enum": [{"properties": 1}]}}}},
              "anyOf": [{"properties": {}}], "patternProperties": {}}
    out = strict_schema(schema)
    assert out["properties"] == {"properties": {"type": "string"}}
    assert "additionalProperties" not in out  # patternProperties is an explicit permission
    assert out["$defs"]["X"]["additionalProperties"] is False
    assert out["$defs"]["X"]["properties"]["a"] == {"enum": [{"properties": 1}]}
    assert out["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is not modified


def test_numbers_stay_within_float64_even_when_digits_are_pushed(
        shared_model: localllm.Model) -> None:
    """A logits processor that boosts every digit token makes the model want to write
    digits forever; the bounds grammar still ends each number within 17 mantissa digits
    (19 for a plain integer), so the JSON completes."""
    digits = [t for t in range(shared_model.tokenizer.vocab_size)
              if (text := shared_model.tokenizer.token_text(t)) and text.isdigit()]

    def push_digits(ids: Any, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[digits] += 30.0
        return out

    schema = obj({"x": {"type": "number"}, "n": {"type": "integer"},
                  "y": {"type": "number", "minimum": -90, "maximum": 90}})
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    for seed in (1, 2):
        result = shared_model.complete("Numbers:", response_format=fmt, max_tokens=128,
                                       seed=seed, temperature=1.0,
                                       logits_processors=[push_digits])
        assert result.finish_reason == "stop", result.text
        values = result.parsed
        jsonschema.validate(values, schema)
        for key in ("x", "n", "y"):
            number = re.search(rf'"{key}":(-?[0-9.eE+-]+)', result.text)
            assert number is not None
            written = number.group(1).lstrip("-")
            if re.fullmatch(r"[0-9]+", written):  # a plain integer: what an int64 holds
                assert len(written) <= 19, result.text
                continue
            mantissa = re.sub(r"[eE].*", "", written)
            mantissa = mantissa[2:] if mantissa.startswith("0.") else mantissa
            assert len(mantissa.replace(".", "")) <= 17, result.text
            exponent = re.search(r"[eE][+-]?([0-9]+)$", written)
            assert exponent is None or len(exponent.group(1)) <= 3, result.text


def test_cut_output_is_length_and_never_parses(shared_model: localllm.Model) -> None:
    """max_tokens too small for the JSON: finish_reason "length", and ``parsed`` raises a
    typed error naming the cause instead of returning a partial value."""
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMAS[0][1]}}
    result = shared_model.chat([{"role": "user", "content": "A person as JSON."}],
                               response_format=fmt, max_tokens=3, temperature=0)
    assert result.finish_reason == "length"
    with pytest.raises(localllm.StructuredOutputError, match="max_tokens"):
        _ = result.parsed
    plain = shared_model.complete("Hello", max_tokens=2, temperature=0)
    with pytest.raises(localllm.ConfigError, match="without response_format"):
        _ = plain.parsed


def test_pydantic_model_shortcut_and_regex(shared_model: localllm.Model) -> None:
    class City(BaseModel):
        name: str = Field(max_length=20)
        country: Literal["France", "Italy", "Spain"]
        population_millions: float = Field(ge=0, le=50)

    result = shared_model.chat([{"role": "user", "content": "Describe Paris as JSON."}],
                               response_format=City, max_tokens=100, temperature=0)
    assert isinstance(result.parsed, City)
    phone = shared_model.complete("Call me at", max_tokens=20, temperature=0,
                                  response_format={"type": "regex",
                                                   "pattern": r" \+33 [0-9]{9}"})
    assert re.fullmatch(r" \+33 [0-9]{9}", phone.text)


@pytest.mark.parametrize("schema, message", [
    ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "Unsatisfiable"),
    ({"not": {"type": "string"}}, "Unimplemented"),
    ({"type": "array", "uniqueItems": True}, "Unimplemented"),
    ({"type": "strnig"}, "Invalid type"),
])
def test_impossible_or_unsupported_schema_is_a_clear_error(
        shared_model: localllm.Model, schema: dict[str, Any], message: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(localllm.ConfigError, match=message):
        shared_model.complete("x", response_format=fmt, max_tokens=5)


def test_bad_response_format_shapes(shared_model: localllm.Model) -> None:
    for bad, message in [({"type": "xml"}, "not supported"), ({"foo": 1}, "'type'"),
                         ({"type": "json_schema"}, "json_schema"), (dict, "pydantic")]:
        with pytest.raises(localllm.ConfigError, match=message):
            shared_model.complete("x", response_format=bad, max_tokens=5)
    with pytest.raises(localllm.ConfigError, match="sampler='native'"):
        shared_model.complete("x", response_format={"type": "json_object"}, sampler="native")


def test_localllm_sampler_greedy_equals_native_greedy(shared_model: localllm.Model) -> None:
    for prompt in ["The capital of France is", "def add(a, b):", "1, 1, 2, 3, 5,",
                   "Les trois couleurs primaires sont"]:
        # each from an empty KV cache: a reused prefix is another float path (flash
        # attention sums in cell order), which may tip a near tie
        shared_model.clear_cache()
        native = shared_model.complete(prompt, max_tokens=24, temperature=0)
        shared_model.clear_cache()
        ours = shared_model.complete(prompt, max_tokens=24, temperature=0, sampler="localllm")
        assert ours.token_ids == native.token_ids, prompt


def test_user_logits_processor_bans_a_token(shared_model: localllm.Model) -> None:
    base = shared_model.complete("The capital of France is", max_tokens=6, temperature=0)
    banned = base.token_ids[0]

    def ban(ids: Any, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[banned] = -np.inf
        return out

    result = shared_model.complete("The capital of France is", max_tokens=6, temperature=0,
                                   logits_processors=[ban])
    assert banned not in result.token_ids
    assert result.token_ids != base.token_ids


def test_fake_backend_without_logits_refuses_clearly() -> None:
    from localllm.testing import FakeModel

    with FakeModel() as model, pytest.raises(localllm.UnsupportedFeatureError, match="logits"):
        model.complete("x", response_format={"type": "json_object"})
