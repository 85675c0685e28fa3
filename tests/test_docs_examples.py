"""The Python blocks of the documentation pages run as written, on the real default model
(each page's blocks in one fresh interpreter, in order)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
PAGES = ["concurrency.md", "structured-output.md", "tools.md", "embeddings.md",
         "reliability.md", "chat-templates.md", "reasoning.md"]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str) -> None:
    blocks = python_blocks(DOCS / page)
    assert blocks, f"{page} has no python example"
    proc = subprocess.run([sys.executable, "-c", "\n\n".join(blocks)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()


@pytest.mark.parametrize("page", ["serving.md", "remote.md"])
def test_client_examples_run_against_a_real_server(page: str) -> None:
    """The client examples of the serving and remote pages, pointed at a `localllm serve`
    started here."""
    from server_harness import served_process

    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= 1
    with served_process(["--context", "512", "--parallel", "2"]) as (url, _):
        code = "\n\n".join(blocks).replace("http://127.0.0.1:8000", url)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) >= 2
