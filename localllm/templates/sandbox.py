"""The Jinja sandbox chat templates render in, with limits on CPU time and on sizes.

A chat template is code from a downloaded file. Jinja's ``ImmutableSandboxedEnvironment``
blocks unsafe attributes and mutation; it does not bound what a template costs. Loops
over ``range()`` nest without limit, and a few operators build gigabytes (``'x' * 10**10``,
a variable doubled in a loop, ``replace()`` of every character by a long string, a huge
format width). Every place a template spends time or memory passes a check here: calls,
attribute and item access, each loop iteration, binary operators, concatenation and
filters. Jinja is imported lazily, keeping ``import localllm`` fast.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .._errors import ChatTemplateError

if TYPE_CHECKING:
    import jinja2

MAX_OUTPUT_CHARS = 4 * 1024 * 1024
MAX_INT_BITS = 1 << 16  # far past any number a chat template prints
_SIZED = (str, bytes, bytearray, list, tuple, dict, set, frozenset)
_DIGITS = re.compile(r"\d+")
_JINJA_KWARGS = ("_loop_vars", "_block_vars")  # the compiler's own, passed to every call


class RenderLimits:
    """The time and size limits of one render, checked by the sandbox hooks; inside
    a filter, whose own loops (textwrap over a long string, a sort with a key) no hook
    sees, by a profile hook on the rendering thread.

    The time limit is on the CPU time the rendering thread spends, not on the clock: a
    busy server (other requests' threads holding the GIL, a garbage collection, a
    preempted process) must not fail a template that does little work. The thread's CPU
    clock costs five times the monotonic one, so it is read only once the wall clock
    passes ``deadline``, the earliest moment the CPU budget could be spent."""

    def __init__(self, seconds: float, max_chars: int) -> None:
        self.deadline = time.monotonic() + seconds
        self._cpu_start = time.thread_time()
        self.seconds = seconds
        self.max_chars = max_chars
        self._events = 0

    def __enter__(self) -> RenderLimits:
        """Make these the limits of the render running on this thread."""
        self._previous = getattr(_ACTIVE, "limits", None)
        _ACTIVE.limits = self
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.limits = self._previous

    def run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(*args, **kwargs)`` under the profile hook. Only filters run so (the hook
        over the whole render would make it five times slower), and only when no profiler
        is installed: one already there (a developer's, or this hook in a nested filter)
        is left alone."""
        if sys.getprofile() is not None:
            return func(*args, **kwargs)
        sys.setprofile(self._profile)
        try:
            return func(*args, **kwargs)
        finally:
            sys.setprofile(None)

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        self._events += 1
        # the clock costs more than the count; and the hook must not fail the very call
        # that removes it
        if not self._events & 0x3F and arg is not sys.setprofile:
            self.check()

    def check(self) -> None:
        now = time.monotonic()
        if now <= self.deadline:
            return
        used = time.thread_time() - self._cpu_start
        if used > self.seconds:
            raise ChatTemplateError(
                f"chat template rendering took more than {self.seconds:g} s of CPU time "
                "and was stopped; the template loops too much or is hostile")
        # the thread waited rather than worked: CPU time grows no faster than the clock
        self.deadline = now + (self.seconds - used)

    def check_width(self, n: int) -> None:
        if n > self.max_chars:
            raise ChatTemplateError(
                f"the chat template asked for a value of {n} characters or items (the limit "
                f"is {self.max_chars}) and was stopped; it is broken or hostile")

    def check_size(self, value: Any) -> Any:
        if isinstance(value, _SIZED):
            self.check_width(len(value))
        return value

    def check_format(self, fmt: str) -> None:
        """A format string's widths and precisions, bounded by its digits' sum."""
        runs = _DIGITS.findall(fmt)
        if any(len(run) > 9 for run in runs):
            self.check_width(self.max_chars + 1)
        self.check_width(sum(int(run) for run in runs))

    def check_replace(self, text: str, old: Any, new: Any, count: Any = -1) -> None:
        old, new = str(old), str(new)
        n = text.count(old) if old else len(text) + 1
        if type(count) is int and count >= 0:
            n = min(n, count)
        self.check_width(len(text) + n * max(0, len(new) - len(old)))


_ACTIVE = threading.local()
# Jinja evaluates constant expressions while compiling, before any render: sizes only
_COMPILING = RenderLimits(math.inf, MAX_OUTPUT_CHARS)


def active_limits() -> RenderLimits:
    limits: RenderLimits | None = getattr(_ACTIVE, "limits", None)
    return limits if limits is not None else _COMPILING


def _checked_items(items: Iterator[Any], limits: RenderLimits) -> Iterator[Any]:
    for item in items:
        limits.check()
        yield item


