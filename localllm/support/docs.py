"""Documentation generated from the code, so it cannot drift: the feature matrix comes from
the capabilities each backend declares."""

from __future__ import annotations

from .._types import SamplingParams
from ..engines import BUILTIN_BACKENDS, get_backend

_PARAMS = [p for p in SamplingParams.model_fields if p not in ("max_tokens", "stop")]


def feature_matrix() -> str:
    """Markdown table: backends × features, from ``Engine.capabilities`` and class data."""
    header = ["backend", "reads", "streaming", "logits (structured output, tools, logprobs)",
              "GPU offload", "batching (parallel requests)", "embeddings (embed())",
              "images (with a projector)",
              "isolated by default (isolation='auto', the server)", *_PARAMS]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in BUILTIN_BACKENDS:
        cls = get_backend(name)
        caps = cls.capabilities
        cells = [name, ", ".join(cls.formats), _mark(caps.streaming), _mark(caps.logits),
                 _mark(caps.gpu_offload), _mark(cls.batching), _mark(caps.embeddings),
                 _mark(caps.images), _mark(cls.aborts_process)]
        cells += [_mark(p in caps.sampling_params) for p in _PARAMS]
        rows.append("| " + " | ".join(cells) + " |")
    intro = ("# Feature matrix\n\nGenerated from the capabilities each backend declares "
             "(`python -m localllm.support.docs > docs/feature-matrix.md`; a test keeps this page "
             "equal to the code). Every backend also takes `max_tokens` and `stop`, which "
             "localllm enforces itself. A parameter marked no raises "
             "`UnsupportedFeatureError` when set. Every backend runs in a worker process "
             "with `load(..., isolation=\"process\")` (see reliability.md). Chat templates "
             "render through localllm's own renderer on every backend, identically to the "
             "reference renderer (see chat-templates.md). Message content is a string or a "
             "list of text parts on every backend and server (see architecture.md). Tool calls "
             "use each model family's own format, recognised from its chat template, on "
             "every backend with logits, markers that are special tokens written as those "
             "tokens, several per turn and at most max_tool_calls (see tools.md); a reasoning "
             "model's thinking comes apart from its answer on every backend, and its budget "
             "on every backend with logits (see reasoning.md). The server's chat page "
             "works with every served model, since it speaks only the server's own APIs "
             "(see chat-page.md). Images in messages are read by llama.cpp models loaded "
             "with a LLaVA-style vision projector, on every server API (see images.md). "
             "Speculative decoding (prompt lookup, or a draft model of the same "
             "vocabulary) runs on backends that batch (see concurrency.md).\n\n")
    return intro + "\n".join(rows) + "\n" + remote_matrix()


def remote_matrix() -> str:
    """Markdown table: what each server flavour honours (``_remote.FLAVOURS``)."""
    from ..remote.transport import FLAVOURS, RemoteCapabilities

    flags = [f for f in RemoteCapabilities.__dataclass_fields__ if f not in ("sampling",
                                                                              "tokenize")]
    rows = ["| server | sampling parameters | " + " | ".join(flags) + " | tokenizer route |",
            "|" + "---|" * (len(flags) + 3)]
    for name, caps in FLAVOURS.items():
        cells = [name, ", ".join(sorted(caps.sampling)) or "none",
                 *(_mark(getattr(caps, f)) for f in flags), caps.tokenize or "none"]
        rows.append("| " + " | ".join(cells) + " |")
    return ("\n## Remote models\n\nWhat `localllm.connect` lets through per server "
            "(probed at connect time; see remote.md). Every server also takes `max_tokens` "
            "and `stop` (stop strings are applied on the client too). A field marked no "
            "raises `UnsupportedFeatureError` before the request is sent.\n\n"
            + "\n".join(rows) + "\n")


def tool_formats_table() -> str:
    """Markdown table: each tool-call family, what it writes and how it is recognised."""
    from ..decoding.tool_formats import FAMILIES, LOCALLLM

    rows = ["| format | models | a call as the model writes it | several per turn | "
            "recognised by (in the template) |", "|---|---|---|---|---|"]
    for fmt in (*FAMILIES, LOCALLLM):
        example = fmt.write([("get_weather", '{"city": "Paris"}')])
        several = "no (one per turn)" if fmt.one_call else "yes"
        found = ", ".join(f"`{m}`" for m in fmt.detect) or "no other format"
        rows.append(f"| `{fmt.name}` | {fmt.models} | `{_cell(example)}` | {several} | "
                    f"{_cell(found)} |")
    return "\n".join(rows) + "\n"


def template_support_table(templates: dict[str, str]) -> str:
    """Markdown table: each real template whose tools get localllm's own format, and why
    (its family's format is not written yet, or it shows none)."""
    from ..decoding.tool_formats import LOCALLLM, detect_format, not_yet

    rows = ["| template | why localllm's own format |", "|---|---|"]
    for stem, source in sorted(templates.items()):
        if detect_format(source) is not LOCALLLM:
            continue
        why = not_yet(source) or ("the template shows tools in a format no family here "
                                  "matches" if "tools" in source else
                                  "the template does not show tools")
        rows.append(f"| {stem} | {why} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    """Table cell text: newlines shown as \\n, bars escaped."""
    return text.replace("\n", "\\n").replace("|", "\\|")


def _mark(value: bool) -> str:
    return "yes" if value else "no"


if __name__ == "__main__":
    print(feature_matrix(), end="")
