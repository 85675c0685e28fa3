"""The scheduler of one loaded model: every active request advances in one decode step.

Continuous batching as llama-server does it: one context, several sequences sharing one
KV cache. Each step decodes one batch holding the next token of every generating
sequence plus chunks of waiting prompts, so requests join and leave between steps and a
long prompt never stalls the streams already decoding. Engines that cannot batch declare
one sequence (the engine contract's default step) and take the same path: the same
queue, admission, cancellation, sampler stage and prefix reuse, one request at a time.

The scheduler only moves tokens. Everything a caller sees (detokenization, stop strings,
usage) stays in ``Model``, which consumes the tokens delivered to each request's outbox.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._defaults import DEFAULTS
from .._errors import (
    BackendError,
    LocalLLMError,
    ModelClosedError,
    QueueFullError,
    RequestTimeoutError,
)
from .._types import SamplingParams
from .engine import SEQUENCE_ENDED, Engine, SeqInput
from .speculation import MAX_STREAMS, Drafter, DraftModel, NgramDrafter, common_prefix

_END = object()  # outbox marker: the request is over (its reason travels with it)
# Prompt tokens one step takes while other sequences are decoding. A whole 512-token batch
# would stall every running stream for as long as that prefill takes; 64 tokens cost about
# one to two decode steps on a small model, and a newcomer's prompt still advances each step.
PREFILL_CHUNK_WHILE_DECODING = 64


class _Mailbox:
    """Items for one event loop's queues, handed over with one wake-up for however many
    arrive before the loop runs: a decode step delivering a token to each of 16 streams
    wakes the loop once, not 16 times."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: list[tuple[asyncio.Queue[Any], Any]] = []
        self.lock = threading.Lock()
        self.scheduled = False

    def put(self, target: asyncio.Queue[Any], item: Any) -> None:
        with self.lock:
            self.items.append((target, item))
            if self.scheduled:
                return
            self.scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for target, item in items:
            target.put_nowait(item)


_MAILBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary())
_MAILBOXES_LOCK = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    with _MAILBOXES_LOCK:
        box = _MAILBOXES.get(loop)
        if box is None:
            box = _MAILBOXES[loop] = _Mailbox(loop)
        return box


class Outbox:
    """Tokens from the scheduler thread to one consumer, sync or on an event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._sync: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._async: asyncio.Queue[Any] | None = asyncio.Queue() if loop else None
        self._mailbox = _mailbox(loop) if loop is not None else None

    def put(self, item: Any) -> None:
        if self._mailbox is None:
            self._sync.put(item)
        else:
            assert self._async is not None
            self._mailbox.put(self._async, item)

    def get(self) -> Any:
        return self._sync.get()

    async def aget(self) -> Any:
        assert self._async is not None
        return await self._async.get()


@dataclass(eq=False)
class Request:
    """One generation request as the scheduler sees it."""

    prompt: list[int]
    params: SamplingParams
    seed: int
    budget: int                      # tokens to generate at most
    native: bool                     # the runtime's sampler, else localllm's
    processors: list[Any] = field(default_factory=list)
    grammar: Any = None
    logprobs: bool = False           # deliver (token, logits row) pairs, not tokens
    deadline: float | None = None    # time.monotonic() after which it is cut
    outbox: Outbox = field(default_factory=Outbox)
    cancelled: threading.Event = field(default_factory=threading.Event)
    reused_tokens: int = 0           # prompt tokens whose KV came from another request
    images: dict[int, Any] = field(default_factory=dict)  # key -> image, for placeholders
    speculation: Any = None          # a Speculation: draft tokens and verify them per step
    # scheduler state
    seq: int = -1
    done: int = 0                    # prompt tokens already in the KV cache
    generated: int = 0
    last: int = -1                   # last sampled token, fed back next step
    sampler: Any = None
    native_chain: Any = None
    history: list[int] = field(default_factory=list)
    drafter: Any = None              # the request's NgramDrafter while it speculates

    def cancel(self) -> None:
        """Stop generating; the sequence is freed before the next decode step."""
        self.cancelled.set()

    def tokens(self) -> Iterator[Any]:
        """The sampled tokens (with their logits rows when ``logprobs``), blocking; raises
        the request's error if it failed."""
        while True:
            item = self.outbox.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def atokens(self) -> AsyncIterator[Any]:
        while True:
            item = await self.outbox.aget()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass
