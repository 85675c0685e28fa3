"""Process isolation: the runtime runs in a worker process, so its crash is an exception.

Native runtimes abort or segfault on inputs nobody checked for (ctransformers' loaders,
ggml's unsupported type pairs); in-process that ends the application. With
``load(..., isolation="process")`` the engine lives in a child interpreter and the
``Model`` talks to it through :class:`ProcessEngine`, an ``Engine`` whose every call is one
request/reply over a socket pair. When the child dies mid-call the call raises
:class:`BackendCrashedError` (naming the signal) and the next call starts a fresh worker,
which reloads the model.

What keeps the overhead small: one round trip per decode step (a batch of sequences), logits
rows passed through a shared memory file instead of the socket (a row of 49,152 floats
pickled and sent costs more than half a millisecond; through the shared file, a copy), the
token-to-bytes table and the end-of-generation ids copied once at start (the consumer
threads read them per token), and runtime samplers that stay in the worker behind handles.

The worker is ``python -m localllm._worker FD``, not a ``multiprocessing`` child: a
spawned ``multiprocessing`` process re-imports the application's main script, which would
run a user's top-level ``load()`` again.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any, ClassVar

from ._backends.base import Engine, EngineOptions, SeqInput
from ._errors import BackendCrashedError, BackendError, ConfigError, LocalLLMError
from ._gguf import GGUFFile
from ._types import DevicePlacement, SamplingParams

ISOLATIONS = ("none", "process", "auto")
STOP_WAIT_S = 10.0  # a closing worker gets this long to free the runtime, then is killed
_FINISHED = "__finished__"


def wants_process(isolation: str, engine_cls: type[Engine]) -> bool:
    """Whether ``isolation`` puts this engine in a worker: "auto" does for runtimes known
    to abort the process (``Engine.aborts_process``)."""
    if isolation not in ISOLATIONS:
        raise ConfigError(f"isolation={isolation!r} is not one of {', '.join(ISOLATIONS)}")
    return isolation == "process" or (isolation == "auto" and engine_cls.aborts_process)


@functools.cache
def isolated_class(engine_cls: type[Engine]) -> type[ProcessEngine]:
    """A ProcessEngine subclass carrying the class-level facts of ``engine_cls`` (its name,
    capabilities and batching), which ``Model`` and the scheduler read from the class."""
    return type(f"Isolated{engine_cls.__name__}", (ProcessEngine,), {
        "backend_name": engine_cls.backend_name, "extra": engine_cls.extra,
        "formats": engine_cls.formats, "capabilities": engine_cls.capabilities,
        "options_accepted": engine_cls.options_accepted, "batching": engine_cls.batching,
        "runtime_module": engine_cls.runtime_module, "inner": engine_cls})


def open_isolated(engine_cls: type[Engine], gguf: GGUFFile, options: EngineOptions
                  ) -> ProcessEngine:
    engine_cls.check_options(options)
    return isolated_class(engine_cls)(gguf, options)


class ProcessEngine(Engine):
    """An engine in a worker process (see the module docstring)."""

    inner: ClassVar[type[Engine]]

    @classmethod
    def open(cls, gguf: GGUFFile, options: EngineOptions) -> Engine:
        return cls(gguf, options)

    def __init__(self, gguf: GGUFFile, options: EngineOptions) -> None:
        self._gguf, self._options = gguf, options
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._restarts = 0  # workers started after the first; part of handles and kv_epoch
        self._closed = False
        self._texts: dict[int, str] = {}
        self.kv_epoch = 0
        self._rows_file = _shared_file()  # logits rows, written by the worker (see above)
        self._rows: mmap.mmap | None = None
        try:
            with self._lock:
                facts = self._start_worker()
        except BaseException:  # the model failed to load there: nothing may stay behind
            self._stop_worker(kill=True)
            self._rows_file.close()
            raise
        self._facts = facts
        self._token_bytes: list[bytes] = facts["token_bytes"]
        self._eog: frozenset[int] = facts["eog"]
        self.pooling = facts["pooling"]
        self.shares_prefixes = facts["shares_prefixes"]

    # ------------------------------------------------------------ the worker's life
    def _start_worker(self) -> dict[str, Any]:
        parent, child = socket.socketpair()
        rows = self._rows_file.fileno()
        try:
            # On an abort, ggml forks gdb to print a backtrace and waits for it; a debugger
            # that stalls there holds the crash report back (and the worker's socket open)
            # for as long as it likes. The parent reports the crash; no debugger is needed.
            env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "localllm._worker", str(child.fileno()), str(rows)],
                pass_fds=(child.fileno(), rows), stdin=subprocess.DEVNULL, env=env)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        try:
            self._conn.send((self.inner, self._gguf, self._options))
        except (OSError, pickle.PicklingError, AttributeError, TypeError) as exc:
            self._stop_worker(kill=True)
            raise ConfigError(
                f"isolation='process' cannot hand backend {self.backend_name!r} to a worker "
                f"process ({exc}); its engine class must be importable by module path") from exc
        facts: dict[str, Any] = self._receive("loading the model")
        if self._rows is None and facts["rows_bytes"]:
            import numpy as np

            self._rows = mmap.mmap(rows, facts["rows_bytes"])
            self._row_table = np.frombuffer(self._rows, dtype=np.float32).reshape(
                -1, int(facts["vocab_size"]))
        return facts

    def _receive(self, doing: str) -> Any:
        assert self._conn is not None
        try:
            status, value, epoch = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._crashed(doing) from exc
        self.kv_epoch = (self._restarts << 32) | epoch
        if status == "err":
            raise _rebuild(value)
        return value

    def _crashed(self, doing: str) -> BackendCrashedError:
        """Collect the dead worker's exit status; the next call starts a new one."""
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        self._discard_connection()
        self._proc = None
        self._restarts += 1
        self.kv_epoch = self._restarts << 32  # the KV cache died with the worker
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        return BackendCrashedError(
            f"the {self.backend_name} worker process died ({how}) while {doing}; the "
            "application is unharmed and the next call starts a new worker (the runtime's "
            "last messages are on stderr)")

    def _discard_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _stop_worker(self, *, kill: bool = False) -> None:
        proc, conn = self._proc, self._conn
        self._proc = None
        if conn is not None and not kill:
            try:
                conn.send(("close", ()))
                if conn.poll(STOP_WAIT_S):
                    conn.recv()
            except (EOFError, OSError):
                pass
        self._discard_connection()
        if proc is not None:
            if kill:
                proc.kill()
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _call(self, name: str, *args: Any) -> Any:
        with self._lock:
            if self._closed:
                raise BackendError(f"the {self.backend_name} worker was closed")
            if self._proc is None:  # the last one crashed: a new worker reloads the model
                self._start_worker()
            assert self._conn is not None
            try:
                self._conn.send((name, args))
            except OSError as exc:
                raise self._crashed(f"running {name}") from exc
            return self._receive(f"running {name}")

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id (None between a crash and the next call)."""
        return None if self._proc is None else self._proc.pid

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stop_worker()
            if self._rows is not None:
                del self._row_table  # the view holds the map open
                self._rows.close()
            self._rows_file.close()

    def _row(self, value: Any) -> Any:
        """A logits row the worker left in the shared file, copied out (the next call
        overwrites it); any other value as it came."""
        if type(value) is tuple:
            return self._row_table[value[1]].copy()
        return value

    # ------------------------------------------------------------ facts, copied once
    @property
    def backend_version(self) -> str:
        return str(self._facts["backend_version"])

    @property
    def placement(self) -> DevicePlacement:
        placement: DevicePlacement = self._facts["placement"]
        return placement

    @property
    def context_length(self) -> int:
        return int(self._facts["context_length"])

    @property
    def vocab_size(self) -> int:
        return int(self._facts["vocab_size"])

    @property
    def add_bos(self) -> bool:
        return bool(self._facts["add_bos"])

    @property
    def max_sequences(self) -> int:
        return int(self._facts["max_sequences"])

    @property
    def kv_capacity(self) -> int:
        return int(self._facts["kv_capacity"])

    @property
    def batch_size(self) -> int:
        return int(self._facts["batch_size"])

    @property
    def embedding_dim(self) -> int:
        if self._facts["embedding_dim"] is None:  # raise the runtime's own error
            return int(self._call("embedding_dim"))
        return int(self._facts["embedding_dim"])

    def token_bytes(self, token: int) -> bytes:
        return self._token_bytes[token]

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eog

    # ------------------------------------------------------------ calls
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        ids: list[int] = self._call("tokenize", text, add_special, parse_special)
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self._call("decode", list(ids)))

    def token_text(self, token: int) -> str:
        if token not in self._texts:
            self._texts[token] = str(self._call("token_text", token))
        return self._texts[token]

    def generate(self, prompt: list[int], params: SamplingParams, seed: int) -> Iterator[int]:
        handle = self._call("gen_open", list(prompt), params, seed)
        worker = self._restarts
        try:
            while True:
                token = self._call("gen_next", handle)
                if token == _FINISHED:
                    return
                yield int(token)
        finally:
            if worker == self._restarts and not self._closed:
                with contextlib.suppress(LocalLLMError):
                    self._call("gen_close", handle)

    def start(self, prompt: list[int]) -> Any:
        return self._row(self._call("start", list(prompt)))

    def push(self, token: int) -> Any:
        return self._row(self._call("push", token))

    def decode_batch(self, inputs: Sequence[SeqInput]) -> list[Any]:
        sent = [(inp.seq, list(inp.tokens), inp.pos, inp.output,
                 None if inp.native_sampler is None else self._handle(inp.native_sampler))
                for inp in inputs]
        return [self._row(out) for out in self._call("decode_batch", sent)]

    def _handle(self, sampler: tuple[int, int]) -> int:
        worker, handle = sampler
        if worker != self._restarts:
            raise BackendError("a sampler of a crashed worker was used; start the request "
                               "again")
        return handle

    def seq_remove(self, seq: int, start: int) -> None:
        self._call("seq_remove", seq, start)

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        self._call("seq_copy", src, dst, n)

    def reusable_prefix(self, seq: int, n: int) -> int:
        return int(self._call("reusable_prefix", seq, n)) if n else 0

    def native_sampler(self, params: SamplingParams, seed: int, prompt: list[int]) -> Any:
        handle = self._call("native_sampler", params, seed, list(prompt))
        return (self._restarts, handle)

    def free_native_sampler(self, sampler: Any) -> None:
        worker, handle = sampler
        if worker == self._restarts and not self._closed:  # else it died with its worker
            self._call("free_native_sampler", handle)

    def embed_batch(self, sequences: Sequence[Sequence[int]]) -> Any:
        return self._call("embed_batch", [list(s) for s in sequences])


# ---------------------------------------------------------------- exceptions across
def _shared_file() -> Any:
    """An anonymous file both processes map: memory-only where the OS has memfd."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("localllm-logits"), "r+b", buffering=0)
    return tempfile.TemporaryFile()  # closed by ProcessEngine.close


