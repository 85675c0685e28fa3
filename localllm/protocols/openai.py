"""OpenAI's chat completions and completions: field names and message shapes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._types import Message, TokenLogprob, ToolCall, ToolCallDelta, TopLogprob

#: the sampling fields OpenAI's API defines
STANDARD_FIELDS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed",
                   "stop", "logit_bias")
#: llama.cpp's sampling fields that llama-server, vLLM and localllm take on the same routes
EXTENSION_FIELDS = ("top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n")
#: request field -> localllm sampling parameter, for the fields whose value passes as it
#: is (logit_bias keys arrive as strings and are converted where they are read)
SAMPLING_FIELDS = {name: name for name in STANDARD_FIELDS + EXTENSION_FIELDS
                   if name != "logit_bias"}


def tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Finished calls: ``{"id", "type": "function", "function": {"name", "arguments"}}``
    with the arguments as JSON text."""
    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def tool_call_deltas(deltas: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    """Streamed pieces of calls: id, type and name on a call's first piece only."""
    out = []
    for d in deltas:
        fn: dict[str, Any] = {"arguments": d.arguments}
        entry: dict[str, Any] = {"index": d.index, "function": fn}
        if d.id is not None:
            entry.update(id=d.id, type="function")
            fn["name"] = d.name
        out.append(entry)
    return out


def message(m: Message) -> dict[str, Any]:
    """One chat message as OpenAI's API takes it: only the fields it has (no empty
    ``tool_calls`` on a plain turn), calls in the wire shape above."""
    out: dict[str, Any] = {"role": m.role}
    if m.content is not None or not m.tool_calls:
        out["content"] = m.content
    if m.tool_calls:
        out["tool_calls"] = tool_calls(m.tool_calls)
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def logprob_entry(lp: TokenLogprob) -> dict[str, Any]:
    """One token's log probability with its alternatives (Ollama uses the same shape)."""
    return {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.bytes),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
                             for t in lp.top_logprobs]}


def decode_logprobs(block: Any) -> tuple[TokenLogprob, ...]:
    """A reply's ``logprobs``: the chat shape (``content``: entries as
    :func:`logprob_entry` writes them) or the legacy completions shape (``tokens``,
    ``token_logprobs``, ``top_logprobs``: {token: logprob}). Servers give no token ids
    (-1 here); bytes are the token's UTF-8 where a server leaves them out."""
    if not isinstance(block, dict):
        return ()

    def entry(token: Any, logprob: Any, raw: Any = None) -> dict[str, Any]:
        return {"token": str(token), "id": -1, "logprob": float(logprob or 0.0),
                "bytes": tuple(raw or str(token).encode())}

    if block.get("content"):
        return tuple(TokenLogprob(
            **entry(e.get("token", ""), e.get("logprob"), e.get("bytes")),
            top_logprobs=tuple(TopLogprob(**entry(t.get("token", ""), t.get("logprob"),
                                                  t.get("bytes")))
                               for t in e.get("top_logprobs") or []))
            for e in block["content"])
    tops = block.get("top_logprobs") or []
    return tuple(TokenLogprob(**entry(token, logprob), top_logprobs=tuple(
        TopLogprob(**entry(t, lp)) for t, lp in (tops[i] if i < len(tops) and tops[i]
                                                 else {}).items()))
        for i, (token, logprob) in enumerate(zip(block.get("tokens") or [],
                                                 block.get("token_logprobs") or [],
                                                 strict=False)))
