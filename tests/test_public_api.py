"""The public surface: sorted ``__all__``, everything exported exists, errors mix builtins."""

from __future__ import annotations

import types

import localllm


def test_all_is_sorted_and_complete() -> None:
    assert localllm.__all__ == sorted(localllm.__all__)
    public = {name for name in dir(localllm)
              if not name.startswith("_")
              and not isinstance(getattr(localllm, name), types.ModuleType)}
    assert set(localllm.__all__) == public


def test_error_tree() -> None:
    assert issubclass(localllm.ModelNotFoundError, FileNotFoundError)
    assert issubclass(localllm.ConfigError, ValueError)
    assert issubclass(localllm.BackendUnavailableError, ImportError)
    assert issubclass(localllm.ContextOverflowError, ValueError)
    for name in localllm.__all__:
        obj = getattr(localllm, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, localllm.LocalLLMError), name


def test_backends_are_listed_without_importing_runtimes() -> None:
    assert localllm.backend_names()[0] == "llama.cpp"
    assert "fake" in localllm.backend_names()


def test_sampling_params_are_frozen_and_validated() -> None:
    p = localllm.SamplingParams(stop="###")
    assert p.stop == ("###",)
    try:
        p.temperature = 2  # type: ignore[misc]
    except Exception as exc:  # pydantic's frozen-instance error
        assert "frozen" in str(exc)
    else:
        raise AssertionError("SamplingParams must be frozen")


def test_feature_matrix_page_is_generated_from_the_code() -> None:
    from pathlib import Path

    from localllm.support.docs import feature_matrix

    page = Path(__file__).parent.parent / "docs" / "feature-matrix.md"
    assert page.read_text() == feature_matrix(), \
        "regenerate: python -m localllm.support.docs > docs/feature-matrix.md"