def _portable(exc: BaseException) -> tuple[Any, ...]:
    """An exception as the parent can rebuild it: its class, message and attributes
    (localllm's errors take other constructor arguments than their message)."""
    state = {k: v for k, v in vars(exc).items() if _picklable(v)}
    cls = type(exc) if _picklable(type(exc)) else BackendError
    return (cls, str(exc), state)


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _rebuild(portable: tuple[Any, ...]) -> BaseException:
    cls, message, state = portable
    exc: BaseException = cls.__new__(cls)
    BaseException.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


# ---------------------------------------------------------------- the worker
class _Worker:
    """The child's side: the real engine plus the samplers and generators it handed out."""

    def __init__(self, engine: Engine, rows_fd: int) -> None:
        self.engine = engine
        self.objects: dict[int, Any] = {}
        self.next_handle = 0
        self.n_vocab = engine.vocab_size
        # room for one logits row per sequence a batch can hold (start/push use the first)
        self.n_rows = 0 if engine.pooling is not None else max(1, engine.max_sequences)
        self.rows_bytes = self.n_rows * self.n_vocab * 4
        self.rows: Any = None
        if self.rows_bytes:
            os.ftruncate(rows_fd, self.rows_bytes)
            import numpy as np

            self.rows = np.frombuffer(mmap.mmap(rows_fd, self.rows_bytes), dtype=np.float32
                                      ).reshape(self.n_rows, self.n_vocab)

    def row(self, value: Any, slot: int) -> Any:
        """Leave a logits row in the shared file; the reply carries only its slot."""
        if self.rows is not None and slot < self.n_rows and getattr(value, "shape", None) \
                == (self.n_vocab,):
            self.rows[slot] = value
            return ("row", slot)
        return value

    def facts(self) -> dict[str, Any]:
        e = self.engine
        n = e.vocab_size
        return {"backend_version": e.backend_version, "placement": e.placement,
                "context_length": e.context_length, "vocab_size": n, "add_bos": e.add_bos,
                "max_sequences": e.max_sequences, "kv_capacity": e.kv_capacity,
                "batch_size": e.batch_size, "pooling": e.pooling,
                "shares_prefixes": e.shares_prefixes, "rows_bytes": self.rows_bytes,
                "embedding_dim": None if e.pooling is None else e.embedding_dim,
                "token_bytes": [e.token_bytes(t) for t in range(n)],
                "eog": frozenset(t for t in range(n) if e.is_end_of_generation(t))}

    def keep(self, obj: Any) -> int:
        self.next_handle += 1
        self.objects[self.next_handle] = obj
        return self.next_handle

    def run(self, name: str, args: tuple[Any, ...]) -> Any:
        e = self.engine
        if name == "tokenize":
            text, add_special, parse_special = args
            return e.tokenize(text, add_special=add_special, parse_special=parse_special)
        if name == "decode_batch":
            outputs = e.decode_batch([
                SeqInput(seq, tokens, pos, output, None if handle is None else
                         self.objects[handle]) for seq, tokens, pos, output, handle in args[0]])
            return [self.row(out, slot) for slot, out in enumerate(outputs)]
        if name in ("start", "push"):
            return self.row(getattr(e, name)(*args), 0)
        if name == "native_sampler":
            return self.keep(e.native_sampler(*args))
        if name == "free_native_sampler":
            e.free_native_sampler(self.objects.pop(args[0]))
            return None
        if name == "gen_open":
            return self.keep(e.generate(*args))
        if name == "gen_next":
            return next(self.objects[args[0]], _FINISHED)
        if name == "gen_close":
            self.objects.pop(args[0]).close()
            return None
        if name == "embedding_dim":  # asked only of a generative model: raises
            return e.embedding_dim
        if name in ("decode", "token_text", "seq_remove", "seq_copy", "reusable_prefix",
                    "embed_batch"):
            return getattr(e, name)(*args)
        raise BackendError(f"the worker has no call {name!r}")


def serve(conn: Connection, rows_fd: int) -> None:
    """The worker's loop: open the engine, then answer calls until closed or orphaned."""
    engine_cls, gguf, options = conn.recv()
    try:
        worker = _Worker(engine_cls.open(gguf, options), rows_fd)
        conn.send(("ok", worker.facts(), worker.engine.kv_epoch))
    except BaseException as exc:
        conn.send(("err", _portable(exc), 0))
        return
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):  # the application went away
            break
        if name == "close":
            worker.engine.close()
            conn.send(("ok", None, 0))
            break
        try:
            reply = ("ok", worker.run(name, args), worker.engine.kv_epoch)
        except Exception as exc:
            reply = ("err", _portable(exc), worker.engine.kv_epoch)
        conn.send(reply)

