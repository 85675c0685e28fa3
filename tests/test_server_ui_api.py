"""The chat page's server side over HTTP: the page and its headers, conversations and
document collections kept per API key in the data directory, uploads checked and indexed
with progress, retrieval that reports what fit the context and what did not.

Real server (uvicorn on 127.0.0.1), real default model and embedder, real SQLite files.
The page itself is driven in a real browser in test_chat_page.py."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import served_in_thread

import localllm

pytestmark = pytest.mark.real_model
BRIDGE = "\n".join(f"Note {i}: the Zorblat bridge over the river Quell was built in 1873 by "
                   f"the engineer Ada Quill, section {i}." for i in range(60))
CATS = "<html><body><h1>Cats</h1><p>House cats sleep about sixteen hours a day.</p>" \
       "<script>stolen()</script></body></html>"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ui-data")


@pytest.fixture(scope="module")
def base(data_dir: Path) -> Iterator[str]:
    with served_in_thread([localllm.DEFAULT_MODEL], data_dir=str(data_dir),
                          context_length=2048, max_upload_bytes=64 * 1024) as url:
        yield url


@pytest.fixture(scope="module")
def client(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=60) as c:
        yield c


def wait_indexed(client: httpx.Client, collection: str, timeout_s: float = 120
                 ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got: dict[str, Any] = client.get(f"/ui/api/collections/{collection}").json()
        if all(d["state"] in ("ready", "failed") for d in got["documents"]):
            return got
        time.sleep(0.2)
    raise TimeoutError("indexing did not finish")


def test_the_page_is_served_with_a_strict_policy(client: httpx.Client) -> None:
    page = client.get("/", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert re.search(r'<script [^>]*src="/ui/app\.js"', page.text)
    assert "<script>" not in page.text and " on" + "click=" not in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside
    js = client.get("/ui/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/nothing.js").status_code == 404
    assert client.get("/ui/..%2f_app.py").status_code == 404
    assert client.get("/").text == "Ollama is running"  # Ollama's clients probe GET /


def test_models_say_whether_loaded_and_tokenize_counts_a_chat(client: httpx.Client,
                                                              base: str) -> None:
    card = client.get("/v1/models").json()["data"][0]
    assert card["loaded"] is True and card["context_length"] == 2048
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name three rivers."}]
    got = client.post("/tokenize", json={"messages": chat}).json()
    from server_harness import served_model

    assert got == {"n_tokens": served_model(base, card["id"]).count_tokens(chat),
                   "context_length": 2048}
    assert client.post("/tokenize", json={"messages": "x"}).status_code == 400


def test_conversations_round_trip_and_refuse_bad_fields(client: httpx.Client) -> None:
    made = client.post("/ui/api/conversations", json={
        "title": "Rivers", "model": localllm.DEFAULT_MODEL, "settings": {"system": "Brief."},
        "messages": [{"role": "user", "content": "Name a river."},
                     {"role": "assistant", "content": "The Nile.",
                      "stats": {"completion_tokens": 3, "finish_reason": "stop"}}]})
    assert made.status_code == 201
    conv = made.json()
    renamed = client.patch(f"/ui/api/conversations/{conv['id']}", json={"title": "Nile"})
    assert renamed.json()["title"] == "Nile" and renamed.json()["messages"] == conv["messages"]
    listed = client.get("/ui/api/conversations").json()["data"]
    assert listed[0]["id"] == conv["id"] and listed[0]["title"] == "Nile"
    for bad, param in (({"colour": "red"}, "colour"), ({"title": ""}, "title"),
                       ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
                       ({"settings": []}, "settings"), ({"title": "x" * 201}, "title")):
        r = client.patch(f"/ui/api/conversations/{conv['id']}", json=bad)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, bad
    exported = client.get("/ui/api/export")
    assert "attachment" in exported.headers["content-disposition"]
    envelope = exported.json()
    assert envelope["format"] == "localllm-conversations"
    mine = next(c for c in envelope["conversations"] if c["id"] == conv["id"])
    assert mine["messages"] == conv["messages"] and mine["settings"] == {"system": "Brief."}
    before = len(client.get("/ui/api/conversations").json()["data"])
    broken = {**envelope, "conversations": [mine, {"messages": "not a list"}]}
    assert client.post("/ui/api/import", json=broken).status_code == 400
    assert len(client.get("/ui/api/conversations").json()["data"]) == before  # all or none
    imported = client.post("/ui/api/import", json={**envelope, "conversations": [mine]})
    new_id = imported.json()["ids"][0]
    assert new_id != conv["id"]
    assert client.get(f"/ui/api/conversations/{new_id}").json()["messages"] == conv["messages"]
    assert client.delete(f"/ui/api/conversations/{new_id}").json()["deleted"] is True
    assert client.get(f"/ui/api/conversations/{new_id}").status_code == 404
    assert client.delete(f"/ui/api/conversations/{new_id}").status_code == 404


def test_uploads_are_checked_indexed_with_progress_and_retrieved(client: httpx.Client
                                                                 ) -> None:
    col = client.post("/ui/api/collections", json={"name": "Local history"}).json()
    docs = f"/ui/api/collections/{col['id']}/documents"
    refusals = [("tool.exe", b"MZ", 415, "indexes"),
                ("big.txt", b"x" * (64 * 1024 + 1), 413, "upload limit"),
                ("empty.md", b"", 400, "empty"),
                ("latin.txt", "café".encode("latin-1"), 400, "not UTF-8"),
                ("fake.pdf", b"GIF89a", 400, "PDF")]
    for name, data, status, words in refusals:
        r = client.post(docs, params={"name": name}, content=data)
        assert r.status_code == status and words in r.json()["error"]["message"], name
    assert client.post(docs, content=b"hello").status_code == 400  # no name
    for name, data in (("../../etc/bridge.md", BRIDGE.encode()), ("cats.html", CATS.encode()),
                       ("broken.pdf", b"%PDF-1.4 then garbage")):
        assert client.post(docs, params={"name": name}, content=data).status_code == 202
    got = wait_indexed(client, col["id"])
    states = {d["name"]: d for d in got["documents"]}
    assert set(states) == {"bridge.md", "cats.html", "broken.pdf"}  # folders stripped
    bridge = states["bridge.md"]
    assert bridge["state"] == "ready" and bridge["done"] == bridge["total"] == bridge["chunks"]
    assert bridge["chunks"] > 1 and states["cats.html"]["state"] == "ready"
    assert states["broken.pdf"]["state"] == "failed" and "PDF" in states["broken.pdf"]["error"]
    listed = client.get("/ui/api/collections").json()["data"]
    assert [(c["id"], c["documents"]) for c in listed] == [(col["id"], 3)]

    ask = [{"role": "system", "content": "Answer briefly."},
           {"role": "user", "content": "Who built the Zorblat bridge?"}]
    found = client.post(f"/ui/api/collections/{col['id']}/retrieve",
                        json={"messages": ask, "max_tokens": 64}).json()
    sources = found["sources"]
    assert [s["n"] for s in sources] == list(range(1, len(sources) + 1))
    assert sources[0]["document"] == "bridge.md" and "Ada Quill" in sources[0]["text"]
    assert [s["score"] for s in sources] == sorted((s["score"] for s in sources), reverse=True)
    system = found["messages"][0]["content"]
    assert system.startswith("Answer briefly.") and "[1] (bridge.md:lines" in system
    assert found["messages"][1:] == ask[1:] and found["left_out"] == []
    chunk = client.get(f"/ui/api/collections/{col['id']}/chunks/{sources[0]['chunk_id']}")
    assert chunk.json()["text"] == sources[0]["text"]
    assert chunk.json()["line_start"] == sources[0]["line_start"]

    tight = client.post(f"/ui/api/collections/{col['id']}/retrieve",
                        json={"messages": ask, "max_tokens": 1850}).json()
    assert tight["left_out"], "a 2048-token context with 1850 for the answer holds few"
    shown = {s["chunk_id"] for s in tight["sources"]}
    assert shown.isdisjoint(s["chunk_id"] for s in tight["left_out"])
    assert len(shown) + len(tight["left_out"]) == len(sources)
    overflow = client.post(f"/ui/api/collections/{col['id']}/retrieve",
                           json={"messages": ask, "max_tokens": 2040})
    assert overflow.status_code == 400
    assert overflow.json()["error"]["code"] == "context_length_exceeded"

    cats = states["cats.html"]["id"]
    assert client.delete(f"{docs}/{cats}").json()["deleted"] is True
    again = client.post(f"/ui/api/collections/{col['id']}/retrieve", json={
        "messages": [{"role": "user", "content": "How long do cats sleep?"}]}).json()
    assert all(s["document"] != "cats.html" for s in again["sources"])
    assert client.delete(f"/ui/api/collections/{col['id']}").json()["deleted"] is True
    assert client.get(f"/ui/api/collections/{col['id']}").status_code == 404


def test_state_survives_a_restart_and_interrupted_indexing_fails_visibly(
        tmp_path: Path) -> None:
    with served_in_thread([localllm.DEFAULT_MODEL], data_dir=str(tmp_path)) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        conv = c.post("/ui/api/conversations", json={"title": "Kept"}).json()
        col = c.post("/ui/api/collections", json={"name": "Kept docs"}).json()
        c.post(f"/ui/api/collections/{col['id']}/documents", params={"name": "a.txt"},
               content=b"The archive opens at nine.")
        wait_indexed(c, col["id"])
    with sqlite3.connect(tmp_path / "chat.sqlite") as db:  # as if stopped mid-indexing
        db.execute("UPDATE documents SET state = 'indexing'")
    with served_in_thread([localllm.DEFAULT_MODEL], data_dir=str(tmp_path)) as url, \
            httpx.Client(base_url=url, timeout=60) as c:
        assert c.get(f"/ui/api/conversations/{conv['id']}").json()["title"] == "Kept"
        doc = c.get(f"/ui/api/collections/{col['id']}").json()["documents"][0]
        assert doc["state"] == "failed" and "upload the file again" in doc["error"]


def test_each_api_key_sees_only_its_own(tmp_path: Path) -> None:
    with served_in_thread([localllm.DEFAULT_MODEL], data_dir=str(tmp_path),
                          api_keys=["key-a", "key-b"]) as url:
        a = httpx.Client(base_url=url, timeout=60, headers={"authorization": "Bearer key-a"})
        b = httpx.Client(base_url=url, timeout=60, headers={"x-api-key": "key-b"})
        anonymous = httpx.Client(base_url=url, timeout=60)
        with a, b, anonymous:
            # the page and what it asks first need no key; everything with data does
            assert anonymous.get("/", headers={"accept": "text/html"}).status_code == 200
            assert anonymous.get("/ui/app.js").status_code == 200
            assert anonymous.get("/ui/api/session").json() == {"auth": "key",
                                                                "loopback": True}
            assert anonymous.get("/ui/api/conversations").status_code == 401
            assert anonymous.get("/ui/api/collections").status_code == 401
            conv = a.post("/ui/api/conversations", json={"title": "Private"}).json()
            col = a.post("/ui/api/collections", json={"name": "Private docs"}).json()
            assert b.get("/ui/api/conversations").json()["data"] == []
            assert b.get("/ui/api/collections").json()["data"] == []
            assert b.get("/ui/api/export").json()["conversations"] == []
            for method, path in (("GET", f"/ui/api/conversations/{conv['id']}"),
                                 ("PATCH", f"/ui/api/conversations/{conv['id']}"),
                                 ("DELETE", f"/ui/api/conversations/{conv['id']}"),
                                 ("GET", f"/ui/api/collections/{col['id']}"),
                                 ("DELETE", f"/ui/api/collections/{col['id']}"),
                                 ("POST", f"/ui/api/collections/{col['id']}/retrieve")):
                body = {"title": "x"} if method == "PATCH" else \
                    {"messages": [{"role": "user", "content": "x"}]}
                r = b.request(method, path, json=body if method in ("PATCH", "POST") else None)
                assert r.status_code == 404, (method, path)
            assert a.get(f"/ui/api/conversations/{conv['id']}").json()["title"] == "Private"


def test_no_ui_turns_the_page_off(tmp_path: Path) -> None:
    with served_in_thread([localllm.DEFAULT_MODEL], data_dir=str(tmp_path), ui=False,
                          wait_loaded=False) as url:
        assert httpx.get(url, headers={"accept": "text/html"}).text == "Ollama is running"
        assert httpx.get(f"{url}/ui/app.js").status_code == 404
        assert httpx.get(f"{url}/ui/api/conversations").status_code == 404
    assert not (tmp_path / "chat.sqlite").exists()  # a server that stores nothing
