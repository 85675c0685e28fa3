"""``Index``: local documents, chunked and embedded, in one SQLite file with sqlite-vec.

One file holds everything: the documents (path, sha256), their chunks (text, line or page)
and the vectors, in a sqlite-vec ``vec0`` table. No server. Each document is added in its
own transaction, so an interrupted run keeps every document it finished; re-adding a file
whose sha256 is unchanged costs nothing, a changed file replaces its chunks. WAL mode lets
readers search while one writer adds.

Search is exact cosine similarity: sqlite-vec's KNN for indexes up to ``SQL_SEARCH_LIMIT``
vectors; above that a float32 matrix of the vectors, loaded once and reloaded when the
file changes, because sqlite-vec's scan is several times slower than numpy's there.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, IndexFileError
from .chunking import Chunk, chunk_file, chunk_text

if TYPE_CHECKING:
    from ..core.model import Model

SCHEMA_VERSION = "1"
SQL_SEARCH_LIMIT = 10_000
FILE_KINDS = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
EMBED_BATCH = 16  # chunks embedded per call when progress is reported


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk, its cosine similarity and where it came from."""

    score: float
    text: str
    source: str
    line_start: int
    line_end: int
    page: int | None
    chunk_id: int

    @property
    def location(self) -> str:
        lines = f"lines {self.line_start}-{self.line_end}"
        return f"{self.source}:" + (f"page {self.page}, " if self.page else "") + lines


@dataclass(frozen=True)
class AddReport:
    """What ``add`` did: documents indexed, skipped as unchanged, and chunks written."""

    added: tuple[str, ...]
    unchanged: tuple[str, ...]
    chunks: int


def connect(path: str | os.PathLike[str]) -> Any:
    """A SQLite connection with sqlite-vec loaded. Python's own sqlite3 when its build
    allows extensions, else sqlean.py (the same SQLite, built with extension loading)."""
    try:
        import sqlite_vec
    except ImportError as exc:
        raise ConfigError("Index needs sqlite-vec: pip install 'localllm[rag]'") from exc
    import sqlite3

    module: Any = sqlite3
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        try:
            import sqlean
        except ImportError as exc:
            raise ConfigError("this Python's sqlite3 cannot load extensions; pip install "
                              "'localllm[rag]' (brings sqlean.py)") from exc
        module = sqlean
    try:
        conn = module.connect(str(path), timeout=30.0, check_same_thread=False,
                              isolation_level=None)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except module.Error as exc:
        raise IndexFileError(f"{path} is not a localllm index (SQLite says: {exc}); give a "
                             "new file name or an index built by localllm") from exc
    return conn


