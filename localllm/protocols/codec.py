"""What every wire codec shares: the parsed call, the server-side contract, validation.

A codec is one wire surface (OpenAI chat completions, OpenAI completions, Ollama's chat
and generate...). On the server side it parses a JSON body into a :class:`Call` (one or
more :class:`~localllm.core.request.GenerationRequest`s and how to answer them) and encodes
the answer: whole, as a stream of events, or as an error in the API's own envelope. The
server mounts one generic endpoint per codec (``server/_endpoint.py``), so a new wire API
is one codec module and one line that mounts it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from .._errors import ConfigError, RequestError
from .._types import Completion, ImagePart, StreamChunk, decode_data_uri, decode_image_base64
from ..core.request import GenerationRequest
from ..images import sniff_format


@dataclass
class Call:
    """A parsed request: the served model's name, what to generate (several requests for
    a list of prompts; none for a request that only loads a model), ``n`` choices each,
    streamed or whole, and how the model is loaded and kept. ``echo`` holds what the
    codec needs again when it answers (the body's own fields)."""

    model: str
    requests: list[GenerationRequest]
    n: int = 1
    stream: bool = False
    load_options: dict[str, Any] = field(default_factory=dict)
    keep_alive: Any = "default"
    echo: Any = None


@dataclass(frozen=True)
class Failure:
    """An error as every API describes it: status, message, kind, code, field."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None


class ServerCodec(Protocol):
    """The server side of one wire surface."""

    #: the route it is mounted at, e.g. "/v1/chat/completions"
    path: str
    #: the content type of its streamed answers
    media_type: str

    def parse(self, body: Any, caller: str = "") -> Call:
        """A JSON body → a :class:`Call`; a broken rule raises ``RequestError``.
        ``caller`` names who asks (a digest of the API key; "" without keys), for APIs
        that keep state per caller."""

    def reply(self, call: Call, results: list[Completion], load_s: float) -> dict[str, Any]:
        """The whole answer: ``n`` results per request, in order."""

    def events(self, call: Call, chunks: AsyncIterator[tuple[int, StreamChunk]],
               load_s: float) -> AsyncIterator[dict[str, Any]]:
        """The streamed answer's events, from the choices' chunks tagged by index."""

    def frame(self, event: Mapping[str, Any]) -> bytes:
        """One event on the wire (an SSE frame, an NDJSON line)."""

    def end(self) -> bytes:
        """What closes a stream (SSE's ``[DONE]``; nothing for NDJSON)."""

    def error(self, failure: Failure) -> dict[str, Any]:
        """The API's error envelope."""


class StreamDecoder:
    """The client side's state while it reads a reply: the finish reason the server gave,
    usage (prompt, completion tokens; the thinking's tokens where the API counts them), and
    whether the server said the answer is complete. Each API's ``Decoder`` fills it from
    its own events, and turns the thinking a server split off into ``Piece.reasoning``."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.finish: str | None = None
        self.usage = (0, 0)
        self.reasoning_tokens = 0
        self.ended = False

    def feed_whole(self, reply: dict[str, Any]) -> list[Any]:
        """A reply that was not streamed (only APIs that answer so override this)."""
        raise AssertionError(f"{type(self).__name__} reads streamed replies only")


def named_event(event: Mapping[str, Any]) -> bytes:
    """An SSE frame named by the event's ``type`` (Anthropic's and the Responses API's
    framing); an error envelope without a type is an ``error`` event."""
    name = str(event.get("type") or ("error" if "error" in event else "message"))
    return (f"event: {name}\ndata: ".encode() + json.dumps(event, ensure_ascii=False).encode()
            + b"\n\n")


def validate(model: type[BaseModel], body: Any) -> Any:
    """Parse a body into ``model``; a bad field is a ``RequestError`` that names it."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors())
        raise RequestError(f"invalid request: {problems}", param=param) from None


def sampling_params(fields: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The set request fields renamed to localllm's sampling parameters."""
    out: dict[str, Any] = {}
    for wire, ours in names.items():
        value = fields.get(wire)
        if value is not None:
            out[ours] = value
    return out


def server_request(*, messages: list[Any] | None = None, prompt: str | None = None,
                   params: Mapping[str, Any], response_format: Any = None,
                   tools: list[Any] | None = None, tool_choice: Any = None,
                   parallel_tool_calls: bool = True, max_tool_calls: int | None = None,
                   think: Any = None, reasoning_budget: int | None = None,
                   logprobs: int | None = None, context_limit: int | None = None,
                   overflow: str = "error") -> GenerationRequest:
    """The request a served call asks for. No ``max_tokens`` means up to the context's
    end, as in every wire API (not the library's default of 256), and a ``max_tokens`` past
    the context's end is cut to it; ``context_limit`` is a smaller window for this request
    (Ollama's ``num_ctx``). The model decides all of it once, when it tokenizes."""
    from ..core.request import build_request

    return build_request(messages=messages, prompt=prompt, response_format=response_format,
                         tools=tools, tool_choice=tool_choice,
                         parallel_tool_calls=parallel_tool_calls,
                         max_tool_calls=max_tool_calls, logprobs=logprobs,
                         clamp_to_context=True, context_limit=context_limit,
                         overflow=overflow, think=think, reasoning_budget=reasoning_budget,
                         **{"max_tokens": None, **params})


def block_parts(value: Any, where: str, kinds: tuple[str, ...], noun: str,
                images: Mapping[str, Callable[[Mapping[str, Any], str], dict[str, Any]]]
                | None = None) -> str | list[dict[str, Any]]:
    """A string as it came, or a list of blocks as localllm's content parts: ``kinds``
    blocks (Anthropic's ``text``, the Responses API's ``input_text``/``output_text``) as
    text parts, and the image blocks ``images`` names, each read by its reader (given the
    block and where it is). Any other block is a RequestError naming where it is and what
    is accepted, so nothing a client sent is dropped unseen."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise RequestError(f"{where} must be a string or a list of {noun}s", param=where)
    readers = images or {}
    parts = []
    for i, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        if kind in kinds:
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif isinstance(kind, str) and kind in readers:
            parts.append(readers[kind](block, f"{where}.{i}"))
        else:
            raise RequestError(f"{where}[{i}] is a {kind!r} {noun}; only "
                               f"{' and '.join((*kinds, *readers))} {noun}s are supported "
                               "here", param=f"{where}.{i}")
    return parts


# ---------------------------------------------------------------------------- images
#: the media type each accepted image format (``localllm.images.FORMATS``) is sent as
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif",
               "WEBP": "image/webp"}


def _image_bytes(data: bytes, where: str) -> dict[str, Any]:
    if not data:
        raise RequestError(f"{where} holds no image (it decodes to 0 bytes)", param=where)
    return {"type": "image", "data": data}


def image_from_base64(value: Any, where: str) -> dict[str, Any]:
    """An image part from base64 text a request carries (Ollama's ``images``, Anthropic's
    base64 source): the decoded bytes, so no value can make the server read a file. Some
    clients send a ``data:`` URI here, which is read as one; anything that does not decode
    is a RequestError naming ``where``. The bytes are checked as an image (format, size,
    pixels) when the model reads them."""
    if not isinstance(value, str):
        raise RequestError(f"{where} must be base64 text, not {type(value).__name__}",
                           param=where)
    if value.startswith("data:"):
        return image_from_url(value, where)
    try:
        return _image_bytes(decode_image_base64(value, where), where)
    except ValueError as exc:
        raise RequestError(str(exc), param=where) from None


def image_from_url(value: Any, where: str) -> dict[str, Any]:
    """An image part from a URL a request carries (OpenAI's ``image_url``, Anthropic's url
    source, the Responses API's ``input_image``): a base64 ``data:`` URI's bytes, or an
    http(s) URL kept unfetched (the model refuses it unless the server fetches images).
    Anything else, a path or a ``file:`` URL above all, is a RequestError: a server never
    reads a file a request names."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"{where} must be a data: URI or an http(s) URL", param=where)
    if value.startswith("data:"):
        try:
            return _image_bytes(decode_data_uri(value), where)
        except ValueError as exc:
            raise RequestError(f"{where}: {exc}", param=where) from None
    if value.startswith(("http://", "https://")):
        return {"type": "image", "url": value}
    raise RequestError(f"{where} {value[:60]!r} is neither a data: URI "
                       "(data:image/png;base64,...) nor an http(s) URL; a server never "
                       "reads a file a request names", param=where)


def media_type(data: bytes, fallback: str | None = None) -> str:
    """The media type of an image file, from its first bytes (PNG, JPEG, GIF, WebP); any
    other file is a ConfigError unless a ``fallback`` is given: the client refuses to send
    what no server would read."""
    kind = sniff_format(data)
    if kind is not None:
        return MEDIA_TYPES[kind]
    if fallback is not None:
        return fallback
    head = data[:8].hex(" ") if data else "empty"
    raise ConfigError(f"the image is not PNG, JPEG, WebP or GIF (its first bytes: {head}); "
                      "convert it to one of those before sending it to a server")


def base64_text(data: bytes) -> str:
    """An image file in base64, as Ollama's ``images`` and Anthropic's base64 source carry
    it (no ``data:`` prefix)."""
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, fallback: str | None = None) -> str:
    """An image file as a base64 ``data:`` URI, its media type sniffed (see
    :func:`media_type`)."""
    return f"data:{media_type(data, fallback)};base64,{base64_text(data)}"


def image_url(part: ImagePart) -> str:
    """An image part as the URL OpenAI's ``image_url`` and the Responses API's
    ``input_image`` take: its http(s) URL, or its bytes as a ``data:`` URI."""
    return part.url if part.url is not None else data_uri(part.data)