def _check_call(limits: RenderLimits, func: Any, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> None:
    for key, value in kwargs.items():
        if type(value) is int and key not in _JINJA_KWARGS:
            limits.check_width(value)
    for value in args:
        if type(value) is int:
            limits.check_width(value)
    owner, name = getattr(func, "__self__", None), getattr(func, "__name__", "")
    if isinstance(owner, str):  # str methods whose result multiplies their input
        if name in ("format", "format_map"):
            limits.check_format(owner)
        elif name == "replace" and len(args) >= 2:
            limits.check_replace(owner, *args[:3])
        elif name == "expandtabs":
            size = args[0] if args and type(args[0]) is int else 8
            limits.check_width(len(owner) + owner.count("\t") * size)


def limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a filter; filters are called directly, not through ``call``) with the
    deadline, its arguments and its result checked."""
    pass_arg = getattr(func, "jinja_pass_arg", None)
    skip = 0 if pass_arg is None else 1  # the context or environment Jinja passes first

    def limited(*args: Any, **kwargs: Any) -> Any:
        limits = active_limits()
        limits.check()
        _check_call(limits, func, args[skip + 1:], kwargs)
        value, rest = (args[skip], args[skip + 1:]) if len(args) > skip else (None, ())
        if isinstance(value, str):
            if name == "replace" and len(rest) >= 2:
                limits.check_replace(value, *rest[:3])
            elif name == "indent":
                width = rest[0] if rest else kwargs.get("width", 4)
                width = width if type(width) is int else len(str(width))
                limits.check_width(len(value) + (value.count("\n") + 1) * max(width, 0))
            elif name == "format":
                limits.check_format(value)
        result = limits.check_size(limits.run(func, *args, **kwargs))
        # lazy filters (map, select, slice, batch…) hand over a generator, which the next
        # filter may drain in C: each item it yields is checked
        return _checked_items(result, limits) if isinstance(result, Iterator) else result

    if pass_arg is not None:
        limited.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    return limited


def _check_binop(limits: Any, operator: str, left: Any, right: Any) -> None:
    """Refuse, before it is computed, an operation whose result would pass the limits: a
    huge power or product of integers, a repeated or joined string or list, a format."""
    numbers = type(left) is int and type(right) is int
    if operator == "**" and numbers and right > 0 and abs(left) > 1:
        if right * (abs(left).bit_length() - 1) > MAX_INT_BITS:
            limits.check_width(limits.max_chars + 1)
    elif operator == "*" and numbers:
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            limits.check_width(limits.max_chars + 1)
    elif operator == "*" and isinstance(left, _SIZED) and type(right) is int:
        limits.check_width(len(left) * right)
    elif operator == "*" and isinstance(right, _SIZED) and type(left) is int:
        limits.check_width(len(right) * left)
    elif operator == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED):
        limits.check_width(len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        limits.check_format(left)


@lru_cache(maxsize=1)
def environment_class() -> type[jinja2.sandbox.ImmutableSandboxedEnvironment]:
    """The sandbox class, built on first use (it subclasses Jinja's)."""
    from jinja2 import nodes
    from jinja2.compiler import CodeGenerator, Frame
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedCodeGenerator(CodeGenerator):
        """Generated code that goes through the environment where Jinja's would not:
        each loop iterates through ``limited_iter``, each ``~`` through
        ``limited_concat``."""

        def visit_For(self, node: nodes.For, frame: Frame) -> None:
            wrapped = node.iter
            if not (isinstance(wrapped, nodes.Call)
                    and isinstance(wrapped.node, nodes.EnvironmentAttribute)):
                node.iter = nodes.Call(nodes.EnvironmentAttribute("limited_iter"), [wrapped],
                                       [], None, None, lineno=node.lineno)
            super().visit_For(node, frame)

        def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
            if frame.eval_ctx.volatile:
                join = "(markup_join if context.eval_ctx.volatile else str_join)"
            else:
                join = "markup_join" if frame.eval_ctx.autoescape else "str_join"
            self.write(f"environment.limited_concat({join}, (")
            for part in node.nodes:
                self.visit(part, frame)
                self.write(", ")
            self.write("))")

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        code_generator_class = LimitedCodeGenerator
        intercepted_binops = frozenset({"+", "*", "**", "%"})

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.globals.pop("lipsum", None)  # lipsum(10**5): seconds in one call
            self.filters = {name: limited_filter(name, f) for name, f in self.filters.items()}

        def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            limits = active_limits()
            limits.check()
            _check_call(limits, __obj, args, kwargs)
            return limits.check_size(super().call(__context, __obj, *args, **kwargs))

        def getattr(self, obj: Any, attribute: str) -> Any:
            limits = active_limits()
            limits.check()
            return limits.check_size(super().getattr(obj, attribute))

        def getitem(self, obj: Any, argument: Any) -> Any:
            limits = active_limits()
            limits.check()
            return limits.check_size(super().getitem(obj, argument))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            limits = active_limits()
            limits.check()
            _check_binop(limits, operator, left, right)
            return limits.check_size(super().call_binop(context, operator, left, right))

        def limited_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
            return _checked_items(iter(iterable), active_limits())

        def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
            owner = getattr(value, "__self__", None)
            if isinstance(owner, str) and getattr(value, "__name__", "") in (
                    "format", "format_map"):  # Jinja hands these to its own formatter
                active_limits().check_format(owner)
            return super().wrap_str_format(value)

        def limited_concat(self, join: Callable[[Iterable[Any]], str],
                           parts: tuple[Any, ...]) -> str:
            limits = active_limits()
            limits.check_width(sum(len(p) if isinstance(p, str) else len(str(p))
                                   for p in parts))
            return join(parts)

    return LimitedEnvironment