class _Slot:
    """One KV sequence: its tokens stay cached after a request ends, for prefix reuse."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False


class Scheduler:
    """Owns the engine's generation: a thread that runs all admitted requests together."""

    def __init__(self, engine: Engine, *, max_queue: int = DEFAULTS.max_queue,
                 draft: DraftModel | None = None) -> None:
        self.engine = engine
        self.draft = draft  # the draft model of speculative="draft", if loaded with one
        self.max_queue = max_queue
        self.parallel = max(1, engine.max_sequences)
        self._capacity = engine.kv_capacity
        self._slots = [_Slot(i) for i in range(self.parallel)]
        self._waiting: collections.deque[Request] = collections.deque()
        self._active: list[Request] = []
        self._cond = threading.Condition()
        self._engine_lock = threading.Lock()  # held while a step uses the engine
        self._closing = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (tests and benchmarks read it)

    # ------------------------------------------------------------------ submission
    def submit(self, request: Request) -> Request:
        with self._cond:
            if self._closing:
                raise ModelClosedError("the model was closed; load it again to use it")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(self.max_queue, len(self._active))
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="localllm-scheduler",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return request

    def close(self) -> None:
        """Cancel everything, end the thread; the engine is the caller's to close."""
        with self._cond:
            self._closing = True
            for req in [*self._waiting, *self._active]:
                req.cancel()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a sequence."""
        return len(self._waiting)

    @property
    def active_sequences(self) -> int:
        return sum(slot.busy for slot in self._slots)

    def clear_cache(self) -> None:
        """Drop the KV entries idle sequences keep for prefix reuse."""
        with self._engine_lock:
            for slot in self._slots:
                if not slot.busy and slot.tokens:
                    self.engine.seq_remove(slot.seq, 0)
                    slot.tokens = []
            if self.draft is not None:
                self.draft.clear()

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._waiting and not self._active:
                    self._cond.wait()
                if self._closing:
                    pending = [*self._waiting, *self._active]
                    self._waiting.clear()
                    self._active.clear()
                    break
            self.engine.on_compute_thread(self._burst)
        with self._engine_lock:
            for req in pending:
                self._finish(req, ModelClosedError("the model was closed during the request"))

    def _burst(self) -> None:
        """Steps, on the runtime's compute thread, until there is nothing to do, the
        model closes or another computation waits for that thread (two models take turns
        step by step): one thread hand-off per burst instead of two wake-ups per step."""
        while True:
            with self._engine_lock:
                try:
                    self._step()
                except Exception as exc:  # the runtime failed: every request in it fails
                    for req in list(self._active):
                        self._finish(req, exc)
                    self._forget_cached()
            if self._closing or (not self._active and not self._waiting) \
                    or self.engine.compute_waiting():
                return

    def _step(self) -> None:
        with self._cond:
            self._admit()
        self._drop_finished()
        if self._active:
            self._decode_step()

    def _reserved(self) -> int:
        return sum(len(r.prompt) + r.budget for r in self._active)

    def _admit(self) -> None:
        """Move waiting requests in (FIFO) while a sequence and KV space are free."""
        while self._waiting and len(self._active) < self.parallel:
            req = self._waiting[0]
            if req.cancelled.is_set():
                self._waiting.popleft()
                self._finish(req, None)
                continue
            need = len(req.prompt) + req.budget
            if self._active and self._reserved() + need > self._capacity:
                return  # fits the context, but must wait for KV space
            self._waiting.popleft()
            try:
                self._start(req)
            except Exception as exc:
                self._finish(req, exc)
                continue
            self._active.append(req)

    def _start(self, req: Request) -> None:
        engine = self.engine
        slot = self._choose_slot(req.prompt)
        slot.busy = True
        req.seq = slot.seq
        self._make_room(len(req.prompt) + req.budget)
        req.done = self._reuse_prefix(slot, req.prompt)
        req.reused_tokens = req.done
        req.history = list(req.prompt)
        if req.speculation is not None and engine.batching:
            if req.speculation.mode == "ngram":
                req.drafter = NgramDrafter(req.speculation, req.prompt)
            elif self.draft is not None and not req.images:  # a draft model reads no images
                req.drafter = Drafter(req.speculation)
        if req.native:
            req.native_chain = engine.native_sampler(req.params, req.seed, req.prompt)
        else:
            from ..sampling import Sampler

            grammar = [req.grammar] if req.grammar is not None else []
            req.sampler = Sampler(req.params, req.seed, [*req.processors, *grammar])

    def _choose_slot(self, prompt: list[int]) -> _Slot:
        """The free sequence whose cached tokens share the longest prefix with ``prompt``."""
        free = [s for s in self._slots if not s.busy]
        return max(free, key=lambda s: (common_prefix(s.tokens, prompt), -len(s.tokens)))

    def _make_room(self, need: int) -> None:
        """Evict cached (idle) sequences until the active reservations plus ``need`` fit."""
        cached = sum(len(s.tokens) for s in self._slots if not s.busy)
        for slot in sorted(self._slots, key=lambda s: -len(s.tokens)):
            if self._reserved() + need + cached <= self._capacity:
                return
            if not slot.busy and slot.tokens:
                cached -= len(slot.tokens)
                self.engine.seq_remove(slot.seq, 0)
                slot.tokens = []

    def _reuse_prefix(self, slot: _Slot, prompt: list[int]) -> int:
        """Keep the slot's own cached prefix, or copy a longer one from another sequence
        (a shared system prompt); return how many prompt tokens need no evaluation."""
        limit = len(prompt) - 1  # the last prompt token is always evaluated (for logits)
        engine = self.engine
        own = engine.reusable_prefix(slot.seq, min(common_prefix(slot.tokens, prompt), limit))
        best, source = own, None
        for other in self._slots if engine.shares_prefixes else ():
            if other is not slot and other.tokens:
                n = min(common_prefix(other.tokens, prompt), limit)
                if n > best and (n := engine.reusable_prefix(other.seq, n)) > best:
                    best, source = n, other
        if source is None:
            engine.seq_remove(slot.seq, own)
            slot.tokens = prompt[:own]
            return own
        engine.seq_remove(slot.seq, 0)
        engine.seq_copy(source.seq, slot.seq, best)
        slot.tokens = prompt[:best]
        return best

    def _drop_finished(self) -> None:
        """End cancelled and timed-out requests, running or still queued."""
        now = time.monotonic()
        with self._cond:
            queued = [r for r in self._waiting if r.cancelled.is_set() or (
                r.deadline is not None and now > r.deadline)]
            for req in queued:
                self._waiting.remove(req)
        for req in [*queued, *self._active]:
            if req.cancelled.is_set():
                self._finish(req, None)
            elif req.deadline is not None and now > req.deadline:
                self._finish(req, RequestTimeoutError(req.generated))

    def _decode_step(self) -> None:
        engine = self.engine
        room = engine.batch_size
        inputs: list[SeqInput] = []
        owners: list[Request] = []
        generating = [r for r in self._active if r.done >= len(r.prompt)][:room]
        # drafts pay where a step is bound by reading the weights: not with many streams,
        # nor while a prompt is evaluated (its chunk already makes the step compute-bound)
        prefilling = len(generating) < len(self._active)
        drafts = self._drafts(generating, room) \
            if len(generating) <= MAX_STREAMS and not prefilling else {}
        for req in generating:  # generating sequences first: one token each (and drafts)
            draft = drafts.get(req, [])
            inputs.append(SeqInput(req.seq, [req.last, *draft], len(req.history) - 1, True,
                                   req.native_chain, verify=len(draft)))
            owners.append(req)
            room -= 1 + len(draft)
        if inputs:  # streams are decoding: small prompt chunks keep their steps short
            room = min(room, PREFILL_CHUNK_WHILE_DECODING)
        for req in self._active:  # then prompt chunks, oldest request first
            if req.done < len(req.prompt) and room > 0:
                chunk = req.prompt[req.done:req.done + room]
                last = req.done + len(chunk) >= len(req.prompt)
                inputs.append(SeqInput(req.seq, chunk, req.done, last,
                                       req.native_chain if last else None,
                                       _images_in(chunk, req.images)))
                owners.append(req)
                room -= len(chunk)
        outputs = engine.decode_batch(inputs)
        self.steps += 1
        for req, inp, out in zip(owners, inputs, outputs, strict=True):
            slot = self._slots[req.seq]
            if inp.verify:
                self._verified(req, inp, out)
                continue
            slot.tokens.extend(inp.tokens)
            if req.done < len(req.prompt):
                req.done += len(inp.tokens)
            if out is None:
                continue
            if isinstance(out, int) and out == SEQUENCE_ENDED:  # the runtime ended it
                self._finish(req, None)
                continue
            try:
                if isinstance(out, int):
                    token = out
                else:
                    token = req.sampler.sample(req.history, out)
                    if req.grammar is not None:
                        req.grammar.consume(token)
            except Exception as exc:  # a user logits processor or the grammar failed
                self._finish(req, exc)
                continue
            self._take(req, token, out if req.logprobs else None)

    def _drafts(self, generating: list[Request], room: int) -> dict[Request, list[int]]:
        """Each speculating request's draft for this step, within the batch's room (one
        row per generating sequence is kept for its own next token): prompt lookup drafts
        at once, the draft model for all its requests together."""
        room -= len(generating)
        drafts: dict[Request, list[int]] = {}
        wants: list[tuple[int, list[int], int, float]] = []
        asking: list[Request] = []
        for req in generating:
            drafter = req.drafter
            if drafter is None or room <= 0:
                continue
            limit = min(room, req.budget - req.generated - 1)
            if isinstance(drafter, NgramDrafter):
                drafts[req] = drafter.draft(limit)
                room -= len(drafts[req])
            elif (limit := drafter.allowed(limit)) > 0:
                wants.append((req.seq, req.history, limit, req.speculation.p_min))
                asking.append(req)
                room -= limit
        if wants:
            assert self.draft is not None
            drafts.update(zip(asking, self.draft.draft(wants), strict=True))
        return drafts

    def _take(self, req: Request, token: int, logits: Any) -> None:
        """A sampled token: into the request's history, its drafter and its outbox."""
        req.history.append(token)
        req.last = token
        if req.drafter is not None:
            req.drafter.extend([token])
        self._deliver(req, token, logits)

    def _verified(self, req: Request, inp: SeqInput, out: Any) -> None:
        """A step that carried drafts: the model's own samples, position by position, up
        to the first that differs from the draft (the runtime's sampler did this loop
        itself; localllm's runs here, on the rows). The KV entries of the rejected drafts
        are dropped; the agreeing ones stay, as if decoded one by one."""
        drafts = list(inp.tokens[1:])
        tokens: list[int] = []
        rows: list[Any] = []
        try:
            if req.native:
                tokens = [int(t) for t in out]
            else:
                # each position sees the tokens sampled before it in the history (added
                # for the sampler, taken off below: _take adds them for good)
                try:
                    for i in range(len(drafts) + 1):
                        token = req.sampler.sample(req.history, out[i])
                        if req.grammar is not None:
                            req.grammar.consume(token)
                        tokens.append(token)
                        req.history.append(token)
                        rows.append(out[i])
                        if i == len(drafts) or token != drafts[i]:
                            break
                finally:
                    del req.history[len(req.history) - len(tokens):]
        except Exception as exc:  # a user logits processor or the grammar failed
            self._finish(req, exc)
            return
        accepted = len(tokens) - 1
        if accepted < len(drafts):
            self.engine.seq_remove(req.seq, inp.pos + 1 + accepted)
        self._slots[req.seq].tokens.extend(inp.tokens[:1 + accepted])
        req.drafter.record(len(drafts), accepted)
        for i, token in enumerate(tokens):
            if req.seq < 0:  # ended (end of generation, budget) before the last one
                break
            self._take(req, token, rows[i] if req.logprobs and rows else None)

    def _deliver(self, req: Request, token: int, logits: Any = None) -> None:
        req.generated += 1
        req.outbox.put(token if logits is None else (token, logits))
        if self.engine.is_end_of_generation(token) or req.generated >= req.budget:
            self._finish(req, None)

    def _finish(self, req: Request, error: BaseException | None) -> None:
        if req in self._active:
            self._active.remove(req)
        if req.seq >= 0:
            slot = self._slots[req.seq]
            slot.busy = False
            if error is not None:  # a failed step may have left partial KV entries
                with contextlib.suppress(Exception):
                    self.engine.seq_remove(req.seq, 0)
                slot.tokens = []
            req.seq = -1
        if req.native_chain is not None:
            self.engine.free_native_sampler(req.native_chain)
            req.native_chain = None
        if error is not None:
            req.outbox.put(self._typed(error))
        req.outbox.put(_END)

    def _forget_cached(self) -> None:
        """After a failed step the KV cache is in an unknown state (a crashed worker took
        it with it): no idle sequence's tokens may be reused."""
        for slot in self._slots:
            if not slot.busy and slot.tokens:
                with contextlib.suppress(Exception):
                    self.engine.seq_remove(slot.seq, 0)
                slot.tokens = []
        if self.draft is not None:
            with contextlib.suppress(Exception):
                self.draft.clear()

    def _typed(self, exc: BaseException) -> BaseException:
        """The one place a failure becomes what the caller catches: localllm errors as
        they are, anything else (the runtime, a user logits processor) as BackendError."""
        if isinstance(exc, LocalLLMError):
            return exc
        error = BackendError(f"{self.engine.backend_name} failed while generating: "
                             f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error


def _images_in(chunk: list[int], images: dict[int, Any]) -> dict[int, Any] | None:
    """The images whose placeholder ids (negative) are in a prompt chunk."""
    if not images or min(chunk) >= 0:
        return None
    from ..images import placeholder_row

    return {key: images[key] for key in {placeholder_row(t)[0] for t in chunk if t < 0}}
