"""The GGUF models already on this machine, in other tools' stores, used where they lie.

Read-only by rule: nothing here copies, moves or writes into Ollama's, LM Studio's,
GPT4All's or the Hugging Face cache's folders. Every file found is validated like any other
(the GGUF header parser) before it is listed or loaded.

Short forms that ``load()`` accepts: ``ollama:NAME[:TAG]``, ``lmstudio:PUBLISHER/MODEL/FILE``,
``gpt4all:FILE``, ``hf:ORG/NAME/FILE`` and ``llamafile:PATH``.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import LocalLLMError, ModelFormatError, ModelNotFoundError, UnsupportedModelError
from .gguf import ModelFile, read_gguf

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_TEMPLATE_LAYER = "application/vnd.ollama.image.template"
SOURCES = ("ollama", "lmstudio", "gpt4all", "hf", "llamafile")
#: a llamafile's GGUF must start on a page boundary to be mapped where it lies
LLAMAFILE_ALIGNMENT = 4096


@dataclass(frozen=True)
class FoundModel:
    """One model file found on disk, with its header facts (or why it cannot be used)."""

    source: str           # ollama, lmstudio, gpt4all, hf or llamafile
    name: str             # the short form load() accepts
    path: Path            # the GGUF file (a llamafile: the executable holding it)
    size: int
    offset: int = 0       # where the GGUF starts inside ``path`` (llamafiles)
    gguf: ModelFile | None = None
    problem: str = ""     # why it cannot be loaded, when it cannot
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def usable(self) -> bool:
        return self.gguf is not None and not self.problem


def default_roots() -> dict[str, list[Path]]:
    """Where each tool keeps its models on this platform (environment variables first)."""
    from .store import hub_cache

    home = Path.home()
    ollama = os.environ.get("OLLAMA_MODELS")
    if sys.platform == "darwin":
        gpt4all = [home / "Library" / "Application Support" / "nomic.ai" / "GPT4All"]
    elif sys.platform == "win32":
        gpt4all = [Path(os.environ.get("LOCALAPPDATA", home)) / "nomic.ai" / "GPT4All"]
    else:
        gpt4all = [Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
                   / "nomic.ai" / "GPT4All"]
    return {"ollama": [Path(ollama) if ollama else home / ".ollama" / "models"],
            "lmstudio": [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"],
            "gpt4all": gpt4all, "hf": [hub_cache()], "llamafile": []}


def discover(roots: dict[str, list[Path]] | None = None,
             llamafiles: list[Path] | None = None) -> list[FoundModel]:
    """Every GGUF model found under ``roots`` (default: :func:`default_roots`), plus the
    llamafiles in ``llamafiles`` (files or folders to scan), sorted by source and name."""
    roots = roots if roots is not None else default_roots()
    found: list[FoundModel] = []
    for root in roots.get("ollama", []):
        found.extend(_ollama(root))
    for root in roots.get("lmstudio", []):
        found.extend(_plain(root, "lmstudio", lambda p, r: "/".join(p.relative_to(r).parts)))
    for root in roots.get("gpt4all", []):
        found.extend(_plain(root, "gpt4all", lambda p, r: p.name, depth=1))
    for root in roots.get("hf", []):
        found.extend(_huggingface(root))
    for place in [*roots.get("llamafile", []), *(llamafiles or [])]:
        found.extend(_llamafiles(place))
    return sorted(found, key=lambda m: (m.source, m.name))


def resolve_short_form(source: str, roots: dict[str, list[Path]] | None = None
                       ) -> FoundModel:
    """``ollama:qwen2.5:0.5b`` (and the other short forms) → the model found on disk."""
    kind, _, rest = source.partition(":")
    if kind not in SOURCES or not rest:
        raise ModelNotFoundError(f"{source!r} is not a short form; use one of "
                                 + ", ".join(f"{k}:..." for k in SOURCES))
    if kind == "llamafile":
        models = list(_llamafiles(Path(rest).expanduser()))
    else:
        wanted = rest if kind != "ollama" or ":" in rest else f"{rest}:latest"
        models = [m for m in discover(roots) if m.source == kind and m.name == f"{kind}:{wanted}"]
    if not models:
        raise ModelNotFoundError(f"no {kind} model {rest!r} on this machine; "
                                 "`localllm models --local` lists what is there")
    return models[0]


def verify_ollama_blob(model: FoundModel) -> None:
    """An Ollama blob's file name is its sha256: check the content against it."""
    from .._errors import ChecksumMismatchError
    from .store import sha256_of

    expected = model.path.name.removeprefix("sha256-")
    actual = sha256_of(model.path)
    if actual != expected:
        raise ChecksumMismatchError(f"{model.path} has sha256 {actual}, but "
                                    f"Ollama stored it as {expected}: the blob is damaged; "
                                    "pull it again with ollama")


