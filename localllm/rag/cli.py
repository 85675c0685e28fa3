"""``localllm index add|search|list|remove`` and ``localllm ask``: local documents from the
command line, on an :class:`~localllm.Index` file (default ``localllm-index.sqlite``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DEFAULT_INDEX = "localllm-index.sqlite"


def add_parsers(sub: Any) -> None:
    index = sub.add_parser("index", help="index local documents and search them")
    actions = index.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="index files and folders (.txt, .md, .pdf)")
    add.add_argument("paths", nargs="+")
    search = actions.add_parser("search", help="the chunks most similar to a query")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="results (default 5)")
    actions.add_parser("list", help="the indexed documents")
    remove = actions.add_parser("remove", help="drop documents from the index")
    remove.add_argument("paths", nargs="+")
    for p in (add, search, actions.choices["list"], remove):
        _index_options(p)
    index.set_defaults(func=cmd_index)

    ask = sub.add_parser("ask", help="answer a question from an index, citing sources")
    ask.add_argument("question")
    ask.add_argument("-m", "--model", default=None,
                     help="chat model: catalog name or .gguf path (default model if absent)")
    ask.add_argument("-k", type=int, default=5, help="chunks retrieved (default 5)")
    ask.add_argument("--max-tokens", type=int, default=256)
    ask.add_argument("--context", type=int, default=None, help="chat model context length")
    _index_options(ask)
    ask.set_defaults(func=cmd_ask)


def _index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", default=DEFAULT_INDEX,
                   help=f"index file (default {DEFAULT_INDEX})")
    p.add_argument("--embedder", default=None,
                   help="embedding model: catalog name or path (default all-minilm-l6-v2)")


def _open(args: argparse.Namespace) -> Any:
    from .index import Index

    return Index(args.index, args.embedder)


def cmd_index(args: argparse.Namespace) -> int:
    with _open(args) as index:
        if args.action == "add":
            report = index.add(args.paths)
            print(f"indexed {len(report.added)} file(s) into {report.chunks} chunks; "
                  f"{len(report.unchanged)} unchanged; {len(index)} chunks in {args.index}")
        elif args.action == "search":
            for hit in index.search(args.query, k=args.k):
                print(f"{hit.score:.3f}  {hit.location}")
                print("       " + hit.text.replace("\n", "\n       ")[:400])
        elif args.action == "list":
            for source, _sha, chunks in index.documents():
                print(f"{chunks:5d} chunks  {source}")
        else:
            missing = [p for p in args.paths if not index.remove(p)]
            if missing:
                print(f"not in the index: {', '.join(missing)}", file=sys.stderr)
                return 1
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from ..models.loader import load
    from .answer import answer

    with _open(args) as index, load(args.model, context_length=args.context) as model:
        result = answer(args.question, index, model, k=args.k, max_tokens=args.max_tokens)
        print(result.text.strip())
        print("\nsources:")
        for i, hit in enumerate(result.sources, 1):
            print(f"  [{i}] {hit.location} (score {hit.score:.3f})")
        for hit in result.left_out:
            print(f"  left out (no room in the context): {hit.location}")
    return 0
