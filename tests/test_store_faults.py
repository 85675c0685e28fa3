"""Store faults on real filesystems and real processes: two processes pulling the same
model at once (one fetch, one verified file), a pull onto a full disk (a 4 MiB tmpfs) and a
read-only model store (a tmpfs remounted read-only). The downloads come from the local
stand-in hub of test_store. Mounting needs root, as on the machines this suite runs on; a
machine where it is refused fails these tests loudly rather than skipping them."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_store import PAYLOAD, SHA, HubHandler, entry, hub  # noqa: F401 (fixture)

import localllm
from localllm import ModelStore


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"cannot mount a tmpfs here (root is needed): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


PULL = """
import sys
from localllm import CatalogEntry, HubSource, ModelStore
entry = CatalogEntry(name="tiny", filename="model.gguf", sha256=sys.argv[2],
                     size=int(sys.argv[3]), source=HubSource("org/repo", "model.gguf"),
                     description="test", license="none")
print(ModelStore(sys.argv[1], {"tiny": entry}).ensure("tiny", progress=False), flush=True)
"""


@pytest.mark.usefixtures("hub")
def test_two_processes_pulling_at_once_end_with_one_verified_file(tmp_path: Path) -> None:
    """The hub answers slowly, so both processes are inside ensure() together: the file
    lock lets one fetch while the other waits and then finds the verified file."""
    HubHandler.delay_s = 1.0
    try:
        procs = [subprocess.Popen([sys.executable, "-c", PULL, str(tmp_path / "store"), SHA,
                                   str(len(PAYLOAD))], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    finally:
        HubHandler.delay_s = 0.0
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    assert HubHandler.requests.count(None) == 1  # one full GET: the other process waited
    assert hashlib.sha256(Path(outs[0]).read_bytes()).hexdigest() == SHA


@pytest.mark.usefixtures("hub")
def test_a_full_disk_during_a_pull_is_a_store_error_and_damages_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = PAYLOAD[:100_000]
    with tmpfs(tmp_path / "disk", "4m") as disk:
        monkeypatch.setenv("HF_HOME", str(disk / "hf"))
        store = ModelStore(disk / "home", {"tiny": entry()})
        keep = disk / "home" / "models" / "other" / "other.gguf"
        keep.parent.mkdir(parents=True)
        keep.write_bytes(small)
        with pytest.raises(localllm.StoreError, match="no space left") as info:
            store.ensure("tiny", progress=False)
        assert str(store.path_for(store.entry("tiny"))) in str(info.value)
        assert not store.path_for(store.entry("tiny")).exists()
        assert not list((disk / "hf").rglob("*.incomplete"))  # the partial file is gone
        assert keep.read_bytes() == small


@pytest.mark.usefixtures("hub")
def test_a_read_only_store_gives_a_clear_error_and_still_serves_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with tmpfs(tmp_path / "ro", "64m") as root:
        monkeypatch.setenv("HF_HOME", str(root / "hf"))
        full = ModelStore(root / "home", {"tiny": entry()})
        path = full.ensure("tiny", progress=False)  # filled while writable
        for marker in path.parent.glob("*.verified"):
            marker.unlink()  # so the read-only store must re-verify without writing
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        monkeypatch.setenv("LOCALLLM_HOME", str(root / "home"))
        other = localllm.CatalogEntry(name="more", filename="more.gguf", sha256=SHA,
                                      size=len(PAYLOAD), source=entry().source,
                                      description="test", license="none")
        store = ModelStore(catalog={"tiny": entry(), "more": other})
        assert store.ensure("tiny", progress=False).read_bytes() == PAYLOAD
        with pytest.raises(localllm.StoreError, match="LOCALLLM_HOME to a writable folder"):
            store.ensure("more", progress=False)
        assert os.access(path, os.R_OK)
