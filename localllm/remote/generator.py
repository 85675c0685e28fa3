"""The remote generator: a model served by an OpenAI-compatible or Ollama server, under
the same ``Model`` as a local file.

Requests are checked against the server's capability table before they are sent (see
``_remote``): what the server would drop is an ``UnsupportedFeatureError`` here. The body
is built and the reply decoded by the API's codec in ``protocols``; stop strings are
applied by ``Model``'s assembler, so they hold whatever the server does with them, and
leaving a stream early closes its HTTP response, which stops the generation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, ModelClosedError, ModelNotFoundError, UnsupportedFeatureError
from .._types import Capabilities, DevicePlacement, ModelInfo, ModelStats, Usage
from ..core.model import Model
from ..core.request import Ending, GenerationRequest, Piece
from ..decoding.structured import CompiledFormat, strict_schema
from ..protocols import anthropic as anthropic_wire
from ..protocols import ollama as ollama_wire
from ..protocols import openai as openai_wire
from ..protocols import responses as responses_wire
from .transport import (
    RemoteCapabilities,
    RetryPolicy,
    StreamBroken,
    Transport,
    capabilities_for,
    probe_flavour,
)

if TYPE_CHECKING:
    from ..decoding.tools import ToolSetup

Messages = Sequence[Any]
Decoder = (openai_wire.Decoder | ollama_wire.Decoder | anthropic_wire.Decoder
           | responses_wire.Decoder)
APIS = ("auto", "openai", "ollama", "anthropic", "responses")


def split_source(source: str) -> tuple[str, str]:
    """``"http://host:port[/v1]#model"`` → (URL, model): the documented source form."""
    url, _, model = source.partition("#")
    if not model:
        raise ConfigError(f"{source!r} names no model; write URL#MODEL, e.g. "
                          "'http://127.0.0.1:11434#qwen2.5:0.5b', or pass model=")
    return url, model


@dataclass(frozen=True)
class RemoteServer:
    """Where a remote model runs: ``Model.server``."""

    url: str
    #: the server's kind, probed at connect time: localllm, llama-server, ollama, vllm...
    flavour: str
    #: the API spoken: "openai" (``/v1`` chat completions), "ollama" (``/api``) or
    #: "anthropic" (``/v1/messages``) or "responses" (``/v1/responses``)
    api: str
    #: what the server honours (``localllm.remote.transport.FLAVOURS``, with any overrides)
    capabilities: RemoteCapabilities


def _capabilities(flavour: str, api: str, overrides: Mapping[str, Any] | None
                  ) -> RemoteCapabilities:
    """The capability row for ``api`` on a server of ``flavour``: Ollama's, Anthropic's and
    the Responses API have rows of their own (the last two keep the flavour's tokenizer
    route)."""
    name = api if api in ("ollama", "anthropic", "responses") else flavour
    caps = capabilities_for(name, overrides)
    if api in ("anthropic", "responses") and "tokenize" not in (overrides or {}):
        caps = dataclasses.replace(caps, tokenize=capabilities_for(flavour, None).tokenize)
    return caps


class RemoteGenerator:
    """Generation on a server, for :func:`connect` and ``load("URL#MODEL")``."""

    def __init__(self, url: str, model: str, *, api: str = "auto", api_key: str | None = None,
                 timeout: float = 120.0, retries: int = 4,
                 capabilities: Mapping[str, Any] | None = None) -> None:
        if api not in APIS:
            raise ConfigError(f"api={api!r} is not one of {', '.join(APIS)}")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must be an http(s) URL, not {url!r}")
        if not isinstance(model, str) or not model:
            raise ConfigError("model must be the server's name for the model")
        if not isinstance(retries, int) or retries < 1:
            raise ConfigError(f"retries must be an int >= 1 (tries in all), not {retries!r}")
        root = url.rstrip("/").removesuffix("/v1")
        self.transport = Transport(root, api_key=api_key or os.environ.get("LOCALLLM_API_KEY"),
                                   timeout=timeout, retry=RetryPolicy(tries=retries))
        flavour = probe_flavour(self.transport)
        chosen = ("ollama" if flavour == "ollama" else "openai") if api == "auto" else api
        self.server = RemoteServer(root, flavour, chosen, _capabilities(flavour, chosen,
                                                                         capabilities))
        self.whole_tries = retries
        self.where = f"remote {flavour} ({chosen} API)"
        self._check_model(model)
        self._closed = False
        self.info = ModelInfo(
            path=f"{root}#{model}", name=model, format="remote", architecture=flavour,
            parameter_count=0, quantization="", file_size=0, vocab_size=0,
            trained_context_length=0, context_length=0, backend=f"remote-{chosen}",
            backend_version=flavour, threads=0, batch_size=0,
            placement=DevicePlacement(device="remote"), has_chat_template=True)
        self.tokenizer = _RemoteTokenizer(self)

    def _check_model(self, model: str) -> None:
        ollama = self.server.api == "ollama"
        status, listing = self.transport.get_json("/api/tags" if ollama else "/v1/models")
        if status != 200 or not isinstance(listing, dict):
            return  # a server without a listing: the first request says whether it exists
        entries = listing.get("models" if ollama else "data") or []
        names = {str(e.get("name") or e.get("model") or e.get("id")) for e in entries
                 if isinstance(e, dict)}
        if names and model not in names:
            raise ModelNotFoundError(f"{self.server.url} serves no model {model!r}; it "
                                     f"serves {', '.join(sorted(names))}")

    # ------------------------------------------------------------------ facts
    @property
    def capabilities(self) -> Capabilities:
        caps = self.server.capabilities
        return Capabilities(streaming=True, logits=False, embeddings=caps.embeddings,
                            sampling_params=caps.sampling | {"max_tokens"})

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self.transport.close()

    def describe(self) -> str:
        return f"{self.server.flavour} at {self.server.url}" + (
            ", closed" if self._closed else "")

    @property
    def stats(self) -> ModelStats:
        raise UnsupportedFeatureError(self.where, "Model.stats",
                                      "the server keeps its own queue; see its metrics")

    def clear_cache(self) -> None:
        raise UnsupportedFeatureError(self.where, "clear_cache()",
                                      "the server keeps its own prompt cache")

    def render_chat(self, messages: Messages, add_generation_prompt: bool,
                    tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> str:
        raise UnsupportedFeatureError(self.where, "render_chat()",
                                      "the server applies its own chat template")

    def local_tokenizer(self) -> Any:
        raise UnsupportedFeatureError(self.where, "a localllm tokenizer",
                                      "the model's files are on the server")

    def retry_wait(self, attempt: int, exc: Exception) -> float | None:
        """A stream that broke before its end is worth another try: nothing of it reached
        the caller of a whole answer."""
        return self.transport.retry.wait(attempt, None) if isinstance(exc, StreamBroken) \
            else None

    # ------------------------------------------------------------------ generation
    def prepare(self, request: GenerationRequest) -> RemoteRun:
        """Check everything against the capability table, then build the request body."""
        if self._closed:
            raise ModelClosedError(f"{self.info.name!r} was closed")
        caps, where = self.server.capabilities, self.where
        for name, value, default in (("overflow", request.overflow, "error"),
                                     ("sampler", request.sampler, "auto"),
                                     ("logits_processors", request.processors, ())):
            if value != default:
                raise UnsupportedFeatureError(where, f"{name}={value!r}",
                                              "the server tokenizes and samples itself")
        if request.speculative not in ("default", None):
            raise UnsupportedFeatureError(where, "speculative=",
                                          "the server decides how it decodes")
        if request.context_limit is not None or request.clamp_to_context:
            raise UnsupportedFeatureError(where, "a per-request context window",
                                          "the server sizes its own context")
        if (request.think is not None or request.reasoning_budget is not None) \
                and not caps.think:
            raise UnsupportedFeatureError(where, "think= and reasoning_budget=",
                                          "this server would not switch the thinking; "
                                          "capabilities={'think': True} if it does")
        if request.tools and not request.parallel_tool_calls and \
                self.server.api not in ("openai", "responses", "anthropic"):
            raise UnsupportedFeatureError(where, "parallel_tool_calls=False",
                                          "this API has no way to ask for one call")
        if request.tools and request.max_tool_calls is not None and not (
                self.server.api == "responses" or (self.server.api == "openai"
                                                   and self.server.flavour == "localllm")):
            raise UnsupportedFeatureError(where, "max_tool_calls",
                                          "only the Responses API and localllm's own "
                                          "server bound the calls; others would ignore it")
        for name in sorted(request.given):
            if name not in caps.sampling and name not in ("max_tokens", "stop"):
                raise UnsupportedFeatureError(
                    where, f"the sampling parameter {name!r}",
                    f"this server would ignore it silently; it honours: "
                    f"{', '.join(sorted(caps.sampling | {'max_tokens', 'stop'}))}")
        if request.logprobs is not None and not caps.logprobs:
            raise UnsupportedFeatureError(where, "logprobs")
        if request.tool_choice not in (None, "auto", "none") and not caps.tool_choice_forced:
            raise UnsupportedFeatureError(where, f"tool_choice={request.tool_choice!r}",
                                          "only 'auto' and 'none' are honoured there")
        if request.tools and not (request.chat and caps.tools):
            raise UnsupportedFeatureError(where, "tools" + ("" if request.chat
                                                            else " with complete()"))
        fmt, wire_format = _response_format(request.response_format, caps, where)
        name = self.info.name
        decoder: Decoder
        if self.server.api == "ollama":
            path, body, streamed = ollama_wire.client_body(request, name, wire_format)
            decoder = ollama_wire.Decoder(request.chat)
        elif self.server.api == "anthropic":
            path, body, streamed = anthropic_wire.client_body(request, name)
            decoder = anthropic_wire.Decoder(request.chat)
        elif self.server.api == "responses":
            path, body, streamed = responses_wire.client_body(request, name, wire_format)
            decoder = responses_wire.Decoder(request.chat)
        else:
            path, body, streamed = openai_wire.client_body(
                request, name, max_completion_tokens=caps.max_completion_tokens,
                stream_usage=caps.stream_usage, wire_format=wire_format)
            decoder = openai_wire.Decoder(request.chat)
        return RemoteRun(self.transport, path, body, streamed, decoder, fmt, request)

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: str | Sequence[str], normalize: bool, overflow: str) -> Any:
        """Vectors from the server's /v1/embeddings or /api/embed; see ``Model.embed``."""
        from ..core.embed import Embeddings, normalized

        if overflow != "error":
            raise UnsupportedFeatureError(self.where, f"overflow={overflow!r}",
                                          "servers cut or refuse long inputs their own way")
        batch = [texts] if isinstance(texts, str) else list(texts)
        if self.server.api == "ollama":
            reply = self.transport.post("/api/embed", {"model": self.info.name, "input": batch,
                                                "truncate": False})
            rows, n = reply.get("embeddings", []), int(reply.get("prompt_eval_count") or 0)
        else:
            reply = self.transport.post("/v1/embeddings", {"model": self.info.name, "input": batch,
                                                    "encoding_format": "float"})
            rows = [d["embedding"] for d in sorted(reply["data"], key=lambda d: d["index"])]
            n = int((reply.get("usage") or {}).get("prompt_tokens") or 0)
        vectors = normalized(rows, normalize)
        return Embeddings(vectors=vectors, usage=Usage(prompt_tokens=n, completion_tokens=0,
                                                       total_tokens=n),
                          pooling="server", normalized=normalize)

    # ------------------------------------------------------------------ tokens
    def count_tokens(self, text_or_messages: str | Messages,
                     tools: Sequence[Mapping[str, Any]] | None = None,
                     tool_choice: Any = None) -> int:
        if not isinstance(text_or_messages, str):
            raise UnsupportedFeatureError(self.where, "counting chat tokens",
                                          "the server applies its own chat template")
        return len(self.tokenizer.encode(text_or_messages, add_special=False))


