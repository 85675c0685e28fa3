"""Reasoning models: thinking split from the answer (streamed at every split point), the
template's own switch, the budget, and the served surfaces (OpenAI's reasoning_content,
Ollama's thinking), on real chat templates and the real default model.

The default model does not think; under a thinking template (QwQ's opens the thinking in
the generation prompt) its output is thinking until it writes the close marker, which
the budget forces: what holds by construction is asserted, never the words."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import served_in_thread

import localllm
from localllm.decoding.reasoning import (
    ThinkingSplit,
    detect_thinking,
    opens_in_prompt,
    template_switch,
)
from localllm.models.gguf import copy_with_metadata
from localllm.templates.chat import render_chat

ASK = [{"role": "user", "content": "What is 2 + 2?"}]


def split_all(split: ThinkingSplit, text: str, cuts: list[int]) -> tuple[str, str]:
    thought = answer = ""
    bounds = [0, *cuts, len(text)]
    for a, b in itertools.pairwise(bounds):
        t, x = split.feed(text[a:b])
        thought, answer = thought + t, answer + x
    t, x = split.finish()
    return thought + t, answer + x


@pytest.mark.parametrize(("text", "opened", "thought", "answer"), [
    ("<think>\nadd them\n</think>\n\nFour.", False, "\nadd them\n", "Four."),
    ("  <think>a</think>b", False, "a", "b"),
    ("add them</think>Four.", True, "add them", "Four."),
    ("Four, without thinking.", False, "", "Four, without thinking."),
    ("<think>never closed", False, "never closed", ""),
    ("<thin", False, "", "<thin"),
    ("a < b and <think> later", False, "", "a < b and <think> later"),
])
def test_thinking_splits_from_the_answer_at_every_split(text: str, opened: bool,
                                                        thought: str, answer: str) -> None:
    thinking = detect_thinking("{{ '<think>' }}{{ '</think>' }}")
    assert thinking is not None
    for cuts in [[], *([i] for i in range(1, len(text))), list(range(1, len(text)))]:
        got = split_all(ThinkingSplit(thinking, opened=opened), text, cuts)
        assert got == (thought, answer), cuts


HARMONY_CALL = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}"


@pytest.mark.parametrize(("text", "thought", "answer"), [
    ("<|channel|>analysis<|message|>add them<|end|><|start|>assistant<|channel|>final"
     "<|message|>Four.", "add them", "Four."),
    ("<|channel|>final<|message|>Four.", "", "Four."),
    ("<|channel|>analysis<|message|>look it up<|end|><|start|>assistant" + HARMONY_CALL,
     "look it up", HARMONY_CALL),
    (HARMONY_CALL, "", HARMONY_CALL),
    ("Plain words.", "", "Plain words."),
    ("<|channel|>analysis<|message|>cut", "cut", ""),
])
def test_harmony_channels_split_at_every_split(text: str, thought: str, answer: str,
                                               templates: dict[str, str]) -> None:
    """gpt-oss: the analysis channel is the thinking, the final channel's header is not
    part of the answer, a call on the commentary channel is left for the tool parser."""
    harmony = detect_thinking(templates["openai-gpt-oss-120b"])
    assert harmony is not None and harmony.name == "harmony"
    for cuts in [[], *([i] for i in range(1, len(text))), list(range(1, len(text)))]:
        got = split_all(ThinkingSplit(harmony, opened=False), text, cuts)
        assert got == (thought, answer), cuts


def test_thinking_markers_are_found_in_real_templates(templates: dict[str, str]) -> None:
    expected = {"Qwen-Qwen3-0.6B": "think", "Qwen-QwQ-32B": "think",
                "HuggingFaceTB-SmolLM3-3B": "think", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B":
                "think", "mistralai-Ministral-3-14B-Reasoning-2512": "mistral",
                "CohereForAI-c4ai-command-r7b-12-2024-tool_use": "cohere",
                "ByteDance-Seed-OSS": "seed", "openai-gpt-oss-120b": "harmony",
                "Qwen-Qwen2.5-7B-Instruct": None,
                "meta-llama-Llama-3.1-8B-Instruct": None}
    for stem, name in expected.items():
        found = detect_thinking(templates[stem])
        assert (found.name if found else None) == name, stem
    assert detect_thinking(None) is None


def test_the_templates_own_switch(templates: dict[str, str]) -> None:
    """think=False renders the family's off switch; QwQ's prompt opens the thinking."""
    qwen3 = templates["Qwen-Qwen3-0.6B"]
    off = render_chat(qwen3, ASK, **template_switch(False))
    on = render_chat(qwen3, ASK, **template_switch(True))
    assert off.rstrip().endswith("<think>\n\n</think>") and "</think>" not in on
    smol = templates["HuggingFaceTB-SmolLM3-3B"]
    assert "/no_think" in render_chat(smol, ASK, **template_switch(False))
    qwq = detect_thinking(templates["Qwen-QwQ-32B"])
    assert opens_in_prompt(qwq, render_chat(templates["Qwen-QwQ-32B"], ASK,
                                            **template_switch(True)))
    assert template_switch("high")["reasoning_effort"] == "high" and template_switch(None) == {}
    oss = templates["openai-gpt-oss-120b"]
    assert "Reasoning: low" in render_chat(oss, ASK, **template_switch("low"))
    assert "Reasoning: medium" in render_chat(oss, ASK, **template_switch(True))


@pytest.fixture(scope="module")
def oss(templates: dict[str, str], default_model_path: Path) -> Iterator[localllm.Model]:
    with localllm.load(default_model_path, context_length=1024, threads=2,
                       chat_template=templates["openai-gpt-oss-120b"]) as model:
        yield model


#: harmony's shape, held by grammar: the default model does not write it by itself
HARMONY_LARK = """start: "<|channel|>analysis<|message|>" THOUGHT "<|end|><|start|>assistant\
<|channel|>final<|message|>" ANSWER
THOUGHT: /[a-z ]{1,200}/
ANSWER: /[A-Za-z ]{1,30}/
"""


def test_a_harmony_answer_splits_and_its_budget_holds(oss: localllm.Model) -> None:
    """The default model under gpt-oss's real template, its answer held to harmony's
    channels: the analysis is the reasoning, the final channel the text (streamed
    equal); a budget forces ``<|end|>`` and the final channel follows; think=False is
    refused (gpt-oss always reasons), think="low" is its template's own switch."""
    assert oss.info.tool_format == "harmony"
    close = len(oss.tokenizer.encode("<|end|>", add_special=False))
    grammar = {"type": "grammar", "lark": HARMONY_LARK}
    for budget in (None, 4):
        oss.clear_cache()
        out = oss.chat(ASK, temperature=0, max_tokens=120, think="low",
                       reasoning_budget=budget, response_format=grammar)
        assert out.reasoning and "<|" not in out.reasoning + out.text, out
        assert out.text.strip() and out.finish_reason == "stop", out
        if budget is not None:
            assert out.usage.reasoning_tokens <= budget + close, out
        oss.clear_cache()
        streamed = list(oss.stream_chat(ASK, temperature=0, max_tokens=120, think="low",
                                        reasoning_budget=budget, response_format=grammar))
        assert "".join(c.reasoning for c in streamed) == out.reasoning
        assert "".join(c.text for c in streamed) == out.text
    with pytest.raises(localllm.UnsupportedFeatureError, match="think='low'"):
        oss.chat(ASK, think=False, max_tokens=4)


