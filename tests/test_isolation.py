"""``isolation="process"``: the runtime in a worker process, on the real default model.

The Model API must behave as in-process (the backend contract, greedy text, streaming,
async, cancellation, concurrency), and a worker that dies — killed, segfaulting, or
aborting inside llama.cpp on a real file — must surface as ``BackendCrashedError`` while
the application lives on and the next call gets a new worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from synthetic_models import SHAPES, write_model

import localllm
from localllm.core.isolation import ProcessEngine
from localllm.testing import BackendContract, assert_batched_agrees, greedy_trace

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time",
           "The three primary colors are"]


class TestIsolatedContract(BackendContract):
    @pytest.fixture
    def model(self, default_model_path: Path) -> Iterator[localllm.Model]:
        with localllm.load(default_model_path, context_length=512, threads=2,
                           isolation="process") as m:
            yield m


@pytest.fixture(scope="module")
def isolated(default_model_path: Path) -> Iterator[localllm.Model]:
    with localllm.load(default_model_path, context_length=1024, threads=2,
                       isolation="process") as model:
        yield model


def worker_pid(model: localllm.Model) -> int:
    engine = model._live()
    assert isinstance(engine, ProcessEngine)
    pid = engine.worker_pid
    assert pid is not None and pid != os.getpid()
    return pid


def test_info_says_where_the_runtime_runs(isolated: localllm.Model,
                                          shared_model: localllm.Model) -> None:
    assert isolated.info.isolation == "process" and shared_model.info.isolation == "none"
    assert isolated.info.backend == shared_model.info.backend == "llama.cpp"
    assert isolated.info.vocab_size == shared_model.info.vocab_size
    worker_pid(isolated)


def test_greedy_text_equals_the_in_process_model(isolated: localllm.Model,
                                                 shared_model: localllm.Model) -> None:
    for prompt in PROMPTS:
        isolated.clear_cache()
        got = isolated.complete(prompt, max_tokens=24, temperature=0)
        shared_model.clear_cache()
        assert_batched_agrees(greedy_trace(shared_model, prompt, 24), got.token_ids)
        streamed = "".join(c.text for c in isolated.stream(prompt, max_tokens=24,
                                                             temperature=0))
        assert streamed == got.text


def test_logits_tokenizer_and_chat_cross_the_boundary(isolated: localllm.Model,
                                                      shared_model: localllm.Model) -> None:
    text = "Héllo wörld 🙂 <|im_end|>"
    assert isolated.tokenizer.encode(text) == shared_model.tokenizer.encode(text)
    ids = shared_model.tokenizer.encode(text)
    assert isolated.tokenizer.decode(ids) == shared_model.tokenizer.decode(ids)
    done = isolated.complete("The capital of France is", max_tokens=6, temperature=0,
                             logprobs=3, sampler="localllm")
    assert done.logprobs is not None and len(done.logprobs) == done.usage.completion_tokens
    assert all(len(lp.top_logprobs) == 3 for lp in done.logprobs)
    reply = isolated.chat([{"role": "user", "content": "Say hi"}], max_tokens=8,
                          temperature=0)
    assert reply.usage.completion_tokens > 0
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    shaped = isolated.chat([{"role": "user", "content": "A number as JSON"}], max_tokens=24,
                           temperature=0, response_format={"type": "json_schema",
                                                           "json_schema": {"schema": schema}})
    assert isinstance(shaped.parsed, dict) and isinstance(shaped.parsed["n"], int)


def test_errors_keep_their_type_and_fields(isolated: localllm.Model) -> None:
    """An error raised inside the worker arrives as the same class with its attributes."""
    engine = isolated._live()
    with pytest.raises(localllm.UnsupportedFeatureError) as info:
        engine.embed_batch([[1, 2, 3]])
    assert info.value.backend == "llama.cpp" and "embeddings" in str(info.value)


def test_async_and_concurrent_requests(isolated: localllm.Model) -> None:
    async def ask(i: int) -> str:
        done = await isolated.acomplete(f"Item {i}:", max_tokens=12, temperature=0)
        return done.text

    async def all_of() -> list[str]:
        return await asyncio.gather(*(ask(i) for i in range(6)))

    texts = asyncio.run(all_of())
    assert len(texts) == 6 and all(texts)
    text = "tick tock " * 50
    expected = isolated.tokenizer.encode(text)
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(isolated.tokenizer.encode(text)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert results == [expected] * 8  # one connection, calls from many threads: no mix-up


def test_cancelled_streams_release_their_sequences(isolated: localllm.Model) -> None:
    for _ in range(5):
        stream = isolated.stream("Once upon a time", max_tokens=200, temperature=0)
        next(iter(stream))
        stream.close()

    async def cancel_one() -> None:
        task = asyncio.ensure_future(isolated.acomplete("Once upon a time", max_tokens=400))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_one())
    deadline = time.monotonic() + 30
    while isolated.stats.active_sequences and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isolated.stats.active_sequences == 0
    assert isolated.complete("1, 2, 3,", max_tokens=4, temperature=0).usage.completion_tokens


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT])
def test_a_dying_worker_is_a_typed_error_and_the_next_call_recovers(
        isolated: localllm.Model, how: signal.Signals) -> None:
    """Every request running when the worker dies fails with BackendCrashedError naming
    the signal; the next request starts a new worker and gets the same greedy text."""
    isolated.clear_cache()
    before = isolated.complete("The capital of France is", max_tokens=12, temperature=0).text
    pid = worker_pid(isolated)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            isolated.complete("Once upon a time", max_tokens=400, temperature=0.8,
                              logit_bias={t: -100.0 for t in _eog(isolated)})
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    runners = [threading.Thread(target=run) for _ in range(3)]
    for t in runners:
        t.start()
    deadline = time.monotonic() + 30  # all three decoding (a busy machine renders slowly)
    while isolated.stats.active_sequences < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    os.kill(pid, how)
    for t in runners:
        t.join(timeout=60)
    assert len(errors) == 3, errors
    assert all(isinstance(e, localllm.BackendCrashedError) for e in errors), errors
    assert how.name in str(errors[0]) and "next call starts a new worker" in str(errors[0])
    isolated.clear_cache()
    after = isolated.complete("The capital of France is", max_tokens=12, temperature=0).text
    assert after == before
    assert worker_pid(isolated) != pid
    assert isolated.info.isolation == "process"


def _eog(model: localllm.Model) -> list[int]:
    engine = model._live()
    return [t for t in range(engine.vocab_size) if engine.is_end_of_generation(t)]


ABORT_SCRIPT = """
import sys, localllm
model = localllm.load(sys.argv[1], chat_template="chatml", context_length=128,
                      isolation=sys.argv[2])
