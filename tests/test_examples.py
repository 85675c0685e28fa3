"""Every example script runs as a user would run it, on the real default model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(name: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], input=stdin,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.usefixtures("default_model_path")
class TestExamples:
    def test_quickstart(self) -> None:
        out = run("quickstart.py")
        assert "Paris" in out and "tokens/s" in out

    def test_chat_repl(self) -> None:
        out = run("chat_repl.py", stdin="Name the capital of France.\nAnd Italy?\n\n")
        assert "Paris" in out

    def test_choose_backend(self) -> None:
        out = run("choose_backend.py")
        assert "llama.cpp: logits=True" in out and "ctransformers refused" in out

    def test_plan_and_recommend(self) -> None:
        out = run("plan_and_recommend.py")
        assert "context    4096" in out and "smollm2-135m-instruct" in out

    def test_structured_json(self) -> None:
        assert "country='France'" in run("structured_json.py")

    def test_custom_logits_processor(self) -> None:
        lines = run("custom_logits_processor.py").splitlines()
        assert "Paris" in lines[0] and "Paris" not in lines[1]

    def test_every_backend(self) -> None:
        out = run("every_backend.py")
        assert out.count("Paris") >= 2 and "ctransformers  cannot run it" in out
