"""Chat template rendering: HF helpers, named templates, sandboxing and limits."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

import localllm
from localllm import ChatTemplateError, render_chat
from localllm.templates.chat import resolve_template

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_chatml_renders_exactly() -> None:
    out = render_chat(localllm.NAMED_TEMPLATES["chatml"], MSGS)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n")
    no_gen = render_chat(localllm.NAMED_TEMPLATES["chatml"], MSGS, add_generation_prompt=False)
    assert not no_gen.endswith("assistant\n")


def test_llama2_uses_bos_eos_and_raise_exception() -> None:
    tpl = localllm.NAMED_TEMPLATES["llama-2"]
    msgs = [*MSGS, {"role": "assistant", "content": "Hello"}]
    out = render_chat(tpl, msgs, bos_token="<s>", eos_token="</s>")
    assert out == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s>"
    with pytest.raises(ChatTemplateError, match="alternate"):
        render_chat(tpl, [{"role": "assistant", "content": "x"}])


def test_hf_helpers_tojson_and_strftime_now() -> None:
    tpl = ("{{ strftime_now('%Y') }}|{{ {'a': 'é', 'b': [1, 2]} | tojson }}|"
           "{{ x | tojson(indent=2) }}")
    out = render_chat(tpl, MSGS, x={"k": 1})
    year, js, indented = out.split("|")
    assert year == str(datetime.now().year)
    assert js == '{"a": "é", "b": [1, 2]}'
    assert indented == '{\n  "k": 1\n}'


def test_model_without_template_needs_an_explicit_one() -> None:
    with pytest.raises(ChatTemplateError, match="chatml"):
        resolve_template(None, None)
    assert resolve_template("chatml", None) == localllm.NAMED_TEMPLATES["chatml"]
    assert resolve_template("{{ 'x' }}", "model's") == "{{ 'x' }}"
    assert resolve_template(None, "model's") == "model's"
    with pytest.raises(ChatTemplateError, match="neither a known name"):
        resolve_template("chatmlx", None)


def test_cve_2024_34359_payload_is_blocked_without_side_effects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'catch_warnings' %}"
        "{{ c()._module.__builtins__['__import__']('os').system('touch " + str(marker) + "') }}"
        "{% endif %}{% endfor %}"
    )
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render_chat(payload, MSGS)
    assert not marker.exists()
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages.append({'role': 'x'}) }}", MSGS)  # immutable sandbox


def test_render_time_and_size_are_limited() -> None:
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(ChatTemplateError, match=r"more than 0\.2 s of CPU time"):
        render_chat(slow, MSGS, max_seconds=0.2)
    big = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match="exceeded"):
        render_chat(big, MSGS, max_chars=100_000)


def test_the_time_limit_counts_work_not_waiting() -> None:
    """A render on a busy server waits for the GIL, a collection or the scheduler; only
    the CPU time its thread spends counts, so waiting past the limit is no error, and
    working past it still is."""
    import time

    from localllm.templates.sandbox import RenderLimits

    limits = RenderLimits(0.05, 1000)
    time.sleep(0.15)  # three times the limit on the clock, almost no CPU time
    limits.check()
    started = time.thread_time()
    with pytest.raises(ChatTemplateError, match="CPU time"):
        while time.thread_time() - started < 1.0:  # bounded: 20 times the limit
            limits.check()


def test_bad_templates_and_messages_are_clear_errors() -> None:
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        render_chat("{% for %}", MSGS)
    with pytest.raises(ChatTemplateError, match="failed to render"):
        render_chat("{{ messages[5]['content'] }}", MSGS)
    with pytest.raises(ChatTemplateError, match=r"messages\[0\].*role"):
        render_chat("{{ 1 }}", [{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="empty"):
        render_chat("{{ 1 }}", [])
    with pytest.raises(ChatTemplateError, match="list"):
        render_chat("{{ 1 }}", "hello")  # type: ignore[arg-type]


def test_default_model_template_renders(shared_model: localllm.Model) -> None:
    text = shared_model.render_chat([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained "
                    "by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
