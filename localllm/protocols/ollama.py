"""Ollama's native API (``/api/chat``, ``/api/generate``): option names and message
shapes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._types import Message, ToolCall

#: ``options`` entry -> localllm sampling parameter
OPTION_FIELDS = {"num_predict": "max_tokens", "temperature": "temperature", "top_k": "top_k",
                 "top_p": "top_p", "min_p": "min_p", "typical_p": "typical_p",
                 "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
                 "presence_penalty": "presence_penalty",
                 "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop"}
#: localllm sampling parameter -> ``options`` entry
OPTION_NAMES = {ours: wire for wire, ours in OPTION_FIELDS.items()}
#: ``options`` entries that size the model's load rather than the request
LOAD_FIELDS = {"num_ctx": "context_length", "num_thread": "threads"}
#: ``options`` entries about how Ollama itself loads, which change no answer
IGNORED_OPTIONS = {"num_keep", "num_batch", "num_gpu", "main_gpu", "use_mmap", "numa",
                   "low_vram", "vocab_only", "use_mlock", "penalize_newline"}


def tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Calls as Ollama writes them: ``{"function": {"name", "arguments": {...}}}``, the
    arguments as an object."""
    return [{"function": {"name": c.name, "arguments": c.parsed_arguments}} for c in calls]


def message(m: Message) -> dict[str, Any]:
    """One chat message as Ollama takes it: content always a string, calls as above, a
    tool result's function as ``tool_name``."""
    out: dict[str, Any] = {"role": m.role, "content": m.content or ""}
    if m.tool_calls:
        out["tool_calls"] = tool_calls(m.tool_calls)
    if m.role == "tool" and m.name is not None:
        out["tool_name"] = m.name
    return out


def call_pieces(message: Mapping[str, Any], first_index: int) -> list[dict[str, Any]]:
    """A reply message's calls in OpenAI's streamed shape (``index``, ``id``,
    ``function``: name and arguments as JSON text), numbered from ``first_index``: Ollama
    sends each call whole, with its arguments as an object and often no id."""
    pieces = []
    for offset, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        index = first_index + offset
        arguments = fn.get("arguments")
        pieces.append({"index": index, "id": call.get("id") or f"call_{index}",
                       "function": {"name": fn.get("name"), "arguments": arguments
                                    if isinstance(arguments, str)
                                    else json.dumps(arguments or {})}})
    return pieces
