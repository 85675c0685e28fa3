"""Real chat templates render exactly as the reference renderer renders them.

The reference is transformers' ``render_jinja_template`` (what ``apply_chat_template``
runs; a test-only dependency, used without torch). The templates are the 70-odd real ones
that the pinned llama-cpp-python sdist ships in ``vendor/llama.cpp/models/templates``,
kept in the reference tools' cache by ``make tools`` (never copied into this repository).
Each goes through every conversation of the conformance set
(``localllm.templates.check.CONVERSATIONS``): localllm's text must equal the reference's
wherever the reference renders, and where the reference raises, localllm raises
``ChatTemplateError`` carrying the template's own message. The table (template ×
conversation) is written to ``build/template-conformance.md``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

import localllm
from localllm import ChatTemplateError
from localllm._types import ToolCall
from localllm.templates.check import CONVERSATIONS, check_template

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}


def reference(source: str, conv: Any) -> tuple[str | None, Exception | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template(
                [list(conv.messages)], tools=list(conv.tools) if conv.tools else None,
                chat_template=source, add_generation_prompt=conv.add_generation_prompt,
                **TOKENS)
        except Exception as exc:
            return None, exc
    return rendered[0], None


def test_every_template_renders_as_the_reference_does(templates: dict[str, str]) -> None:
    """The acceptance table: for every template and conversation, 'same' (identical
    text) or 'both raise' (the reference raises, localllm raises ChatTemplateError with
    the template's message). Anything else fails, listed."""
    rows, failures = [], []
    counts = {"same": 0, "both raise": 0}
    for name, source in templates.items():
        cells = []
        for conv in CONVERSATIONS:
            expected, ref_error = reference(source, conv)
            try:
                ours: str | None = localllm.render_chat(
                    source, list(conv.messages), tools=conv.tools,
                    add_generation_prompt=conv.add_generation_prompt, **TOKENS)
                our_error: ChatTemplateError | None = None
            except ChatTemplateError as exc:
                ours, our_error = None, exc
            if ref_error is None and ours == expected:
                cell = "same"
            elif ref_error is not None and our_error is not None and \
                    str(ref_error)[:200] in str(our_error):
                cell = "both raise"
            else:
                cell = "DIFFERENT"
                failures.append((name, conv.name, expected, ref_error, ours, our_error))
            counts[cell] = counts.get(cell, 0) + 1
            cells.append(cell)
        rows.append((name, cells))
    write_table(rows, counts)
    assert not failures, "\n\n".join(
        f"{name} / {conv}:\n  reference: {exp!r} {ref_err!r}\n  localllm:  {ours!r} {err!r}"
        for name, conv, exp, ref_err, ours, err in failures[:10])
    # the conversations exercise what the templates do: most render, some refuse
    assert counts["same"] > 0.85 * len(templates) * len(CONVERSATIONS), counts


def write_table(rows: list[tuple[str, list[str]]], counts: dict[str, int]) -> None:
    out = ROOT / "build" / "template-conformance.md"
    out.parent.mkdir(exist_ok=True)
    short = {"same": "=", "both raise": "raise", "DIFFERENT": "**DIFF**"}
    lines = ["| template | " + " | ".join(str(i + 1) for i in range(len(CONVERSATIONS))) + " |",
             "|---|" + "---|" * len(CONVERSATIONS)]
    lines += [f"| {name} | " + " | ".join(short[c] for c in cells) + " |" for name, cells in rows]
    lines += ["", "Conversations: " + "; ".join(f"{i + 1}. {c.name}"
                                                 for i, c in enumerate(CONVERSATIONS)),
              "", ", ".join(f"{k}: {v}" for k, v in counts.items())]
    out.write_text("\n".join(lines) + "\n")
    print(f"\n{', '.join(f'{k}: {v}' for k, v in counts.items())}; table in {out}")


def test_the_issue_cases_render_the_whole_conversation(templates: dict[str, str]) -> None:
    """The reported failures: Llama 3.x refused every multi-turn chat (messages carried
    an empty ``tool_calls``), Mistral Nemo dropped the assistant's words, MiniMax-M1
    wrote empty tool-call blocks, gpt-oss indexed a tuple, and ``break`` and
    ``{% generation %}`` were not Jinja to localllm."""
    chat = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}]
    for name in ("meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct",
                 "meta-llama-Llama-3.3-70B-Instruct", "mistralai-Mistral-Nemo-Instruct-2407",
                 "MiniMax-M1", "openai-gpt-oss-120b", "Cohere2MoE",
                 "CohereForAI-c4ai-command-r7b-12-2024-tool_use", "Kimi-K3", "Reka-Edge",
                 "LFM2.5-8B-A1B", "poolside-Laguna-S-2.1", "poolside-Laguna-XS-2.1",
                 "poolside-Laguna-XS.2"):
        text = localllm.render_chat(templates[name], chat, **TOKENS)
        for piece in ("You are terse.", "hi", "hello", "bye"):
            assert piece in text, (name, piece, text)
        assert "<tool_call" not in text and "[TOOL_CALLS]" not in text, (name, text)


