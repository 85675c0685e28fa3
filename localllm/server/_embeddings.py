"""Embeddings for both APIs: input checks and the call, written once; each API shapes the
reply. A generative model answers 400 (it has no embeddings), never a made-up vector."""

from __future__ import annotations

import base64
from typing import Any

from ..core.embed import Embeddings
from ..core.model import Model
from ._app import HTTPError


def texts_of(value: Any, field: str) -> list[str]:
    """The input texts: a string or a list of strings. Token-id inputs are refused: ids
    from another tokenizer (tiktoken's, as some clients send) would embed nonsense."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if not value:
            raise HTTPError(400, f"{field} is an empty list; send at least one text",
                            param=field)
        return list(value)
    if isinstance(value, list) and value and all(
            isinstance(v, (int, list)) for v in value):
        raise HTTPError(400, f"{field} holds token ids; send text (with LangChain's "
                        "OpenAIEmbeddings, pass check_embedding_ctx_length=False)",
                        param=field)
    raise HTTPError(400, f"{field} must be a string or a list of strings", param=field)


async def embed(model: Model, texts: list[str], *, normalize: bool, truncate: bool,
                dimensions: Any = None) -> Embeddings:
    if model.info.pooling is None:
        raise HTTPError(400, f"{model.info.name} is a generative model and does not produce "
                        "embeddings; serve an embedding model (e.g. all-minilm-l6-v2)",
                        param="model")
    result = await model.aembed(texts, normalize=normalize,
                                overflow="truncate_right" if truncate else "error")
    if dimensions is not None and dimensions != result.dim:
        raise HTTPError(400, f"dimensions={dimensions!r}: {model.info.name} gives "
                        f"{result.dim}-dimensional vectors and does not shorten them",
                        param="dimensions")
    return result


def as_base64(row: Any) -> str:
    """OpenAI's base64 encoding: the float32 little-endian bytes of the vector."""
    return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
