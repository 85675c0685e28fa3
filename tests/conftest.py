"""Shared fixtures. Real-model tests never skip: a missing runtime or model fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import localllm
from localllm import ModelStore


@pytest.fixture(scope="session", autouse=True)
def private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Servers the tests start keep their state (stored responses) in a folder of this
    run's own, never in the user's data directory."""
    path = tmp_path_factory.mktemp("data-home")
    before = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = before


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The real default model from the store (fetched on first use, with progress)."""
    return ModelStore().ensure(localllm.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def shared_model(default_model_path: Path) -> Iterator[localllm.Model]:
    """One real model for read-only tests (loading per test would dominate the run)."""
    with localllm.load(default_model_path, context_length=1024, threads=2) as model:
        yield model


@pytest.fixture(scope="session")
def default_model_f32(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory
                      ) -> Path:
    """The default model's own Q4_1 weights, dequantized into an F32 GGUF (540 MB):
    the common ground on which runtimes must agree token for token."""
    from localllm.models.convert_precision import change_precision

    return change_precision(default_model_path, tmp_path_factory.mktemp("f32") /
                           "SmolLM2-135M-Instruct.F32.gguf", dtype="f32")


@pytest.fixture(scope="session")
def templates() -> dict[str, str]:
    """The 70-odd real chat templates the pinned llama-cpp-python sdist ships, kept in the
    reference tools' cache by ``make tools`` (never copied into this repository)."""
    from server_harness import reference_tools

    folder = reference_tools() / "templates"
    found = {p.stem: p.read_text() for p in sorted(folder.glob("*.jinja"))}
    assert len(found) >= 70, f"only {len(found)} templates in {folder}: run make tools"
    return found
