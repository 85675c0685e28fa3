"""Run ``localllm serve``'s app for tests: on 127.0.0.1, a free port, started and stopped
by the test itself, either in this process (uvicorn on a thread) or as the real command."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from localllm.server import create_app

APPS: dict[str, Any] = {}  # base URL -> the app served there (tests read its models)


def served_model(base: str, name: str) -> Any:
    """The loaded ``Model`` behind ``name`` on the in-process server at ``base``."""
    model = APPS[base].state.localllm.registry.models[name].model
    assert model is not None, f"{name} is not loaded"
    return model


def reference_tools() -> Path:
    """The folder with llama-server and nginx from `make tools` (built once, cached); a
    missing build fails the calling test loudly."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "scripts" / "build_reference_tools.py")],
                         check=True, stdout=subprocess.PIPE, text=True, timeout=3600).stdout
    folder = Path(out.strip().splitlines()[-1])
    for name in ("llama-server", "nginx"):
        assert (folder / name).exists(), f"{name} is missing from {folder}: run make tools"
    return folder


def first_model_id(base: str) -> str:
    """The first model a server lists on /v1/models (llama-server names its one file)."""
    return str(httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base: str, timeout_s: float = 120.0, *, loaded: bool = True,
                 path: str = "/health") -> None:
    """Until ``path`` answers 200 (or, with ``loaded=False``, answers at all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200 or not loaded:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the server at {base} did not become healthy in {timeout_s} s")


@contextlib.contextmanager
def served_in_thread(models: list[str], *, wait_loaded: bool = True, **options: Any
                     ) -> Iterator[str]:
    """The app under uvicorn on a thread; yields its base URL once /health is 200 (or,
    with ``wait_loaded=False``, once it answers at all).

    Its models stay loaded (no idle keep-alive) unless the test passes ``keep_alive_s``:
    tests reach the loaded model directly (``served_model``), which the registry does not
    see as use, and on a slow machine that work can outlast the default 5 minutes."""
    import uvicorn

    port = free_port()
    options.setdefault("keep_alive_s", None)
    app = create_app(models, **options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    APPS[base] = app
    try:
        wait_healthy(base, loaded=wait_loaded)
        yield base
    finally:
        APPS.pop(base, None)
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the test server did not stop"


@contextlib.contextmanager
def served_process(args: list[str], env: dict[str, str] | None = None
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``localllm serve ARGS --port P`` as a child process; yields (base URL, process)."""
    exe = Path(sys.executable).with_name("localllm")
    with running_server([str(exe), "serve", *args, "--port", "{port}"], env=env) as served:
        yield served


@contextlib.contextmanager
def running_server(command: list[str], *, health: str = "/health",
                   env: dict[str, str] | None = None
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Any server command (``{port}`` in it becomes a free loopback port) as a child
    process, until ``health`` answers 200; stopped (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    # a log file, not a pipe: a pipe nobody reads would stall a chatty server
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([part.replace("{port}", str(port)) for part in command],
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(base, path=health)
            yield base, proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
