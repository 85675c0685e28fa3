"""Parameters, results and descriptions exchanged through the public API.

All of them are frozen pydantic models validated at construction, so a bad value fails
where it is written, with the field, the value and the valid range in the message.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from ._defaults import DEFAULTS
from ._errors import ConfigError, StructuredOutputError

FinishReason = Literal["stop", "length", "tool_calls"]
#: truncate_right (cut the end) is for embed(); generation keeps the end of a prompt
OverflowPolicy = Literal["error", "truncate_left", "truncate_right", "drop_oldest"]
Role = Literal["system", "user", "assistant", "tool"]


class _Frozen(BaseModel):
    # defer_build: schemas are built on first use, keeping `import localllm` fast
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


def describe_validation_error(kind: str, exc: ValidationError, valid: Sequence[str]) -> str:
    """Turn a pydantic error into one readable line per problem: field, value, fix."""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or kind
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(
                f"unknown {kind} {field!r}{hint} (valid: {', '.join(sorted(valid))})"
            )
        else:
            lines.append(f"invalid {field}={err.get('input')!r}: {err['msg']}")
    return "; ".join(lines)


class SamplingParams(_Frozen):
    """How to generate. Defaults follow llama.cpp's, so results match its CLI.

    A parameter the backend cannot honour raises ``UnsupportedFeatureError`` when it is
    set explicitly; it is never ignored.
    """

    max_tokens: int | None = Field(
        256, ge=1, description="tokens to generate at most; None = up to the context end"
    )
    temperature: float = Field(0.8, ge=0.0, le=100.0, description="0 = greedy")
    top_k: int = Field(40, ge=0, description="0 = disabled")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="1.0 = disabled")
    min_p: float = Field(0.05, ge=0.0, le=1.0, description="0.0 = disabled")
    typical_p: float = Field(1.0, gt=0.0, le=1.0, description="1.0 = disabled")
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0, description="1.0 = disabled")
    repeat_last_n: int = Field(64, ge=0, description="penalty window in tokens; 0 = off")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    seed: int | None = Field(None, ge=0, le=2**32 - 2, description="None = random")
    stop: tuple[str, ...] = Field(default=(), description="strings that end generation")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_tuple(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = (value,)
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            if any(not isinstance(s, str) or s == "" for s in value):
                raise ValueError("every stop string must be a non-empty str")
            return tuple(value)
        return value

    @field_validator("logit_bias")
    @classmethod
    def _finite_bias(cls, value: dict[int, float]) -> dict[int, float]:
        for token, bias in value.items():
            if token < 0:
                raise ValueError(f"token id {token} must be >= 0")
            if bias != bias:  # NaN
                raise ValueError(f"bias for token {token} is NaN")
        return value

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SamplingParams:
        """Validate user keyword options, raising ``ConfigError`` with a readable message."""
        try:
            return cls(**options)
        except ValidationError as exc:
            raise ConfigError(
                describe_validation_error("parameter", exc, list(cls.model_fields))
            ) from None


def plain_data(value: Any) -> Any:
    """``value`` rebuilt from JSON types (dict, list, tuple, str, int, float, bool, None);
    anything else becomes an inert ``"<TypeName>"``. What a chat template reads goes
    through this, so no object with methods reaches the sandbox."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (bool, str, int, float):  # subclasses (enums, numpy scalars) lose methods
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if isinstance(value, BaseModel):
        return plain_data(value.model_dump())
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return plain_data(item())
    return f"<{type(value).__name__}>"


class ToolCall(_Frozen):
    """A function call the model made: ``arguments`` is JSON text that validates against
    the function's ``parameters`` (the grammar guarantees it)."""

    id: str
    name: str
    arguments: str = Field(description="the arguments as a JSON object, in text")

    @model_validator(mode="before")
    @classmethod
    def _from_wire(cls, value: Any) -> Any:
        """Accept OpenAI's ``{"id", "type", "function": {"name", "arguments": str}}`` and
        Ollama's ``{"function": {"name", "arguments": {...}}}`` shapes."""
        if isinstance(value, Mapping) and isinstance(value.get("function"), Mapping):
            fn = value["function"]
            args = fn.get("arguments", "{}")
            if not isinstance(args, str):
                args = json.dumps(args, ensure_ascii=False)
            return {"id": value.get("id") or "call_0", "name": fn.get("name"),
                    "arguments": args}
        return value

    @property
    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict."""
        value = json.loads(self.arguments)
        assert isinstance(value, dict)
        return value


class ToolCallDelta(_Frozen):
    """A piece of a streamed tool call: ``id`` and ``name`` come on its first delta,
    then ``arguments`` fragments that concatenate to the JSON text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TextPart(_Frozen):
    """A piece of a message's content: text. Content given as a list of parts (OpenAI's
    ``[{"type": "text", "text": ...}]``) is kept as parts; other part types join here as
    runtimes learn them."""

    type: Literal["text"] = "text"
    text: str


