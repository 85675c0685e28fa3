"""The chat page's conversations, kept server-side: one SQLite file in the data directory,
each row visible to the API key that made it only.

A conversation is its title, the model and document collection it uses, the page's own
settings (system prompt, temperature, ...) and its messages as the page shows them (with
each answer's sources and statistics). Nothing is dropped to make room: past the per-key
cap a new conversation is refused with a message saying to delete or export some. The
routes are under ``/ui/api/``: list, create, read, update, delete, and export and import
as JSON.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._app import HTTPError, ServerState, read_json, route
from ._sqlite import SQLiteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, caller TEXT NOT NULL, title TEXT NOT NULL, model TEXT,
    collection TEXT, settings TEXT NOT NULL, messages TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS conversations_caller ON conversations(caller, updated);
"""
EXPORT_FORMAT = "localllm-conversations"
ROLES = ("system", "user", "assistant", "tool")
MAX_TITLE = 200
FIELDS = ("title", "model", "collection", "settings", "messages")


class ConversationStore:
    """Conversations per caller (a digest of the API key; "" on a server without keys)."""

    def __init__(self, db: SQLiteFile, *, max_per_caller: int) -> None:
        self.db = db
        self.max_per_caller = max_per_caller

    def transaction(self) -> Any:
        return self.db.transaction()

    def summaries(self, caller: str) -> list[dict[str, Any]]:
        with self.transaction() as db:
            rows = db.execute("SELECT id, title, model, collection, created, updated FROM "
                              "conversations WHERE caller = ? ORDER BY updated DESC",
                              (caller,)).fetchall()
        return [dict(zip(("id", "title", "model", "collection", "created", "updated"), row,
                         strict=True)) for row in rows]

    def get(self, caller: str, conversation_id: str) -> dict[str, Any]:
        with self.transaction() as db:
            row = db.execute("SELECT id, title, model, collection, settings, messages, "
                             "created, updated FROM conversations WHERE id = ? AND caller = ?",
                             (conversation_id, caller)).fetchone()
        if row is None:
            raise HTTPError(404, f"no conversation {conversation_id!r} (deleted, or another "
                            "API key's)", kind="not_found_error", code="not_found")
        return {"id": row[0], "title": row[1], "model": row[2], "collection": row[3],
                "settings": json.loads(row[4]), "messages": json.loads(row[5]),
                "created": row[6], "updated": row[7]}

    def create(self, caller: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        values = checked(fields)
        now = time.time()
        conversation_id = "conv_" + secrets.token_hex(12)
        with self.transaction() as db:
            count = db.execute("SELECT COUNT(*) FROM conversations WHERE caller = ?",
                               (caller,)).fetchone()[0]
            if count >= self.max_per_caller:
                raise HTTPError(409, f"this API key already has {count} conversations, the "
                                "limit; delete (or export, then delete) some first",
                                code="too_many_conversations")
            db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (conversation_id, caller, values.get("title", "New conversation"),
                        values.get("model"), values.get("collection"),
                        json.dumps(values.get("settings", {})),
                        json.dumps(values.get("messages", [])), now, now))
        return self.get(caller, conversation_id)

    def update(self, caller: str, conversation_id: str, fields: Mapping[str, Any]
               ) -> dict[str, Any]:
        values = checked(fields)
        self.get(caller, conversation_id)  # 404 first
        columns = {k: json.dumps(v) if k in ("settings", "messages") else v
                   for k, v in values.items()}
        if columns:
            sets = ", ".join(f"{name} = ?" for name in columns)  # names from FIELDS only
            with self.transaction() as db:
                db.execute(f"UPDATE conversations SET {sets}, updated = ? WHERE id = ? AND "
                           "caller = ?", (*columns.values(), time.time(), conversation_id,
                                          caller))
        return self.get(caller, conversation_id)

    def delete(self, caller: str, conversation_id: str) -> None:
        with self.transaction() as db:
            gone = db.execute("DELETE FROM conversations WHERE id = ? AND caller = ?",
                              (conversation_id, caller)).rowcount
        if not gone:
            raise HTTPError(404, f"no conversation {conversation_id!r}",
                            kind="not_found_error", code="not_found")

    def export(self, caller: str) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "version": 1,
                "conversations": [self.get(caller, c["id"]) for c in self.summaries(caller)]}


