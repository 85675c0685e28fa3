"""The chat page: ``GET /`` for a browser, its files under ``/ui/``, and what the page asks
before it has a key (``/ui/api/session``, ``/ui/api/limits``).

The page is static files shipped inside the package (no CDN, nothing fetched from
elsewhere) that talk to the server's own APIs only. Every file goes out with a
Content-Security-Policy that allows scripts, styles and connections to this server alone
and no inline script, so that model output, even if some rendering bug let HTML through,
could not run code or send data anywhere. ``GET /`` from anything that does not ask for
HTML (Ollama's clients probe it) still gets Ollama's answer.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._app import LOOPBACK_HOSTS, HTTPError, ServerState, route

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-cache"}
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
def _assets() -> dict[str, bytes]:
    """The page's files, read once from the package: a request names one of these or
    gets a 404; no request field ever becomes a path."""
    folder = resources.files("localllm.server") / "ui"
    return {item.name: item.read_bytes() for item in folder.iterdir()
            if item.is_file() and any(item.name.endswith(s) for s in MEDIA_TYPES)}


def routes(state: ServerState, ollama_root: Any, upload_kinds: tuple[str, ...],
           max_upload_bytes: int) -> list[Route]:
    assets = _assets()
    if "index.html" not in assets:
        raise RuntimeError("the chat page's files are missing from the package; reinstall "
                           "localllm, or start the server with --no-ui")

    def asset(name: str) -> Response:
        suffix = "." + name.rsplit(".", 1)[-1]
        return Response(assets[name], media_type=MEDIA_TYPES[suffix],
                        headers=SECURITY_HEADERS)

    async def page(request: Request) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            response: Response = await ollama_root(request)
            return response
        return asset("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            raise HTTPError(404, f"no page file {name!r}", kind="not_found_error",
                            code="not_found")
        return asset(name)

    async def session(request: Request) -> Response:
        return _json({"auth": "key" if state.config.api_keys else "none",
                      "loopback": state.config.host in LOOPBACK_HOSTS})

    async def limits(request: Request) -> Response:
        return _json({"max_upload_bytes": max_upload_bytes, "kinds": list(upload_kinds)})

    def r(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, route("openai", state.metrics, path, handler), methods=methods)

    return [Route("/", page, methods=["GET", "HEAD"]),
            r("/ui/api/session", session, ["GET"]), r("/ui/api/limits", limits, ["GET"]),
            r("/ui/{name}", static, ["GET"])]


def _json(body: dict[str, Any]) -> Response:
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
