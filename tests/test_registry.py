"""The backend registry holds each built-in backend's facts as data (BackendSpec): the
engine classes read theirs from it, and choosing a backend by format imports none."""

from __future__ import annotations

import subprocess
import sys

import pytest

from localllm.core.isolation import isolated_class
from localllm.engines import SPECS, auto_candidates, get_backend, spec_of


@pytest.mark.parametrize("name", sorted(SPECS))
def test_an_engine_class_reads_its_facts_from_the_registry(name: str) -> None:
    spec = SPECS[name]
    cls = get_backend(name)  # the module, not the runtime
    assert cls.spec is spec and spec_of(name) is spec
    facts = (cls.backend_name, cls.formats, cls.extra, cls.runtime_module,
             cls.aborts_process, cls.partial_offload, cls.batching, cls.native_sampling)
    assert facts == (spec.name, spec.formats, spec.extra, spec.runtime_module,
                     spec.aborts_process, spec.partial_offload, spec.batching,
                     spec.native_sampling)
    isolated = isolated_class(cls)  # isolation carries the same facts
    assert (isolated.backend_name, isolated.batching, isolated.formats) == \
        (spec.name, spec.batching, spec.formats)


def test_auto_choice_follows_the_table_and_imports_no_backend() -> None:
    builtin = set(SPECS)  # third-party registrations (another test's) come after these
    assert [s.name for s in auto_candidates("gguf") if s.name in builtin] == [
        "llama.cpp", "gpt4all", "ctransformers"]
    assert [s.name for s in auto_candidates("onnx") if s.name in builtin] == [
        "onnxruntime"]  # genai only when named
    code = ("import sys, localllm.engines as e; e.auto_candidates('gguf'); "
            "print(sorted(m for m in sys.modules if m.startswith('localllm.engines.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out

