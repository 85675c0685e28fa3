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

The worker is ``python -m localllm.core.worker FD``, not a ``multiprocessing`` child: a
spawned ``multiprocessing`` process re-imports the application's main script, which would
run a user's top-level ``load()`` again.
"""

from __future__ import annotations

import abc
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
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, ClassVar

from .._errors import BackendCrashedError, BackendError, ConfigError
from .._types import SamplingParams
from ..models.gguf import ModelFile
from .engine import (
    ENGINE_CALLS,
    ENGINE_FACTS,
    BackendSpec,
    Engine,
    EngineOptions,
    SeqInput,
)

ISOLATIONS = ("none", "process", "auto")
STOP_WAIT_S = 10.0  # a closing worker gets this long to free the runtime, then is killed


def wants_process(isolation: str, engine_cls: type[Engine]) -> bool:
    """Whether ``isolation`` puts this engine in a worker: "auto" does for runtimes known
    to abort the process (``Engine.aborts_process``)."""
    if isolation not in ISOLATIONS:
        raise ConfigError(f"isolation={isolation!r} is not one of {', '.join(ISOLATIONS)}")
    return isolation == "process" or (isolation == "auto" and engine_cls.aborts_process)


@functools.cache
def isolated_class(engine_cls: type[Engine]) -> type[ProcessEngine]:
    """A ProcessEngine subclass carrying the class-level facts of ``engine_cls`` (its spec,
    capabilities and options), which ``Model`` and the scheduler read from the class."""
    spec = engine_cls.spec or BackendSpec.of(engine_cls, engine_cls.__qualname__)
    return type(f"Isolated{engine_cls.__name__}", (ProcessEngine,), {
        "spec": spec, "capabilities": engine_cls.capabilities,
        "options_accepted": engine_cls.options_accepted, "inner": engine_cls})


def _forwarding(cls: type[ProcessEngine]) -> type[ProcessEngine]:
    """Give the class every fact and call of the engine protocol it does not define
    itself (``ENGINE_FACTS``, ``ENGINE_CALLS``): a fact reads the copy the worker sent at
    start, a call is one request/reply. So a new engine method needs no edit here."""

    def fact(name: str) -> property:
        def read(self: ProcessEngine) -> Any:
            value = self._facts[name]
            if isinstance(value, _Raised):  # the engine raised when asked: so does this
                raise _rebuild(value.portable)
            return value
        return property(read)

    def call(name: str) -> Callable[..., Any]:
        def forward(self: ProcessEngine, *args: Any, **kwargs: Any) -> Any:
            return self._call(name, args, kwargs)
        forward.__name__ = name
        return forward

    for name in ENGINE_FACTS:
        if name not in vars(cls):
            setattr(cls, name, fact(name))
    for name in ENGINE_CALLS:
        if name not in vars(cls):
            setattr(cls, name, call(name))
    abc.update_abstractmethods(cls)
    return cls


def open_isolated(engine_cls: type[Engine], gguf: ModelFile, options: EngineOptions
                  ) -> ProcessEngine:
    engine_cls.check_options(options)
    return isolated_class(engine_cls)(gguf, options)


@_forwarding
class ProcessEngine(Engine):
    """An engine in a worker process (see the module docstring). The worker runs the
    batched contract (a one-sequence runtime through the contract's default step), so a
    decode step is one round trip whatever the runtime."""

    inner: ClassVar[type[Engine]]

    @classmethod
    def open(cls, gguf: ModelFile, options: EngineOptions) -> Engine:
        return cls(gguf, options)

    def __init__(self, gguf: ModelFile, options: EngineOptions) -> None:
        self._gguf, self._options = gguf, options
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._restarts = 0  # workers started after the first; part of sampler handles
        self._closed = False
        self._texts: dict[int, str] = {}
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
                [sys.executable, "-m", "localllm.core.worker", str(child.fileno()), str(rows)],
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
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._crashed(doing) from exc
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
        self._restarts += 1  # the KV cache died with the worker; the new one says so
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
                conn.send(("close", (), {}))
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

    def _call(self, name: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
              ) -> Any:
        with self._lock:
            if self._closed:
                raise BackendError(f"the {self.backend_name} worker was closed")
            if self._proc is None:  # the last one crashed: a new worker reloads the model
                self._start_worker()
            assert self._conn is not None
            try:
                self._conn.send((name, args, kwargs or {}))
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

    # ------------------------------------------------------------ what is not a plain call
    # (facts and the other calls are forwarded generically: see _forwarding)
    def token_bytes(self, token: int) -> bytes:
        return self._token_bytes[token]  # a table copied at start: read per token

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eog

    def token_text(self, token: int) -> str:
        if token not in self._texts:
            self._texts[token] = str(self._call("token_text", (token,)))
        return self._texts[token]

    def decode_batch(self, inputs: Sequence[SeqInput]) -> list[Any]:
        sent = [(inp.seq, list(inp.tokens), inp.pos, inp.output,
                 None if inp.native_sampler is None else self._handle(inp.native_sampler),
                 inp.images, inp.verify) for inp in inputs]  # images go along with their rows
        return [self._row(out) for out in self._call("decode_batch", (sent,))]

    def _handle(self, sampler: tuple[int, int]) -> int:
        worker, handle = sampler
        if worker != self._restarts:
            raise BackendError("a sampler of a crashed worker was used; start the request "
                               "again")
        return handle

    def native_sampler(self, params: SamplingParams, seed: int, prompt: list[int]) -> Any:
        handle = self._call("native_sampler", (params, seed, list(prompt)))
        return (self._restarts, handle)

    def free_native_sampler(self, sampler: Any) -> None:
        worker, handle = sampler
        if worker == self._restarts and not self._closed:  # else it died with its worker
            self._call("free_native_sampler", (handle,))


class _Raised:
    """A fact the engine raised on when asked (``embedding_dim`` of a generative model)."""

    def __init__(self, portable: tuple[Any, ...]) -> None:
        self.portable = portable


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
        facts: dict[str, Any] = {}
        for name in ENGINE_FACTS:
            try:
                facts[name] = getattr(e, name)
            except Exception as exc:
                facts[name] = _Raised(_portable(exc))
        return {**facts, "rows_bytes": self.rows_bytes,
                "token_bytes": [e.token_bytes(t) for t in range(n)],
                "eog": frozenset(t for t in range(n) if e.is_end_of_generation(t))}

    def keep(self, obj: Any) -> int:
        self.next_handle += 1
        self.objects[self.next_handle] = obj
        return self.next_handle

    def run(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        e = self.engine
        if name == "decode_batch":
            outputs = e.decode_batch([
                SeqInput(seq, tokens, pos, output, None if handle is None else
                         self.objects[handle], images, verify)
                for seq, tokens, pos, output, handle, images, verify in args[0]])
            return [self.row(out, slot) for slot, out in enumerate(outputs)]
        if name == "native_sampler":  # the runtime's sampler stays here, behind a handle
            return self.keep(e.native_sampler(*args))
        if name == "free_native_sampler":
            e.free_native_sampler(self.objects.pop(args[0]))
            return None
        if name in ENGINE_CALLS:
            return getattr(e, name)(*args, **kwargs)
        raise BackendError(f"the worker has no call {name!r}")


def serve(conn: Connection, rows_fd: int) -> None:
    """The worker's loop: open the engine, then answer calls until closed or orphaned."""
    engine_cls, gguf, options = conn.recv()
    try:
        worker = _Worker(engine_cls.open(gguf, options), rows_fd)
        conn.send(("ok", worker.facts()))
    except BaseException as exc:
        conn.send(("err", _portable(exc)))
        return
    # answered where the runtime computes: no thread hand-off per call (per step)
    worker.engine.on_compute_thread(lambda: _answer(conn, worker))


def _answer(conn: Connection, worker: _Worker) -> None:
    while True:
        try:
            name, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the application went away
            break
        if name == "close":
            worker.engine.close()
            conn.send(("ok", None))
            break
        try:
            reply = ("ok", worker.run(name, args, kwargs))
        except Exception as exc:
            reply = ("err", _portable(exc))
        conn.send(reply)

