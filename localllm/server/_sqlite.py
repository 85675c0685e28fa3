"""One SQLite file a server surface keeps its state in (stored responses, conversations,
document collections): opened on first use, so a server that stores nothing makes no
file, and used from any thread under one lock."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def data_dir() -> Path:
    """``$XDG_DATA_HOME/localllm`` (``~/.local/share/localllm`` by default): where the
    server keeps what it stores unless ``--data-dir`` says otherwise."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "localllm"


class SQLiteFile:
    """A lazily opened SQLite file with its schema (a script run at every opening, so it
    also repairs what a stopped server left); ``transaction()`` holds the lock."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self.schema = schema
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(self.schema)
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, locked, inside one transaction (committed unless it raises)."""
        with self._lock:
            db = self._conn()
            with db:
                yield db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
