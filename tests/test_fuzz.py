"""Malformed model files and hostile chat templates: the committed regression corpus, the
fuzzers (run for real, LOCALLLM_FUZZ_SECONDS each) and the bugs they found.

The corpus (tests/data/malformed, written by scripts/make_malformed_corpus.py) holds
tiny synthetic files with one field damaged; each must be refused with a
``ModelFormatError`` naming what is wrong, before any runtime sees it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import localllm
from localllm import ChatTemplateError, ModelFormatError
from localllm.engines import backend_names, get_backend
from localllm.engines.onnx import describe_folder
from localllm.models.ggml import read_ggml
from localllm.models.gguf import read_gguf
from localllm.support.fuzz.samples import (
    KV,
    U32,
    gguf,
    join_folder,
    tiny_folder,
    tiny_ggjt,
    tiny_kvs,
    tiny_tensors,
)
from localllm.support.fuzz.targets import TARGETS, Scratch
from localllm.templates.chat import render_chat

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "malformed"
MANIFEST: dict[str, dict[str, str]] = json.loads((CORPUS / "manifest.json").read_text())
FUZZ_SECONDS = int(os.environ.get("LOCALLLM_FUZZ_SECONDS", "60"))


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine's ``open`` fails the test. ``Engine.open`` is the one door through
    which a file reaches a native runtime (the loader calls it only after the header was
    validated), so replacing it is the whole of the proof that a corpus file was refused
    before any runtime saw it; nothing else is mocked, so the real format detection,
    backend choice and readers run."""

    def opened(cls: Any, *args: Any, **kwargs: Any) -> None:
        pytest.fail(f"{cls.__name__}.open was called: a malformed file reached a runtime")

    for name in backend_names():
        monkeypatch.setattr(get_backend(name), "open", classmethod(opened))


def test_the_corpus_has_at_least_32_classes_and_matches_its_manifest() -> None:
    classes = {entry["class"] for entry in MANIFEST.values()}
    assert len(classes) == len(MANIFEST) >= 32
    on_disk = {p.name for p in CORPUS.iterdir() if p.name != "manifest.json"}
    assert on_disk == set(MANIFEST)
    for name in MANIFEST:  # small synthetic files, never pieces of a real model
        path = CORPUS / name
        files = [path] if path.is_file() else list(path.iterdir())
        assert all(f.stat().st_size <= 4096 for f in files), name
    truncated = {n for n in MANIFEST if n.startswith("gguf-truncated-")}
    assert len(truncated) >= 19  # every GGUF header field, one cut each


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_each_malformed_file_is_refused_before_any_runtime(name: str, no_runtime: None) -> None:
    entry = MANIFEST[name]
    with pytest.raises(ModelFormatError) as caught:
        localllm.load(CORPUS / name, chat_template="chatml")
    assert entry["error"] in str(caught.value), f"{entry['class']}: {caught.value}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_runs_clean(target: str) -> None:
    """A coverage-guided run of LOCALLLM_FUZZ_SECONDS (default 60): no input may raise
    anything but a localllm error, take over 1 s or exceed the memory limit."""
    if importlib.util.find_spec("atheris") is None:
        pytest.fail("atheris is not installed, so the fuzzers cannot run; install the dev "
                    "extra: pip install -e '.[dev]'")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "localllm.support.fuzz", target, "--seconds", str(FUZZ_SECONDS)],
        cwd=ROOT, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"\n{summary} (wall {time.monotonic() - started:.0f} s)")
    assert result.returncode == 0, f"{summary}\n{result.stderr[-6000:]}"
    runs = re.search(r"fuzz \S+: (\d+) inputs executed", summary)
    assert runs and int(runs.group(1)) > 0, summary


