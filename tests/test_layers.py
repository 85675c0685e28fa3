"""Imports go downward only, through the layers of the design guide.

Every module of the package is placed in a layer; an import (at the top of a module or
inside a function: a lazy import is still a dependency) may reach the same layer or a
lower one. The few upward imports that exist today are listed with the reason each is
still there; the list may only shrink: an entry that no longer occurs fails too, so it is
removed when its cause is. A module with no layer fails, so a new module is placed when it
is written. Two rules stand on their own: the server never reaches into the scheduler, and
no engine imports the server or a wire protocol.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "localllm"

#: 1 errors, types; 2 formats, tokenizer, sampling, templates, grammars, tools, hardware;
#: 3 core (Model, scheduler, the engine contract, isolation); 4 engines and the wire
#: client; 5 planning, model files and stores, documents; 6 the public surface, CLI,
#: server, and test and docs support
LAYERS: dict[int, tuple[str, ...]] = {
    1: ("_errors", "_types", "_defaults"),
    2: ("models", "models.gguf", "models.ggml", "tokenizer", "sampling", "templates",
        "templates.chat", "templates.sandbox", "templates.check", "decoding",
        "decoding.structured", "decoding.tools", "decoding.tool_formats",
        "decoding.tool_stream", "decoding.reasoning", "hardware", "_text", "_progress", "rag",
        "rag.chunking", "support", "support.corpus", "images", "models.projector"),
    3: ("core", "core.model", "core.request", "core.local", "core.scheduler", "core.embed",
        "core.speculation", "core.media",
        "core.isolation", "core.worker", "core.engine"),
    4: ("engines", "engines.llamacpp", "engines.gpt4all", "engines.ctransformers",
        "engines.onnx", "engines.onnx_embed", "engines.onnx_genai", "engines.fake",
        "engines.llamacpp_vision", "engines._compute",
        "remote", "remote.transport", "remote.generator", "backends", "protocols",
        "protocols.codec", "protocols.openai", "protocols.ollama", "protocols.anthropic",
        "protocols.responses"),
    5: ("planning", "planning.planner", "planning.speed", "planning.recommend",
        "models.store", "models.discover", "models.convert", "models.convert_bert",
        "models.loader", "models.draft", "models.convert_precision", "rag.index",
        "rag.answer"),
    6: ("", "cli", "_doctor", "rag.cli", "testing", "support.docs", "support.fuzz",
        "support.fuzz.__main__", "support.fuzz.child", "support.fuzz.samples",
        "support.fuzz.targets", "server", "server._app", "server._anthropic",
        "server._responses", "server._cli", "server._embeddings", "server._endpoint",
        "server._generation", "server._metrics", "server._ollama", "server._openai",
        "server._registry", "server._streaming", "server._ui", "server._conversations",
        "server._collections", "server._sqlite", "server._fetch"),
}

#: upward imports that exist today, each with why; the list only shrinks (it is empty:
#: a new entry needs a reason good enough to write here)
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The localllm modules ``path`` imports (relative to the package), anywhere in it."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
                names = [a.name for a in node.names]
            elif (node.module or "").split(".")[0] == "localllm":
                target = node.module.removeprefix("localllm").lstrip(".") if node.module \
                    else ""
                names = [a.name for a in node.names]
            else:
                continue
            # "from . import x" and "from .pkg import mod" may name submodules
            submodules = [m for m in (f"{target}.{n}".lstrip(".") for n in names)
                          if m in ALL]
            found.update(submodules or [target])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "localllm":
                    found.add(alias.name.removeprefix("localllm").lstrip("."))
    found.discard(name)
    return found


ALL = {module_name(p) for p in PACKAGE.rglob("*.py")}
LAYER_OF = {module: layer for layer, modules in LAYERS.items() for module in modules}


def upward_imports() -> dict[tuple[str, str], tuple[int, int]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imports_of(path):
            if LAYER_OF[target] > LAYER_OF[source]:
                out[(source, target)] = (LAYER_OF[source], LAYER_OF[target])
    return out


def test_every_module_has_a_layer() -> None:
    assert sorted(ALL - set(LAYER_OF)) == [], "place these modules in LAYERS"
    assert sorted(set(LAYER_OF) - ALL) == [], "these modules in LAYERS no longer exist"


def test_imports_go_downward_only() -> None:
    found = upward_imports()
    new = {k: v for k, v in found.items() if k not in KNOWN_UPWARD}
    assert not new, "upward imports (module -> module: layer -> layer): " + ", ".join(
        f"{a} -> {b}: {la} -> {lb}" for (a, b), (la, lb) in sorted(new.items()))
    gone = sorted(set(KNOWN_UPWARD) - set(found))
    assert not gone, f"remove these from KNOWN_UPWARD, they no longer occur: {gone}"


def test_the_server_never_reaches_into_the_scheduler() -> None:
    for path in (PACKAGE / "server").glob("*.py"):
        text = path.read_text()
        assert "core.scheduler" not in text, f"{path.name} reads the scheduler; use Model.stats"
        assert "core.scheduler" not in imports_of(path)


def test_engines_import_neither_the_server_nor_a_wire_protocol() -> None:
    for path in (PACKAGE / "engines").glob("*.py"):
        reached = imports_of(path)
        assert not {m for m in reached if m.startswith(("server", "protocols"))
                    or m in ("remote.transport", "remote.generator")}, (path.name, reached)


def test_the_import_reader_sees_relative_lazy_and_absolute_imports(tmp_path: Path) -> None:
    """The checker itself: a function-level relative import and an absolute one count."""
    probe = PACKAGE / "_types.py"
    assert "_errors" in imports_of(probe)
    assert {"core.engine", "templates.chat", "decoding.tools", "decoding.structured"} <= \
        imports_of(PACKAGE / "core" / "local.py")
    assert "server._app" in imports_of(PACKAGE / "server" / "_openai.py")