class RemoteRun:
    """One request on a server: its HTTP response opened when its pieces are first asked
    for, and closed (which stops the server's generation) when they stop."""

    parse_tools: ToolSetup | None = None  # the server parses calls; its pieces carry them

    def __init__(self, transport: Transport, path: str, body: dict[str, Any], streamed: bool,
                 decoder: Decoder, fmt: CompiledFormat | None,
                 request: GenerationRequest) -> None:
        self.transport, self.path, self.body, self.streamed = transport, path, body, streamed
        self.decoder = decoder
        self.format: Any = fmt
        self.wants_logprobs = request.logprobs is not None
        self.thinking: Any = None  # a server splits thinking itself
        self.thinking_opened = False
        self.reasoning_asked = request.think is not None or \
            request.reasoning_budget is not None
        self.seed = request.sampling.seed
        self.timeout = request.timeout
        self.cancelled = False

    def pieces(self) -> Iterator[Piece]:
        t = self.transport
        with t.stream_post(self.path, self.body, stream=self.streamed,
                           timeout=self.timeout) as response:
            if not self.streamed:
                yield from self.decoder.feed_whole(response.json())
            else:
                try:
                    for line in response.iter_lines():
                        yield from self.decoder.feed_line(line)
                        if self.cancelled:
                            return
                except t.transport_errors as exc:
                    raise t.broken(exc) from exc
        self._check_ended()

    async def apieces(self) -> AsyncIterator[Piece]:
        t = self.transport
        async with t.astream_post(self.path, self.body, stream=self.streamed,
                                  timeout=self.timeout) as response:
            if not self.streamed:
                for piece in self.decoder.feed_whole(response.json()):
                    yield piece
            else:
                try:
                    async for line in response.aiter_lines():
                        for piece in self.decoder.feed_line(line):
                            yield piece
                        if self.cancelled:
                            return
                except t.transport_errors as exc:
                    raise t.broken(exc) from exc
        self._check_ended()

    def _check_ended(self) -> None:
        if not (self.decoder.ended or self.decoder.finish):
            raise StreamBroken("the server's stream ended before the answer did (no "
                               "finish reason, no [DONE]); the server or a proxy failed")

    def cancel(self) -> None:
        self.cancelled = True

    def ending(self) -> Ending:
        finish = self.decoder.finish
        n_prompt, n_gen = self.decoder.usage
        return Ending(finish=finish if finish in ("stop", "length", "tool_calls")  # type: ignore[arg-type]
                      else ("stop" if finish else None),
                      prompt_tokens=n_prompt, completion_tokens=n_gen,
                      seed=self.seed if self.seed is not None else -1,
                      reasoning_tokens=self.decoder.reasoning_tokens)


