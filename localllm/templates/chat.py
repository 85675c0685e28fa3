"""Chat templates: the one function that turns messages into the prompt text.

Templates come from the model file (``tokenizer.chat_template``) or, when the file has
none, from an explicit choice (a name from :data:`NAMED_TEMPLATES` or a Jinja string).
Rendering runs in Jinja2's ``ImmutableSandboxedEnvironment`` — a template is untrusted
input inside a downloaded file (CVE-2024-34359) — with Hugging Face's helpers and with
limits on render time and output size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from .._errors import ChatTemplateError
from .._types import Message, plain_data
from .sandbox import (
    MAX_OUTPUT_CHARS,
    RenderLimits,
    environment_class,
    limited_filter,
)

MAX_RENDER_SECONDS = 0.5  # real templates render in milliseconds

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama-2": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('llama-2 expects user and assistant turns to alternate') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + (system if loop.first else '') "
        "+ message['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    ),
    "gemma": (
        "{% for message in messages %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + message['content'] + '<end_of_turn>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    ),
}


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # The reference renderer's variant (transformers): no HTML escaping, unicode kept, its
    # argument order, so a template prints the same JSON here as there.
    if (len(indent) if isinstance(indent, str) else indent or 0) > 64:
        raise ChatTemplateError(f"tojson(indent={indent!r:.20}) is past the 64 a chat "
                                "template could need (every line would repeat it)")
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii,
                      separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    """``dict`` for templates: building one, and ``dict.fromkeys``; nothing else of the
    type (the reference renderer offers the same two)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _namespace_class() -> type:
    import jinja2.utils

    class TemplateNamespace(jinja2.utils.Namespace):
        """Jinja's ``namespace()`` refusing underscore names, which lead to interpreter
        internals (the reference renderer refuses them too)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                _check_namespace_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            _check_namespace_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    return TemplateNamespace


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise ChatTemplateError(f"the chat template tried to store {name!r} on a namespace; "
                                "names starting with '_' are refused")


def _generation_extension() -> type:
    """``{% generation %}...{% endgeneration %}``: marks the assistant's part for training
    masks; rendering keeps its body as it is, as the reference renderer does."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}  # noqa: RUF012 (Jinja reads it as a set)

        def parse(self, parser: Any) -> list[nodes.Node]:
            next(parser.stream)
            body: list[nodes.Node] = parser.parse_statements(("name:endgeneration",),
                                                             drop_needle=True)
            return body

    return Generation


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    import jinja2
    import jinja2.ext

    env = environment_class()(trim_blocks=True, lstrip_blocks=True, autoescape=False,
                              keep_trailing_newline=False,
                              extensions=[jinja2.ext.loopcontrols, _generation_extension()])
    env.filters["tojson"] = limited_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _namespace_class()
    try:
        return env, env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"the chat template is not valid Jinja (line {exc.lineno}: {exc.message})"
        ) from None
    except ChatTemplateError:
        raise
    except Exception as exc:  # nesting past the parser's or Python's compiler's depth
        raise ChatTemplateError(
            f"the chat template cannot be compiled: {type(exc).__name__}: {exc}") from None


def resolve_template(explicit: str | None, from_model: str | None) -> str:
    """Pick the template text: an explicit choice wins, then the model's own; never a guess."""
    if explicit is not None:
        if explicit in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[explicit]
        if "{{" in explicit or "{%" in explicit:
            return explicit
        raise ChatTemplateError(
            f"chat_template={explicit!r} is neither a known name "
            f"({', '.join(sorted(NAMED_TEMPLATES))}) nor a Jinja template"
        )
    if from_model is None:
        raise ChatTemplateError(
            "this model file has no chat template (tokenizer.chat_template); pass "
            "chat_template= to load() with one of "
            f"{', '.join(sorted(NAMED_TEMPLATES))} or a Jinja template string"
        )
    return from_model


