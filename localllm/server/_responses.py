"""Stored responses for OpenAI's Responses API: one SQLite file, and the routes that read
and delete what it holds (``GET``/``DELETE /v1/responses/{id}``, ``GET
/v1/responses/{id}/input_items``). ``POST /v1/responses`` is the codec in
``protocols.responses``, given this store.

What the file holds, per stored response: its id, a digest of the API key that created it
(a response is visible to that key only), when it was made, the conversation's messages up
to and including it (what ``previous_response_id`` continues), its input items and the
response itself. Rows older than the retention (``--responses-ttl``, 30 days by default)
or past the row cap are deleted as new ones arrive; ``store: false`` keeps nothing; deleting
the file erases everything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._errors import ModelNotFoundError
from ._app import ServerState, route
from ._sqlite import SQLiteFile, data_dir

SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, caller TEXT NOT NULL, created REAL NOT NULL, record TEXT NOT NULL)"""


def default_path() -> Path:
    """``responses.sqlite`` in the server's default data directory."""
    return data_dir() / "responses.sqlite"


class ResponseStore(SQLiteFile):
    """The SQLite file of stored responses; safe to use from any thread."""

    def __init__(self, path: Path, *, ttl_s: float, max_rows: int) -> None:
        super().__init__(path, SCHEMA)
        self.ttl_s = ttl_s
        self.max_rows = max_rows

    def load(self, response_id: str, caller: str) -> dict[str, Any] | None:
        with self.transaction() as db:
            row = db.execute(
                "SELECT record FROM responses WHERE id = ? AND caller = ? AND created >= ?",
                (response_id, caller, time.time() - self.ttl_s)).fetchone()
        return json.loads(row[0]) if row else None

    def save(self, response_id: str, caller: str, record: dict[str, Any]) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                       (response_id, caller, now, json.dumps(record)))
            db.execute("DELETE FROM responses WHERE created < ?", (now - self.ttl_s,))
            db.execute("DELETE FROM responses WHERE id NOT IN (SELECT id FROM responses "
                       "ORDER BY created DESC LIMIT ?)", (self.max_rows,))

    def delete(self, response_id: str, caller: str) -> bool:
        with self.transaction() as db:
            gone = db.execute("DELETE FROM responses WHERE id = ? AND caller = ?",
                              (response_id, caller)).rowcount
        return bool(gone)


def routes(state: ServerState, store: ResponseStore) -> list[Route]:
    from ._endpoint import caller_of

    def stored(request: Request) -> dict[str, Any]:
        response_id = request.path_params["id"]
        record = store.load(response_id, caller_of(request))
        if record is None:
            raise ModelNotFoundError(f"no stored response {response_id!r} (not stored, "
                                     "expired, deleted, or another API key's)")
        return record

    async def get(request: Request) -> Response:
        return JSONResponse(stored(request)["response"])

    async def delete(request: Request) -> Response:
        response_id = request.path_params["id"]
        if not store.delete(response_id, caller_of(request)):
            raise ModelNotFoundError(f"no stored response {response_id!r}")
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(request: Request) -> Response:
        items = [{"id": item.get("id") or f"in_{request.path_params['id'][5:]}_{i}", **item}
                 for i, item in enumerate(stored(request)["input"])]
        return JSONResponse({"object": "list", "data": items,
                             "first_id": items[0]["id"] if items else None,
                             "last_id": items[-1]["id"] if items else None,
                             "has_more": False})

    def r(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, route("openai", state.metrics, "/v1/responses/{id}", handler),
                     methods=methods)

    return [r("/v1/responses/{id}", get, ["GET"]), r("/v1/responses/{id}", delete, ["DELETE"]),
            r("/v1/responses/{id}/input_items", input_items, ["GET"])]