def checked(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The given conversation fields, each checked; anything unknown is refused."""
    if not isinstance(fields, Mapping):
        raise HTTPError(400, "the body must be a JSON object")
    unknown = sorted(set(fields) - set(FIELDS) - {"id", "created", "updated"})
    if unknown:
        raise HTTPError(400, f"unknown conversation fields {unknown}; known: {list(FIELDS)}",
                        param=unknown[0])
    out = {k: fields[k] for k in FIELDS if k in fields}
    title = out.get("title")
    if "title" in out and (not isinstance(title, str) or not title.strip()
                           or len(title) > MAX_TITLE):
        raise HTTPError(400, f"title must be a non-empty string of at most {MAX_TITLE} "
                        "characters", param="title")
    for name in ("model", "collection"):
        if name in out and out[name] is not None and not isinstance(out[name], str):
            raise HTTPError(400, f"{name} must be a string or null", param=name)
    if "settings" in out and not isinstance(out["settings"], dict):
        raise HTTPError(400, "settings must be a JSON object", param="settings")
    messages = out.get("messages", [])
    if not isinstance(messages, list):
        raise HTTPError(400, "messages must be a list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or \
                not isinstance(message.get("content", ""), str):
            raise HTTPError(400, f"messages[{i}] must be an object with a role in {ROLES} "
                            "and a string content", param=f"messages[{i}]")
    return out


def routes(state: ServerState, store: ConversationStore) -> list[Route]:
    from ._endpoint import caller_of

    async def body(request: Request) -> Any:
        return await read_json(request, state.max_body)

    async def list_(request: Request) -> Response:
        return JSONResponse({"data": store.summaries(caller_of(request))})

    async def create(request: Request) -> Response:
        return JSONResponse(store.create(caller_of(request), await body(request) or {}),
                            status_code=201)

    async def get(request: Request) -> Response:
        return JSONResponse(store.get(caller_of(request), request.path_params["id"]))

    async def update(request: Request) -> Response:
        return JSONResponse(store.update(caller_of(request), request.path_params["id"],
                                         await body(request)))

    async def delete(request: Request) -> Response:
        store.delete(caller_of(request), request.path_params["id"])
        return JSONResponse({"id": request.path_params["id"], "deleted": True})

    async def export(request: Request) -> Response:
        return JSONResponse(store.export(caller_of(request)), headers={
            "Content-Disposition": 'attachment; filename="localllm-conversations.json"'})

    async def import_(request: Request) -> Response:
        data = await body(request)
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT or \
                not isinstance(data.get("conversations"), list):
            raise HTTPError(400, f"an import is a JSON object with format "
                            f"{EXPORT_FORMAT!r} and a list of conversations, as the "
                            "export writes", param="format")
        for conversation in data["conversations"]:  # all checked before any is written
            checked(conversation)
        caller = caller_of(request)
        ids = [store.create(caller, c)["id"] for c in data["conversations"]]
        return JSONResponse({"imported": len(ids), "ids": ids})

    def r(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, route("openai", state.metrics, path, handler), methods=methods)

    item = "/ui/api/conversations/{id}"
    return [r("/ui/api/conversations", list_, ["GET"]),
            r("/ui/api/conversations", create, ["POST"]),
            r(item, get, ["GET"]), r(item, update, ["PATCH"]), r(item, delete, ["DELETE"]),
            r("/ui/api/export", export, ["GET"]), r("/ui/api/import", import_, ["POST"])]
