"""Tool calling and log probabilities in the Model API, on the real default model.

What holds by construction is asserted: a forced call's arguments validate against the
function's schema (the grammar), streamed deltas add up to the final call, auto mode is
constrained from its trigger on, and log probabilities are those of the logits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import jsonschema
import numpy as np
import pytest

import localllm
from localllm import ConfigError
from localllm.decoding.tools import OPEN
from localllm.testing import next_token_logits

pytestmark = pytest.mark.real_model
PARAMS = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1},
    "unit": {"enum": ["C", "F"]}}, "required": ["city", "days", "unit"]}
WEATHER = {"type": "function", "function": {"name": "forecast",
                                            "description": "Weather forecast",
                                            "parameters": PARAMS}}
TIME = {"type": "function", "function": {"name": "local_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}},
    "required": ["zone"]}}}
ASK = [{"role": "user", "content": "What will the weather be in Rome for 3 days?"}]


def test_named_and_required_calls_validate(shared_model: localllm.Model) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "forecast"}}):
        out = shared_model.chat(ASK, tools=[WEATHER, TIME], tool_choice=choice,
                                max_tokens=80, temperature=0.9, seed=4)
        assert out.finish_reason == "tool_calls" and out.text == ""
        (call,) = out.tool_calls
        assert call.id.startswith("call_")
        if isinstance(choice, dict):
            assert call.name == "forecast"
        schema = PARAMS if call.name == "forecast" else TIME["function"]["parameters"]  # type: ignore[index]
        jsonschema.validate(call.parsed_arguments, schema)


def test_streamed_deltas_add_up_to_the_call(shared_model: localllm.Model) -> None:
    chunks = list(shared_model.stream_chat(ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=80, temperature=0))
    deltas = [d for c in chunks for d in c.tool_calls]
    final = chunks[-1].completion
    assert final is not None and final.finish_reason == "tool_calls"
    (call,) = final.tool_calls
    assert deltas[0].id == call.id and deltas[0].name == "forecast"
    assert all(d.id is None and d.name is None for d in deltas[1:])
    assert "".join(d.arguments for d in deltas) == call.arguments
    assert all(c.text == "" for c in chunks)  # a call is never shown as content


class ForceTrigger:
    """Steers the first token onto the trigger's first character, so that auto mode's
    constraint (which starts at the trigger) is exercised deterministically."""

    def __init__(self, model: localllm.Model) -> None:
        engine = model._engine
        assert engine is not None
        self.allowed = np.array([bool(engine.token_bytes(t)) and
                                 OPEN.encode().startswith(engine.token_bytes(t))
                                 for t in range(model.tokenizer.vocab_size)])
        self.start: int | None = None

    def __call__(self, ids: Sequence[int], logits: Any) -> Any:
        if self.start is None:
            self.start = len(ids)
        if len(ids) > self.start:
            return logits
        return np.where(self.allowed, logits, -np.inf).astype(np.float32)


def test_auto_is_constrained_from_the_trigger_on(shared_model: localllm.Model) -> None:
    out = shared_model.chat(ASK, tools=[WEATHER], tool_choice="auto", max_tokens=80,
                            temperature=1.0, seed=2,
                            logits_processors=[ForceTrigger(shared_model)])
    assert out.finish_reason == "tool_calls"
    jsonschema.validate(out.tool_calls[0].parsed_arguments, PARAMS)
    free = shared_model.chat(ASK, tools=[WEATHER], tool_choice="auto", max_tokens=12,
                             temperature=0)
    if not free.tool_calls:  # answered in text: nothing starts with the trigger
        assert not free.text.startswith("<") and free.finish_reason in ("stop", "length")


def test_none_leaves_tools_out(shared_model: localllm.Model) -> None:
    plain = shared_model.render_chat(ASK)
    assert shared_model.render_chat(ASK, tools=[WEATHER], tool_choice="none") == plain
    assert "forecast" in shared_model.render_chat(ASK, tools=[WEATHER])
    out = shared_model.chat(ASK, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert out.tool_calls == () and out.finish_reason in ("stop", "length")


def test_tool_results_render_through_the_template(shared_model: localllm.Model) -> None:
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_9", "type": "function",
         "function": {"name": "forecast", "arguments": '{"city":"Rome","days":3,"unit":"C"}'}}]},
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny, 24 C"}]
    prompt = shared_model.render_chat(history, tools=[WEATHER])
    assert f'{OPEN}{{"name":"forecast","arguments":{{"city":"Rome"' in prompt
    assert "<|im_start|>tool\nsunny, 24 C<|im_end|>" in prompt
    out = shared_model.chat(history, tools=[WEATHER], tool_choice="none", max_tokens=6)
    assert out.usage.prompt_tokens == shared_model.count_tokens(
        shared_model.render_chat(history))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "name"),
    ({"tools": [WEATHER], "tool_choice": {"function": {"name": "nope"}}}, "not among"),
    ({"tools": [WEATHER, WEATHER]}, "more than once"),
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "cannot be combined"),
    ({"tools": [WEATHER], "sampler": "native"}, "native"),
    ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "array"}}}]}, "object"),
])
def test_bad_tool_requests_are_config_errors(shared_model: localllm.Model,
                                             kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        shared_model.chat(ASK, max_tokens=4, **kwargs)


def test_message_validation() -> None:
    with pytest.raises(localllm.ChatTemplateError, match="content"):
        localllm.render_chat("{{ messages }}", [{"role": "user"}])
    msg = localllm.Message(role="assistant", tool_calls=[{"function": {
        "name": "f", "arguments": {"a": 1}}}])  # Ollama's shape: arguments as an object
    assert json.loads(msg.tool_calls[0].arguments) == {"a": 1}


def test_logprobs_are_the_model_distribution(shared_model: localllm.Model) -> None:
    prompt = "The capital of France is"
    shared_model.clear_cache()  # both evaluations start from an empty KV cache
    out = shared_model.complete(prompt, max_tokens=3, temperature=0, logprobs=4)
    assert out.logprobs is not None and len(out.logprobs) == 3
    first = out.logprobs[0]
    assert first.id == out.token_ids[0] and first.top_logprobs[0].id == first.id  # greedy
    shared_model.clear_cache()
    ids = shared_model.tokenizer.encode(prompt)
    logits = np.asarray(next_token_logits(shared_model, ids), np.float64)
    expected = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
    assert first.logprob == pytest.approx(expected[first.id], abs=0.05)
    top = [t.logprob for t in first.top_logprobs]
    assert top == sorted(top, reverse=True) and len(top) == 4
    assert bytes(first.bytes).decode() == first.token
    streamed = [lp for c in shared_model.stream(prompt, max_tokens=3, temperature=0,
                                                logprobs=0) for lp in c.logprobs]
    assert [lp.id for lp in streamed] == list(out.token_ids)
    assert all(lp.top_logprobs == () for lp in streamed)
    assert shared_model.complete(prompt, max_tokens=2).logprobs is None
    with pytest.raises(ConfigError, match="logprobs"):
        shared_model.complete(prompt, logprobs=99)