# ---------------------------------------------------------------------------- stores
#: turn markers of Ollama's Go chat templates → the named template that writes the same
#: turns, offered when a GGUF carries no template of its own (a hint, never applied alone)
GO_TEMPLATE_MARKERS = (("<|im_start|>", "chatml"), ("<start_of_turn>", "gemma"),
                       ("<|user|>", "zephyr"), ("<<SYS>>", "llama-2"))
MAX_TEMPLATE_LAYER = 64 * 1024


def go_template_family(text: str) -> str | None:
    """The named template whose turn markers an Ollama Go template uses, if any."""
    return next((name for marker, name in GO_TEMPLATE_MARKERS if marker in text), None)


def _ollama_template_hint(root: Path, layer: dict[str, Any] | None) -> str | None:
    digest = str((layer or {}).get("digest", ""))
    blob = root / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))
    try:
        if not digest.startswith("sha256:") or blob.stat().st_size > MAX_TEMPLATE_LAYER:
            return None
        return go_template_family(blob.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def _examine(source: str, name: str, path: Path, offset: int = 0, size: int | None = None,
             notes: tuple[str, ...] = (), problem: str = "",
             template_hint: str | None = None) -> FoundModel:
    try:
        gguf = read_gguf(path, offset=offset, size=size) if (offset or size) else \
            read_gguf(path)
    except LocalLLMError as exc:
        return FoundModel(source, name, path, size or _size(path), offset, None, str(exc),
                          notes)
    if gguf.chat_template is None and template_hint is not None:
        notes = (*notes, "no chat template in the file; Ollama's template for it writes "
                 f"{template_hint} turns: pass chat_template={template_hint!r} to chat")
    elif gguf.chat_template is None:
        notes = (*notes, "no chat template in the file: pass chat_template= (e.g. 'chatml' "
                 "or 'gemma') to chat with it")
    return FoundModel(source, name, path, size or gguf.file_size, offset, gguf, problem, notes)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _ollama(root: Path) -> Iterator[FoundModel]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = manifest.relative_to(manifests).parts  # registry, namespace, name, tag
        if len(parts) != 4:
            continue
        registry, namespace, model, tag = parts
        short = f"{model}:{tag}" if (registry, namespace) == ("registry.ollama.ai", "library") \
            else (f"{namespace}/{model}:{tag}" if registry == "registry.ollama.ai"
                  else f"{registry}/{namespace}/{model}:{tag}")
        try:
            layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers") or []
        except (OSError, ValueError, AttributeError) as exc:
            yield FoundModel("ollama", f"ollama:{short}", manifest, 0,
                             problem=f"unreadable Ollama manifest: {exc}")
            continue
        kinds = {layer.get("mediaType"): layer for layer in layers if isinstance(layer, dict)}
        weights = kinds.get(OLLAMA_MODEL_LAYER)
        digest = str((weights or {}).get("digest", ""))
        if not digest.startswith("sha256:"):
            yield FoundModel("ollama", f"ollama:{short}", manifest, 0,
                             problem="the manifest names no model layer")
            continue
        blob = root / "blobs" / ("sha256-" + digest.removeprefix("sha256:"))
        notes = ("Ollama's Go chat template (its template layer) is not used; localllm uses "
                 "the template inside the GGUF",) if OLLAMA_TEMPLATE_LAYER in kinds else ()
        if not blob.is_file():
            yield FoundModel("ollama", f"ollama:{short}", blob, 0,
                             problem=f"the manifest's model blob {blob.name} is missing")
            continue
        yield _examine("ollama", f"ollama:{short}", blob, notes=notes,
                       template_hint=_ollama_template_hint(root, kinds.get(
                           OLLAMA_TEMPLATE_LAYER)))


def _plain(root: Path, source: str, name_of: Callable[[Path, Path], str],
           depth: int = 3) -> Iterator[FoundModel]:
    """GGUF files under ``root`` (LM Studio: PUBLISHER/MODEL/FILE; GPT4All: flat)."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.gguf")):
        if len(path.relative_to(root).parts) > depth or not path.is_file():
            continue
        name = f"{source}:{name_of(path, root)}"
        if path.name.startswith("mmproj"):
            yield FoundModel(source, name, path, _size(path),
                             problem="a vision projector (mmproj), not a model")
            continue
        yield _examine(source, name, path)


def _huggingface(root: Path) -> Iterator[FoundModel]:
    """hub/models--ORG--NAME/snapshots/REV/...gguf (symlinks into blobs/): the snapshot
    that refs/main names, else the newest."""
    if not root.is_dir():
        return
    for repo in sorted(root.glob("models--*--*")):
        org_name = repo.name.removeprefix("models--").split("--", 1)
        snapshots = repo / "snapshots"
        if len(org_name) != 2 or not snapshots.is_dir():
            continue
        ref = repo / "refs" / "main"
        revision = ref.read_text().strip() if ref.is_file() else ""
        chosen = snapshots / revision if revision and (snapshots / revision).is_dir() else \
            max(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, default=None)
        if chosen is None:
            continue
        for path in sorted(chosen.rglob("*.gguf")):
            relative = "/".join(path.relative_to(chosen).parts)
            yield _examine("hf", f"hf:{org_name[0]}/{org_name[1]}/{relative}", path)


def _llamafiles(place: Path) -> Iterator[FoundModel]:
    files = sorted(place.glob("*.llamafile")) if place.is_dir() else [place]
    for path in files:
        try:
            with zipfile.ZipFile(path) as archive:
                entries = [i for i in archive.infolist() if i.filename.endswith(".gguf")]
                if not entries:
                    raise zipfile.BadZipFile("it holds no .gguf entry")
                entry = entries[0]
                with open(path, "rb") as handle:  # the data follows the local header
                    handle.seek(entry.header_offset + 26)
                    name_len, extra_len = int.from_bytes(handle.read(2), "little"), \
                        int.from_bytes(handle.read(2), "little")
                offset = entry.header_offset + 30 + name_len + extra_len
        except (OSError, zipfile.BadZipFile) as exc:
            yield FoundModel("llamafile", f"llamafile:{path}", path, _size(path),
                             problem=f"not a llamafile: {exc}")
            continue
        problem = ""
        if entry.compress_type != zipfile.ZIP_STORED:
            problem = (f"its GGUF entry {entry.filename} is compressed, so it cannot be "
                       "mapped where it lies; extract it (unzip) and load the .gguf")
        elif offset % LLAMAFILE_ALIGNMENT:
            problem = (f"its GGUF entry starts at byte {offset}, not on a "
                       f"{LLAMAFILE_ALIGNMENT}-byte boundary, so it cannot be mapped where it "
                       "lies; extract it (unzip) and load the .gguf")
        yield _examine("llamafile", f"llamafile:{path}", path, offset=offset,
                       size=entry.file_size, problem=problem)


def check_loadable(model: FoundModel) -> None:
    """Raise the reason a found model cannot be loaded, if there is one."""
    if model.gguf is None or model.problem:
        raise (ModelFormatError if model.gguf is None else UnsupportedModelError)(
            f"{model.name}: {model.problem or 'unreadable'}")


def fit_summary(model: FoundModel) -> str:
    """Whether the planner finds a placement here, in a few words."""
    from .._errors import WillNotFitError
    from .loader import plan

    if model.offset:
        return "n/a (inside a llamafile)"
    try:
        the_plan = plan(model.path)
    except WillNotFitError as exc:
        return f"does not fit: {str(exc).split(';')[0]}"
    except LocalLLMError as exc:
        return f"cannot plan: {exc}"
    return f"fits ({the_plan.device}, context {the_plan.context_length})"
