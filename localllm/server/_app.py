"""The ASGI application: security in front, then the OpenAI, Ollama and operations routes.

Safe by default: keys compared in constant time, a foreign ``Host`` refused on a loopback
bind (DNS rebinding), CORS off unless origins are given, request bodies bounded. Errors
come from localllm's one error tree and keep each protocol's envelope; a 500 means a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import _errors as errors
from .._defaults import DEFAULTS
from .._types import IMAGE_PATHS_ALLOWED
from ._metrics import Metrics
from ._registry import ModelUnavailableError, Registry

log = logging.getLogger("localllm.server")
DEFAULT_MAX_BODY = DEFAULTS.max_body_bytes
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
OPEN_PATHS = ("/health", "/v1/health")  # answered without a key, like llama-server's
PAGE_API = ("/ui/api/session", "/ui/api/limits")  # what the chat page asks before a key


def is_open(path: str) -> bool:
    """Whether ``path`` is the chat page, one of its files, or one of the two questions it
    asks first: answered without a key, since they hold no data."""
    return path == "/" or path in PAGE_API or (path.startswith("/ui/")
                                               and not path.startswith("/ui/api/"))


@dataclass
class ServerConfig:
    """What ``create_app`` builds from; ``localllm serve`` fills it from the command line."""

    models: Sequence[str] = ()
    host: str = DEFAULTS.host
    parallel: int | None = DEFAULTS.server_parallel
    max_queue: int = DEFAULTS.max_queue
    api_keys: Sequence[str] = ()
    cors_origins: Sequence[str] = ()
    keep_alive_s: float | None = DEFAULTS.keep_alive_s
    max_body_bytes: int = DEFAULT_MAX_BODY
    threads: int | None = None
    context_length: int | None = None
    ram_budget: int | None = None  # bytes for all loaded models (None: free RAM decides)
    isolation: str = DEFAULTS.server_isolation  # runtimes known to abort: a worker each
    system_message: str = "template"  # "fold": into the first user turn (load()'s option)
    preload: bool = True
    responses_db: str | None = None  # stored responses (None: the default data directory)
    responses_ttl_s: float = DEFAULTS.responses_ttl_days * 86400
    responses_max_rows: int = DEFAULTS.responses_max_rows
    ui: bool = True  # the chat page at GET / (--no-ui turns it off)
    data_dir: str | None = None  # conversations, collections (None: $XDG_DATA_HOME/localllm)
    max_upload_bytes: int = DEFAULTS.max_upload_bytes
    embedder: str | None = None  # the collections' embedder (None: the default embedder)
    fetch_images: bool = False  # fetch http(s) image URLs (--fetch-images; see _fetch)
    fetch_allow: Sequence[str] = ()  # hosts of the user's own network that may be fetched
    speculative: str | None = None  # "ngram": speculative decoding for every model
    draft: str | None = None  # a draft model (speculative="draft") for the one model served


class HTTPError(Exception):
    """An error answered with a status; ``code`` and ``param`` fill OpenAI's envelope."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param, self.headers = code, param, headers or {}


def http_error(exc: BaseException) -> HTTPError:
    """Map localllm's error tree (and bad input) onto HTTP."""
    if isinstance(exc, HTTPError):
        return exc
    msg = str(exc)
    if isinstance(exc, errors.RequestError):
        return HTTPError(400, msg, code=exc.code, param=exc.param)
    if isinstance(exc, errors.ContextOverflowError):
        return HTTPError(400, msg, code="context_length_exceeded", param="messages")
    if isinstance(exc, errors.ModelNotFoundError):
        return HTTPError(404, msg, kind="not_found_error", code="model_not_found",
                         param="model")
    if isinstance(exc, errors.QueueFullError):
        return HTTPError(503, msg, kind="server_busy", code="queue_full",
                         headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})
    if isinstance(exc, (ModelUnavailableError, errors.WillNotFitError,
                        errors.ModelClosedError)):
        return HTTPError(503, msg, kind="unavailable_error", code="model_unavailable",
                         headers={"Retry-After": "5"})
    if isinstance(exc, errors.RequestTimeoutError):
        return HTTPError(504, msg, kind="timeout_error", code="timeout")
    if isinstance(exc, (errors.ConfigError, errors.ChatTemplateError,
                        errors.StructuredOutputError, errors.UnsupportedFeatureError)):
        return HTTPError(400, msg)
    if isinstance(exc, errors.BackendCrashedError):  # the runtime's fault, not a bug here
        log.error("%s", msg)
        return HTTPError(500, msg, kind="server_error", code="backend_crashed")
    log.exception("internal error", exc_info=exc)
    return HTTPError(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")


def error_response(err: HTTPError, style: str) -> Response:
    """The error in the envelope of the API the path belongs to ("openai", "ollama" or
    "anthropic")."""
    from ..protocols import anthropic, openai
    from ..protocols.codec import Failure

    failure = Failure(err.status, err.message, err.kind, err.code, err.param)
    body = {"error": err.message} if style == "ollama" else anthropic.error_body(failure) \
        if style == "anthropic" else openai.error_body(failure)
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def style_of(path: str) -> str:
    """Which API a path belongs to, for errors answered before any route runs."""
    if path == "/" or path.startswith("/api/"):
        return "ollama"
    return "anthropic" if path.startswith("/v1/messages") else "openai"


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON; 413 past ``limit`` bytes, 400 when it is not JSON."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the request body is over the limit of {limit} bytes",
                            code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"the request body is not valid JSON: {exc}",
                        code="invalid_json") from None


