"""The chat page's document collections: uploads indexed with :class:`localllm.Index`,
and the retrieval that puts their chunks into a chat with their sources.

Each collection is one index file in ``<data dir>/collections/``, named by a random id
(never by anything a request sends); which key owns it, its documents and their indexing
state are rows in the conversations' SQLite file. An upload is checked at once (kind by
its name, size, UTF-8 or PDF signature) and then indexed by one background thread, chunk
batch by chunk batch, so the page can show progress. The upload's bytes are not kept:
only the chunks' text is. A server stopped mid-indexing marks those documents failed on
its next start, with the reason, rather than leaving them "indexing" forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import ConfigError
from ..rag.index import FILE_KINDS, Hit, Index
from ._app import HTTPError, ServerState, read_json, route
from ._sqlite import SQLiteFile

if TYPE_CHECKING:
    from ..core.model import Model

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id TEXT PRIMARY KEY, caller TEXT NOT NULL, name TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    name TEXT NOT NULL, size INTEGER NOT NULL, state TEXT NOT NULL, chunks INTEGER,
    done INTEGER NOT NULL, total INTEGER NOT NULL, error TEXT, created REAL NOT NULL);
"""
# run when the file is opened: what a stopped server left unfinished is failed, with why
RECOVER = """
UPDATE documents SET state = 'failed', error = 'the server stopped before indexing
finished; upload the file again' WHERE state IN ('queued', 'indexing');
"""
DOC_COLUMNS = ("id", "name", "size", "state", "chunks", "done", "total", "error")
MAX_NAME = 200
MAX_PENDING = 16  # uploads waiting to be indexed, all collections together
DEFAULT_K = 6


@dataclass(frozen=True)
class _Job:
    collection: str
    document: str
    name: str
    data: bytes