@pytest.mark.parametrize("failure, artifact", [
    ("raise ValueError('an untyped error')", "crash-"),
    ("time.sleep(3)", "timeout-"),
])
def test_the_fuzzer_fails_on_an_untyped_error_or_a_slow_input(
        failure: str, artifact: str, tmp_path: Path) -> None:
    """The harness itself: a target that raises something other than a localllm error,
    or takes over a second, ends the run with a non-zero status and saves the input."""
    if importlib.util.find_spec("atheris") is None:
        pytest.fail("atheris is not installed; install the dev extra: pip install -e '.[dev]'")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from localllm.support.fuzz import child, targets\n"
        "def broken(scratch, data):\n"
        "    if not data.startswith(b'GGUF'):  # the seeds pass, the first mutants fail\n"
        f"        {failure}\n"
        "targets.TARGETS['gguf'] = broken\n"
        "child.run('gguf', targets.Scratch(Path(sys.argv[1])), sys.argv[2:])\n")
    seeds = ROOT / "tests" / "data" / "fuzz_seeds" / "gguf"
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "-max_total_time=60", "-timeout=1",
         f"-artifact_prefix={tmp_path}/", str(seeds)],
        capture_output=True, text=True, timeout=180)
    assert result.returncode != 0, result.stderr[-3000:]
    assert list(tmp_path.glob(f"{artifact}*")), result.stderr[-3000:]


# -- what the fuzzers found ---------------------------------------------------------------


def _gguf_with(tmp_path: Path, *kvs: KV) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(gguf(tiny_kvs({kv.key.decode(): kv for kv in kvs}), tiny_tensors()).data)
    return path


def test_absurd_block_count_is_refused_before_planning_allocates_per_layer(
        tmp_path: Path) -> None:
    """Found by the gguf fuzzer: block_count 195,737,927 in a 900-byte file made the plan
    allocate a list per layer (1.5 GB, past the memory limit)."""
    path = _gguf_with(tmp_path, KV(b"llama.block_count", U32, 195_737_927))
    with pytest.raises(ModelFormatError, match=r"'llama\.block_count' is uint32 195737927"):
        read_gguf(path)
    # a file without tensors (a vocabulary-only GGUF) keeps its model's real block count
    vocab_only = tmp_path / "vocab.bin"
    vocab_only.write_bytes(gguf(tiny_kvs({"llama.block_count": KV(
        b"llama.block_count", U32, 80)}), []).data)
    assert read_gguf(vocab_only).block_count == 80


def test_legacy_layer_count_beyond_the_tensors_is_refused(tmp_path: Path) -> None:
    """The same allocation from a ggjt header (an int32 layer count)."""
    built = tiny_ggjt()
    span = built.span("hparam[4]")
    path = tmp_path / "model.bin"
    path.write_bytes(built.data[:span.start] + struct.pack("<i", 1 << 30)
                     + built.data[span.end:])
    with pytest.raises(ModelFormatError, match="n_layer 1073741824 is more than its 2 tensors"):
        read_ggml(path)


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_onnx_file_that_is_not_protobuf_is_a_format_error(tmp_path: Path) -> None:
    """Found by the onnx-folder fuzzer: protobuf's DecodeError came out of onnx.load."""
    files = tiny_folder()
    files["model.onnx"] = files["model.onnx"][:40] + b"\xff" * 8 + files["model.onnx"][48:]
    with pytest.raises(ModelFormatError, match="is not an ONNX model"):
        describe_folder(_folder(tmp_path, files))


@pytest.mark.parametrize("old, new, message", [
    # a location that is not UTF-8 came out as bytes: TypeError on "\0" in location
    (b"model.onnx.data", b"model.onnx.d\x9f\x8fa", "not UTF-8"),
    # a key that is not UTF-8 made onnx's ExternalDataInfo sort bytes with str: TypeError
    (b"location", b"locat\xffon", "not UTF-8"),
])
def test_external_data_records_that_are_not_utf8_are_format_errors(
        tmp_path: Path, old: bytes, new: bytes, message: str) -> None:
    """Found by the onnx-folder fuzzer (protobuf hands strings that are not UTF-8 over as
    bytes)."""
    files = tiny_folder(external=True)
    assert files["model.onnx"].count(old) == 1
    files["model.onnx"] = files["model.onnx"].replace(old, new)
    with pytest.raises(ModelFormatError, match=message):
        describe_folder(_folder(tmp_path, files))


def test_unigram_vocabulary_lists_take_their_position_as_id(tmp_path: Path) -> None:
    """A Unigram tokenizer.json lists [piece, score] pairs: the id is the position, not
    the score (which dict() of the pairs used to turn into ids)."""
    files = tiny_folder()
    files["tokenizer.json"] = json.dumps({"model": {"type": "Unigram", "vocab": [
        ["<s>", 0.0], ["</s>", 0.0], ["a", -2.5], ["b", -3.0]]}}).encode()
    tokens = describe_folder(_folder(tmp_path, files)).metadata["tokenizer.ggml.tokens"]
    assert tokens[:4] == ["<s>", "</s>", "a", "b"]


