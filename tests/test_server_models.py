"""Several models on one server: loading on first use, idle expiry, LRU eviction under a
RAM budget and the 503 when nothing idle is left. Real server, real default model (served
under two names through symlinks, as two models)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from server_harness import served_in_thread, served_model

import localllm
from localllm.server._registry import parse_keep_alive

pytestmark = pytest.mark.real_model


def loaded(url: str) -> list[str]:
    return [m["name"] for m in httpx.get(f"{url}/api/ps").json()["models"]]


def generate(url: str, model: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{url}/api/generate", timeout=120, json={
        "model": model, "prompt": "Hi", "stream": False, "options": {"num_predict": 2},
        **extra})


def test_lru_idle_model_is_unloaded_for_a_new_one(default_model_path: Path,
                                                  tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.gguf").symlink_to(default_model_path)
    options = {"context_length": 256, "parallel": 2, "threads": 1}
    plan = localllm.plan(default_model_path, **options)  # type: ignore[arg-type]
    budget = int(plan.predicted_ram_after_load * 1.5)  # room for one model, not two
    with served_in_thread([str(tmp_path / "alpha.gguf"), str(tmp_path / "beta.gguf")],
                          ram_budget=budget, preload=False, **options) as url:
        assert loaded(url) == []
        assert generate(url, "alpha").status_code == 200
        assert loaded(url) == ["alpha"]
        assert generate(url, "beta").status_code == 200
        assert loaded(url) == ["beta"]  # alpha was idle: unloaded to make room

        # beta busy with an open stream (no end token can end it): alpha cannot be
        # loaded, and says why
        engine = served_model(url, "beta")._engine
        no_eos = {str(t): -100 for t in range(engine.vocab_size)
                  if engine.is_end_of_generation(t)}
        body = {"model": "beta", "prompt": "Count: 1, 2,", "stream": True,
                "logit_bias": no_eos}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: dropping it would close the connection
            next(lines)
            refused = generate(url, "alpha")
        assert refused.status_code == 503 and "budget" in refused.json()["error"]
        assert refused.headers["retry-after"]
        assert generate(url, "alpha").status_code == 200  # beta idle again: swapped


def test_idle_model_unloads_after_keep_alive(default_model_path: Path) -> None:
    with served_in_thread(["smollm2-135m-instruct"], keep_alive_s=1.0, context_length=256,
                          parallel=1, preload=False) as url:
        started = time.monotonic()
        assert generate(url, "smollm2-135m-instruct").status_code == 200
        assert loaded(url) == ["smollm2-135m-instruct"]
        deadline = time.monotonic() + 15
        while loaded(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert loaded(url) == [] and time.monotonic() - started >= 1.0
        # a request's own keep_alive overrides the server's: -1 keeps it
        assert generate(url, "smollm2-135m-instruct", keep_alive=-1).status_code == 200
        time.sleep(2.5)
        (entry,) = httpx.get(f"{url}/api/ps").json()["models"]
        assert entry["expires_at"].startswith("9999")


def test_keep_alive_values() -> None:
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive(0) == 0 and parse_keep_alive("-1") is None
    assert parse_keep_alive("250ms") == pytest.approx(0.25)
    for bad in ("soon", True, [1]):
        with pytest.raises(localllm.ConfigError, match="keep_alive"):
            parse_keep_alive(bad)


def test_unknown_and_path_like_model_names_are_404(default_model_path: Path) -> None:
    """Only listed names resolve: a request can never make the server open a path."""
    with served_in_thread(["smollm2-135m-instruct"], preload=False) as url:
        for name in (str(default_model_path), "../../etc/passwd", "nope"):
            r = httpx.post(f"{url}/api/generate", json={"model": name, "prompt": "x"})
            assert r.status_code == 404, name
            assert "not served here" in json.loads(r.text)["error"]
