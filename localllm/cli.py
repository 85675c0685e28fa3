"""The ``localllm`` command: run, chat, info, pull, models.

Errors from localllm are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ._defaults import DEFAULTS
from ._errors import LocalLLMError


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", default=None,
                   help="catalog name or .gguf path (default: the embedded default model)")
    p.add_argument("--backend", default="auto", help="backend name or 'auto'")
    p.add_argument("--context", type=int, default=None, help="context length in tokens")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repeat-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    names = ["max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty",
             "seed", "stop"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _load(args: argparse.Namespace) -> Any:
    from .models.loader import load

    return load(args.model, backend=args.backend, context_length=args.context,
                threads=args.threads)


def cmd_run(args: argparse.Namespace) -> int:
    with _load(args) as model:
        stream = model.stream_chat([{"role": "user", "content": args.prompt}],
                                   **_sampling(args)) if args.chat else \
            model.stream(args.prompt, **_sampling(args))
        for chunk in stream:
            print(chunk.text, end="", flush=True)
            if chunk.completion is not None and args.verbose:
                c = chunk.completion
                print(f"\n[{c.finish_reason}; {c.usage.prompt_tokens} prompt + "
                      f"{c.usage.completion_tokens} generated tokens; "
                      f"{c.timings.generation_tokens_per_s:.1f} tok/s]", file=sys.stderr)
        print()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    with _load(args) as model:
        print(f"chatting with {model.info.name} ({model.info.backend}); "
              "empty line or Ctrl-D to quit, /reset to forget", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if not line.strip():
                return 0
            if line.strip() == "/reset":
                messages = messages[:1] if args.system else []
                continue
            messages.append({"role": "user", "content": line})
            parts = []
            try:
                for chunk in model.stream_chat(messages, overflow="drop_oldest",
                                               **_sampling(args)):
                    print(chunk.text, end="", flush=True)
                    parts.append(chunk.text)
            except KeyboardInterrupt:
                print(" [interrupted]", end="")
            print()
            messages.append({"role": "assistant", "content": "".join(parts)})


def cmd_info(args: argparse.Namespace) -> int:
    from .models.gguf import read_gguf
    from .models.loader import resolve_source

    gguf = read_gguf(resolve_source(args.model))
    facts = {
        "path": str(gguf.path), "name": gguf.name, "format": f"GGUF v{gguf.version}",
        "architecture": gguf.architecture, "parameters": gguf.parameter_count,
        "quantization": gguf.quantization, "file_size": gguf.file_size,
        "trained_context_length": gguf.context_length, "layers": gguf.block_count,
        "vocab_size": gguf.vocab_size,
        "tokenizer": f"{gguf.metadata.get('tokenizer.ggml.model')} "
                     f"(pre: {gguf.metadata.get('tokenizer.ggml.pre', '-')})",
        "chat_template": "yes" if gguf.chat_template else "no (pass chat_template=)",
        "tool_format": _tool_format(gguf.chat_template),
        "license": gguf.metadata.get("general.license", "unknown"),
    }
    if gguf.chat_template:
        facts["chat_template_check"] = _template_check(gguf)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        width = max(map(len, facts))
        for key, value in facts.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _tool_format(template: str | None) -> str:
    """How chat(tools=...) writes calls with this file's template."""
    from .decoding.tool_formats import detect_format

    fmt = detect_format(template)
    return f"{fmt.name} ({fmt.models})"


def _template_check(gguf: Any) -> str:
    """The conformance conversations through the file's template: whether it passes,
    whether it writes tools itself, and whether folding the system message
    (``system_message="fold"``) mends a refusal."""
    from .templates.check import check_template

    bos, eos = gguf.special_texts
    report = check_template(gguf.chat_template, bos_token=bos, eos_token=eos)
    verdict = "passed" if report.passed else "failed"
    line = f"{verdict}: {report.summary()}"
    if not report.handles_tools:
        line += (". chat(tools=...) writes tools and calls in localllm's own format, as "
                 "text this template renders")
    if not report.passed:
        folded = check_template(gguf.chat_template, bos_token=bos, eos_token=eos,
                                fold_system=True)
        if folded.passed:
            line += ". With system_message='fold' it passes"
    return line