class _RemoteTokenizer:
    """The server's tokenizer through its /tokenize and /detokenize routes."""

    def __init__(self, generator: RemoteGenerator) -> None:
        self._generator = generator

    def _shape(self) -> str:
        shape = self._generator.server.capabilities.tokenize
        if not shape:
            raise UnsupportedFeatureError(self._generator.where, "tokenization",
                                          "this server has no /tokenize route")
        return shape

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True
               ) -> list[int]:
        shape, t, name = self._shape(), self._generator.transport, self._generator.info.name
        if shape == "vllm":
            reply = t.post("/tokenize", {"model": name, "prompt": text,
                                         "add_special_tokens": add_special})
        elif shape == "lcp":
            reply = t.post("/extras/tokenize", {"model": name, "input": text})
        else:
            reply = t.post("/tokenize", {"model": name, "content": text,
                                         "add_special": add_special})
        return [int(x) for x in reply["tokens"]]

    def decode(self, ids: Sequence[int]) -> str:
        shape, t, name = self._shape(), self._generator.transport, self._generator.info.name
        if shape == "vllm":
            return str(t.post("/detokenize", {"model": name, "tokens": list(ids)})["prompt"])
        if shape == "lcp":
            return str(t.post("/extras/detokenize", {"model": name, "tokens": list(ids)})
                       ["text"])
        return str(t.post("/detokenize", {"model": name, "tokens": list(ids)})["content"])


