"""The models a server offers: names, loading on first use, idle expiry, eviction.

A request names a model; only names listed here resolve, so no request field is ever used
as a path. Loading goes through the planner: when a model would not fit in free RAM, the
least recently used idle model is unloaded first, and if nothing idle is left the request
gets the plan's reason (a 503). Each model unloads after ``keep_alive`` without requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._defaults import DEFAULTS
from .._errors import ConfigError, LocalLLMError, ModelNotFoundError, WillNotFitError
from ..core.model import Model
from ..models.store import ModelStore


class ModelUnavailableError(LocalLLMError):
    """The model cannot be loaded now (not enough free memory); answered with 503."""


@dataclass
class ServedModel:
    """One model the server offers, loaded or not."""

    name: str
    source: str                       # a path or a catalog name, never from a request
    size: int
    model: Model | None = None
    loaded_at: float = 0.0
    last_used: float = 0.0
    active: int = 0                   # requests running on it now
    keep_alive_s: float | None = None  # None: never expires
    load_options: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> Model:
        """The loaded model; ``Registry.acquire`` loads it before handing this out."""
        assert self.model is not None, f"{self.name} is not loaded"
        return self.model

    @property
    def expires_at(self) -> float | None:
        if self.model is None or self.keep_alive_s is None:
            return None
        return self.last_used + self.keep_alive_s


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number, or "5m", "1h30m", "300ms"; negative means
    forever (None), 0 unloads right after the request."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"keep_alive={value!r} is invalid; give seconds or a duration "
                          "such as '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration(value.strip())
    else:
        raise ConfigError(f"keep_alive={value!r} is invalid; give seconds or '5m'")
    return None if seconds < 0 else seconds


_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.fullmatch(r"(-?)((?:\d+(?:\.\d+)?(?:ms|s|m|h))+)", text)
    if parts is None:
        raise ConfigError(f"keep_alive={text!r} is not a duration; use e.g. '30s', '5m', "
                          "'1h', a number of seconds, or -1 for forever")
    total = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)",
                                                             parts.group(2)))
    return -total if parts.group(1) else total


class Registry:
    """Names → models; loads, keeps and unloads them for the server."""

    def __init__(self, sources: Sequence[str], *, parallel: int | None = None,
                 max_queue: int = DEFAULTS.max_queue,
                 keep_alive_s: float | None = DEFAULTS.keep_alive_s,
                 threads: int | None = None, context_length: int | None = None,
                 ram_budget: int | None = None, store: ModelStore | None = None,
                 isolation: str = DEFAULTS.server_isolation,
                 system_message: str = "template", speculative: str | None = None,
                 draft: str | None = None) -> None:
        if draft is not None and len(sources) != 1:
            raise ConfigError(f"a draft model drafts for one model; {len(sources)} are "
                              "served: serve the model it shares a vocabulary with alone")
        self.parallel = parallel
        self.speculative = speculative  # load()'s: "ngram" drafts by prompt lookup
        self.draft = draft  # load()'s: a smaller model of the same vocabulary that drafts
        self.isolation = isolation  # load()'s: "auto" isolates runtimes known to abort
        self.system_message = system_message  # load()'s: "fold" for templates refusing one
        self.ram_budget = ram_budget  # bytes all loaded models may take (their plans')
        self.max_queue = max_queue
        self.keep_alive_s = keep_alive_s
        self.threads = threads
        self.context_length = context_length
        self.store = store or ModelStore()
        self.models: dict[str, ServedModel] = {}
        for source in sources:
            self._add_source(source)
        for stored in self.store.list_local():
            if stored.name not in self.models:
                self.models[stored.name] = ServedModel(stored.name, stored.name, stored.size)
        self.loading = 0
        self._lock = asyncio.Lock()  # one load or unload at a time

    def _add_source(self, source: str) -> None:
        path = Path(source).expanduser()
        if path.is_file():
            name = path.stem
            self.models[name] = ServedModel(name, str(path.resolve()), path.stat().st_size)
            return
        entry = self.store.entry(source)  # raises ModelNotFoundError with the catalog
        if not self.store.path_for(entry).is_file():
            raise ModelNotFoundError(f"{source} is in the catalog but not in the model "
                                     f"store; run `localllm pull {source}` first")
        self.models[source] = ServedModel(source, source, entry.size)

    @property
    def default_name(self) -> str:
        if not self.models:
            raise ModelNotFoundError("no models to serve; pass a .gguf path or pull one")
        return next(iter(self.models))

    def lookup(self, name: Any) -> ServedModel:
        """The served model called ``name`` (Ollama's ':latest' tag is accepted)."""
        if not isinstance(name, str) or not name:
            raise ConfigError("'model' must be a non-empty string naming a served model")
        served = self.models.get(name) or self.models.get(name.removesuffix(":latest"))
        if served is None:
            raise ModelNotFoundError(f"the model {name!r} is not served here; available: "
                                     f"{', '.join(self.models)}")
        return served

    async def acquire(self, name: Any, load_options: dict[str, Any] | None = None
                      ) -> ServedModel:
        """The model, loaded (through the planner) and marked busy until ``release``."""
        served = self.lookup(name)
        async with self._lock:
            if served.model is None or served.model.closed:
                await self._load(served, load_options or {})
            elif load_options:
                _check_loaded_options(served, load_options)
            served.active += 1
            served.last_used = time.monotonic()
        return served

    def release(self, served: ServedModel, keep_alive_s: Any = "default") -> None:
        served.active -= 1
        served.last_used = time.monotonic()
        if keep_alive_s != "default":
            served.keep_alive_s = keep_alive_s

    @contextlib.asynccontextmanager
    async def use(self, name: Any, load_options: dict[str, Any] | None = None,
                  keep_alive_s: Any = "default") -> AsyncIterator[ServedModel]:
        served = await self.acquire(name, load_options)
        try:
            yield served
        finally:
            self.release(served, keep_alive_s)
            if served.keep_alive_s == 0 and served.active == 0:
                await self.unload(served)

    async def _load(self, served: ServedModel, options: dict[str, Any]) -> None:
        """Read the header once, plan once (unloading idle models while the plan does not
        fit the budget), and open the model as planned."""
        from ..models.loader import open_planned, plan_resolved, resolve, resolve_projector

        kwargs: dict[str, Any] = {"parallel": self.parallel, "threads": self.threads,
                                  "context_length": self.context_length, **options}
        self.loading += 1
        try:
            resolved = await asyncio.to_thread(resolve, served.source)
            # a projector beside the model (or in its Ollama manifest) comes along
            kwargs["projector"] = await asyncio.to_thread(resolve_projector, None, resolved)
            trained = resolved.gguf.context_length
            if "context_length" not in options and self.context_length is not None and trained:
                # --context is for every model: one trained on fewer tokens (an embedder)
                # gets its own length, not a load error
                kwargs["context_length"] = min(self.context_length, trained)
            while True:
                try:
                    plan = await asyncio.to_thread(plan_resolved, resolved, **kwargs)
                    reason = self._over_budget(plan.predicted_ram_after_load)
                    if reason is None:
                        break
                except WillNotFitError as exc:
                    reason = f"it does not fit in free memory now: {exc}"
                victim = self._least_recently_used_idle(served)
                if victim is None:
                    raise ModelUnavailableError(
                        f"{served.name} cannot be loaded: {reason}; no idle model is left "
                        "to unload, retry when a request ends")
                await self._unload(victim)
            served.model = await asyncio.to_thread(
                open_planned, resolved, plan, max_queue=self.max_queue,
                isolation=self.isolation, system_message=self.system_message,
                speculative=self.speculative if resolved.engine_cls.batching else None,
                draft=self.draft, store=self.store,
                projector=kwargs["projector"])
        finally:
            self.loading -= 1
        served.load_options = options
        served.loaded_at = served.last_used = time.monotonic()
        served.keep_alive_s = self.keep_alive_s

    def _over_budget(self, need: int) -> str | None:
        """Why a model needing ``need`` bytes does not fit the RAM budget, or None."""
        if self.ram_budget is None:
            return None
        used = sum(m.model.info.plan.predicted_ram_after_load for m in self.loaded()
                   if m.model is not None and m.model.info.plan is not None)
        if used + need <= self.ram_budget:
            return None
        mib = 1024 * 1024
        return (f"it needs {need / mib:,.0f} MiB and the loaded models take "
                f"{used / mib:,.0f} MiB of the {self.ram_budget / mib:,.0f} MiB budget")

    def _least_recently_used_idle(self, keep: ServedModel) -> ServedModel | None:
        idle = [m for m in self.models.values()
                if m is not keep and m.model is not None and m.active == 0]
        return min(idle, key=lambda m: m.last_used, default=None)

    async def unload(self, served: ServedModel) -> None:
        async with self._lock:
            if served.active == 0:
                await self._unload(served)

    async def _unload(self, served: ServedModel) -> None:
        model, served.model = served.model, None
        if model is not None:
            await asyncio.to_thread(model.close)

    async def expire_idle(self) -> None:
        """Unload every idle model whose keep_alive has run out."""
        now = time.monotonic()
        for served in list(self.models.values()):
            expires = served.expires_at
            if expires is not None and served.active == 0 and now >= expires:
                await self.unload(served)

    async def reaper(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.expire_idle()

    async def close(self) -> None:
        for served in self.models.values():
            await self._unload(served)

    def loaded(self) -> list[ServedModel]:
        return [m for m in self.models.values() if m.model is not None]


def _check_loaded_options(served: ServedModel, options: dict[str, Any]) -> None:
    """A loaded model is never reloaded behind running requests: a load-time option that
    differs is an error that says how to apply it."""
    assert served.model is not None
    info = served.model.info
    threads = options.get("threads")
    if threads is not None and threads != info.threads:
        raise ConfigError(f"{served.name} is loaded with {info.threads} threads, not "
                          f"{threads}; unload it first (keep_alive 0) to load it with others")
    ctx = options.get("context_length")
    if ctx is not None and ctx > info.context_length:
        raise ConfigError(f"{served.name} is loaded with a context of {info.context_length} "
                          f"tokens, less than num_ctx={ctx}; unload it first (keep_alive 0) "
                          "to load it with a longer context")
