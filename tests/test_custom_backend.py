"""The documented custom backend example adopts the contract suite like built-in ones."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import localllm
from localllm.engines import spec_of
from localllm.testing import BackendContract

EXAMPLES = Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import custom_backend  # noqa: E402  (registers the "counting" backend)


class TestCountingBackendContract(BackendContract):
    @pytest.fixture
    def model(self, default_model_path: Path) -> Iterator[localllm.Model]:
        with localllm.load(default_model_path, backend="counting", context_length=256) as m:
            yield m


def test_it_counts_and_runs_as_a_script(default_model_path: Path) -> None:
    with localllm.load(default_model_path, backend="counting", context_length=256) as model:
        result = model.complete("Hi", max_tokens=3, temperature=0)
        first = model.tokenizer.encode("Hi")[-1]
        assert result.token_ids == (first + 1, first + 2, first + 3)
        assert isinstance(model._engine, custom_backend.CountingEngine)
    proc = subprocess.run([sys.executable, str(EXAMPLES / "custom_backend.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("counting"), proc.stderr


def test_a_third_party_class_declares_its_facts_itself() -> None:
    """A registered class with no spec of its own: the registry reads its facts from it."""
    spec = spec_of("counting")
    assert (spec.name, spec.formats, spec.batching, spec.target) == (
        "counting", ("gguf",), False, "custom_backend:CountingEngine")