def as_text_parts(message: Any) -> Any:
    """A message with its string content split into OpenAI-style text parts."""
    content = message.get("content")
    if not isinstance(content, str) or not content:
        return message
    half = len(content) // 2
    return {**message, "content": [{"type": "text", "text": content[:half]},
                                   {"type": "text", "text": content[half:]}]}


def test_text_parts_render_as_their_text_in_every_template(templates: dict[str, str]
                                                           ) -> None:
    """Content written as text parts reaches every real template as the joined string (as
    llama-server flattens text parts): the reference renderer given the string content is
    the oracle, for every template and conversation it renders."""
    compared = 0
    for name, source in templates.items():
        for conv in CONVERSATIONS:
            expected, ref_error = reference(source, conv)
            if ref_error is not None:
                continue
            parts = [as_text_parts(m) for m in conv.messages]
            ours = localllm.render_chat(source, parts, tools=conv.tools,
                                        add_generation_prompt=conv.add_generation_prompt,
                                        **TOKENS)
            assert ours == expected, f"{name} / {conv.name}"
            compared += 1
    assert compared > 0.85 * len(templates) * len(CONVERSATIONS)


def test_messages_reach_the_template_as_written() -> None:
    """Absent keys stay absent, lists stay lists, arguments keep their type; a message
    built in code shows only the fields that were set, tool calls in OpenAI's shape."""
    probe = ("{% for m in messages %}{{ m.keys() | list | sort | join(',') }};"
             "{% if m.tool_calls is defined %}{{ m.tool_calls[0].function.arguments is mapping }}"
             "{% endif %}|"
             "{% endfor %}")
    call = {"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": {"x": 1}}}
    text = localllm.render_chat(probe, [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        localllm.Message(role="assistant", content="ok"),
        localllm.Message(role="assistant", tool_calls=[ToolCall(
            id="c2", name="f", arguments='{"x": 2}')]),
    ])
    assert text == ("content,role;|content,role,tool_calls;True|content,role;|"
                    "role,tool_calls;False|")


def test_a_message_written_as_a_dict_equals_one_built_in_code() -> None:
    """Keeping what the caller wrote for the template changes no message's identity:
    equal fields, equal messages and hashes (dropped messages compare as before)."""
    from localllm.templates.chat import normalize_messages

    (written,) = normalize_messages([{"role": "user", "content": "hi"}])
    built = localllm.Message(role="user", content="hi")
    assert written == built and hash(written) == hash(built)
    assert written != localllm.Message(role="user", content="hello")


def test_a_list_in_a_message_is_indexable() -> None:
    """gpt-oss indexes ``tool_calls[0]``: a list, as the caller wrote it."""
    source = "{% for m in messages %}{{ m.tool_calls[0].function.name }}{% endfor %}"
    text = localllm.render_chat(source, [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "lookup", "arguments": {}}}]}],
        add_generation_prompt=False)
    assert text == "lookup"


def test_namespace_refuses_underscore_names_and_dict_is_limited() -> None:
    with pytest.raises(ChatTemplateError, match="_secret"):
        localllm.render_chat("{% set ns = namespace(_secret=1) %}{{ ns }}",
                             [{"role": "user", "content": "hi"}])
    with pytest.raises(ChatTemplateError, match="'_x'"):
        localllm.render_chat("{% set ns = namespace() %}{% set ns._x = 1 %}{{ 1 }}",
                             [{"role": "user", "content": "hi"}])
    assert localllm.render_chat("{{ dict(a=1)['a'] }}{{ dict.fromkeys(['b'], 2)['b'] }}",
                                [{"role": "user", "content": "hi"}]) == "12"
    with pytest.raises(ChatTemplateError, match="unsafe"):
        localllm.render_chat("{{ dict.__class__.__subclasses__() }}",
                             [{"role": "user", "content": "hi"}])


def test_the_check_finds_what_a_template_drops(templates: dict[str, str]) -> None:
    """``localllm info``'s check needs no reference: a template that renders but drops a
    message's text, or refuses a common conversation, fails it, naming which."""
    assert check_template(templates["Qwen-Qwen2.5-7B-Instruct"], **TOKENS).passed
    dropping = "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}" \
               "{% endif %}{% endfor %}"
    report = check_template(dropping)
    assert not report.passed and not report.handles_tools
    lost = {r.conversation: r.detail for r in report.results if r.status == "lost"}
    assert "'Teal.'" in lost["multi-turn"]
    gemma = check_template(templates["google-gemma-2-2b-it"], **TOKENS)
    refused = [r for r in gemma.results if r.status == "refused"]
    assert refused and all("System role not supported" in r.detail or "alternate" in r.detail
                           for r in refused)
    assert not gemma.passed
    folded = check_template(templates["google-gemma-2-2b-it"], fold_system=True, **TOKENS)
    assert folded.passed and not folded.handles_tools  # a "tool" turn breaks alternation


