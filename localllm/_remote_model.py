"""``RemoteModel``: a model served by an OpenAI-compatible or Ollama server, with ``Model``'s
API (complete, stream, chat, stream_chat, their async twins, embed, count_tokens).

Requests are checked against the server's capability table before they are sent (see
``_remote``): what the server would drop is an ``UnsupportedFeatureError`` here. Stop
strings are also applied on the client, so they hold whatever the server does with them,
and leaving a stream early closes its HTTP response, which stops the generation.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from ._chat import normalize_messages
from ._errors import (
    ConfigError,
    ModelNotFoundError,
    UnsupportedFeatureError,
)
from ._model import _acollect, _collect
from ._remote import (
    RemoteCapabilities,
    RetryPolicy,
    StreamBroken,
    Transport,
    capabilities_for,
    probe_flavour,
)
from ._structured import CompiledFormat, strict_schema
from ._text import StopMatcher
from ._types import (
    Capabilities,
    Completion,
    DevicePlacement,
    ModelInfo,
    SamplingParams,
    StreamChunk,
    Timings,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .protocols import ollama as ollama_wire
from .protocols import openai as openai_wire

Messages = Sequence[Any]
APIS = ("auto", "openai", "ollama")


def split_source(source: str) -> tuple[str, str]:
    """``"http://host:port[/v1]#model"`` → (URL, model): the documented source form."""
    url, _, model = source.partition("#")
    if not model:
        raise ConfigError(f"{source!r} names no model; write URL#MODEL, e.g. "
                          "'http://127.0.0.1:11434#qwen2.5:0.5b', or pass model=")
    return url, model


class RemoteModel:
    """A model on a server. Build it with :func:`localllm.connect` (or ``load()`` with a
    ``URL#MODEL`` source and ``backend="openai"``, ``"ollama"`` or ``"auto"``)."""

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
        self._t = Transport(root, api_key=api_key or os.environ.get("LOCALLLM_API_KEY"),
                            timeout=timeout, retry=RetryPolicy(tries=retries))
        self.flavour = probe_flavour(self._t)
        self.api = ("ollama" if self.flavour == "ollama" else "openai") if api == "auto" \
            else api
        self.remote: RemoteCapabilities = capabilities_for(
            "ollama" if self.api == "ollama" else self.flavour, capabilities)
        self._check_model(model)
        self._closed = False
        self._info = ModelInfo(
            path=f"{root}#{model}", name=model, format="remote", architecture=self.flavour,
            parameter_count=0, quantization="", file_size=0, vocab_size=0,
            trained_context_length=0, context_length=0, backend=f"remote-{self.api}",
            backend_version=self.flavour, threads=0, batch_size=0,
            placement=DevicePlacement(device="remote"), has_chat_template=True)
        self.tokenizer = _RemoteTokenizer(self)

    def _check_model(self, model: str) -> None:
        path = "/api/tags" if self.api == "ollama" else "/v1/models"
        status, listing = self._t.get_json(path)
        if status != 200 or not isinstance(listing, dict):
            return  # a server without a listing: the first request says whether it exists
        entries = listing.get("models" if self.api == "ollama" else "data") or []
        names = {str(e.get("name") or e.get("model") or e.get("id")) for e in entries
                 if isinstance(e, dict)}
        if names and model not in names:
            raise ModelNotFoundError(f"{self._t.root} serves no model {model!r}; it serves "
                                     f"{', '.join(sorted(names))}")

    # ------------------------------------------------------------------ facts
    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(streaming=True, logits=False, embeddings=self.remote.embeddings,
                            sampling_params=self.remote.sampling | {"max_tokens"})

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        self._t.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<localllm.RemoteModel {self._info.name!r} at {self._t.root} ({self.flavour})>"

    # ------------------------------------------------------------------ generation
    def complete(self, prompt: str, **options: Any) -> Completion:
        return self._whole(lambda: _collect(self.stream(prompt, **options)))

    def chat(self, messages: Messages, **options: Any) -> Completion:
        return self._whole(lambda: _collect(self.stream_chat(messages, **options)))

    def _whole(self, run: Callable[[], Completion]) -> Completion:
        """A whole answer; a stream that broke mid-way (a replica died behind a proxy) is
        sent again, since nothing of it reached the caller yet."""
        for attempt in range(self._t.retry.tries):
            try:
                return run()
            except StreamBroken:
                if attempt + 1 == self._t.retry.tries:
                    raise
                time.sleep(self._t.retry.wait(attempt, None))
        raise AssertionError("unreachable")

    async def _awhole(self, run: Callable[[], Awaitable[Completion]]) -> Completion:
        for attempt in range(self._t.retry.tries):
            try:
                return await run()
            except StreamBroken:
                if attempt + 1 == self._t.retry.tries:
                    raise
                await asyncio.sleep(self._t.retry.wait(attempt, None))
        raise AssertionError("unreachable")

    def stream(self, prompt: str, **options: Any) -> Iterator[StreamChunk]:
        return self._sync(self._request(prompt, False, options))

    def stream_chat(self, messages: Messages, **options: Any) -> Iterator[StreamChunk]:
        return self._sync(self._request(messages, True, options))

    async def acomplete(self, prompt: str, **options: Any) -> Completion:
        return await self._awhole(lambda: _acollect(self.astream(prompt, **options)))

    async def achat(self, messages: Messages, **options: Any) -> Completion:
        return await self._awhole(lambda: _acollect(self.astream_chat(messages, **options)))

    def astream(self, prompt: str, **options: Any) -> AsyncIterator[StreamChunk]:
        return self._async(self._request(prompt, False, options))

    def astream_chat(self, messages: Messages, **options: Any) -> AsyncIterator[StreamChunk]:
        return self._async(self._request(messages, True, options))

    def _sync(self, request: _Request) -> Iterator[StreamChunk]:
        assembler = _Assembler(request)
        with self._t.stream_post(request.path, request.body, stream=request.streamed,
                                 timeout=request.timeout) as response:
            if not request.streamed:
                yield from assembler.feed_whole(response.json())
            else:
                try:
                    for line in response.iter_lines():
                        yield from assembler.feed_line(line)
                        if assembler.over:
                            break  # leaving the block closes the response: the server stops
                except self._t.transport_errors as exc:
                    raise self._t.broken(exc) from exc
        yield assembler.final()

    async def _async(self, request: _Request) -> AsyncIterator[StreamChunk]:
        assembler = _Assembler(request)
        async with self._t.astream_post(request.path, request.body, stream=request.streamed,
                                        timeout=request.timeout) as response:
            if not request.streamed:
                for chunk in assembler.feed_whole(response.json()):
                    yield chunk
            else:
                try:
                    async for line in response.aiter_lines():
                        for chunk in assembler.feed_line(line):
                            yield chunk
                        if assembler.over:
                            break
                except self._t.transport_errors as exc:
                    raise self._t.broken(exc) from exc
        yield assembler.final()

    def _request(self, prompt: Any, chat: bool, options: dict[str, Any]) -> _Request:
        """Check everything against the capability table, then build the request body."""
        if self._closed:
            from ._errors import ModelClosedError

            raise ModelClosedError(f"{self._info.name!r} was closed")
        caps, where = self.remote, f"remote {self.flavour} ({self.api} API)"
        for name, value, default in (("overflow", options.pop("overflow", "error"), "error"),
                                     ("sampler", options.pop("sampler", "auto"), "auto"),
                                     ("logits_processors",
                                      tuple(options.pop("logits_processors", ())), ())):
            if value != default:
                raise UnsupportedFeatureError(where, f"{name}={value!r}",
                                              "the server tokenizes and samples itself")
        response_format = options.pop("response_format", None)
        logprobs = options.pop("logprobs", None)
        tools = options.pop("tools", None)
        tool_choice = options.pop("tool_choice", None)
        timeout = options.pop("timeout", None)
        sampling = SamplingParams.from_options(options)
        for name in sorted(options):
            if name not in caps.sampling and name not in ("max_tokens", "stop"):
                raise UnsupportedFeatureError(
                    where, f"the sampling parameter {name!r}",
                    f"this server would ignore it silently; it honours: "
                    f"{', '.join(sorted(caps.sampling | {'max_tokens', 'stop'}))}")
        if logprobs is not None and not caps.logprobs:
            raise UnsupportedFeatureError(where, "logprobs")
        if tool_choice not in (None, "auto", "none") and not caps.tool_choice_forced:
            raise UnsupportedFeatureError(where, f"tool_choice={tool_choice!r}",
                                          "only 'auto' and 'none' are honoured there")
        if tools and not (chat and caps.tools):
            raise UnsupportedFeatureError(where, "tools" + ("" if chat else " with complete()"))
        fmt, wire_format = _response_format(response_format, caps, where)
        stops = tuple(sampling.stop)
        sent = {name: getattr(sampling, name) for name in options if name != "max_tokens"}
        request = _Request(chat=chat, ollama=self.api == "ollama", stops=stops, fmt=fmt,
                           seed=sampling.seed, timeout=timeout)
        if self.api == "ollama":
            request.path = "/api/chat" if chat else "/api/generate"
            opts = {ollama_wire.OPTION_NAMES[k]: v for k, v in sent.items()}
            opts["num_predict"] = sampling.max_tokens if sampling.max_tokens is not None else -1
            body: dict[str, Any] = {"model": self._info.name, "stream": True, "options": opts}
            if wire_format is not None:
                body["format"] = "json" if wire_format["type"] == "json_object" else \
                    wire_format["json_schema"]["schema"]
        else:
            request.path = "/v1/chat/completions" if chat else "/v1/completions"
            body = {"model": self._info.name, "stream": True, **sent}
            if sampling.logit_bias:
                body["logit_bias"] = {str(k): v for k, v in sampling.logit_bias.items()}
            if sampling.max_tokens is not None:
                body["max_completion_tokens" if caps.max_completion_tokens and chat
                     else "max_tokens"] = sampling.max_tokens
            if caps.stream_usage:
                body["stream_options"] = {"include_usage": True}
            if wire_format is not None:
                body["response_format"] = wire_format
            if logprobs is not None:
                body.update({"logprobs": True, "top_logprobs": logprobs} if chat
                            else {"logprobs": logprobs})
                if not chat:  # legacy-shaped logprobs are not streamed by every server
                    body["stream"] = request.streamed = False
                    body.pop("stream_options", None)
        if chat:
            encode = ollama_wire.message if request.ollama else openai_wire.message
            body["messages"] = [encode(m) for m in normalize_messages(prompt)]
            if tools:
                body["tools"] = list(tools)
            if tool_choice is not None and not request.ollama:
                body["tool_choice"] = tool_choice
        else:
            if not isinstance(prompt, str):
                raise ConfigError(f"prompt must be a str, not {type(prompt).__name__}")
            body["prompt"] = prompt
            if request.ollama:
                body["raw"] = True  # a plain continuation, as complete() is locally
        request.body = body
        return request

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: str | Sequence[str], *, normalize: bool = True,
              overflow: str = "error") -> Any:
        """Vectors from the server's /v1/embeddings or /api/embed; see ``Model.embed``."""
        from ._embed import Embeddings, normalized

        if overflow != "error":
            raise UnsupportedFeatureError(f"remote {self.flavour}", f"overflow={overflow!r}",
                                          "servers cut or refuse long inputs their own way")
        batch = [texts] if isinstance(texts, str) else list(texts)
        if self.api == "ollama":
            reply = self._t.post("/api/embed", {"model": self._info.name, "input": batch,
                                                "truncate": False})
            rows, n = reply.get("embeddings", []), int(reply.get("prompt_eval_count") or 0)
        else:
            reply = self._t.post("/v1/embeddings", {"model": self._info.name, "input": batch,
                                                    "encoding_format": "float"})
            rows = [d["embedding"] for d in sorted(reply["data"], key=lambda d: d["index"])]
            n = int((reply.get("usage") or {}).get("prompt_tokens") or 0)
        vectors = normalized(rows, normalize)
        return Embeddings(vectors=vectors, usage=Usage(prompt_tokens=n, completion_tokens=0,
                                                       total_tokens=n),
                          pooling="server", normalized=normalize)

    async def aembed(self, texts: str | Sequence[str], *, normalize: bool = True,
                     overflow: str = "error") -> Any:
        return await asyncio.to_thread(self.embed, texts, normalize=normalize,
                                       overflow=overflow)

    # ------------------------------------------------------------------ tokens
    def count_tokens(self, text_or_messages: str | Messages) -> int:
        if not isinstance(text_or_messages, str):
            raise UnsupportedFeatureError(f"remote {self.flavour}", "counting chat tokens",
                                          "the server applies its own chat template")
        return len(self.tokenizer.encode(text_or_messages, add_special=False))


