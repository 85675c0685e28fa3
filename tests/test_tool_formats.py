"""Tool calls in each model family's own format, on the real chat templates the pinned
llama.cpp ships (kept in the reference tools' cache by ``make tools``) and the real
default model: detection, what the template renders, the grammar, and parsing back,
streamed at every split point."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

import localllm
from localllm._types import Message, ToolCall
from localllm.decoding.structured import compile_lark, ll_tokenizer
from localllm.decoding.tool_formats import (
    ARGS,
    BY_NAME,
    FAMILIES,
    LOCALLLM,
    NAME,
    ToolFormat,
    call_grammar,
    detect_format,
)
from localllm.decoding.tool_stream import ToolCallStream, read_region
from localllm.decoding.tools import bounds_rules, prepare, prompt_view
from localllm.templates.chat import render_chat

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                   "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

#: the family each real template belongs to (templates not named: localllm's own format)
EXPECTED = {
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "Qwen-Qwen2.5-7B-Instruct": "hermes", "Qwen-Qwen3-0.6B": "hermes",
    "Qwen-QwQ-32B": "hermes", "ibm-granite-granite-4.0": "hermes",
    "ibm-granite-granite-4.1": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct": "llama-3", "meta-llama-Llama-3.2-3B-Instruct": "llama-3",
    "meta-llama-Llama-3.3-70B-Instruct": "llama-3",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral-nemo",
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral-call-id",
    "unsloth-mistral-Devstral-Small-2507": "mistral-args",
    "mistralai-Ministral-3-14B-Reasoning-2512": "mistral-args",
    "meetkai-functionary-medium-v3.1": "functionary-v3.1",
    "fireworks-ai-llama-3-firefunction-v2": "firefunction-v2",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": "command-r7b",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseek-r1",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseek-r1",
    "llama-cpp-deepseek-r1": "deepseek-r1", "deepseek-ai-DeepSeek-V3.1": "deepseek-v3.1",
    "Kimi-K2-Instruct": "kimi-k2", "Kimi-K2-Thinking": "kimi-k2",
    "moonshotai-Kimi-K2": "kimi-k2", "ibm-granite-granite-3.3-2B-Instruct": "granite-3.3",
    "HuggingFaceTB-SmolLM3-3B": "localllm", "microsoft-Phi-3.5-mini-instruct": "localllm",
    "google-gemma-2-2b-it": "localllm",
    # families whose format is not written yet get localllm's own, never a wrong one
    "openai-gpt-oss-120b": "harmony", "Qwen3-Coder": "qwen3-coder",
    "Qwen3.5-4B": "qwen3-coder", "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "qwen3-coder",
    "StepFun3.5-Flash": "qwen3-coder", "GLM-4.6": "glm-4.5", "inclusionai-ling-3.0-flash":
    "glm-4.5", "poolside-Laguna-XS.2": "glm-4.5", "GLM-4.7-Flash": "glm-4.7",
    "Spark2.5": "glm-4.7", "MiniMax-M2": "minimax-m2", "ByteDance-Seed-OSS": "seed-oss",
    "MiniMax-M3": "localllm", "meetkai-functionary-medium-v3.2": "localllm",
    "unsloth-Apriel-1.5": "apriel", "Apriel-1.6-15b-Thinker-fixed": "apriel",
    "deepseek-ai-DeepSeek-V3.2": "deepseek-v3.2", "deepseek-ai-DeepSeek-V4": "deepseek-v4",
    "deepseek-ai-DeepSeek-V4-Flash-0731": "deepseek-v4",
}


def test_each_family_is_found_in_its_templates(templates: dict[str, str]) -> None:
    for stem, family in EXPECTED.items():
        assert detect_format(templates[stem]).name == family, stem
    assert detect_format(None) is LOCALLLM
    assert {f.name for f in FAMILIES} <= set(EXPECTED.values())


CALLS = [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}'),
         ("get_weather", '{"city": "Lima, \\"Peru\\" {x}"}')]


def stream(fmt: ToolFormat, text: str, cuts: list[int], *, forced: bool
           ) -> tuple[str, tuple[ToolCall, ...], dict[int, list[str]]]:
    """Feed ``text`` cut at ``cuts``; the content, the calls and each index's fragments
    (the name first)."""
    parser = ToolCallStream(fmt, forced=forced)
    content, frags = "", {}
    bounds = [0, *cuts, len(text)]
    for a, b in itertools.pairwise(bounds):
        shown, deltas = parser.feed(text[a:b])
        content += shown
        for d in deltas:
            frags.setdefault(d.index, []).append(d.name if d.name else d.arguments or "")
    shown, calls, deltas = parser.finish(True)
    content += shown
    for d in deltas:
        frags.setdefault(d.index, []).append(d.arguments or "")
    return content, calls, frags


@pytest.mark.parametrize("fmt", [*FAMILIES, LOCALLLM], ids=lambda f: f.name)
def test_calls_parse_back_streamed_at_every_split(fmt: ToolFormat) -> None:
    """One call and three, after free text where the family allows it: the same calls
    whatever the split, with distinct indexes, names first, arguments whole."""
    for calls in (CALLS[:1], CALLS):
        if fmt.one_call and len(calls) > 1:
            continue
        lead = "" if fmt.anchored else "Let me check. "
        text = lead + fmt.write(calls)
        splits = [[], *([i] for i in range(1, len(text))), list(range(1, len(text)))]
        for cuts in splits:
            content, got, frags = stream(fmt, text, cuts, forced=False)
            assert content == lead, (cuts, content)
            assert [(c.name, c.arguments) for c in got] == calls, cuts
            assert len({c.id for c in got}) == len(calls)
            for i, (name, arguments) in enumerate(calls):
                assert frags[i][0] == name and "".join(frags[i][1:]) == arguments


@pytest.mark.parametrize("fmt", [*FAMILIES, LOCALLLM], ids=lambda f: f.name)
def test_text_that_leaves_the_format_stays_text(fmt: ToolFormat) -> None:
    """Half a call, a call with a wrong last character, the trigger followed by prose:
    all text, no call (an anchored format's call cannot follow text at all)."""
    whole = fmt.write(CALLS[:1])
    for broken in (whole[: len(whole) // 2], whole[:-1] + "?", fmt.start() + " nothing"):
        content, calls, _ = stream(fmt, "Note: " + broken, [3, 9], forced=False)
        assert calls == () and content == "Note: " + broken
    assert not read_region(fmt, "plain words").valid


def tokens(model: localllm.Model, text: str) -> list[int]:
    return model.tokenizer.encode(text, add_special=False, parse_special=False)


@pytest.mark.parametrize("fmt", [*FAMILIES, LOCALLLM], ids=lambda f: f.name)
def test_the_grammar_takes_the_family_text_and_refuses_a_wrong_call(
        fmt: ToolFormat, shared_model: localllm.Model) -> None:
    import llguidance

    tok = ll_tokenizer(shared_model._generator.local_tokenizer())
    pairs = [(t["function"]["name"], t["function"]["parameters"]) for t in TOOLS]

    def accepts(text: str, **options: object) -> bool:
        """Both grammars a request runs: the schemas, and the JSON bounds."""
        lark = call_grammar(fmt, pairs, **options)  # type: ignore[arg-type]
        bounds = call_grammar(fmt, pairs, args_rule="value",
                              **options) + bounds_rules(fmt)  # type: ignore[arg-type]
        for grammar in (compile_lark(lark), compile_lark(bounds)):
            matcher = llguidance.LLMatcher(tok, grammar, log_level=0)
            ok = all(matcher.consume_token(t) for t in tokens(shared_model, text))
            if not (ok and matcher.is_accepting()):
                return False
        return True

    def written(calls: list[tuple[str, dict[str, str]]]) -> str:  # the family's JSON style
        seps = (fmt.item_separator, fmt.key_separator)
        return fmt.write([(n, json.dumps(a, separators=seps)) for n, a in calls])

    paris, cet = ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})
    two = [paris, cet] if not fmt.one_call else [paris]
    assert accepts(written(two), free_text=False, parallel=True)
    assert accepts(written([paris]), free_text=False, parallel=False)
    lead = "" if fmt.anchored else "Sure. "
    assert accepts(lead + written(two), free_text=True, parallel=True)
    assert accepts("A plain answer.", free_text=True, parallel=True)
    assert not accepts(written([("get_weather", {"tz": "CET"})]), free_text=False,
                       parallel=True)  # the schema: city is required, tz is not allowed
    assert not accepts(written([("delete_all", {})]), free_text=False, parallel=True)
    if not fmt.one_call:
        assert not accepts(written([paris, cet]), free_text=False, parallel=False)


HISTORY = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in Paris and the time in CET?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_weather_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_time_2", "type": "function",
         "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]},
    {"role": "tool", "tool_call_id": "call_weather_1", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_time_2", "content": "14:05"},
]


#: family templates this renderer cannot run, with why (the docs' table lists them too)
UNRENDERABLE = {
    "Kimi-K2-Instruct": "calls list.append, which the immutable sandbox refuses (as "
                        "transformers' renderer does)",
    "Kimi-K2-Thinking": "calls list.append, which the immutable sandbox refuses (as "
                        "transformers' renderer does)",
    "llama-cpp-deepseek-r1": "pipes a generator into tojson, which fails in transformers' "
                             "renderer and here",
}


@pytest.mark.parametrize("stem", sorted(s for s, f in EXPECTED.items()
                                        if f != "localllm" and s not in UNRENDERABLE))
def test_the_template_renders_tools_and_earlier_calls(stem: str,
                                                      templates: dict[str, str]) -> None:
    """Through each family's real template: the tools are described, the two earlier
    calls and their results are all in the prompt, in the family's own format."""
    fmt = detect_format(templates[stem])
    setup = prepare(TOOLS, "auto", fmt)
    messages = [Message.from_written(m) for m in HISTORY]
    view, extra = prompt_view(messages, setup, fmt)
    text = render_chat(templates[stem], view, bos_token="<s>", eos_token="</s>", **extra)
    for needle in ("get_weather", "get_time", "Paris", "CET", "18 C, sunny", "14:05",
                   "Current weather in a city"):
        assert needle in text, (stem, needle)


#: the tools with short strings: a 135M model may write one string forever
SHORT = [{"type": "function", "function": {
    **t["function"], "parameters": {**t["function"]["parameters"], "properties": {
        k: {**v, "maxLength": 16} for k, v in t["function"]["parameters"]["properties"].items()
    }}}} for t in TOOLS]


def schema_ok(call: ToolCall) -> None:
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.parametrize("stem", sorted(s for s, f in EXPECTED.items()
                                        if f != "localllm" and s not in UNRENDERABLE))
def test_the_default_model_calls_in_each_family_format(
        stem: str, templates: dict[str, str], default_model_path: Path) -> None:
    """The real default model under each family's grammar: a forced call and three
    parallel calls parse back into calls valid under their schemas; auto mode gives text
    or calls, never a half call. (Left to choose how many calls, this 135M model repeats
    calls until max_tokens: the single call is asked with parallel_tool_calls=False.)"""
    with localllm.load(default_model_path, context_length=2048, chat_template=templates[stem],
                       threads=2) as model:
        fmt = BY_NAME[model.info.tool_format]
        assert fmt.name == EXPECTED[stem]
        ask = [{"role": "user", "content": "What is the weather in Paris?"}]
        forced = model.chat(ask, tools=SHORT, tool_choice="required", temperature=0,
                            max_tokens=120, parallel_tool_calls=False)
        assert forced.finish_reason == "tool_calls" and forced.tool_calls, forced.text
        for call in forced.tool_calls:
            schema_ok(call)
        if not fmt.one_call:
            pairs = [(t["function"]["name"], t["function"]["parameters"]) for t in SHORT]
            lark = call_grammar(fmt, pairs, free_text=False, parallel=True, count=3)
            three = model.chat(ask, temperature=0, max_tokens=400,
                               response_format={"type": "grammar", "lark": lark})
            region = read_region(fmt, three.text)
            assert region.valid and len(region.calls) == 3, three.text
            assert all(c.complete and c.name in SCHEMAS for c in region.calls)
        free = model.chat(ask, tools=SHORT, temperature=0, max_tokens=60)
        if free.finish_reason != "length":  # a call cut by max_tokens stays text
            assert free.tool_calls or fmt.start() not in free.text, free.text
        for call in free.tool_calls:
            schema_ok(call)


def test_the_tools_page_lists_the_formats_and_the_templates(templates: dict[str, str]
                                                          ) -> None:
    from localllm.support.docs import template_support_table, tool_formats_table

    page = (Path(__file__).parent.parent / "docs" / "tools.md").read_text()

    def section(name: str) -> str:
        return page.split(f"<!-- {name}:start -->\n")[1].split(f"<!-- {name}:end -->")[0]

    assert section("tool-formats") == tool_formats_table()
    assert section("tool-templates") == template_support_table(templates)


@pytest.mark.parametrize("stem", sorted(UNRENDERABLE))
def test_the_templates_named_as_unrenderable_are(stem: str, templates: dict[str, str]) -> None:
    fmt = detect_format(templates[stem])
    view, extra = prompt_view([Message.from_written(m) for m in HISTORY],
                              prepare(TOOLS, "auto", fmt), fmt)
    with pytest.raises(localllm.ChatTemplateError):
        render_chat(templates[stem], view, **extra)


#: a format of the caller's own whose markers are special tokens of the default model
#: (SmolLM2's notebook tokens): as a real model's ``[TOOL_CALLS]`` or ``<|START_ACTION|>``
JUPYTER = ToolFormat("jupyter", "a test format",
                     ("<jupyter_code>", NAME, "<jupyter_text>", ARGS, "<jupyter_output>"))


@pytest.fixture(scope="module")
def jupyter_model(default_model_path: Path) -> Iterator[localllm.Model]:
    with localllm.load(default_model_path, context_length=1024, threads=2,
                       tool_format=JUPYTER) as model:
        yield model


def test_special_token_markers_are_the_models_own_tokens(jupyter_model: localllm.Model
                                                        ) -> None:
    """A marker that is one special token of the vocabulary is written as that token
    (the grammar names it) and shown to the parser as its text (a special token is
    otherwise shown as nothing): the call parses back, streamed and not."""
    special = {t: jupyter_model.tokenizer.encode(t, add_special=False)[0]
               for t in ("<jupyter_code>", "<jupyter_text>", "<jupyter_output>")}
    assert jupyter_model.info.tool_format == "jupyter"
    assert jupyter_model._generator.tool_specials == special
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    out = jupyter_model.chat(ask, tools=[WEATHER], tool_choice="required", temperature=0,
                             max_tokens=40, logprobs=0, parallel_tool_calls=False)
    assert out.finish_reason == "tool_calls" and len(out.tool_calls) == 1, out.text
    assert out.tool_calls[0].name == "get_weather" and out.text == ""
    schema_ok(out.tool_calls[0])
    assert out.logprobs is not None and out.logprobs[0].id == special["<jupyter_code>"]
    streamed = list(jupyter_model.stream_chat(ask, tools=[WEATHER], tool_choice="required",
                                              temperature=0, max_tokens=40,
                                              parallel_tool_calls=False))
    deltas = [d for chunk in streamed for d in chunk.tool_calls]
    assert deltas[0].name == "get_weather"
    assert "".join(d.arguments or "" for d in deltas) == out.tool_calls[0].arguments
    # without tools no special token is shown as text (the model has no thinking markers)
    assert jupyter_model._generator.preserved_tokens(False) == {}
    assert jupyter_model._generator.preserved_tokens(True) == {
        token: text.encode() for text, token in special.items()}


def test_in_auto_mode_the_special_trigger_is_allowed_and_starts_a_call(
        jupyter_model: localllm.Model) -> None:
    """Auto mode: free text, or the special token, after which the grammar holds the
    call (the token is not text a text rule could match)."""
    import llguidance

    generator = jupyter_model._generator
    setup = prepare([WEATHER], "auto", JUPYTER, True, generator.tool_specials)
    assert setup is not None
    tok = ll_tokenizer(generator.local_tokenizer())
    code = generator.tool_specials["<jupyter_code>"]
    for lead in ("", "Let me check. "):
        matchers = [llguidance.LLMatcher(tok, g, log_level=0) for g in setup.format.grammars]
        for m in matchers:
            assert all(m.consume_token(t) for t in tokens(jupyter_model, lead))
            assert m.consume_token(code), m.get_error()
            # now only the function's name may follow
            assert not m.validate_tokens(tokens(jupyter_model, "Hello"))
            assert m.validate_tokens(tokens(jupyter_model, "get_weather")) > 0


def test_one_tag_per_argument_keeps_each_value_its_type() -> None:
    """Qwen3-Coder, GLM and MiniMax write a string as it is and any other value as JSON:
    read back under the function's schema, "42" stays a string where the schema says so,
    and a number, a list and an object come back as such; an enum is held to its
    choices, and a string pattern (which raw text cannot be held to) is refused."""
    import llguidance

    schema = {"type": "object", "required": ["code", "n"], "properties": {
        "code": {"type": "string"}, "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "unit": {"enum": ["C", "F"]}}}
    arguments = {"code": "42", "n": 7, "tags": ["a", "b"], "unit": "F"}
    for name in ("qwen3-coder", "glm-4.5", "glm-4.7", "minimax-m2", "seed-oss",
                 "deepseek-v3.2", "deepseek-v4"):
        fmt = BY_NAME[name]
        text = fmt.write([("f", json.dumps(arguments))])
        parser = ToolCallStream(fmt, forced=True, schemas={"f": schema})
        parser.feed(text)
        _, calls, _ = parser.finish(True)
        assert [json.loads(c.arguments) for c in calls] == [arguments], name
        lark = call_grammar(fmt, [("f", schema)], free_text=False, parallel=False)
        with pytest.raises(localllm.ConfigError, match="pattern"):
            call_grammar(fmt, [("f", {"type": "object", "properties": {
                "d": {"type": "string", "pattern": "^[0-9]+$"}}})], free_text=False,
                parallel=False)
        assert "C" in lark and "F" in lark
        assert llguidance.LLMatcher.validate_grammar(compile_lark(lark)) == ""


def test_auto_mode_runs_its_grammar_only_once_a_call_may_start(
        shared_model: localllm.Model) -> None:
    """Auto mode's grammar is lazy: plain text is written with no mask computed; the
    first piece of the trigger starts it, with every earlier token given to it, and from
    there it holds the call as the eager grammar would (a wrong name is refused)."""
    import numpy as np

    from localllm.decoding.structured import GrammarConstraint, LazyGrammar

    generator = shared_model._generator
    setup = prepare([WEATHER], "auto", LOCALLLM)
    assert setup is not None
    lazy = generator._decoding(localllm.build_request(
        messages=[{"role": "user", "content": "hi"}], tools=[WEATHER]), setup).grammar
    assert isinstance(lazy, LazyGrammar)
    eager = lazy.grammar
    assert isinstance(eager, GrammarConstraint)
    logits = np.zeros(shared_model.info.vocab_size, dtype=np.float32)
    for token in tokens(shared_model, "Let me check the weather. "):
        assert lazy([], logits) is logits  # untouched: no mask for plain text
        lazy.consume(token)
    assert not lazy.active
    for token in tokens(shared_model, '<tool_call>{"name":"get_weather"'):
        lazy.consume(token)
    assert lazy.active
    masked = lazy([], logits)
    wrong, = tokens(shared_model, "x")[:1]
    assert masked[wrong] == -np.inf and np.isfinite(masked).any()