def _response_format(response_format: Any, caps: RemoteCapabilities, where: str
                     ) -> tuple[CompiledFormat | None, dict[str, Any] | None]:
    """(how .parsed reads the answer, the wire form) of a response_format."""
    if response_format is None:
        return None, None
    model = None
    if isinstance(response_format, type) and hasattr(response_format, "model_json_schema"):
        model = response_format
        response_format = {"type": "json_schema", "json_schema": {
            "name": model.__name__, "strict": True,
            "schema": strict_schema(model.model_json_schema())}}
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_schema" and caps.json_schema:
        return CompiledFormat((), "json", model), dict(response_format)
    if kind == "json_object" and caps.json_object:
        return CompiledFormat((), "json"), {"type": "json_object"}
    raise UnsupportedFeatureError(where, f"response_format {kind or response_format!r}",
                                  "the server would not enforce it")


#: Deprecated: remote models are :class:`~localllm.Model`s now (``Model.server`` says
#: where one runs). The name stays for code that imports it or checks ``isinstance``.
RemoteModel = Model


def connect(url: str, model: str, *, api: str = "auto", api_key: str | None = None,
            timeout: float = 120.0, retries: int = 4,
            capabilities: Mapping[str, Any] | None = None) -> Model:
    """A model on a server (localllm serve, llama-server, llama-cpp-python's server, Ollama,
    vLLM, LM Studio or any OpenAI-compatible one) with ``Model``'s API.

    ``api`` is "openai" (``/v1``), "ollama" (the native ``/api``, which carries the options
    ``/v1`` drops), "anthropic" (Anthropic's Messages API, ``/v1/messages``), "responses"
    (OpenAI's Responses API, ``/v1/responses``, stateless: the client sends the history) or
    "auto"
    (Ollama's API on Ollama, else ``/v1``). The server's flavour is
    probed here and sets what it honours (``Model.server``); ``capabilities``
    overrides entries of that table. ``api_key`` defaults to ``$LOCALLLM_API_KEY``.
    ``timeout`` is seconds per request; 429/503 (and a proxy's 502/504) are retried
    ``retries`` times in all, honouring Retry-After."""
    return Model(RemoteGenerator(url, model, api=api, api_key=api_key, timeout=timeout,
                                 retries=retries, capabilities=capabilities))