Handler = Callable[[Request], Awaitable[Response]]


def route(style: str, metrics: Metrics, name: str,
          handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: typed errors become the protocol's envelope; requests are counted."""
    async def endpoint(request: Request) -> Response:
        try:
            response = await handler(request)
        except Exception as exc:
            response = error_response(http_error(exc), style)
        metrics.request(name, response.status_code)
        return response
    return endpoint


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Run ``work`` unless the client goes away first; then it is cancelled, which frees
    its sequences at the next decode step."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise HTTPError(499, "the client disconnected", code="client_closed")
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class Guard:
    """ASGI middleware in front of every route: Host check, API key, body size."""

    def __init__(self, app: ASGIApp, config: ServerConfig) -> None:
        self.app = app
        self.keys = [k.encode() for k in config.api_keys]
        self.loopback = config.host in LOOPBACK_HOSTS
        self.max_body = config.max_body_bytes
        self.max_upload = max(config.max_body_bytes, config.max_upload_bytes)
        self.ui = config.ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        path = scope["path"]
        refusal = self._refuse(headers, path, scope.setdefault("state", {}))
        if refusal is not None:
            await error_response(refusal, style_of(path))(scope, receive, send)
            return
        token = IMAGE_PATHS_ALLOWED.set(False)  # nothing a client sends may name a file
        try:
            await self.app(scope, receive, send)
        finally:
            IMAGE_PATHS_ALLOWED.reset(token)

    def _refuse(self, headers: dict[str, str], path: str, state: dict[str, Any]
                ) -> HTTPError | None:
        if self.loopback:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host and name not in LOOPBACK_HOSTS:
                return HTTPError(403, f"the Host header {host!r} is not this loopback "
                                 "server (DNS rebinding protection); use 127.0.0.1 or "
                                 "localhost", kind="permission_error", code="forbidden_host")
        if self.keys and path not in OPEN_PATHS and not (self.ui and is_open(path)):
            given = headers.get("authorization", "")
            token = given[7:].strip().encode() if given[:7].lower() == "bearer " else \
                headers.get("x-api-key", "").strip().encode()  # Anthropic's header
            # compare with every key, always, so timing tells nothing about which matched
            ok = False
            for key in self.keys:
                ok |= hmac.compare_digest(token, key)
            if ok:  # who asks, for state kept per key (stored responses)
                state["caller"] = hashlib.sha256(token).hexdigest()[:32]
            if not ok:
                return HTTPError(401, "a valid API key is required: send "
                                 "'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
                                 kind="authentication_error",
                                 code="invalid_api_key")
        length = headers.get("content-length")
        limit = self.max_upload if path.endswith("/documents") else self.max_body
        if length is not None and length.isdigit() and int(length) > limit:
            return HTTPError(413, f"the request body is over the limit of {limit} "
                             "bytes", code="request_too_large")
        return None


class ServerState:
    """Everything the routes share."""

    def __init__(self, config: ServerConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.metrics = Metrics()

    @property
    def max_body(self) -> int:
        return self.config.max_body_bytes


def create_app(models: Sequence[str] = (), **options: Any) -> Starlette:
    """The server as an ASGI app (for uvicorn, tests, or mounting in another app).

    ``models`` are .gguf paths or catalog names; ``options`` are :class:`ServerConfig`
    fields (``host`` only decides the Host-header check here; binding is uvicorn's).
    """
    from pathlib import Path

    from ..models.store import DEFAULT_EMBEDDER
    from ..protocols import anthropic, ollama, openai, responses
    from ..protocols.codec import ServerCodec
    from ..rag.index import FILE_KINDS
    from . import _anthropic, _collections, _conversations, _ollama, _openai, _responses, _ui
    from ._endpoint import mount
    from ._sqlite import SQLiteFile, data_dir

    config = ServerConfig(models=tuple(models), **options)
    registry = Registry(config.models, parallel=config.parallel, max_queue=config.max_queue,
                        keep_alive_s=config.keep_alive_s, threads=config.threads,
                        context_length=config.context_length, ram_budget=config.ram_budget,
                        isolation=config.isolation, system_message=config.system_message,
                        speculative=config.speculative, draft=config.draft)
    state = ServerState(config, registry)
    data = Path(config.data_dir).expanduser() if config.data_dir else data_dir()
    store = _responses.ResponseStore(
        Path(config.responses_db) if config.responses_db else data / "responses.sqlite",
        ttl_s=config.responses_ttl_s, max_rows=config.responses_max_rows)
    codecs: list[ServerCodec] = [openai.ChatCodec(), openai.CompletionsCodec(),
                                 ollama.ChatCodec(), ollama.GenerateCodec(),
                                 anthropic.MessagesCodec(), responses.ResponsesCodec(store)]
    routes = [*_ops_routes(state), *_openai.routes(state), *_ollama.routes(state),
              *_anthropic.routes(state), *_responses.routes(state, store),
              *(mount(codec, state) for codec in codecs)]
    chat_data = SQLiteFile(data / "chat.sqlite", _conversations.SCHEMA +
                           _collections.SCHEMA + _collections.RECOVER)
    collections = _collections.Collections(
        chat_data, data / "collections", embedder=config.embedder or DEFAULT_EMBEDDER,
        max_upload_bytes=config.max_upload_bytes)
    if config.ui:
        ollama_root = next(r for r in routes if isinstance(r, Route) and r.path == "/")
        routes.remove(ollama_root)
        routes += [*_ui.routes(state, ollama_root.endpoint, FILE_KINDS,
                               config.max_upload_bytes),
                   *_conversations.routes(state, _conversations.ConversationStore(
                       chat_data, max_per_caller=DEFAULTS.max_conversations)),
                   *_collections.routes(state, collections)]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.ensure_future(registry.reaper())]
        if config.preload and registry.models:
            tasks.append(asyncio.ensure_future(_preload(registry)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await registry.close()
            store.close()
            await asyncio.to_thread(collections.close)
            chat_data.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.localllm = state
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["authorization", "content-type", "x-api-key",
                                          "anthropic-version"])
    app.add_middleware(Guard, config=config)  # outermost: runs before CORS
    return app


async def _preload(registry: Registry) -> None:
    registry.loading += 1
    try:
        async with registry.use(registry.default_name):
            pass
    except Exception:
        log.exception("loading %s failed", registry.default_name)
    finally:
        registry.loading -= 1


def _ops_routes(state: ServerState) -> list[Route]:
    registry, metrics = state.registry, state.metrics

    async def health(request: Request) -> Response:
        if registry.loading:
            return JSONResponse({"status": "loading", "server": "localllm"}, status_code=503)
        return JSONResponse({"status": "ok", "server": "localllm"})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(registry),
                                 media_type="text/plain; version=0.0.4")

    async def tokenize(request: Request) -> Response:
        """llama-server's ``{content}``, or a chat's ``{messages}`` as the model's template
        renders it with the assistant's turn opened (what the chat page's context meter
        counts); both also say the model's context length."""
        body = await read_json(request, state.max_body)
        body = body if isinstance(body, dict) else {}
        content, messages = body.get("content"), body.get("messages")
        if not isinstance(content, str) and not isinstance(messages, list):
            raise HTTPError(400, "tokenize needs {'content': '<text>'} or {'messages': "
                            "[...]}", param="content")
        async with registry.use(body.get("model") or registry.default_name) as served:
            model = served.live
            limit = model.info.context_length
            if not isinstance(content, str):  # counted as a request would be
                n = await asyncio.to_thread(model.count_tokens, list(messages or ()))
                return JSONResponse({"n_tokens": n, "context_length": limit})
            ids = model.tokenizer.encode(content, add_special=bool(body.get("add_special")))
        return JSONResponse({"tokens": ids, "n_tokens": len(ids), "context_length": limit})

    async def detokenize(request: Request) -> Response:
        body = await read_json(request, state.max_body)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise HTTPError(400, "detokenize needs {'tokens': [ids]}", param="tokens")
        async with registry.use(body.get("model") or registry.default_name) as served:
            vocab = served.live.tokenizer.vocab_size
            bad = [t for t in tokens if not 0 <= t < vocab]
            if bad:
                raise HTTPError(400, f"token ids {bad[:5]} are out of range 0..{vocab - 1}",
                                param="tokens")
            text = served.live.tokenizer.decode(tokens)
        return JSONResponse({"content": text})

    def r(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, route("openai", metrics, path, handler), methods=methods)

    return [r("/health", health, ["GET"]), r("/v1/health", health, ["GET"]),
            r("/metrics", prometheus, ["GET"]), r("/tokenize", tokenize, ["POST"]),
            r("/detokenize", detokenize, ["POST"])]
