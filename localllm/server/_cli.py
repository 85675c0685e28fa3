"""``localllm serve``: checks the command line, then runs the app under uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .._errors import ConfigError
from ._app import LOOPBACK_HOSTS, create_app
from ._registry import parse_keep_alive


def api_keys(args: argparse.Namespace) -> list[str]:
    if args.api_key_file:
        try:
            text = Path(args.api_key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from exc
        keys = [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise ConfigError(f"--api-key-file {args.api_key_file} holds no key")
        return keys
    return list(args.api_key or [])


def check_bind(host: str, keys: list[str], insecure: bool) -> None:
    """Refuse to expose an unauthenticated server beyond this machine."""
    if host not in LOOPBACK_HOSTS and not keys and not insecure:
        raise ConfigError(
            f"--host {host} exposes the server beyond this machine without an API key; "
            "give --api-key (or --api-key-file), or --insecure-no-auth if you mean it")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    keys = api_keys(args)
    check_bind(args.host, keys, args.insecure_no_auth)
    if args.parallel < 1:
        raise ConfigError(f"--parallel {args.parallel} must be at least 1")
    models = list(args.models)
    if not models:
        import localllm

        models = [localllm.DEFAULT_MODEL]
    app = create_app(models, host=args.host, parallel=args.parallel,
                     max_queue=args.max_queue, api_keys=keys,
                     cors_origins=args.cors_origin or (),
                     keep_alive_s=parse_keep_alive(args.keep_alive), threads=args.threads,
                     context_length=args.context, max_body_bytes=args.max_body,
                     isolation=args.isolation, system_message=args.system_message,
                     responses_db=args.responses_db, data_dir=args.data_dir,
                     ui=not args.no_ui, max_upload_bytes=args.max_upload,
                     fetch_images=args.fetch_images or bool(args.fetch_images_allow),
                     fetch_allow=tuple(args.fetch_images_allow),
                     speculative=args.speculative, draft=args.draft,
                     responses_ttl_s=args.responses_ttl * 86400,
                     ram_budget=args.ram_budget * 1024 * 1024 if args.ram_budget else None)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("localllm.llama_cpp").setLevel(logging.WARNING)  # runtime chatter
    page = "" if args.no_ui else ", the chat page at /"
    print(f"localllm serve: http://{args.host}:{args.port} (OpenAI /v1, Ollama /api, "
          f"Anthropic /v1/messages{page})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=5)
    return 0