class ImagePart(_Frozen):
    """An image in a message's content: the file's bytes (PNG, JPEG, WebP or GIF; checked
    and decoded when a model reads it), or an ``http(s)`` URL, which only a server
    started with ``--fetch-images`` resolves. Written as ``{"type": "image", "image": X}``
    where X is bytes, a path or a ``data:`` URI; OpenAI's ``{"type": "image_url",
    "image_url": {"url": ...}}`` is read too. A wire API never passes a path: its codec
    builds parts from the bytes it was sent."""

    type: Literal["image"] = "image"
    data: bytes = b""
    url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_source(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        value = dict(value)
        if value.get("type") == "image_url":  # OpenAI's shape
            inner = value.pop("image_url", None)
            value["type"] = "image"
            value["url"] = inner.get("url") if isinstance(inner, Mapping) else inner
        if "image" in value:
            source = value.pop("image")
            if isinstance(source, (bytes, bytearray)):
                value["data"] = bytes(source)
            else:
                value["url" if str(source).startswith(("data:", "http:", "https:"))
                      else "path"] = source
        if "path" in value:
            value["data"] = read_image_file(value.pop("path"))
        url = value.get("url")
        if isinstance(url, str) and url.startswith("data:"):
            value["data"], value["url"] = decode_data_uri(url), None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ImagePart:
        if bool(self.data) == bool(self.url):
            raise ValueError("an image part needs the image: bytes, a path or a data: URI "
                             "(or an http(s) URL for a server that fetches them)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"image URL {self.url[:60]!r} is neither data: nor http(s)")
        if len(self.data) > DEFAULTS.max_image_bytes:
            raise ValueError(f"the image is {len(self.data)} bytes; the limit is "
                             f"{DEFAULTS.max_image_bytes}: scale it down first")
        return self

    def __repr__(self) -> str:  # never a megabyte of bytes in a log line
        return f"ImagePart({len(self.data)} bytes)" if self.data else f"ImagePart({self.url!r})"


#: False while a server handles a request: what a client wrote never names a file here
#: (each wire codec builds image parts from the bytes it was sent; this guards the rest)
IMAGE_PATHS_ALLOWED: ContextVar[bool] = ContextVar("localllm_image_paths", default=True)


def read_image_file(path: Any) -> bytes:
    """An image file's bytes: a regular file, read up to the size limit and no further
    (a FIFO or /dev/zero claims size 0 and never ends)."""
    from pathlib import Path

    if not IMAGE_PATHS_ALLOWED.get():
        raise ValueError("an image given as a file path is not read in a server request; "
                         "send the image's bytes (base64 or a data: URI)")
    file = Path(path).expanduser()
    try:
        if not file.is_file():
            raise ValueError(f"cannot read the image {file}: not a regular file")
        with open(file, "rb") as handle:
            data = handle.read(DEFAULTS.max_image_bytes + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the image {file}: {exc.strerror or exc}") from None
    if len(data) > DEFAULTS.max_image_bytes:
        raise ValueError(f"{file} is over the image limit of {DEFAULTS.max_image_bytes} "
                         "bytes: scale it down first")
    return data


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a base64 ``data:`` URI (``data:image/png;base64,...``)."""
    head, sep, body = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ValueError("an image data: URI must be base64 (data:image/png;base64,...)")
    return decode_image_base64(body, "the image data: URI")


def decode_image_base64(text: str, what: str) -> bytes:
    """Base64 image bytes (line breaks allowed), refused past the image size limit before
    they are decoded; a ValueError naming ``what`` otherwise."""
    import base64
    import binascii

    text = "".join(text.split())  # some clients wrap base64 in lines
    if len(text) > DEFAULTS.max_image_bytes * 4 // 3 + 4:
        raise ValueError(f"{what} holds more than the {DEFAULTS.max_image_bytes}-byte image "
                         "limit: scale the image down first")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64 (an image file in base64, without a "
                         "data: prefix)") from None


def _part_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    return "image" if kind in ("image", "image_url") else kind if kind == "text" else None


#: one part of a message's content: text or an image
ContentPart = Annotated[Annotated[TextPart, Tag("text")] | Annotated[ImagePart, Tag("image")],
                        Discriminator(_part_kind, custom_error_type="content_part",
                                      custom_error_message="a content part's type must be "
                                      "'text', 'image' or 'image_url'")]


class Message(_Frozen):
    """One chat turn. An assistant turn may carry ``tool_calls`` instead of content; a
    ``tool`` turn answers the call named by ``tool_call_id``. ``content`` is a string or
    a list of content parts; :attr:`text` is its text either way."""

    role: Role
    content: str | tuple[ContentPart, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    #: the mapping the caller wrote, when the message came from one: a chat template sees
    #: that (absent keys absent, lists as lists, arguments as written), not these fields
    _written: Mapping[str, Any] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _content_present(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs 'content' (a string or a list "
                             "of content parts)")
        return self

    @property
    def text(self) -> str | None:
        """The content's text: the string, or the text parts joined (None when absent)."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        """The content's image parts, in order."""
        if isinstance(self.content, tuple):
            return tuple(p for p in self.content if isinstance(p, ImagePart))
        return ()

    def __eq__(self, other: object) -> bool:
        """Equal when the fields are: how a message was written is not part of it."""
        if not isinstance(other, Message):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((Message, *self.__dict__.values()))

    @classmethod
    def from_written(cls, value: Mapping[str, Any]) -> Message:
        """Validate a message dict and keep it as written, for the chat template."""
        message = cls.model_validate(value)
        message._written = value
        return message

    def template_view(self) -> dict[str, Any]:
        """The message as a chat template receives it, in plain JSON types: the caller's
        own mapping, or for a message built in code, the fields that were set, with tool
        calls in OpenAI's shape (``{"id", "type", "function": {"name", "arguments"}}``).
        Content made of text parts reaches the template as one string, so every template
        takes it (most index ``message['content']`` as a string)."""
        if self._written is not None:
            view: dict[str, Any] = plain_data(self._written)
            if isinstance(self.content, tuple):
                view["content"] = self.text
            return view
        out: dict[str, Any] = {}
        for key in self.model_fields_set:
            if key == "content" and isinstance(self.content, tuple):
                out[key] = self.text
            elif key == "tool_calls":
                out[key] = [{"id": c.id, "type": "function",
                             "function": {"name": c.name, "arguments": c.arguments}}
                            for c in self.tool_calls]
            else:
                out[key] = getattr(self, key)
        return {key: out[key] for key in Message.model_fields if key in out}


class TopLogprob(_Frozen):
    """One candidate token and its log probability under the model."""

    token: str
    id: int
    logprob: float
    bytes: tuple[int, ...]


class TokenLogprob(TopLogprob):
    """A generated token's log probability, with the most likely alternatives."""

    top_logprobs: tuple[TopLogprob, ...] = ()


class Usage(_Frozen):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int = Field(
        0, description="prompt tokens whose KV entries were reused, not evaluated")
    reasoning_tokens: int = Field(
        0, description="completion tokens spent thinking (reasoning models)")


class Timings(_Frozen):
    """Seconds and rates of one request (load_s is the model's load time)."""

    load_s: float
    time_to_first_token_s: float
    prompt_s: float
    generation_s: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    #: speculative decoding: tokens drafted, and how many of them the model agreed with
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted over drafted (None when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None


class Truncation(_Frozen):
    """What an opt-in overflow policy removed from the input so that it fits."""

    policy: OverflowPolicy
    dropped_tokens: int = 0
    dropped_text: str = ""
    dropped_messages: tuple[Message, ...] = ()


class Completion(_Frozen):
    """The result of a finished request."""

    text: str
    token_ids: tuple[int, ...] = Field(description="every generated token, stop included")
    finish_reason: FinishReason
    stop_sequence: str | None = Field(None, description="stop string that ended it, if any")
    seed: int = Field(description="the seed actually used (random when none was given)")
    usage: Usage
    timings: Timings
    truncation: Truncation | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = Field(
        None, description="a reasoning model's thinking, apart from the answer in text "
                          "(None for a model that does not think)")
    logprobs: tuple[TokenLogprob, ...] | None = Field(
        None, description="per generated token, when logprobs= was given")
    # set by Model for constrained requests: the CompiledFormat and whether it completed
    _format: Any = PrivateAttr(None)
    _complete: bool = PrivateAttr(False)

    @property
    def parsed(self) -> Any:
        """The constrained output as a value: the parsed JSON, an instance of the pydantic
        model given as ``response_format``, or the text for regex/grammar formats.

        Raises ``StructuredOutputError`` when the output is not complete (cut by
        ``max_tokens`` or the context end, or ended by a stop string): a cut JSON never
        passes as valid, even where the cut happens to leave parsable text."""
        fmt = self._format
        if fmt is None:
            raise ConfigError("this completion was generated without response_format, so "
                              "there is nothing to parse; pass response_format=... or parse "
                              ".text yourself")
        if not self._complete:
            if self.finish_reason == "length":
                why = (f"it was cut after {self.usage.completion_tokens} tokens by max_tokens "
                       "or the context end; raise max_tokens (or load a longer context)")
            else:
                why = (f"the stop string {self.stop_sequence!r} ended it; remove that stop "
                       "string for constrained output")
            raise StructuredOutputError(f"the structured output is incomplete: {why}")
        if fmt.kind == "text":
            return self.text
        if fmt.model is not None:
            try:
                return fmt.model.model_validate_json(self.text)
            except ValidationError as exc:
                raise StructuredOutputError(
                    f"the output does not validate as {fmt.model.__name__}: {exc}") from exc
        import json

        return json.loads(self.text)


class StreamChunk(_Frozen):
    """A piece of a streamed answer; the last chunk carries the whole ``completion``."""

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    completion: Completion | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    reasoning: str = ""  # thinking text of this piece (reasoning models)


class Capabilities(_Frozen):
    """What a backend can do, declared as data so the core can check before calling it."""

    streaming: bool = True
    sampling_params: frozenset[str] = Field(
        default=frozenset(), description="SamplingParams fields the backend honours"
    )
    logits: bool = False
    gpu_offload: bool = False
    embeddings: bool = False
    #: reads images in messages, given a vision projector
    images: bool = False


class DevicePlacement(_Frozen):
    device: str = "cpu"
    gpu_layers: int = 0
    total_layers: int = 0
    #: what the runtime reports it actually runs on, e.g. "CUDAExecutionProvider"
    provider: str = ""


class ModelStats(_Frozen):
    """What a loaded model is doing right now (``Model.stats``): for dashboards, metrics
    and back-pressure decisions outside the model."""

    active_sequences: int = Field(description="requests being decoded now")
    queue_depth: int = Field(description="requests waiting for a free sequence")
    max_sequences: int = Field(description="requests decoded together at most (parallel)")
    decode_steps: int = Field(0, description="decode steps run since the model was loaded; "
                              "one step advances every request decoding then")


class ModelInfo(_Frozen):
    """Facts about a loaded model: the file, the runtime and where it runs."""

    path: str
    name: str
    format: str
    architecture: str
    parameter_count: int
    quantization: str
    file_size: int
    vocab_size: int
    trained_context_length: int
    context_length: int
    backend: str
    backend_version: str
    threads: int
    batch_size: int
    placement: DevicePlacement
    parallel: int = Field(1, description="requests decoded together (continuous batching)")
    has_chat_template: bool
    system_message: Literal["template", "fold"] = Field(
        "template", description='"fold" when a leading system message is folded into the '
        "first user turn before the chat template renders (load(system_message=...))")
    pooling: str | None = Field(
        None, description="mean, cls or last for an embedding model (embed()); None for a "
                          "generative one")
    tool_format: str = Field(
        "localllm", description="how the model writes tool calls: its family's own format, "
        "detected from the chat template (hermes, llama-3, mistral-nemo, ...) or named with "
        "load(tool_format=...); 'localllm' for templates without one")
    plan: Any = Field(None, description="the LoadPlan load() executed (None for FakeModel)")
    isolation: str = Field("none", description='"process" when the runtime runs in a worker '
                           "process (a crash there raises BackendCrashedError)")
    projector: str | None = Field(
        None, description="the vision projector (mmproj GGUF) the model reads images with; "
                          "None: it reads text only")
    image_tokens: int | None = Field(
        None, description="prompt tokens one image takes (with a projector)")
    speculative: str | None = Field(
        None, description="speculative decoding by default ('ngram' or 'draft'), or None")
    draft: str | None = Field(
        None, description="the draft model's name (speculative='draft'), if loaded with one")