class Index:
    """A persistent vector index of local documents.

    >>> import localllm
    >>> with localllm.Index("notes.sqlite") as index:        # doctest: +SKIP
    ...     index.add(["notes/"])
    ...     for hit in index.search("when is the bin collected?", k=3):
    ...         print(hit.score, hit.location)

    ``embedder`` is a loaded embedding :class:`Model` or a catalog name (default: the
    default embedder, loaded here and closed with the index). An index remembers its
    embedder and chunking; reopening it with another embedder is an error, since its
    vectors would not be comparable. ``chunk_tokens`` and ``overlap`` size the chunks in
    the embedder's tokens.
    """

    def __init__(self, path: str | os.PathLike[str], embedder: Model | str | None = None, *,
                 chunk_tokens: int = 160, overlap: int = 32) -> None:
        from ..models.loader import load
        from ..models.store import DEFAULT_EMBEDDER

        if chunk_tokens < 16 or not 0 <= overlap < chunk_tokens // 2:
            raise ConfigError(f"chunk_tokens={chunk_tokens}, overlap={overlap}: chunks need "
                              "at least 16 tokens and an overlap under half a chunk")
        self.path = Path(path)
        self._owned = embedder is None or isinstance(embedder, str)
        self.embedder: Model = embedder if not (embedder is None or isinstance(
            embedder, str)) else load(embedder or DEFAULT_EMBEDDER)
        self._limit = self.embedder.info.context_length
        if chunk_tokens + 2 > self._limit:
            raise ConfigError(f"chunk_tokens={chunk_tokens} does not fit the embedder's "
                              f"{self._limit}-token limit")
        self._lock = threading.RLock()
        self._closed = False
        self._matrix: tuple[int, Any, Any] | None = None  # (data generation, ids, vectors)
        self._count: tuple[int, int] | None = None  # (data generation, chunks)
        try:
            self._db = connect(self.path)
            self._settings = self._open_schema(chunk_tokens, overlap)
        except BaseException:
            self._close_embedder()
            raise
        self.chunk_tokens = int(self._settings["chunk_tokens"])
        self.overlap = int(self._settings["overlap"])

    # ------------------------------------------------------------------ schema
    def _open_schema(self, chunk_tokens: int, overlap: int) -> dict[str, str]:
        info = self.embedder.info
        wanted = {"version": SCHEMA_VERSION, "embedder": f"{info.name} ({info.path})",
                  "dim": str(self.embedder.embed("x").dim), "chunk_tokens": str(chunk_tokens),
                  "overlap": str(overlap)}
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            found = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not found:
                db.executemany("INSERT INTO meta VALUES (?, ?)",
                               [*wanted.items(), ("generation", "0")])
                db.execute("""CREATE TABLE documents (id INTEGER PRIMARY KEY,
                    source TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL, chunks INTEGER)""")
                db.execute("""CREATE TABLE chunks (id INTEGER PRIMARY KEY,
                    doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
                    text TEXT NOT NULL, line_start INTEGER, line_end INTEGER, page INTEGER)""")
                db.execute("CREATE INDEX chunks_doc ON chunks(doc_id)")
                db.execute(f"CREATE VIRTUAL TABLE vectors USING vec0("
                           f"embedding float[{wanted['dim']}] distance_metric=cosine)")
                found = dict(wanted, generation="0")
            db.execute("COMMIT")
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise IndexFileError(f"{self.path} is not a localllm index: {exc}") from exc
        if found.get("version") != SCHEMA_VERSION or found.get("dim") != wanted["dim"] or \
                found.get("embedder", "").split(" (")[0] != info.name:
            raise IndexFileError(
                f"{self.path} was built with {found.get('embedder')} ({found.get('dim')} "
                f"dims); this embedder is {wanted['embedder']} ({wanted['dim']} dims). Open "
                "it with the same embedder, or index into a new file")
        return found

    # ------------------------------------------------------------------ writing
    def add(self, paths: Iterable[str | os.PathLike[str]]) -> AddReport:
        """Index files and folders (recursively: .txt, .md, .pdf). Unchanged files (same
        sha256) are skipped; changed ones replace their chunks. Each file commits alone."""
        added, unchanged, total = [], [], 0
        for file in _expand(paths):
            data = file.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            source = str(file.resolve())
            row = self._db.execute("SELECT sha256 FROM documents WHERE source = ?",
                                   (source,)).fetchone()
            if row is not None and row[0] == digest:
                unchanged.append(source)
                continue
            chunks = chunk_file(file, data, self.embedder.tokenizer, self.chunk_tokens,
                                self.overlap)
            total += self._write(source, digest, chunks)
            added.append(source)
        return AddReport(tuple(added), tuple(unchanged), total)

    def add_text(self, text: str, source: str) -> int:
        """Index a text under the name ``source`` (replacing an earlier one); chunks written."""
        if not isinstance(text, str) or not isinstance(source, str) or not source:
            raise ConfigError("add_text needs a str text and a non-empty str source name")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        chunks = chunk_text(text, self.embedder.tokenizer, self.chunk_tokens, self.overlap)
        return self._write(source, digest, chunks)

    def add_bytes(self, name: str, data: bytes, *,
                  progress: Callable[[int, int], None] | None = None) -> int:
        """Index a file's bytes under the document name ``name`` (replacing an earlier one):
        an upload, never read from disk. Its kind comes from the name's suffix. ``progress``
        is called with (chunks embedded, chunks in all) as the work goes. Returns chunks."""
        if not isinstance(name, str) or not name or not isinstance(data, bytes):
            raise ConfigError("add_bytes needs a non-empty str name and bytes")
        kind = Path(name).suffix.lower()
        if kind not in FILE_KINDS:
            raise ConfigError(f"{name}: localllm indexes {', '.join(FILE_KINDS)} files")
        chunks = chunk_file(Path(name), data, self.embedder.tokenizer, self.chunk_tokens,
                            self.overlap)
        return self._write(name, hashlib.sha256(data).hexdigest(), chunks, progress)

    def _write(self, source: str, digest: str, chunks: Sequence[Chunk],
               progress: Callable[[int, int], None] | None = None) -> int:
        import numpy as np

        texts = [c.text for c in chunks]
        step = EMBED_BATCH if progress is not None else max(1, len(texts))
        batches = []
        for start in range(0, len(texts), step):
            batches.append(self.embedder.embed(texts[start:start + step]).vectors)
            if progress is not None:
                progress(min(start + step, len(texts)), len(texts))
        vectors: Any = np.concatenate(batches) if batches else []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                self._delete(source)
                doc = db.execute("INSERT INTO documents (source, sha256, chunks) VALUES "
                                 "(?, ?, ?)", (source, digest, len(chunks))).lastrowid
                for chunk, vector in zip(chunks, vectors, strict=True):
                    cid = db.execute("INSERT INTO chunks (doc_id, text, line_start, line_end, "
                                     "page) VALUES (?, ?, ?, ?, ?)",
                                     (doc, chunk.text, chunk.line_start, chunk.line_end,
                                      chunk.page)).lastrowid
                    db.execute("INSERT INTO vectors (rowid, embedding) VALUES (?, ?)",
                               (cid, vector.tobytes()))
                self._bump()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(chunks)

    def remove(self, source: str | os.PathLike[str]) -> bool:
        """Delete a document (a path, or an add_text name) and its chunks; False if absent."""
        name = str(source)
        if self._db.execute("SELECT 1 FROM documents WHERE source = ?", (name,)).fetchone() \
                is None and Path(source).exists():  # a path given another way
            name = str(Path(source).resolve())
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._delete(name)
            if gone:
                self._bump()
            self._db.execute("COMMIT")
        return gone

    def _delete(self, source: str) -> bool:
        db = self._db
        row = db.execute("SELECT id FROM documents WHERE source = ?", (source,)).fetchone()
        if row is None:
            return False
        db.execute("DELETE FROM vectors WHERE rowid IN (SELECT id FROM chunks WHERE "
                   "doc_id = ?)", (row[0],))
        db.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        return True

    def _bump(self) -> None:
        self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                         "WHERE key = 'generation'")

    # ------------------------------------------------------------------ reading
    def documents(self) -> list[tuple[str, str, int]]:
        """(source, sha256, chunk count) of every indexed document."""
        return list(self._db.execute("SELECT source, sha256, chunks FROM documents "
                                     "ORDER BY source").fetchall())

    def chunk(self, chunk_id: int) -> Hit:
        """One chunk by its id (``Hit.chunk_id``), with score 1.0; ``KeyError`` if absent."""
        row = self._db.execute(
            "SELECT c.text, d.source, c.line_start, c.line_end, c.page FROM chunks c "
            "JOIN documents d ON d.id = c.doc_id WHERE c.id = ?", (chunk_id,)).fetchone()
        if row is None:
            raise KeyError(chunk_id)
        return Hit(1.0, row[0], row[1], row[2], row[3], row[4], chunk_id)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def search(self, query: str | Sequence[float] | Any, k: int = 5) -> list[Hit]:
        """The ``k`` chunks most similar to ``query`` (cosine), best first. ``query`` is a
        text (embedded here; a text over the embedder's limit keeps its start) or a vector
        from the same embedder (e.g. from one ``embed()`` of many queries)."""
        import numpy as np

        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be an int >= 1, not {k!r}")
        if isinstance(query, str):
            vector = self.embedder.embed(query, overflow="truncate_right").vectors[0]
        else:
            vector = np.asarray(query, dtype=np.float32)
            dim = int(self._settings["dim"])
            if vector.shape != (dim,) or not np.isfinite(vector).all():
                raise ConfigError(f"a query vector must be {dim} finite floats (this index's "
                                  f"embedder), not shape {vector.shape}")
            norm = float(np.linalg.norm(vector))
            vector = vector / norm if norm > 0 else vector
        with self._lock:
            ranked = self._rank(vector, k)
            return self._hits(ranked)

    def _generation(self) -> int:
        """Bumped by every committed change (by any process): what caches key on."""
        return int(self._db.execute(
            "SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _rank(self, vector: Any, k: int, *, force_matrix: bool = False
              ) -> list[tuple[int, float]]:
        generation = self._generation()
        if self._count is None or self._count[0] != generation:
            self._count = (generation, len(self))  # COUNT(*) scans: ~5 ms at 100k chunks
        if self._count[1] <= SQL_SEARCH_LIMIT and not force_matrix:
            rows = self._db.execute("SELECT rowid, distance FROM vectors WHERE embedding "
                                    "MATCH ? AND k = ?", (vector.tobytes(), k)).fetchall()
            return [(int(r), 1.0 - float(d)) for r, d in rows]
        import numpy as np

        ids, matrix = self._vectors(generation)
        scores = matrix @ vector
        top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k] if len(scores) > k \
            else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def _vectors(self, generation: int) -> tuple[Any, Any]:
        """Every vector as a unit-row float32 matrix, cached until the file changes."""
        import numpy as np

        if self._matrix is None or self._matrix[0] != generation:
            rows = self._db.execute("SELECT rowid, embedding FROM vectors").fetchall()
            dim = int(self._settings["dim"])
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            matrix = matrix.reshape(len(rows), dim)
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            self._matrix = (generation, ids, matrix / np.where(norms > 0, norms, 1.0))
        return self._matrix[1], self._matrix[2]

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        """The ranked chunks' texts and sources, in one query."""
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        rows = {row[0]: row[1:] for row in self._db.execute(
            "SELECT c.id, c.text, d.source, c.line_start, c.line_end, c.page FROM chunks c "
            f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
            [cid for cid, _ in ranked]).fetchall()}
        out = []
        for cid, score in ranked:
            row = rows.get(cid)
            if row is None:
                raise IndexFileError(f"{self.path}: vector {cid} has no chunk; the file is "
                                     "damaged, index into a new file")
            out.append(Hit(score, row[0], row[1], row[2], row[3], row[4], cid))
        return out

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the file (and the embedder, when the index loaded it); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
        self._close_embedder()

    def _close_embedder(self) -> None:
        if self._owned:
            self.embedder.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files to index: the given files, and the supported files under given folders."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            out.extend(sorted(f for f in path.rglob("*")
                              if f.is_file() and f.suffix.lower() in FILE_KINDS))
        elif path.is_file():
            if path.suffix.lower() not in FILE_KINDS:
                raise ConfigError(f"{path}: localllm indexes {', '.join(FILE_KINDS)} files")
            out.append(path)
        else:
            raise ConfigError(f"{path} does not exist")
    return out