@pytest.fixture(scope="module")
def qwq(templates: dict[str, str], default_model_path: Path) -> Iterator[localllm.Model]:
    with localllm.load(default_model_path, context_length=1024, threads=2,
                       chat_template=templates["Qwen-QwQ-32B"]) as model:
        yield model


def test_the_budget_ends_the_thinking_and_the_answer_runs(qwq: localllm.Model) -> None:
    close = len(qwq.tokenizer.encode("</think>", add_special=False))
    for budget in (0, 6, 20):
        qwq.clear_cache()  # both runs evaluate the prompt alike: one float path
        out = qwq.chat(ASK, temperature=0, max_tokens=60, reasoning_budget=budget)
        assert out.reasoning is not None
        assert out.usage.reasoning_tokens <= budget + close, out  # the budget holds
        if out.finish_reason == "length":  # it ran on: so the thinking was ended for it
            assert out.usage.reasoning_tokens >= budget
        assert "</think>" not in out.text and "</think>" not in out.reasoning
        qwq.clear_cache()
        streamed = list(qwq.stream_chat(ASK, temperature=0, max_tokens=60,
                                        reasoning_budget=budget))
        assert "".join(c.reasoning for c in streamed) == out.reasoning
        assert "".join(c.text for c in streamed) == out.text


def test_think_on_a_model_that_does_not_think_is_an_error(shared_model: localllm.Model
                                                         ) -> None:
    with pytest.raises(localllm.UnsupportedFeatureError, match="not a reasoning model"):
        shared_model.chat(ASK, think=True, max_tokens=4)
    with pytest.raises(localllm.ConfigError, match="think="):
        shared_model.chat(ASK, think="maximal", max_tokens=4)
    assert shared_model.chat(ASK, max_tokens=4).reasoning is None


@pytest.fixture(scope="module")
def served_thinker(templates: dict[str, str], default_model_path: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default model's weights with QwQ's template (the file's own metadata), served on
    loopback by a server this test starts and stops."""
    path = tmp_path_factory.mktemp("thinker") / "thinker.gguf"
    copy_with_metadata(default_model_path, path,
                       {"tokenizer.chat_template": templates["Qwen-QwQ-32B"]})
    with served_in_thread([str(path)], context_length=1024, parallel=2) as base:
        yield base


def test_openai_and_ollama_clients_get_the_thinking_apart(served_thinker: str) -> None:
    import ollama
    import openai

    client = openai.OpenAI(base_url=f"{served_thinker}/v1", api_key="none", timeout=120)
    # a first request caches the prompt, so the three compared below all evaluate it the
    # same way (on the cached prefix): one float path, equal greedy text on any CPU
    client.chat.completions.create(model="thinker", messages=ASK, max_tokens=1,
                                   reasoning_effort="low")
    whole = client.chat.completions.create(model="thinker", messages=ASK, temperature=0,
                                           max_tokens=24, reasoning_effort="low")
    thought = whole.choices[0].message.model_extra["reasoning_content"]
    assert thought and "<think>" not in thought
    parts = list(client.chat.completions.create(model="thinker", messages=ASK,
                                                temperature=0, max_tokens=24, stream=True,
                                                reasoning_effort="low"))
    streamed = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                       for c in parts if c.choices)
    assert streamed == thought
    native = ollama.Client(host=served_thinker, timeout=120).chat(
        model="thinker", messages=ASK, think=True, options={"temperature": 0,
                                                            "num_predict": 24})
    assert native.message.thinking == thought
    refused = httpx.post(f"{served_thinker}/api/chat", json={
        "model": "thinker", "messages": ASK, "think": "maximal", "stream": False})
    assert refused.status_code == 400 and "think" in refused.text
