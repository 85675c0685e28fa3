"""``localllm serve``: an OpenAI- and Ollama-compatible HTTP server over localllm models.

    from localllm.server import create_app
    app = create_app(["model.gguf"], parallel=8)     # any ASGI server runs it

Needs the ``server`` extra (``pip install 'localllm[server]'``); ``import localllm`` never
imports it.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from .._errors import BackendUnavailableError

    raise BackendUnavailableError("the server", "starlette", "server") from exc

from ._app import DEFAULT_MAX_BODY, ServerConfig, create_app

__all__ = ["DEFAULT_MAX_BODY", "ServerConfig", "create_app"]
