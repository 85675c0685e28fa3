"""The fuzzing process: ``python -m localllm.support.fuzz.child TARGET SCRATCH LIBFUZZER_ARGS…``.

Started by ``python -m localllm.support.fuzz``, never by hand. It instruments localllm (and the
pure-Python libraries its readers run) for coverage, then hands the target to atheris.
It starts no process itself, so a mistake in its arguments cannot multiply fuzzers.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..._errors import LocalLLMError
from .targets import TARGETS, Scratch

#: instrumented for coverage: localllm and the pure-Python libraries its readers run
INSTRUMENTED = ("localllm", "jinja2", "onnx")


def run(target_name: str, scratch: Scratch, libfuzzer: list[str]) -> None:
    import atheris  # type: ignore[import-untyped]

    target = TARGETS[target_name]
    # replay the corpus once, uninstrumented: this imports what the readers import lazily
    # (onnx, jinja2's compiler), so the first fuzzed input is not charged for it, and a
    # seed that no longer passes is reported plainly
    corpus = [p for a in libfuzzer if not a.startswith("-")
              for p in sorted(Path(a).iterdir()) if p.is_file()]
    for path in corpus:
        with contextlib.suppress(LocalLLMError):
            target(scratch, path.read_bytes())
    instrument(INSTRUMENTED)
    print(f"INFO: localllm fuzz target {target_name!r}: {len(corpus)} corpus files replayed",
          file=sys.stderr, flush=True)

    def one_input(data: bytes) -> None:
        with contextlib.suppress(LocalLLMError):  # the typed refusal bad inputs should get
            target(scratch, data)

    atheris.Setup([sys.argv[0], *libfuzzer], one_input)
    atheris.Fuzz()  # libFuzzer exits the process when the run ends


def instrument(prefixes: tuple[str, ...]) -> None:
    """Add coverage instrumentation to the already-imported functions of ``prefixes``
    (``python -m`` imports localllm before any of this runs, so an import hook would come
    too late, and ``atheris.instrument_all`` would instrument every library loaded)."""
    import gc
    import types

    import atheris

    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType):
            continue
        module = getattr(obj, "__module__", None) or ""
        if module.split(".")[0] in prefixes and module in sys.modules:
            try:
                atheris.instrument_func(obj)
            except Exception as exc:  # a function left uninstrumented is no failure
                print(f"INFO: not instrumented: {obj.__qualname__}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in TARGETS:
        sys.exit("usage: python -m localllm.support.fuzz TARGET --seconds N (this module is the "
                 "fuzzing process it starts)")
    run(sys.argv[1], Scratch(Path(sys.argv[2])), sys.argv[3:])
