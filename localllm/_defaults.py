"""The defaults that several entry points share, written once.

``load()``, the scheduler, ``localllm serve``'s command line, ``ServerConfig`` and the
server's model registry all read them from here, so a default changed here changes
everywhere and the help text cannot drift from the behaviour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Defaults:
    #: requests that may wait per model beyond the running ones (QueueFullError / 503)
    max_queue: int = 256
    #: requests the server decodes together per model (load() picks up to 4 itself)
    server_parallel: int = 8
    #: seconds an idle served model stays loaded (Ollama's default, 5 minutes)
    keep_alive_s: float = 300.0
    #: request body limit of the server, in bytes
    max_body_bytes: int = 8 * 1024 * 1024
    #: one document uploaded to the chat page, in bytes
    max_upload_bytes: int = 16 * 1024 * 1024
    #: conversations the chat page keeps per API key (past it, new ones are refused)
    max_conversations: int = 5_000
    #: where the server listens: loopback only, unless told otherwise with a key
    host: str = "127.0.0.1"
    port: int = 8000
    #: isolation of served runtimes: worker processes for the ones known to abort
    server_isolation: str = "auto"
    #: days a stored response (Responses API) is kept, and the most kept at once
    responses_ttl_days: float = 30.0
    responses_max_rows: int = 10_000
    #: one image in a message, as a file (bytes); and its pixels once decoded, against
    #: decompression bombs (a 100 KB PNG can claim gigapixels)
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    #: an image URL the server fetches (only with --fetch-images): bytes, seconds, hops
    fetch_image_timeout_s: float = 10.0
    fetch_image_redirects: int = 3


DEFAULTS = Defaults()


def default_home() -> Path:
    """Where localllm keeps its files (models, compatibility copies, speed records):
    ``$LOCALLLM_HOME``, else the user's cache folder."""
    env = os.environ.get("LOCALLLM_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("localllm"))
