"""Image URLs: refused unless the server fetches them, and then never from inside.

A small HTTP server on 127.0.0.1, started and stopped here, plays the image host: the
fetcher refuses it (loopback) unless it is allowed by name, which lets the limits be
tested for real — redirects, size, time, and a redirect that points inside the network.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from server_harness import served_in_thread
from vision_oracle import VisionConfig, write_projector

import localllm
from localllm.server._fetch import checked_address, fetch_image

PNG = io.BytesIO()
Image.new("RGB", (32, 32), (10, 200, 90)).save(PNG, "PNG")
IMAGE = PNG.getvalue()


class _Host(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path
        if path == "/cat.png":
            self._send(200, IMAGE, "image/png")
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/cat.png" if left == 0 else f"/hop/{left - 1}")
            self.end_headers()
        elif path == "/inside":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif path == "/big":
            self._send(200, IMAGE * 40, "image/png")
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            for byte in IMAGE[:20]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "10.1.2.3", "192.168.0.7",
                                     "172.16.5.5", "169.254.169.254", "0.0.0.0", "::1",
                                     "::ffff:127.0.0.1", "fd00::1", "224.0.0.1"])
def test_addresses_inside_the_network_are_refused(address: str) -> None:
    with pytest.raises(localllm.ConfigError, match="not a public address"):
        checked_address(address, 80)
    assert checked_address(address, 80, allow_hosts=(address,))


def test_the_fetch_limits_hold_against_a_real_host(host: str) -> None:
    allow = ("127.0.0.1",)
    with pytest.raises(localllm.ConfigError, match="not a public address"):
        fetch_image(f"{host}/cat.png")
    assert fetch_image(f"{host}/cat.png", allow_hosts=allow) == IMAGE
    assert fetch_image(f"{host}/hop/2", allow_hosts=allow) == IMAGE  # 3 redirects
    with pytest.raises(localllm.ConfigError, match="redirected more than 3 times"):
        fetch_image(f"{host}/hop/3", allow_hosts=allow)
    with pytest.raises(localllm.ConfigError, match=r"169\.254\.169\.254, not a public address"):
        fetch_image(f"{host}/inside", allow_hosts=allow)
    with pytest.raises(localllm.ConfigError, match="limit"):
        fetch_image(f"{host}/big", allow_hosts=allow, max_bytes=len(IMAGE) * 2)
    started = time.monotonic()
    with pytest.raises(localllm.ConfigError, match=r"took|timed out"):
        fetch_image(f"{host}/slow", allow_hosts=allow, timeout_s=1.0)
    assert time.monotonic() - started < 3
    with pytest.raises(localllm.ConfigError, match="HTTP 404"):
        fetch_image(f"{host}/missing.png", allow_hosts=allow)
    for url in ("file:///etc/passwd", "ftp://example.com/x.png", "http://user:pw@example.com/"):
        with pytest.raises(localllm.ConfigError):
            fetch_image(url, allow_hosts=allow)


@pytest.fixture(scope="module")
def vision_folder(tmp_path_factory: pytest.TempPathFactory, default_model_path: Path) -> Path:
    """The default model with the synthetic projector beside it, as LM Studio keeps one."""
    folder = tmp_path_factory.mktemp("served-vision")
    model = folder / default_model_path.name
    try:
        os.link(default_model_path, model)
    except OSError:
        shutil.copy(default_model_path, model)
    write_projector(folder / "mmproj-synthetic.gguf", VisionConfig())
    return model


def _ask(base: str, url: str) -> Any:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0,
                           timeout=60)
    return client.chat.completions.create(
        model=client.models.list().data[0].id, max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": url}}]}])


def test_a_server_fetches_image_urls_only_when_started_to(vision_folder: Path,
                                                          host: str) -> None:
    import openai

    with served_in_thread([str(vision_folder)], context_length=1024, threads=2,
                          parallel=1) as base:
        with pytest.raises(openai.BadRequestError, match="--fetch-images"):
            _ask(base, f"{host}/cat.png")
        _no_request_names_a_file(base, vision_folder)

    with served_in_thread([str(vision_folder)], context_length=1024, threads=2, parallel=1,
                          fetch_images=True) as base, \
            pytest.raises(openai.BadRequestError, match="not a public address"):
        _ask(base, f"{host}/cat.png")
    with served_in_thread([str(vision_folder)], context_length=1024, threads=2, parallel=1,
                          fetch_images=True, fetch_allow=["127.0.0.1"]) as base:
        reply = _ask(base, f"{host}/cat.png")
        assert reply.usage.prompt_tokens > 16
        with pytest.raises(openai.BadRequestError, match=r"169\.254\.169\.254"):
            _ask(base, f"{host}/inside")


def _no_request_names_a_file(base: str, model: Path) -> None:
    """Routes that take messages outside a wire codec (the chat page's token count, a
    collection's retrieval, Anthropic's count) still never read a path a client names."""
    import anthropic
    import httpx

    secret = model.parent / "mmproj-synthetic.gguf"  # a file that exists on the server
    chat = [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                         {"type": "image", "image": str(secret)}]}]
    answer = httpx.post(f"{base}/tokenize", json={"messages": chat}, timeout=30)
    assert answer.status_code == 400
    assert "not read in a server request" in answer.text and "clip" not in answer.text
    client = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
    model_id = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
    plain = client.messages.count_tokens(model=model_id, messages=[
        {"role": "user", "content": "What is this?"}]).input_tokens
    import base64

    seen = client.messages.count_tokens(model=model_id, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(IMAGE).decode()}},
        {"type": "text", "text": "What is this?"}]}]).input_tokens
    assert seen == plain + 16
