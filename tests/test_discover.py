"""Models in other tools' stores, found and loaded where they lie. The tests build the
stores themselves, reproducing the third-party layouts: Ollama's manifests and sha256-named
blobs, the Hugging Face hub cache (snapshot symlinks into blobs/), LM Studio's
publisher/model folders, GPT4All's flat folder and a llamafile-like executable with a zip
appended, holding the default model uncompressed. The model bytes are the real default
model (hard-linked or symlinked, never rewritten)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

import localllm
from localllm import cli
from localllm.models.discover import discover, resolve_short_form, verify_ollama_blob

pytestmark = pytest.mark.real_model
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the default model


def place(model: Path, target: Path) -> None:
    """The model's bytes at ``target`` without copying them (a hard link, else a symlink)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(model, target)
    except OSError:
        target.symlink_to(model)


@pytest.fixture()
def stores(default_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
           ) -> Path:
    home = tmp_path / "home"
    # Ollama: manifests/<registry>/<namespace>/<name>/<tag> -> blobs/sha256-<hex>
    ollama = home / ".ollama" / "models"
    place(default_model_path, ollama / "blobs" / f"sha256-{SHA}")
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": "sha256:" + "1" * 64, "size": 485},
                "layers": [{"mediaType": "application/vnd.ollama.image.model",
                            "digest": f"sha256:{SHA}", "size": default_model_path.stat().st_size},
                           {"mediaType": "application/vnd.ollama.image.template",
                            "digest": "sha256:" + "2" * 64, "size": 120}]}
    tag = ollama / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    tag.parent.mkdir(parents=True)
    tag.write_text(json.dumps(manifest))
    wrong = dict(manifest, layers=[dict(manifest["layers"][0], digest="sha256:" + "f" * 64)])
    place(default_model_path, ollama / "blobs" / ("sha256-" + "f" * 64))  # a damaged blob
    (tag.parent.parent / "broken").mkdir()
    (tag.parent.parent / "broken" / "latest").write_text(json.dumps(wrong))
    # Hugging Face hub cache: snapshots/<rev>/FILE -> ../../blobs/<sha>
    repo = home / ".cache" / "huggingface" / "hub" / \
        "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF"
    place(default_model_path, repo / "blobs" / SHA)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "smollm2-135m-instruct-q4_1.gguf").symlink_to(Path("../../blobs") / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    # LM Studio: publisher/model/file.gguf, with a vision projector beside it
    lms = home / ".lmstudio" / "models" / "bartowski" / "SmolLM2-135M-Instruct-GGUF"
    place(default_model_path, lms / "SmolLM2-135M-Instruct-Q4_1.gguf")
    (lms / "mmproj-model-f16.gguf").write_bytes(b"GGUF")
    # GPT4All: a flat folder
    place(default_model_path, home / ".local" / "share" / "nomic.ai" / "GPT4All" / "smol.gguf")
    # the stores are found from HOME alone, whatever the machine's environment says
    for var in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE", "XDG_DATA_HOME",
                "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def test_every_store_is_found_with_its_facts(stores: Path) -> None:
    before = snapshot(stores)
    found = {m.name: m for m in discover()}
    assert set(found) == {
        "ollama:smollm2:135m", "ollama:broken:latest",
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_1.gguf",
        "lmstudio:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_1.gguf",
        "lmstudio:bartowski/SmolLM2-135M-Instruct-GGUF/mmproj-model-f16.gguf",
        "gpt4all:smol.gguf"}
    ok = found["ollama:smollm2:135m"]
    assert ok.usable and ok.gguf is not None and ok.gguf.architecture == "llama"
    assert ok.gguf.quantization == "Q4_1" and ok.gguf.context_length == 8192
    assert any("Go chat template" in n for n in ok.notes)
    assert "projector" in found[
        "lmstudio:bartowski/SmolLM2-135M-Instruct-GGUF/mmproj-model-f16.gguf"].problem
    assert snapshot(stores) == before  # read-only: nothing written, moved or touched


def test_short_forms_load_in_place(stores: Path, default_model_path: Path) -> None:
    with localllm.load(default_model_path, context_length=256) as direct:
        expected = direct.complete("The capital of France is", max_tokens=8,
                                   temperature=0).text
    for name in ("ollama:smollm2:135m",
                 "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_1.gguf",
                 "gpt4all:smol.gguf"):
        with localllm.load(name, context_length=256) as model:
            assert Path(model.info.path).samefile(default_model_path)
            assert model.complete("The capital of France is", max_tokens=8,
                                  temperature=0).text == expected
    with pytest.raises(localllm.ModelNotFoundError, match="localllm models --local"):
        localllm.load("ollama:nonexistent:7b")


def test_ollama_blobs_are_verified_on_request(stores: Path) -> None:
    good = resolve_short_form("ollama:smollm2:135m")
    verify_ollama_blob(good)
    bad = resolve_short_form("ollama:broken")  # :latest is implied, as in Ollama
    with pytest.raises(localllm.ChecksumMismatchError, match="damaged"):
        verify_ollama_blob(bad)


def llamafile(model: Path, target: Path, *, aligned: bool) -> Path:
    """An executable stub with a zip appended whose .gguf entry is stored (not deflated),
    padded so that its data starts on a 4096-byte boundary (as zipalign does) or not."""
    stub = b"#!/bin/sh\necho 'a llamafile stand-in'\nexit 1\n"
    target.write_bytes(stub)
    name = "smollm2.gguf"
    header_at = len(stub)
    data_at = header_at + 30 + len(name)
    pad = (-data_at) % 4096 if aligned else 5
    pad += 4096 if pad < 4 else 0  # the padding record's own 4-byte header
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_STORED
    info.extra = (0xD935).to_bytes(2, "little") + (pad - 4).to_bytes(2, "little") + \
        b"\0" * (pad - 4)
    with zipfile.ZipFile(target, "a") as archive, archive.open(info, "w") as out, \
            open(model, "rb") as src:
        while block := src.read(1 << 20):
            out.write(block)
    target.chmod(0o755)
    return target


def test_llamafiles_are_read_in_place_and_say_why_they_cannot_run(
        default_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = llamafile(default_model_path, tmp_path / "smol.llamafile", aligned=True)
    odd = llamafile(default_model_path, tmp_path / "odd.llamafile", aligned=False)
    before = snapshot(tmp_path)
    found = {m.path.name: m for m in discover(roots={}, llamafiles=[tmp_path])}
    assert found["smol.llamafile"].offset % 4096 == 0
    assert found["smol.llamafile"].gguf is not None
    assert found["smol.llamafile"].gguf.quantization == "Q4_1"
    with open(good, "rb") as f:  # the header read at the offset is the model's own
        f.seek(found["smol.llamafile"].offset)
        assert f.read(4) == b"GGUF"
    assert "4096-byte boundary" in found["odd.llamafile"].problem
    with pytest.raises(localllm.UnsupportedModelError, match="run the llamafile itself"):
        localllm.load(f"llamafile:{good}")
    with pytest.raises(localllm.UnsupportedModelError, match="boundary"):
        localllm.load(f"llamafile:{odd}")
    assert snapshot(tmp_path) == before  # read in place, nothing written beside them
    assert cli.main(["models", "--local", "--scan", str(tmp_path), "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed[f"llamafile:{good}"]["quantization"] == "Q4_1"


def test_models_local_command(stores: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "--local", "--verify", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ollama:smollm2:135m"]["fits"].startswith("fits")
    assert rows["ollama:smollm2:135m"]["trained_context"] == 8192
    assert "damaged" in rows["ollama:broken:latest"]["problem"]
    assert cli.main(["models", "--local"]) == 0
    text = capsys.readouterr().out
    assert "gpt4all:smol.gguf" in text and "Q4_1" in text


def test_a_file_without_a_chat_template_says_so(stores: Path) -> None:
    """Gemma 3 270M carries no template: the listing says to pass chat_template=."""
    gemma = localllm.ModelStore().ensure("gemma-3-270m")
    place(gemma, stores / ".local" / "share" / "nomic.ai" / "GPT4All" / "gemma.gguf")
    found = resolve_short_form("gpt4all:gemma.gguf")
    assert found.usable and any("chat_template=" in n for n in found.notes)
    assert not any("chat_template=" in n for n in resolve_short_form("gpt4all:smol.gguf").notes)


GEMMA_GO_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


def test_an_ollama_model_without_a_gguf_template_names_the_matching_one(stores: Path) -> None:
    """Ollama keeps Gemma's chat template in a Go template layer, not in the GGUF: the
    listing recognises its turn markers and names the template to pass (Ollama's layout,
    reproduced)."""
    import hashlib

    gemma = localllm.ModelStore().ensure("gemma-3-270m")
    ollama = stores / ".ollama" / "models"
    digest = hashlib.sha256(GEMMA_GO_TEMPLATE.encode()).hexdigest()
    (ollama / "blobs" / f"sha256-{digest}").write_text(GEMMA_GO_TEMPLATE)
    weights = hashlib.sha256(gemma.read_bytes()).hexdigest()
    place(gemma, ollama / "blobs" / f"sha256-{weights}")
    tag = ollama / "manifests" / "registry.ollama.ai" / "library" / "gemma3" / "270m"
    tag.parent.mkdir(parents=True)
    tag.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{weights}"},
        {"mediaType": "application/vnd.ollama.image.template", "digest": f"sha256:{digest}"}]}))
    found = resolve_short_form("ollama:gemma3:270m")
    assert found.usable
    assert any("pass chat_template='gemma'" in n for n in found.notes), found.notes
    with localllm.load("ollama:gemma3:270m", context_length=256,
                       chat_template="gemma") as model:
        assert model.render_chat([{"role": "user", "content": "hi"}]).count(
            "<start_of_turn>user\nhi<end_of_turn>") == 1
    chatml = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    from localllm.models.discover import go_template_family

    assert go_template_family(chatml) == "chatml"
    assert go_template_family("{{ .Prompt }}") is None
