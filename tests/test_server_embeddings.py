"""/v1/embeddings and Ollama's /api/embed and /api/embeddings on ``localllm serve``, with
the official ``openai`` and ``ollama`` clients and raw HTTP: the vectors equal
``Model.embed``'s, and every request the model cannot honour is a 400 naming why. Real
server on loopback, real default embedder and chat model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_harness import served_in_thread, served_model

pytestmark = pytest.mark.real_model
EMBEDDER = "all-minilm-l6-v2"
CHAT = "smollm2-135m-instruct"
TEXTS = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Taxes are due in April."]


@pytest.fixture(scope="module")
def base(default_model_path: Path) -> Iterator[str]:
    with served_in_thread([EMBEDDER, CHAT], threads=2) as url:
        yield url


def expected(base: str, texts: list[str], normalize: bool = True) -> np.ndarray:
    return served_model(base, EMBEDDER).embed(texts, normalize=normalize).vectors


def test_openai_client_gets_the_models_vectors(base: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(model=EMBEDDER, input=TEXTS)  # base64 on the wire
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert [d.index for d in result.data] == [0, 1, 2]
    assert np.allclose(got, expected(base, TEXTS), atol=1e-6)
    floats = client.embeddings.create(model=EMBEDDER, input=TEXTS[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, expected(base, TEXTS[:1])[0], atol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3 * 3


def test_openai_refusals_are_400s(base: str) -> None:
    def post(body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{base}/v1/embeddings", json=body, timeout=60)

    cases = [
        ({"model": CHAT, "input": "hi"}, "generative model"),
        ({"model": EMBEDDER, "input": [[101, 7592, 102]]}, "token ids"),
        ({"model": EMBEDDER, "input": []}, "empty list"),
        ({"model": EMBEDDER, "input": 7}, "string or a list"),
        ({"model": EMBEDDER, "input": "hi", "dimensions": 128}, "does not shorten"),
        ({"model": EMBEDDER, "input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({"model": EMBEDDER, "input": "word " * 700}, "embeds at most 512"),
    ]
    for body, needle in cases:
        response = post(body)
        assert response.status_code == 400, (body, response.text)
        assert needle in response.json()["error"]["message"], (body, response.text)
    too_long = post({"model": EMBEDDER, "input": "word " * 700}).json()["error"]
    assert too_long["code"] == "context_length_exceeded"
    assert post({"model": "nope", "input": "hi"}).status_code == 404


def test_ollama_client_embed_and_legacy_embeddings(base: str) -> None:
    import ollama

    client = ollama.Client(host=base, timeout=60)
    result = client.embed(model=EMBEDDER, input=TEXTS)
    assert np.allclose(np.array(result.embeddings), expected(base, TEXTS), atol=1e-6)
    assert result.prompt_eval_count and result.prompt_eval_count > 9
    legacy = client.embeddings(model=EMBEDDER, prompt=TEXTS[0])
    raw = expected(base, TEXTS[:1], normalize=False)[0]
    assert np.allclose(legacy.embedding, raw, atol=1e-5) and abs(np.linalg.norm(raw) - 1) > 0.1
    show = client.show(EMBEDDER)
    assert show.capabilities == ["embedding"]


def test_ollama_truncates_by_default_and_says_so(base: str) -> None:
    long = "word " * 700
    cut = httpx.post(f"{base}/api/embed", json={"model": EMBEDDER, "input": ["hi", long]},
                     timeout=60)
    assert cut.status_code == 200
    assert cut.json()["truncated"] == [{"index": 1, "dropped_tokens": 702 - 512}]
    refused = httpx.post(f"{base}/api/embed", json={"model": EMBEDDER, "input": long,
                                                     "truncate": False}, timeout=60)
    assert refused.status_code == 400 and "embeds at most 512" in refused.json()["error"]
    chat_model = httpx.post(f"{base}/api/embed", json={"model": CHAT, "input": "hi"},
                            timeout=60)
    assert chat_model.status_code == 400