class Collections:
    """Collections per caller, their index files and the indexing thread."""

    def __init__(self, db: SQLiteFile, folder: Path, *, embedder: str,
                 max_upload_bytes: int, max_per_caller: int = 100) -> None:
        self.db = db
        self.folder = folder
        self.embedder_name = embedder
        self.max_upload_bytes = max_upload_bytes
        self.max_per_caller = max_per_caller
        self._embedder: Model | None = None
        self._indexes: dict[str, Index] = {}
        self._lock = threading.Lock()  # the embedder and the open indexes
        self._jobs: queue.Queue[_Job | None] = queue.Queue(MAX_PENDING)
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ collections
    def summaries(self, caller: str) -> list[dict[str, Any]]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT c.id, c.name, c.created, COUNT(d.id), COALESCE(SUM(d.chunks), 0) "
                "FROM collections c LEFT JOIN documents d ON d.collection = c.id "
                "WHERE c.caller = ? GROUP BY c.id ORDER BY c.created", (caller,)).fetchall()
        return [dict(zip(("id", "name", "created", "documents", "chunks"), row, strict=True))
                for row in rows]

    def create(self, caller: str, name: Any) -> dict[str, Any]:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise HTTPError(400, f"a collection needs a name of 1 to {MAX_NAME} characters",
                            param="name")
        collection_id = "col_" + secrets.token_hex(12)
        with self.db.transaction() as conn:
            count = conn.execute("SELECT COUNT(*) FROM collections WHERE caller = ?",
                                 (caller,)).fetchone()[0]
            if count >= self.max_per_caller:
                raise HTTPError(409, f"this API key already has {count} collections, the "
                                "limit; delete some first", code="too_many_collections")
            conn.execute("INSERT INTO collections VALUES (?, ?, ?, ?)",
                         (collection_id, caller, name.strip(), time.time()))
        return self.get(caller, collection_id)

    def get(self, caller: str, collection_id: str) -> dict[str, Any]:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT id, name, created FROM collections WHERE id = ? AND "
                               "caller = ?", (collection_id, caller)).fetchone()
            if row is None:
                raise HTTPError(404, f"no collection {collection_id!r} (deleted, or another "
                                "API key's)", kind="not_found_error", code="not_found")
            docs = conn.execute(f"SELECT {', '.join(DOC_COLUMNS)} FROM documents WHERE "
                                "collection = ? ORDER BY created", (collection_id,)).fetchall()
        return {"id": row[0], "name": row[1], "created": row[2],
                "documents": [dict(zip(DOC_COLUMNS, d, strict=True)) for d in docs]}

    def delete(self, caller: str, collection_id: str) -> None:
        self.get(caller, collection_id)
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM collections WHERE id = ?", (collection_id,))
        with self._lock:
            index = self._indexes.pop(collection_id, None)
            if index is not None:
                index.close()
            for path in self.folder.glob(f"{collection_id}.sqlite*"):  # -wal, -shm too
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ documents
    def upload(self, caller: str, collection_id: str, name: Any, data: bytes
               ) -> dict[str, Any]:
        """Check an upload and queue it for indexing; the document's row says how it goes."""
        self.get(caller, collection_id)
        name = check_upload(name, data, self.max_upload_bytes)
        document_id = "doc_" + secrets.token_hex(12)
        with self.db.transaction() as conn:
            # the same name again replaces the earlier document, as the index does
            conn.execute("DELETE FROM documents WHERE collection = ? AND name = ?",
                         (collection_id, name))
            conn.execute("INSERT INTO documents VALUES (?, ?, ?, ?, 'queued', NULL, 0, 0, "
                         "NULL, ?)", (document_id, collection_id, name, len(data),
                                      time.time()))
        try:
            self._jobs.put_nowait(_Job(collection_id, document_id, name, data))
        except queue.Full:
            with self.db.transaction() as conn:
                conn.execute("DELETE FROM documents WHERE id = ?", (document_id,))
            raise HTTPError(503, f"{MAX_PENDING} uploads are waiting to be indexed; retry "
                            "when they are done", kind="server_busy", code="queue_full",
                            headers={"Retry-After": "5"}) from None
        self._start_worker()
        return self._document(document_id)

    def delete_document(self, caller: str, collection_id: str, document_id: str) -> None:
        collection = self.get(caller, collection_id)
        names = {d["id"]: d["name"] for d in collection["documents"]}
        if document_id not in names:
            raise HTTPError(404, f"no document {document_id!r} in this collection",
                            kind="not_found_error", code="not_found")
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM documents WHERE id = ?", (document_id,))
        self._index(collection_id).remove(names[document_id])

    def _document(self, document_id: str) -> dict[str, Any]:
        with self.db.transaction() as conn:
            row = conn.execute(f"SELECT {', '.join(DOC_COLUMNS)} FROM documents WHERE id = ?",
                               (document_id,)).fetchone()
        return dict(zip(DOC_COLUMNS, row, strict=True))

    # ------------------------------------------------------------------ indexing
    def _start_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="localllm-indexer",
                                                daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._set(job.document, state="indexing")
            try:
                chunks = self._index(job.collection).add_bytes(
                    job.name, job.data,
                    progress=lambda done, total: self._set(job.document, done=done,
                                                           total=total))
            except Exception as exc:  # a bad file fails its own document, not the server
                self._set(job.document, state="failed", error=str(exc))
            else:
                self._set(job.document, state="ready", chunks=chunks)
                if not self._exists(job.document):  # deleted while it was being indexed
                    self._index(job.collection).remove(job.name)

    def _exists(self, document_id: str) -> bool:
        with self.db.transaction() as conn:
            return conn.execute("SELECT 1 FROM documents WHERE id = ?",
                                (document_id,)).fetchone() is not None

    def _set(self, document_id: str, **values: Any) -> None:
        sets = ", ".join(f"{name} = ?" for name in values)  # names from this module only
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE documents SET {sets} WHERE id = ?",
                         (*values.values(), document_id))

    def _index(self, collection_id: str) -> Index:
        from ..models.loader import load

        with self._lock:
            index = self._indexes.get(collection_id)
            if index is None:
                if self._embedder is None:
                    self._embedder = load(self.embedder_name)
                self.folder.mkdir(parents=True, exist_ok=True)
                index = Index(self.folder / f"{collection_id}.sqlite", self._embedder)
                self._indexes[collection_id] = index
            return index

    # ------------------------------------------------------------------ reading
    def search(self, caller: str, collection_id: str, query: str, k: int) -> list[Hit]:
        collection = self.get(caller, collection_id)
        if not any(d["state"] == "ready" for d in collection["documents"]):
            raise HTTPError(400, f"collection {collection['name']!r} has no indexed document "
                            "yet; upload one and wait until it is ready",
                            param="collection")
        return self._index(collection_id).search(query, k=k)

    def chunk(self, caller: str, collection_id: str, chunk_id: int) -> Hit:
        self.get(caller, collection_id)
        try:
            return self._index(collection_id).chunk(chunk_id)
        except KeyError:
            raise HTTPError(404, f"no chunk {chunk_id} in this collection (its document was "
                            "removed or replaced)", kind="not_found_error",
                            code="not_found") from None

    def close(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            with contextlib.suppress(queue.Full):
                self._jobs.put(None, timeout=1.0)
            self._worker.join(timeout=30.0)
        with self._lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()
            if self._embedder is not None:
                self._embedder.close()
                self._embedder = None

    def erase(self) -> None:
        """Delete every collection's index file (the rows go with the SQLite file)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def check_upload(name: Any, data: bytes, limit: int) -> str:
    """The document name to keep (the file name only, no folders); refuses what cannot be
    indexed before it is queued: 413 past the limit, 415 an unknown kind, 400 unreadable."""
    if not isinstance(name, str) or not name.strip():
        raise HTTPError(400, "give the file's name: ?name=<file name>", param="name")
    name = PurePosixPath(name.replace("\\", "/")).name.strip()[:MAX_NAME]
    kind = PurePosixPath(name).suffix.lower()
    if kind not in FILE_KINDS:
        raise HTTPError(415, f"{name!r}: the page indexes {', '.join(FILE_KINDS)} files",
                        code="unsupported_file_type", param="name")
    if len(data) > limit:
        raise HTTPError(413, f"{name!r} is {len(data)} bytes, over the upload limit of "
                        f"{limit} bytes (--max-upload)", code="request_too_large")
    if not data:
        raise HTTPError(400, f"{name!r} is empty", param="file")
    if kind == ".pdf":
        if not data.startswith(b"%PDF-"):
            raise HTTPError(400, f"{name!r} does not start like a PDF (%PDF-)", param="file")
    else:
        try:
            data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise HTTPError(400, f"{name!r} is not UTF-8 text (byte {exc.start}); save it "
                            "as UTF-8 and upload it again", param="file") from None
    return str(name)


def source_json(hit: Hit, n: int | None = None) -> dict[str, Any]:
    out = {"chunk_id": hit.chunk_id, "score": round(hit.score, 4), "document": hit.source,
           "page": hit.page, "line_start": hit.line_start, "line_end": hit.line_end,
           "text": hit.text}
    return out if n is None else {"n": n, **out}


def routes(state: ServerState, collections: Collections) -> list[Route]:
    from ..rag.answer import fit_sources
    from ._endpoint import caller_of

    registry = state.registry

    async def list_(request: Request) -> Response:
        return JSONResponse({"data": collections.summaries(caller_of(request))})

    async def create(request: Request) -> Response:
        body = await read_json(request, state.max_body)
        name = body.get("name") if isinstance(body, dict) else None
        return JSONResponse(collections.create(caller_of(request), name), status_code=201)

    async def get(request: Request) -> Response:
        return JSONResponse(collections.get(caller_of(request), request.path_params["id"]))

    async def delete(request: Request) -> Response:
        await asyncio.to_thread(collections.delete, caller_of(request),
                                request.path_params["id"])
        return JSONResponse({"id": request.path_params["id"], "deleted": True})

    async def upload(request: Request) -> Response:
        limit = collections.max_upload_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the file is over the upload limit of {limit} bytes "
                                "(--max-upload)", code="request_too_large")
            chunks.append(chunk)
        document = collections.upload(caller_of(request), request.path_params["id"],
                                      request.query_params.get("name"), b"".join(chunks))
        return JSONResponse(document, status_code=202)

    async def delete_document(request: Request) -> Response:
        await asyncio.to_thread(collections.delete_document, caller_of(request),
                                request.path_params["id"], request.path_params["doc"])
        return JSONResponse({"id": request.path_params["doc"], "deleted": True})

    async def chunk(request: Request) -> Response:
        try:
            chunk_id = int(request.path_params["chunk"])
        except ValueError:
            raise HTTPError(400, "a chunk id is an integer", param="chunk") from None
        hit = await asyncio.to_thread(collections.chunk, caller_of(request),
                                      request.path_params["id"], chunk_id)
        return JSONResponse({k: v for k, v in source_json(hit).items() if k != "score"})

    async def retrieve(request: Request) -> Response:
        body = await read_json(request, state.max_body)
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        messages, k, max_tokens = body.get("messages"), body.get("k", DEFAULT_K), \
            body.get("max_tokens", 256)
        if not isinstance(messages, list) or not messages or not isinstance(
                messages[-1], dict) or messages[-1].get("role") != "user" or \
                not isinstance(messages[-1].get("content"), str):
            raise HTTPError(400, "messages must end with the user's question "
                            "({'role': 'user', 'content': '...'})", param="messages")
        for name, value, low in (("k", k, 1), ("max_tokens", max_tokens, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low or \
                    value > 100_000:
                raise HTTPError(400, f"{name} must be a positive integer, not {value!r}",
                                param=name)
        caller, collection_id = caller_of(request), request.path_params["id"]
        hits = await asyncio.to_thread(collections.search, caller, collection_id,
                                       messages[-1]["content"], k)
        async with registry.use(body.get("model") or registry.default_name) as served:
            try:
                sent, shown, left_out = await asyncio.to_thread(
                    fit_sources, [{"role": m.get("role"), "content": m.get("content")}
                                  for m in messages], hits, served.live, max_tokens)
            except ConfigError as exc:
                raise HTTPError(400, str(exc), param="messages") from None
        return JSONResponse({"messages": sent,
                             "sources": [source_json(h, n) for n, h in enumerate(shown, 1)],
                             "left_out": [source_json(h) for h in left_out]})

    def r(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, route("openai", state.metrics, path, handler), methods=methods)

    item = "/ui/api/collections/{id}"
    return [r("/ui/api/collections", list_, ["GET"]),
            r("/ui/api/collections", create, ["POST"]),
            r(item, get, ["GET"]), r(item, delete, ["DELETE"]),
            r(item + "/documents", upload, ["POST"]),
            r(item + "/documents/{doc}", delete_document, ["DELETE"]),
            r(item + "/chunks/{chunk}", chunk, ["GET"]),
            r(item + "/retrieve", retrieve, ["POST"])]