def cmd_pull(args: argparse.Namespace) -> int:
    from .models.store import DEFAULT_MODEL, ModelStore

    path = ModelStore().ensure(args.name or DEFAULT_MODEL)
    print(path)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.store import ModelStore

    if args.fits:
        return _models_that_fit(args)
    if args.local:
        return _models_on_disk(args)
    store = ModelStore()
    local = {m.name: m for m in store.list_local()}
    rows = []
    for entry in store.catalog.values():
        have = local.get(entry.name)
        state = "missing" if have is None else ("ready" if have.verified else "corrupt")
        rows.append({"name": entry.name, "size_mb": round(entry.size / 1e6, 1),
                     "state": state, "license": entry.license,
                     "source": entry.source.describe(), "description": entry.description})
    if args.json:
        print(json.dumps({"home": str(store.home), "models": rows}, indent=2))
        return 0
    print(f"model store: {store.home}")
    for r in rows:
        print(f"{r['name']:<28} {r['size_mb']:>8} MB  {r['state']:<8} {r['description']}")
    return 0


def _models_on_disk(args: argparse.Namespace) -> int:
    """Other tools' GGUF models (Ollama, LM Studio, GPT4All, HF cache, llamafiles)."""
    from pathlib import Path

    from .models.discover import discover, fit_summary, verify_ollama_blob

    rows: list[dict[str, Any]] = []
    for found in discover(llamafiles=[Path(p) for p in args.scan or []]):
        g = found.gguf
        problem = found.problem
        if args.verify and found.source == "ollama" and found.usable:
            try:
                verify_ollama_blob(found)
            except LocalLLMError as exc:
                problem = str(exc)
        rows.append({"name": found.name, "path": str(found.path),
                     "size_mb": round(found.size / 1e6, 1),
                     "architecture": g.architecture if g else None,
                     "quantization": g.quantization if g else None,
                     "trained_context": g.context_length if g else None,
                     "fits": fit_summary(found) if found.usable else None,
                     "problem": problem, "notes": list(found.notes)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no GGUF models found in the Ollama, LM Studio, GPT4All or Hugging Face stores")
    for r in rows:
        facts = f"{r['architecture']} {r['quantization']} ctx {r['trained_context']}"
        print(f"{r['name']:<48} {r['size_mb']:>8} MB  {facts}  "
              f"{r['problem'] or r['fits']}")
        for note in r["notes"]:
            print(f"    note: {note}")
    return 0


def _models_that_fit(args: argparse.Namespace) -> int:
    from .planning.recommend import describe_fit, recommend

    recs = recommend(min_context=args.context)
    if args.json:
        print(json.dumps([r.model_dump(exclude={"facts"}) | {"source": r.facts.source,
                                                              "slow": r.slow}
                          for r in recs], indent=2))
        return 0
    print(f"recommended models that fit this machine (context {args.context}; speeds "
          "estimated from measured memory bandwidth and compute, see docs):")
    for r in recs:
        print("  " + describe_fit(r))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ._doctor import run_checks
    from .hardware import probe

    profile = probe()
    checks = run_checks(profile)
    if args.json:
        print(json.dumps({"profile": profile.model_dump(),
                          "checks": [c.model_dump() for c in checks]}, indent=2))
    else:
        cpu = profile.cpu
        print(f"CPU     {cpu.model} ({cpu.architecture}), {cpu.physical_cores} physical / "
              f"{cpu.logical_cores} logical cores, {cpu.usable_cores:g} usable")
        print(f"        ISA: {', '.join(cpu.flags) or 'none detected'}")
        for rt in profile.runtimes:
            print(f"runtime {rt.name} {rt.version}" + (" (GPU offload)" if rt.gpu_offload else ""))
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in checks:
            print(f"[{mark[c.status]}] {c.name}: {c.message}")
            if c.remedy:
                print(f"       fix: {c.remedy}")
    return 1 if any(c.status == "fail" for c in checks) else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .models.loader import plan

    the_plan = plan(args.model, backend=args.backend, context_length=args.context,
                    device=args.device)
    print(the_plan.model_dump_json(indent=2) if args.json else the_plan.describe())
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ._progress import ProgressBar
    from .models.convert import convert_gguf_to_onnx
    from .models.loader import resolve_source

    source = resolve_source(args.model)
    folder = source if source.is_dir() else source.parent
    dtype = {"fp32": "f32", "fp16": "f16"}.get(args.dtype, args.dtype)  # GGUF's names
    if (folder / "model.safetensors").is_file():  # a sentence-transformers BERT folder
        from .models.convert_bert import convert_bert_to_gguf

        print(convert_bert_to_gguf(folder, args.out_dir, dtype=dtype))
        return 0
    bar = ProgressBar("converting", 0, unit="tensors")
    if args.out_dir.endswith(".gguf"):  # the same weights at another precision
        from .models.convert_precision import change_precision

        print(change_precision(source, args.out_dir, dtype=dtype,
                              progress=lambda done, total: bar(done, total)))
        return 0
    out = convert_gguf_to_onnx(source, args.out_dir, dtype=args.dtype,
                               progress=lambda done, total: bar(done, total))
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localllm",
                                     description="Run local LLMs with one API.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate from a prompt, streaming")
    run.add_argument("prompt")
    run.add_argument("--raw", dest="chat", action="store_false",
                     help="plain completion instead of a chat turn")
    run.add_argument("-v", "--verbose", action="store_true", help="print usage and speed")
    _add_model_options(run)
    _add_sampling_options(run)
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="interactive multi-turn chat, streaming")
    chat.add_argument("--system", default=None, help="system prompt")
    _add_model_options(chat)
    _add_sampling_options(chat)
    chat.set_defaults(func=cmd_chat)

    info = sub.add_parser("info", help="facts from a model file's header (no loading)")
    info.add_argument("model", nargs="?", default=None)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    pull = sub.add_parser("pull", help="fetch a catalog model into the store")
    pull.add_argument("name", nargs="?", default=None)
    pull.set_defaults(func=cmd_pull)

    models = sub.add_parser("models", help="the catalog and what is in the store")
    models.add_argument("--json", action="store_true")
    models.add_argument("--fits", action="store_true",
                        help="recommended models that fit this machine, and how")
    models.add_argument("--local", action="store_true",
                        help="GGUF models of Ollama, LM Studio, GPT4All and the HF cache")
    models.add_argument("--scan", action="append", default=None, metavar="PATH",
                        help="with --local: also look for llamafiles here (repeatable)")
    models.add_argument("--verify", action="store_true",
                        help="with --local: check Ollama blobs against their sha256 names")
    models.add_argument("--context", type=int, default=4096,
                        help="context length for --fits (default 4096)")
    models.set_defaults(func=cmd_models)

    from .models.convert import DTYPES

    convert = sub.add_parser("convert", help="a llama-family GGUF to an ONNX folder, or a "
                                             "BERT safetensors folder to a GGUF file")
    convert.add_argument("model", help="catalog name, .gguf path or BERT folder")
    convert.add_argument("out_dir", help="ONNX folder, or a .gguf file (BERT, or a GGUF "
                                         "rewritten as --dtype f16/f32/q8_0)")
    convert.add_argument("--dtype", default="fp32",
                         choices=[*DTYPES, "f32", "f16", "q8_0"],
                         help="ONNX: fp32/fp16/int8/int4; GGUF out: f32/f16/q8_0")
    convert.set_defaults(func=cmd_convert)

    doctor = sub.add_parser("doctor", help="this machine's hardware, runtimes and health "
                                           "checks with remedies")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)

    plan = sub.add_parser("plan", help="how a model would be loaded here, and why")
    plan.add_argument("model", nargs="?", default=None)
    plan.add_argument("--context", type=int, default=None)
    plan.add_argument("--backend", default="auto")
    plan.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_plan)

    from .rag.cli import add_parsers

    add_parsers(sub)

    _add_serve_parser(sub)
    return parser