def normalize_messages(messages: Sequence[Message | Mapping[str, Any]]) -> list[Message]:
    """Validate chat messages, accepting dicts in the OpenAI shape."""
    from pydantic import ValidationError

    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, "
            f"not {type(messages).__name__}"
        )
    if not messages:
        raise ChatTemplateError("messages is empty; pass at least one message")
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, Mapping):
            raise ChatTemplateError(f"messages[{i}] must be a dict with 'role' and "
                                    f"'content', not {type(m).__name__}")
        try:
            out.append(Message.from_written(m))
        except ValidationError as exc:
            problems = _problems(exc, list_content=isinstance(m.get("content"), list))
            raise ChatTemplateError(f"messages[{i}] is invalid: {problems}") from None
    return out


def fold_system_message(messages: Sequence[Message | Mapping[str, Any]]
                        ) -> list[Message | Mapping[str, Any]]:
    """``messages`` with a leading system message folded into the first user turn (its
    text, a newline, the user's text), as llama-server does for templates that refuse a
    system role. Chosen with ``load(..., system_message="fold")``, never applied unasked."""
    out = list(messages)
    checked = normalize_messages(out) if out else []
    if not checked or checked[0].role != "system":
        return out
    target = next((i for i, m in enumerate(checked) if m.role == "user"), None)
    if target is None:
        raise ChatTemplateError("system_message='fold' needs a user message to fold the "
                                "system text into, and these messages have none")
    view = checked[target].template_view()
    view["content"] = f"{checked[0].text}\n{checked[target].text or ''}"
    out[target] = view
    return out[1:]


def render_chat(
    template: str,
    messages: Sequence[Message | Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    max_seconds: float = MAX_RENDER_SECONDS,
    max_chars: int = MAX_OUTPUT_CHARS,
    **extra: Any,
) -> str:
    """Render ``messages`` with ``template`` in the sandbox; the only renderer in localllm.

    The template sees what the reference renderer (transformers'
    ``apply_chat_template``) gives it: each message as the caller wrote it (absent keys
    stay absent), ``tools`` and ``documents`` (None unless given), the special tokens,
    ``add_generation_prompt`` and any ``extra`` variables (``enable_thinking``, ...), all
    as plain JSON data. So the same template gives the same text here as there."""
    import jinja2

    _, compiled = _compile(template)
    msgs = [m.template_view() for m in normalize_messages(messages)]
    limits = RenderLimits(max_seconds, max_chars)
    context = {"messages": msgs, "tools": plain_data(tools),
               "documents": plain_data(documents), "bos_token": bos_token,
               "eos_token": eos_token, "add_generation_prompt": add_generation_prompt,
               **plain_data(extra)}
    parts: list[str] = []
    size = 0
    try:
        with limits:
            for piece in compiled.generate(context):
                size += len(piece)
                if size > max_chars:
                    raise ChatTemplateError(f"chat template output exceeded {max_chars} "
                                            "characters and was stopped")
                limits.check()
                parts.append(piece)
    except ChatTemplateError:
        raise
    except jinja2.exceptions.SecurityError as exc:
        raise ChatTemplateError(
            f"the chat template tried an unsafe operation and was blocked: {exc}"
        ) from None
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed to render: {exc}") from None
    except Exception as exc:  # the template is code from a file: its failure, whatever type
        raise ChatTemplateError(
            f"the chat template failed to render: {type(exc).__name__}: {str(exc)[:500]}"
        ) from None
    return "".join(parts)


def _problems(exc: Any, list_content: bool) -> str:
    """A message's validation errors, one per problem, with locations as the caller wrote
    them (``content.0.image``), not pydantic's union branches (``tuple[tagged-union...]``);
    content given as a list is not also reported as "not a string"."""
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"] if isinstance(p, int) or str(p).isidentifier()]
        if list_content and loc == ["content", "str"]:
            continue
        out.append(f"{'.'.join(loc) or 'message'}: {e['msg']}")
    return "; ".join(out)
