"""Talking to a model server: HTTP with retries, typed errors, and what each server honours.

The capability table is the point. OpenAI-compatible servers accept fields they then drop
(``n`` on llama-cpp-python's server, ``logit_bias`` on Ollama's /v1, ``max_completion_tokens``
on several); a remote ``Model`` refuses such a field on the client side with
``UnsupportedFeatureError`` instead. The flavour is probed at connect time and the table is
data, which the caller can override (``capabilities={...}``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from .._errors import (
    AuthenticationError,
    ConfigError,
    ContextOverflowError,
    ModelNotFoundError,
    RemoteBusyError,
    RemoteConnectionError,
    RemoteError,
    RemoteTimeoutError,
)
from ..protocols.openai import EXTENSION_FIELDS, STANDARD_FIELDS

# The sampling fields each flavour takes (STANDARD_FIELDS, EXTENSION_FIELDS) are sent only
# when the caller set them.


@dataclass(frozen=True)
class RemoteCapabilities:
    """What a server honours. A request needing something marked False is refused before
    it is sent, because the server would accept it and silently do otherwise."""

    sampling: frozenset[str]       # SamplingParams fields it applies
    logprobs: bool = False         # OpenAI-shaped logprobs / top_logprobs
    json_schema: bool = False      # response_format json_schema, enforced
    json_object: bool = True       # response_format json_object
    tools: bool = True             # tools with tool_choice "auto" / "none"
    tool_choice_forced: bool = False  # tool_choice "required" or a named function
    stream_usage: bool = False     # usage in the last streamed chunk
    max_completion_tokens: bool = False  # else the limit goes as max_tokens
    think: bool = False            # the API's thinking switch (think=, reasoning_budget=)
    tokenize: str = ""             # the tokenize route shape: "llama", "vllm", "lcp" or ""
    embeddings: bool = True


_ALL = frozenset(STANDARD_FIELDS + EXTENSION_FIELDS)
#: per flavour, from server.md's capability matrix and each server's source (see docs)
FLAVOURS: dict[str, RemoteCapabilities] = {
    "localllm": RemoteCapabilities(_ALL, logprobs=True, json_schema=True,
                                   tool_choice_forced=True, stream_usage=True,
                                   max_completion_tokens=True, think=True, tokenize="llama"),
    # reasoning_effort reaches its template ("none" closes the thinking), as its
    # /apply-template shows on the pinned build
    "llama-server": RemoteCapabilities(_ALL, logprobs=False, json_schema=True,
                                       tool_choice_forced=True, stream_usage=True,
                                       max_completion_tokens=True, think=True,
                                       tokenize="llama"),
    # no think: the pinned llama-cpp-python's server has no reasoning_effort field and
    # drops it; LM Studio is not known to honour it either
    "llama-cpp-python": RemoteCapabilities(
        _ALL - {"repeat_last_n"}, logprobs=True, json_schema=False,
        tools=True, tool_choice_forced=False, stream_usage=False,
        max_completion_tokens=False, tokenize="lcp"),
    "vllm": RemoteCapabilities(_ALL - {"typical_p", "repeat_last_n"}, logprobs=True,
                               json_schema=True, tool_choice_forced=True, stream_usage=True,
                               max_completion_tokens=True, think=True, tokenize="vllm"),
    "lmstudio": RemoteCapabilities(
        frozenset(STANDARD_FIELDS) | {"top_k", "repeat_penalty"}, json_schema=True,
        tool_choice_forced=False),
    # Ollama through its native /api: options carry what /v1 drops; no logit_bias, no n
    "ollama": RemoteCapabilities(_ALL - {"logit_bias"}, logprobs=False,
                                 json_schema=True, tool_choice_forced=False,
                                 stream_usage=True, max_completion_tokens=True, think=True),
    # Anthropic's Messages API on any server that speaks it (its tokenizer route and
    # embeddings are the flavour's): the sampling fields that API defines
    "anthropic": RemoteCapabilities(frozenset({"temperature", "top_p", "top_k"}),
                                    json_object=False, tool_choice_forced=True,
                                    stream_usage=True, think=True),
    # OpenAI's Responses API on any server that speaks it: the fields that API defines
    "responses": RemoteCapabilities(frozenset({"temperature", "top_p"}), json_schema=True,
                                    tool_choice_forced=True, stream_usage=True, think=True),
    # any other /v1 server: only what OpenAI's API defines (reasoning_effort among it),
    # nothing assumed beyond it
    "openai": RemoteCapabilities(frozenset(STANDARD_FIELDS) - {"logit_bias"}, json_schema=False,
                                 tool_choice_forced=False, think=True),
}


def capabilities_for(flavour: str, overrides: Mapping[str, Any] | None) -> RemoteCapabilities:
    caps = FLAVOURS[flavour]
    if not overrides:
        return caps
    unknown = set(overrides) - set(RemoteCapabilities.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown capability override(s) {sorted(unknown)}; known: "
                          f"{', '.join(RemoteCapabilities.__dataclass_fields__)}")
    values = dict(overrides)
    if "sampling" in values:
        values["sampling"] = frozenset(values["sampling"])
    return replace(caps, **values)


# ---------------------------------------------------------------------------- transport
@dataclass(frozen=True)
class RetryPolicy:
    """429 and 503 (and 502/504 from a proxy in front of replicas) are retried, waiting
    Retry-After when the server gives it, else exponential backoff from ``base_s``."""

    tries: int = 4
    base_s: float = 0.25
    max_wait_s: float = 10.0

    def wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(float(retry_after), self.max_wait_s)
            except ValueError:
                pass
        return float(min(self.base_s * 2 ** attempt, self.max_wait_s))


RETRY_STATUS = frozenset({429, 502, 503, 504})


class StreamBroken(RemoteConnectionError):
    """The connection failed after the answer had started (a server or proxy died)."""


class Transport:
    """httpx clients (sync and async, created on first use) for one server root."""

    def __init__(self, root: str, *, api_key: str | None, timeout: float,
                 retry: RetryPolicy) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise ConfigError("remote models need httpx: pip install 'localllm[remote]'"
                              ) from exc
        self._httpx = httpx
        #: failures while reading a response: the stream broke
        self.transport_errors = (httpx.TransportError,)
        self.root = root.rstrip("/")
        self.retry = retry
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self._sync: Any = None
        self._async: dict[Any, Any] = {}  # one client per event loop

    def _client(self) -> Any:
        if self._sync is None:
            self._sync = self._httpx.Client(base_url=self.root, headers=self._headers,
                                            timeout=self._timeout)
        return self._sync

    def _aclient(self) -> Any:
        """The running loop's client: an httpx.AsyncClient belongs to one loop. Clients of
        loops that have closed since are dropped (their connections died with the loop)."""
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            for old in [lp for lp in self._async if lp.is_closed()]:
                del self._async[old]
            client = self._async[loop] = self._httpx.AsyncClient(
                base_url=self.root, headers=self._headers, timeout=self._timeout)
        return client

    def _fail(self, exc: Exception, path: str) -> Exception:
        httpx = self._httpx
        url = f"{self.root}{path}"
        if isinstance(exc, httpx.TimeoutException):
            return RemoteTimeoutError(f"{url} did not answer in time ({type(exc).__name__});"
                                       " raise timeout= or check the server")
        if isinstance(exc, httpx.TransportError):
            return RemoteConnectionError(f"cannot reach {url}: {exc}; check that the server "
                                         "runs and the URL (host, port) is right")
        return exc

    def broken(self, exc: Exception) -> Exception:
        """A failure while reading a response: a timeout stays a timeout (never resent),
        anything else broke the stream (which complete()/chat() may resend)."""
        if isinstance(exc, self._httpx.TimeoutException):
            return self._fail(exc, "")
        return StreamBroken(f"the stream from {self.root} broke: {exc}")

    def get_json(self, path: str) -> tuple[int, Any]:
        """One GET for probing: (status, JSON or None); no retries, short timeout."""
        try:
            response = self._client().get(path, timeout=5.0)
        except self._httpx.HTTPError as exc:
            raise self._fail(exc, path) from exc
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        with self.stream_post(path, body, stream=False) as response:
            return response.json()

    async def apost(self, path: str, body: Mapping[str, Any]) -> Any:
        async with self.astream_post(path, body, stream=False) as response:
            return response.json()

    def _limit(self, timeout: float | None) -> Any:
        return self._timeout if timeout is None else self._httpx.Timeout(timeout)

    @contextmanager
    def stream_post(self, path: str, body: Mapping[str, Any], *, stream: bool = True,
                    timeout: float | None = None) -> Iterator[Any]:
        """A POST whose response is checked (typed errors) after retries; the caller reads
        it, and leaving the block closes it, which tells the server to stop."""
        client = self._client()
        for attempt in range(self.retry.tries):
            try:
                request = client.build_request("POST", path, json=body,
                                               timeout=self._limit(timeout))
                response = client.send(request, stream=True)
            except self._httpx.HTTPError as exc:
                raise self._fail(exc, path) from exc
            try:
                if response.status_code in RETRY_STATUS and attempt + 1 < self.retry.tries:
                    time.sleep(self.retry.wait(attempt, response.headers.get("retry-after")))
                    continue
                if response.status_code >= 400:
                    response.read()
                    raise http_failure(response, f"{self.root}{path}")
                if not stream:
                    response.read()
                yield response
                return
            finally:
                response.close()

    @asynccontextmanager
    async def astream_post(self, path: str, body: Mapping[str, Any], *, stream: bool = True,
                           timeout: float | None = None) -> AsyncIterator[Any]:
        client = self._aclient()
        for attempt in range(self.retry.tries):
            try:
                request = client.build_request("POST", path, json=body,
                                               timeout=self._limit(timeout))
                response = await client.send(request, stream=True)
            except self._httpx.HTTPError as exc:
                raise self._fail(exc, path) from exc
            try:
                if response.status_code in RETRY_STATUS and attempt + 1 < self.retry.tries:
                    await asyncio.sleep(self.retry.wait(attempt,
                                                        response.headers.get("retry-after")))
                    continue
                if response.status_code >= 400:
                    await response.aread()
                    raise http_failure(response, f"{self.root}{path}")
                if not stream:
                    await response.aread()
                yield response
                return
            finally:
                await response.aclose()

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        self._async.clear()  # their loops close them; nothing is held open between calls


def http_failure(response: Any, url: str) -> Exception:
    """An HTTP error status as localllm's error tree, with the server's own message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message, code = str(error.get("message", "")), str(error.get("code") or "")
    else:
        message, code = str(error or (body if body is not None else response.text)), ""
    status = response.status_code
    said = f"{url} answered {status}: {message}"
    lowered = f"{message} {code}".lower()
    overflow = code in ("context_length_exceeded", "exceed_context_size_error") or (
        "context" in lowered and any(w in lowered for w in ("exceed", "too long", "maximum")))
    if status == 400 and overflow:
        return ContextOverflowError(0, 0, 0, said)
    if status == 404:
        return ModelNotFoundError(said + "; check the model name (GET /v1/models lists them)")
    if status in (401, 403):
        return AuthenticationError(said + "; pass api_key= (or set LOCALLLM_API_KEY)")
    if status in RETRY_STATUS:
        seconds = float(response.headers.get("retry-after") or 1)
        return RemoteBusyError(said + " (still busy after the retries)", seconds)
    if status == 400 or status == 422:
        return ConfigError(said)
    return RemoteError(said)


# ---------------------------------------------------------------------------- probing
def probe_flavour(transport: Transport) -> str:
    """Which server this is, from the routes only it has (llama-server's /props, Ollama's
    /api/version, vLLM's /version, LM Studio's /api/v0/models, localllm's /health and
    /metrics), else "openai"."""
    status, props = transport.get_json("/props")
    if status == 200 and isinstance(props, dict) and "default_generation_settings" in props:
        return "llama-server"
    status, health = transport.get_json("/health")
    if status in (200, 503) and isinstance(health, dict) and health.get("server") == "localllm":
        return "localllm"
    status, version = transport.get_json("/api/version")
    if status == 200 and isinstance(version, dict) and "version" in version:
        return "ollama"
    status, version = transport.get_json("/version")
    if status == 200 and isinstance(version, dict) and "version" in version:
        return "vllm"
    status, _ = transport.get_json("/api/v0/models")
    if status == 200:
        return "lmstudio"
    status, spec = transport.get_json("/openapi.json")
    if status == 200 and isinstance(spec, dict) and "llama" in str(
            spec.get("info", {}).get("title", "")).lower():
        return "llama-cpp-python"
    return "openai"