def _add_serve_parser(sub: Any) -> None:
    """``localllm serve`` and its options (defaults from ``_defaults``)."""
    serve = sub.add_parser("serve", help="an OpenAI-, Ollama- and Anthropic-compatible "
                                         "HTTP server (needs the 'server' extra)")
    serve.add_argument("models", nargs="*", help=".gguf paths or catalog names (default: "
                                                 "the default model and the store's)")
    serve.add_argument("--host", default=DEFAULTS.host,
                       help="bind address (default loopback; others need a key)")
    serve.add_argument("--port", type=int, default=DEFAULTS.port)
    serve.add_argument("--parallel", type=int, default=DEFAULTS.server_parallel,
                       help="requests decoded together per model")
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument("--api-key", action="append", default=None,
                      help="required Bearer key (repeatable)")
    keys.add_argument("--api-key-file", default=None, help="file with one key per line")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow a non-loopback bind without an API key")
    serve.add_argument("--cors-origin", action="append", default=None,
                       help="allowed browser origin (repeatable); CORS is off without it")
    serve.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                       help="requests waiting per model before 503")
    serve.add_argument("--keep-alive", default=f"{DEFAULTS.keep_alive_s:g}s",
                       help="unload a model after this idle time (-1: never)")
    serve.add_argument("--threads", type=int, default=None, help="CPU threads per model")
    serve.add_argument("--context", type=int, default=None,
                       help="context length per sequence")
    serve.add_argument("--ram-budget", type=int, default=None, metavar="MIB",
                       help="RAM all loaded models may take; past it the least recently "
                            "used idle model is unloaded (default: free RAM decides)")
    serve.add_argument("--isolation", choices=("auto", "process", "none"),
                       default=DEFAULTS.server_isolation,
                       help="run runtimes in worker processes, so a crash is a 500 and not "
                            "the server's end (auto: for gpt4all and ctransformers, which "
                            "are known to abort)")
    serve.add_argument("--system-message", choices=("template", "fold"), default="template",
                       help="fold: a leading system message goes into the first user turn, "
                            "for templates that refuse a system role (Gemma 2)")
    serve.add_argument("--max-body", type=int, default=DEFAULTS.max_body_bytes,
                       help="request body limit in bytes")
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help="where the server keeps stored responses, the chat page's "
                            "conversations and document collections (default: "
                            "$XDG_DATA_HOME/localllm, i.e. ~/.local/share/localllm)")
    serve.add_argument("--responses-db", default=None, metavar="PATH",
                       help="SQLite file of stored responses (Responses API; default: "
                            "responses.sqlite in the data directory)")
    serve.add_argument("--responses-ttl", type=float, default=DEFAULTS.responses_ttl_days,
                       metavar="DAYS", help="days a stored response is kept")
    serve.add_argument("--no-ui", action="store_true",
                       help="no chat page at / (the APIs only)")
    serve.add_argument("--max-upload", type=int, default=DEFAULTS.max_upload_bytes,
                       metavar="BYTES", help="largest document the chat page may upload")
    serve.add_argument("--speculative", choices=["ngram", "draft"], default=None,
                       help="speculative decoding: draft tokens by prompt lookup (ngram) or "
                            "a draft model, and check them in one step (same output)")
    serve.add_argument("--draft", default=None, metavar="MODEL",
                       help="a smaller model with the same vocabulary that drafts for the "
                            "one model served (implies --speculative draft)")
    serve.add_argument("--fetch-images", action="store_true",
                       help="fetch http(s) image URLs in requests (off: only images sent "
                            "as data; never from loopback or private addresses)")
    serve.add_argument("--fetch-images-allow", action="append", default=[], metavar="HOST",
                       help="a host (or address) of your own network image URLs may name "
                            "(repeatable; implies --fetch-images)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server._cli import serve

    return serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except LocalLLMError as exc:
        print(f"localllm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