def test_a_system_message_is_folded_only_when_asked(templates: dict[str, str],
                                                    default_model_path: Path) -> None:
    """Gemma 2's template refuses a system turn. Loaded as it is, the error says that
    ``system_message="fold"`` renders the chat; loaded so, the system text opens the first
    user turn (as llama-server writes it), ``model.info`` says so, and the model answers."""
    gemma2 = templates["google-gemma-2-2b-it"]
    chat = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."}]
    with localllm.load(default_model_path, chat_template=gemma2, context_length=256) as m:
        assert m.info.system_message == "template"
        unfolded = m.render_chat(chat[1:])
        with pytest.raises(ChatTemplateError, match="system_message='fold'"):
            m.render_chat(chat)
        with pytest.raises(ChatTemplateError, match="System role not supported"):
            m.chat(chat, max_tokens=2)
    with localllm.load(default_model_path, chat_template=gemma2, context_length=256,
                       system_message="fold") as m:
        assert m.info.system_message == "fold"
        text = m.render_chat(chat)
        assert "<start_of_turn>user\nYou are terse.\nName a colour.<end_of_turn>" in text
        assert "system" not in text
        assert m.chat(chat, max_tokens=4, temperature=0).usage.completion_tokens > 0
        # a chat without a system turn renders as it would unfolded
        assert m.render_chat(chat[1:]) == unfolded
    with pytest.raises(localllm.ConfigError, match="system_message"):
        localllm.load(default_model_path, system_message="merge")


def test_info_reports_the_template_check(default_model_path: Path) -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "localllm.cli", "info",
                           str(default_model_path), "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    check = json.loads(proc.stdout)["chat_template_check"]
    # SmolLM2's ChatML template writes contents only: earlier tool calls are not in it
    assert check.startswith("passed: 6 of 6 conversations without tools"), check
    assert "lost ('get_weather')" in check and "localllm's own format" in check, check


def test_the_server_folds_the_system_message_when_told(default_model_path: Path) -> None:
    """``localllm serve --system-message fold`` loads its models so: the prompt a client's
    system message makes is the folded one (ChatML shows the difference in tokens)."""
    import openai
    from server_harness import served_in_thread

    chat = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."}]
    counts = {}
    for mode in ("template", "fold"):
        with localllm.load(default_model_path, context_length=256,
                           system_message=mode) as m:
            counts[mode] = m.count_tokens(m.render_chat(chat))
    assert counts["fold"] != counts["template"]
    with served_in_thread(["smollm2-135m-instruct"], system_message="fold",
                          context_length=256, parallel=1) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120,
                               max_retries=0)
        reply = client.chat.completions.create(model="smollm2-135m-instruct",
                                               messages=chat, max_tokens=2)  # type: ignore[arg-type]
        assert reply.usage is not None and reply.usage.prompt_tokens == counts["fold"]


def test_an_image_stands_once_where_its_part_was_in_every_template(
        templates: dict[str, str]) -> None:
    """An image part renders as its marker in the text of its turn, once, in every real
    template (the reference renderer, given that turn's text with the marker in place, is
    the oracle); the marker then becomes exactly the image's placeholder ids."""
    import dataclasses
    import io

    from PIL import Image

    from localllm.core.media import ImagePrompt
    from localllm.images import is_placeholder
    from localllm.templates.chat import normalize_messages

    out = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 99, 199)).save(out, "PNG")
    compared = 0
    for name, source in templates.items():
        for conv in CONVERSATIONS:
            last = max((i for i, m in enumerate(conv.messages) if m.get("role") == "user"
                        and isinstance(m.get("content"), str)), default=None)
            if last is None:
                continue
            text = conv.messages[last]["content"]
            with_image = [*conv.messages[:last], {**conv.messages[last], "content": [
                {"type": "text", "text": text}, {"type": "image", "image": out.getvalue()}]},
                *conv.messages[last + 1:]]
            media = ImagePrompt(normalize_messages(with_image), 7, "test")
            (marker,) = media.by_marker
            as_text = [*conv.messages[:last], {**conv.messages[last], "content": text + marker},
                       *conv.messages[last + 1:]]
            expected, ref_error = reference(source, dataclasses.replace(conv,
                                                                        messages=as_text))
            if ref_error is not None:
                continue
            ours = localllm.render_chat(source, media.messages, tools=conv.tools,
                                        add_generation_prompt=conv.add_generation_prompt,
                                        **TOKENS)
            assert ours == expected and ours.count(marker) == 1, f"{name} / {conv.name}"
            ids = media.encode(ours, lambda s: list(s.encode()), lambda s: list(s.encode()))
            assert sum(map(is_placeholder, ids)) == 7, f"{name} / {conv.name}"
            compared += 1
    assert compared > 0.8 * len(templates)