def test_template_nested_past_the_parsers_depth_is_a_template_error() -> None:
    """Found by the chat-template fuzzer: ``{{ [[[[…`` 110 deep raised RecursionError
    from Jinja's parser."""
    with pytest.raises(ChatTemplateError, match="cannot be compiled: RecursionError"):
        render_chat("!{{ " + "[" * 110 + "bos{", [{"role": "user", "content": "hi"}])


HOSTILE = {
    "nested loops over a variable": "{% set x = range(100000) %}"
    "{% for a in x %}{% for b in x %}{% endfor %}{% endfor %}",
    "nested loops over a string": "{% set s = 'ab' * 50000 %}"
    "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "doubling by ~": "{% set a = 'x' * 4000000 %}" + "{% set a = a ~ a %}" * 12,
    "doubling in a namespace": "{% set ns = namespace(s='x') %}{% for i in range(60) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "doubling a list": "{% set ns = namespace(s=[1]) %}{% for i in range(60) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}",
    "a 10 GB string": "{{ 'x' * 10000000000 }}",
    "squaring an int": "{% set ns = namespace(n=3) %}{% for i in range(40) %}"
    "{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "a huge power": "{{ 7 ** 10000000 }}",
    "center()": "{{ 'a'|center(1000000000) }}",
    "str.ljust": "{{ 'a'.ljust(1000000000) }}",
    "a format width": "{{ '{:>999999999}'.format(1) }}",
    "a % width": "{{ '%999999999d' % 1 }}",
    "replace() of every character": "{% set s = 'a' * 3000 %}{{ s|replace('a', s) }}",
    "str.replace": "{% set s = 'a' * 3000 %}{{ s.replace('a', s) }}",
    "expandtabs": "{{ ('\t' * 3000).expandtabs(3000) }}",
    "indent": "{{ ('\n' * 3000)|indent(3000) }}",
    "tojson indent": "{{ range(1000)|list|tojson(indent=3000000) }}",
    "lipsum": "{{ lipsum(100000) }}",
    "a lazy filter drained in C": "{{ range(10)|slice(3999999)|list|length }}",
    "a filter's own loop": "{{ ('a ' * 2000000)|wordwrap(1) }}",
    "division by zero": "{{ 1 // 0 }}",
    "macro recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "too many nested ifs": "{% if 1 %}" * 200 + "{% endif %}" * 200,
}


@pytest.mark.parametrize("template", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_templates_are_stopped_with_a_template_error(template: str) -> None:
    """A template is code from a downloaded file: whatever it does, rendering ends within
    the default limits (0.5 s, 4 MiB) with a ChatTemplateError, never a MemoryError or a
    minute of CPU."""
    started = time.monotonic()
    with pytest.raises(ChatTemplateError):
        render_chat(template, [{"role": "user", "content": "hi"}])
    # a guard against a hang (unstopped, these run for minutes or forever); the 0.5 s
    # limit itself is what the fuzzer's 1 s per-input timeout holds
    assert time.monotonic() - started < 20.0


def test_seeds_pass_and_the_targets_replay_a_finding_without_a_fuzzer() -> None:
    """Every committed seed is accepted (a seed that fails would keep mutation shallow),
    and a target is a plain function: a saved crash input replays with Python alone."""
    scratch = Scratch.create()
    try:
        for target in TARGETS:
            for seed in sorted((ROOT / "tests" / "data" / "fuzz_seeds" / target).iterdir()):
                TARGETS[target](scratch, seed.read_bytes())
        with pytest.raises(ModelFormatError, match="block_count"):
            TARGETS["gguf"](scratch, bytes(gguf(tiny_kvs({"llama.block_count": KV(
                b"llama.block_count", U32, 1 << 30)}), tiny_tensors()).data))
        with pytest.raises(ModelFormatError, match="not an ONNX model"):
            TARGETS["onnx-folder"](scratch, join_folder({**tiny_folder(),
                                                         "model.onnx": b"\xff" * 9}))
    finally:
        scratch.remove()