try:
    model.complete("hello", max_tokens=4)
except localllm.BackendCrashedError as exc:
    print("TYPED:", exc)
model.close()
print("ALIVE")
"""


@pytest.fixture(scope="module")
def aborting_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A well-formed GGUF whose attention norms are stored as F16: llama.cpp loads it, then
    GGML_ABORTs in its first decode (no CPU kernel multiplies F32 by F16 there)."""
    return write_model(SHAPES[0], tmp_path_factory.mktemp("abort") / "f16-norms.gguf",
                       f16_attn_norms=True)


def test_a_runtime_abort_kills_the_process_in_process_but_not_isolated(
        aborting_model: Path) -> None:
    def run(isolation: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", ABORT_SCRIPT, str(aborting_model),
                               isolation], capture_output=True, text=True, timeout=300,
                              env=env)

    # in-process, ggml would fork a debugger for a backtrace first: not what is tested here
    bare = run("none", env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    assert bare.returncode == -signal.SIGABRT, (bare.returncode, bare.stderr[-2000:])
    assert "ALIVE" not in bare.stdout
    guarded = run("process")
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    assert "TYPED:" in guarded.stdout and "SIGABRT" in guarded.stdout
    assert "ALIVE" in guarded.stdout


def test_close_ends_the_worker(default_model_path: Path) -> None:
    model = localllm.load(default_model_path, context_length=256, isolation="process")
    pid = worker_pid(model)
    # an abort in the worker is reported at once: ggml attaches no debugger there first
    assert b"GGML_NO_BACKTRACE=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    model.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: not even a zombie is left
    with pytest.raises(localllm.ModelClosedError):
        model.complete("x", max_tokens=1)


def test_isolation_choices(default_model_path: Path) -> None:
    with pytest.raises(localllm.ConfigError, match="isolation='thread'"):
        localllm.load(default_model_path, isolation="thread")
    with localllm.load(default_model_path, context_length=256, isolation="auto") as model:
        assert model.info.isolation == "none"  # llama.cpp is not known to abort
    with localllm.load(default_model_path, backend="gpt4all", context_length=256,
                       isolation="auto", backend_options={"compat_copy": True}) as model:
        assert model.info.isolation == "process"
        assert model.complete("The capital of France is", max_tokens=4,
                              temperature=0).usage.completion_tokens == 4


def test_the_server_answers_a_crash_with_500_and_serves_the_next_request(
        default_model_path: Path) -> None:
    """``localllm serve --isolation process``: a worker killed mid-request is an OpenAI
    error envelope (500, code backend_crashed), and the server goes on serving."""
    import httpx
    from server_harness import first_model_id, served_in_thread, served_model

    with served_in_thread([str(default_model_path)], isolation="process", threads=2,
                          context_length=512, parallel=2) as base:
        name = first_model_id(base)
        model = served_model(base, name)
        assert model.info.isolation == "process"
        body = {"model": name, "prompt": "Once upon a time", "max_tokens": 400,
                "logit_bias": {str(t): -100 for t in _eog(model)}}
        with httpx.Client(base_url=base, timeout=120) as client:
            killer = threading.Timer(0.5, os.kill, (worker_pid(model), signal.SIGKILL))
            killer.start()
            crashed = client.post("/v1/completions", json=body)
            killer.join()
            assert crashed.status_code == 500, crashed.text
            assert crashed.json()["error"]["code"] == "backend_crashed"
            again = client.post("/v1/completions", json={**body, "max_tokens": 8})
            assert again.status_code == 200, again.text
            assert again.json()["usage"]["completion_tokens"] == 8


def test_the_server_isolates_runtimes_known_to_abort_by_default() -> None:
    from localllm.server._registry import Registry

    assert Registry([]).isolation == "auto"
    from localllm.core.isolation import wants_process
    from localllm.engines.ctransformers import CTransformersEngine
    from localllm.engines.gpt4all import GPT4AllEngine
    from localllm.engines.llamacpp import LlamaCppEngine

    assert wants_process("auto", GPT4AllEngine) and wants_process("auto", CTransformersEngine)
    assert not wants_process("auto", LlamaCppEngine)
    assert wants_process("process", LlamaCppEngine)


def test_ctransformers_in_a_worker_generates_what_it_does_in_process(tmp_path: Path) -> None:
    """A non-batching runtime (one generator per request, driven token by token across
    the boundary): "auto" isolates it, and its greedy tokens are the in-process ones."""
    from legacy_ggml import make_weights, write_gpt2_ggml

    path = write_gpt2_ggml(tmp_path / "tiny-gpt2.bin", make_weights())
    runs = {}
    for isolation in ("none", "auto"):
        with localllm.load(path, chat_template="chatml", context_length=128,
                           isolation=isolation) as model:
            assert model.info.backend == "ctransformers"
            assert model.info.isolation == ("process" if isolation == "auto" else "none")
            done = model.complete("the fox", max_tokens=6, temperature=0,
                                  logit_bias={t: 50.0 for t in (256, 257, 258)})
            streamed = [c.text for c in model.stream("the fox", max_tokens=6, temperature=0)]
            runs[isolation] = (done.token_ids, done.text, "".join(streamed))
    assert runs["none"] == runs["auto"]


@pytest.mark.parametrize("name", ["all-minilm-l6-v2", "all-minilm-l6-v2-onnx-int8"])
def test_embedding_models_in_a_worker_give_the_in_process_vectors(name: str) -> None:
    texts = ["a cat sat on the mat", "Quantum chromodynamics", "où est la gare ?"]
    vectors = {}
    for isolation in ("none", "process"):
        with localllm.load(name, threads=2, isolation=isolation) as model:
            assert model.info.isolation == isolation and model.info.pooling is not None
            vectors[isolation] = model.embed(texts).vectors
    np.testing.assert_array_equal(vectors["none"], vectors["process"])


def test_an_onnx_folder_in_a_worker_keeps_its_own_tokenizer_for_constraints(
        tmp_path: Path) -> None:
    """An ONNX folder has no GGUF vocabulary: the grammar is built from its tokenizer.json."""
    from synthetic_models import Shape

    from localllm.models.convert import convert_gguf_to_onnx

    tiny = Shape("onnx-tiny", n_layer=2, n_embd=128, n_head=4, n_head_kv=2, n_ff=352,
                 n_vocab=600, dtype="f32", n_ctx_train=512)
    folder = convert_gguf_to_onnx(write_model(tiny, tmp_path / "tiny.gguf"), tmp_path / "onnx")
    with localllm.load(folder, context_length=256, chat_template="chatml",
                       isolation="process") as model:
        assert model.info.backend == "onnxruntime" and model.info.isolation == "process"
        result = model.complete("the fox", max_tokens=10, temperature=0,
                                response_format={"type": "regex", "pattern": "[a-f]{3}"})
    assert len(result.text) == 3 and set(result.text) <= set("abcdef")