class _RemoteTokenizer:
    """The server's tokenizer through its /tokenize and /detokenize routes."""

    def __init__(self, model: RemoteModel) -> None:
        self._model = model

    def _shape(self) -> str:
        shape = self._model.remote.tokenize
        if not shape:
            raise UnsupportedFeatureError(f"remote {self._model.flavour}", "tokenization",
                                          "this server has no /tokenize route")
        return shape

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True
               ) -> list[int]:
        shape, t, name = self._shape(), self._model._t, self._model.info.name
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
        shape, t, name = self._shape(), self._model._t, self._model.info.name
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


class _Request:
    def __init__(self, *, chat: bool, ollama: bool, stops: tuple[str, ...],
                 fmt: CompiledFormat | None, seed: int | None, timeout: float | None) -> None:
        self.chat, self.ollama, self.stops, self.fmt = chat, ollama, stops, fmt
        self.seed, self.timeout = seed, timeout
        self.streamed = True
        self.path = ""
        self.body: dict[str, Any] = {}


class _Assembler:
    """Server events (SSE ``data:`` lines or Ollama's NDJSON) → StreamChunks and the final
    Completion; stop strings are cut here too."""

    def __init__(self, request: _Request) -> None:
        self.request = request
        self.stop = StopMatcher(request.stops)
        self.text: list[str] = []
        self.finish: str | None = None
        self.usage = (0, 0)
        self.calls: dict[int, dict[str, str]] = {}
        self.logprobs: list[TokenLogprob] = []
        self.started = time.perf_counter()
        self.first: float | None = None
        self.over = False  # the client cut the answer (a stop string): stop reading
        self.ended = False  # the server said the answer is complete

    def feed_line(self, line: str) -> list[StreamChunk]:
        if self.request.ollama:
            return self._ollama(json.loads(line)) if line.strip() else []
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.ended = True
            return []
        event = json.loads(data)
        if isinstance(event.get("error"), (dict, str)):
            from ._errors import RemoteError

            raise RemoteError(f"the server failed mid-stream: {event['error']}")
        if event.get("usage"):
            u = event["usage"]
            self.usage = (int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        out = []
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content") if self.request.chat else choice.get("text")
            calls = tuple(self._call_delta(c) for c in delta.get("tool_calls") or [])
            logprobs = openai_wire.decode_logprobs(choice.get("logprobs"))
            chunk = self._chunk(text or "", calls, logprobs)
            if choice.get("finish_reason"):
                self.finish = str(choice["finish_reason"])
            if chunk is not None:
                out.append(chunk)
        return out

    def feed_whole(self, reply: dict[str, Any]) -> list[StreamChunk]:
        """A non-streamed /v1 reply, as one event."""
        if reply.get("usage"):
            u = reply["usage"]
            self.usage = (int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
        out = []
        for choice in (reply.get("choices") or [])[:1]:
            message = choice.get("message") or {}
            text = message.get("content") if self.request.chat else choice.get("text")
            calls = tuple(self._call_delta({**c, "index": i})
                          for i, c in enumerate(message.get("tool_calls") or []))
            logprobs = openai_wire.decode_logprobs(choice.get("logprobs"))
            chunk = self._chunk(text or "", calls, logprobs)
            self.finish, self.ended = str(choice.get("finish_reason") or "stop"), True
            if chunk is not None:
                out.append(chunk)
        return out

    def _ollama(self, event: dict[str, Any]) -> list[StreamChunk]:
        if "error" in event:
            from ._errors import RemoteError

            raise RemoteError(f"the server failed mid-stream: {event['error']}")
        message = event.get("message") or {}
        text = message.get("content", "") if self.request.chat else event.get("response", "")
        calls = [self._call_delta(piece)
                 for piece in ollama_wire.call_pieces(message, len(self.calls))]
        if event.get("done"):
            self.ended = True
            self.finish = "tool_calls" if self.calls else str(event.get("done_reason") or
                                                               "stop")
            self.usage = (int(event.get("prompt_eval_count") or 0),
                          int(event.get("eval_count") or 0))
        chunk = self._chunk(text or "", tuple(calls), ())
        return [chunk] if chunk is not None else []

    def _call_delta(self, call: Mapping[str, Any]) -> ToolCallDelta:
        index = int(call.get("index", 0))
        fn = call.get("function") or {}
        state = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        state["id"] = state["id"] or str(call.get("id") or "")
        state["name"] += str(fn.get("name") or "")
        state["arguments"] += str(fn.get("arguments") or "")
        return ToolCallDelta(index=index, id=call.get("id"), name=fn.get("name"),
                             arguments=str(fn.get("arguments") or ""))

    def _chunk(self, text: str, calls: tuple[ToolCallDelta, ...],
               logprobs: tuple[TokenLogprob, ...]) -> StreamChunk | None:
        if self.over:
            return None
        safe = self.stop.feed(text) if text else ""
        if self.stop.matched is not None:
            self.over, self.finish = True, "stop"
        if text and self.first is None:
            self.first = time.perf_counter()
        self.logprobs.extend(logprobs)
        if not safe and not calls and not logprobs:
            return None
        self.text.append(safe)
        # built without re-validation: the fields are already the right types (hot path)
        return StreamChunk.model_construct(text=safe, token_ids=(), finish_reason=None,
                                           completion=None, tool_calls=calls,
                                           logprobs=logprobs)

    def final(self) -> StreamChunk:
        if not (self.ended or self.over or self.finish):
            raise StreamBroken("the server's stream ended before the answer did (no "
                               "finish reason, no [DONE]); the server or a proxy failed")
        tail = "" if self.stop.matched is not None else self.stop.flush()
        self.text.append(tail)
        end = time.perf_counter()
        first = self.first or end
        n_prompt, n_gen = self.usage
        reason = self.finish if self.finish in ("stop", "length", "tool_calls") else "stop"
        calls = tuple(ToolCall(id=c["id"] or f"call_{i}", name=c["name"],
                               arguments=c["arguments"] or "{}")
                      for i, c in sorted(self.calls.items()))
        completion = Completion(
            text="".join(self.text), token_ids=(), finish_reason=reason,  # type: ignore[arg-type]
            stop_sequence=self.stop.matched,
            seed=self.request.seed if self.request.seed is not None else -1,
            usage=Usage(prompt_tokens=n_prompt, completion_tokens=n_gen,
                        total_tokens=n_prompt + n_gen),
            timings=Timings(load_s=0.0, time_to_first_token_s=first - self.started,
                            prompt_s=first - self.started, generation_s=end - first,
                            prompt_tokens_per_s=0.0,
                            generation_tokens_per_s=(n_gen - 1) / (end - first)
                            if n_gen > 1 and end > first else 0.0),
            tool_calls=calls, logprobs=tuple(self.logprobs) or None)
        if self.request.fmt is not None:
            completion._format = self.request.fmt
            completion._complete = reason == "stop" and self.stop.matched is None
        return StreamChunk(text=tail, finish_reason=reason,  # type: ignore[arg-type]
                           completion=completion)


def connect(url: str, model: str, *, api: str = "auto", api_key: str | None = None,
            timeout: float = 120.0, retries: int = 4,
            capabilities: Mapping[str, Any] | None = None) -> RemoteModel:
    """A model on a server (localllm serve, llama-server, llama-cpp-python's server, Ollama,
    vLLM, LM Studio or any OpenAI-compatible one) with ``Model``'s API.

    ``api`` is "openai" (``/v1``), "ollama" (the native ``/api``, which carries the options
    ``/v1`` drops) or "auto" (Ollama's API on Ollama, else ``/v1``). The server's flavour is
    probed here and sets what it honours (``RemoteModel.remote``); ``capabilities``
    overrides entries of that table. ``api_key`` defaults to ``$LOCALLLM_API_KEY``.
    ``timeout`` is seconds per request; 429/503 (and a proxy's 502/504) are retried
    ``retries`` times in all, honouring Retry-After."""
    return RemoteModel(url, model, api=api, api_key=api_key, timeout=timeout, retries=retries,
                       capabilities=capabilities)
