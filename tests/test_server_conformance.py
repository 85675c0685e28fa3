"""The 42 conformance cases of research/server.md, numbered, against a real server, and
the same rules through the agent APIs (Anthropic's Messages, OpenAI's Responses).

Every test talks HTTP to ``localllm serve``'s app running under uvicorn on 127.0.0.1 with
the real default model; nothing of the server is mocked. Texts are asserted only where
they hold by construction (greedy equality of two paths, schema validity, lengths).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import server_harness as harness
from server_harness import served_in_thread

import localllm
from localllm.cli import build_parser
from localllm.server._cli import check_bind

pytestmark = pytest.mark.real_model
MODEL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hello."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"]}}}


@pytest.fixture(scope="module")
def base(default_model_path: Path) -> Iterator[str]:
    with served_in_thread([MODEL], parallel=4, context_length=1024, threads=2) as url:
        yield url


@pytest.fixture(scope="module")
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def no_eos(http: httpx.Client) -> dict[str, float]:
    """logit_bias banning every end-of-generation token, so lengths are exact."""
    with localllm.load(localllm.ModelStore().ensure(MODEL), context_length=256,
                       threads=1, parallel=1) as m:
        engine = m._engine
        assert engine is not None
        return {str(t): -100.0 for t in range(m.tokenizer.vocab_size)
                if engine.is_end_of_generation(t)}


def chat(http: httpx.Client, *, timeout: Any = httpx.USE_CLIENT_DEFAULT, **body: Any
         ) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, **body},
                     timeout=timeout)


def sse_events(response: httpx.Response) -> list[Any]:
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed(http: httpx.Client, **body: Any) -> list[Any]:
    events = sse_events(chat(http, stream=True, **body))
    assert events[-1] == "[DONE]"
    return events[:-1]


def content_of(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if e["choices"])


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error  # type: ignore[no-any-return]


# -------------------------------------------------------------------- 1-13: basics
def test_01_models_list(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    assert {"id", "object", "owned_by", "created"} <= set(body["data"][0])
    assert body["data"][0]["object"] == "model" and body["data"][0]["id"] == MODEL


def test_02_chat_without_stream(http: httpx.Client) -> None:
    body = chat(http, max_tokens=8).json()
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_03_04_stream_shape(http: httpx.Client) -> None:
    events = streamed(http, max_tokens=8)
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1 and len({e["created"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert len(finishes) == 1


def test_05_include_usage_adds_one_final_usage_chunk(http: httpx.Client) -> None:
    events = streamed(http, max_tokens=6, stream_options={"include_usage": True})
    assert events[-1]["choices"] == [] and 1 <= events[-1]["usage"]["completion_tokens"] <= 6
    assert all("usage" not in e or e["usage"] is None for e in events[:-1])


def test_06_no_usage_unless_asked(http: httpx.Client) -> None:
    assert all(e.get("usage") is None for e in streamed(http, max_tokens=6))


def fresh(base: str) -> None:
    """Empty the KV cache: CPU flash attention sums in cache-cell order, so two runs
    compared token for token must start from the same (empty) layout."""
    served_model(base).clear_cache()


def test_07_stream_equals_non_stream_at_temperature_0(base: str, http: httpx.Client) -> None:
    body = dict(max_tokens=24, temperature=0, seed=3)
    fresh(base)
    whole = chat(http, **body).json()["choices"][0]["message"]["content"]
    fresh(base)
    assert content_of(streamed(http, **body)) == whole


def test_08_max_tokens(http: httpx.Client, no_eos: dict[str, float]) -> None:
    body = chat(http, max_tokens=5, logit_bias=no_eos).json()
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"


def test_09_max_completion_tokens_alone(http: httpx.Client, no_eos: dict[str, float]) -> None:
    body = chat(http, max_completion_tokens=5, logit_bias=no_eos).json()
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"


def test_10_max_completion_tokens_wins(http: httpx.Client, no_eos: dict[str, float]) -> None:
    body = chat(http, max_tokens=9, max_completion_tokens=4, logit_bias=no_eos).json()
    assert body["usage"]["completion_tokens"] == 4


def test_10_max_tokens_past_the_context_is_capped(http: httpx.Client) -> None:
    """A limit beyond the context runs at most to its end (never a 400, never more). An
    answer may run the whole context (about 1,000 tokens), so the wait is longer than the
    other requests' on a slow machine, and still bounded."""
    for body in ({"max_tokens": 50_000}, {"max_tokens": 50_000, "stream": True}):
        response = chat(http, **body, timeout=600, stream_options={"include_usage": True}
                        if body.get("stream") else None)
        assert response.status_code == 200, response.text
        usage = (sse_events(response)[-2] if body.get("stream") else response.json())["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] <= 1024


def test_11_stop_strings(http: httpx.Client) -> None:
    for stop in ("o", ["\n", "l"]):
        body = chat(http, max_tokens=40, temperature=0, stop=stop).json()
        text = body["choices"][0]["message"]["content"]
        stops = [stop] if isinstance(stop, str) else stop
        assert not any(s in text for s in stops)
        assert body["choices"][0]["finish_reason"] == "stop"


def test_12_same_seed_same_text(base: str, http: httpx.Client) -> None:
    runs = []
    for _ in range(2):
        fresh(base)
        runs.append(chat(http, max_tokens=16, temperature=0.9, seed=11).json())
    assert runs[0]["choices"][0]["message"]["content"] == \
        runs[1]["choices"][0]["message"]["content"]


def test_13_n_gives_n_choices(http: httpx.Client) -> None:
    body = chat(http, max_tokens=6, n=2, temperature=0.9, seed=1).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    events = streamed(http, max_tokens=4, n=2)
    assert {c["index"] for e in events for c in e["choices"]} == {0, 1}


# -------------------------------------------------------------------- 14-23: features
def test_14_logprobs_shape(http: httpx.Client) -> None:
    body = chat(http, max_tokens=4, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for entry in content:
        assert entry["logprob"] <= 0 and isinstance(entry["bytes"], list)
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][2]["logprob"]


def test_15_top_logprobs_without_logprobs(http: httpx.Client) -> None:
    assert assert_envelope(chat(http, top_logprobs=3), 400)["param"] == "top_logprobs"


def test_16_json_object(http: httpx.Client) -> None:
    """An object of free keys has no bound on its length: a finished answer parses as an
    object, and one cut by max_tokens is still the start of one."""
    body = chat(http, max_tokens=120, temperature=0,
                response_format={"type": "json_object"}).json()
    content = body["choices"][0]["message"]["content"]
    if body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)
    else:
        assert content.startswith("{") and body["usage"]["completion_tokens"] == 120


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}


def test_17_json_schema_strict(http: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA,
                                                  "strict": True}}
    body = chat(http, max_tokens=60, temperature=0, response_format=fmt).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), SCHEMA)


def test_18_inexpressible_schema_is_a_400(http: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}
    error = assert_envelope(chat(http, response_format=fmt), 400)
    assert "missing" in error["message"] or "$ref" in error["message"]


def test_19_json_schema_cut_by_max_tokens(http: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    body = chat(http, max_tokens=3, response_format=fmt).json()
    assert body["choices"][0]["finish_reason"] == "length"


def test_20_named_tool_choice(http: httpx.Client) -> None:
    body = chat(http, max_tokens=80, tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_weather"}}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        WEATHER["function"]["parameters"])  # type: ignore[index]


def test_21_required_and_none(http: httpx.Client) -> None:
    body = chat(http, max_tokens=80, tools=[WEATHER], tool_choice="required").json()
    assert len(body["choices"][0]["message"]["tool_calls"]) >= 1
    body = chat(http, max_tokens=20, tools=[WEATHER], tool_choice="none").json()
    assert "tool_calls" not in body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] != "tool_calls"


def test_22_streamed_tool_call(http: httpx.Client) -> None:
    events = streamed(http, max_tokens=80, tools=[WEATHER], tool_choice="required")
    parts = [tc for e in events for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
    first = parts[0]
    assert first["id"] and first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    assert all("id" not in p for p in parts[1:])
    arguments = "".join(p["function"]["arguments"] for p in parts)
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])  # type: ignore[index]


def test_23_tool_history(http: httpx.Client) -> None:
    messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3 C, snow"}]
    response = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": messages, "tools": [WEATHER], "max_tokens": 8})
    assert response.status_code == 200, response.text


# -------------------------------------------------------------------- 24-27: errors
def test_24_unknown_fields_ignored_bad_types_400(http: httpx.Client) -> None:
    ok = chat(http, max_tokens=2, user="u1", store=False, parallel_tool_calls=True)
    assert ok.status_code == 200
    assert assert_envelope(chat(http, temperature="hot"), 400)["param"] == "temperature"


def test_25_unknown_model(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json={"model": "nope", "messages": HI})
    assert assert_envelope(response, 404)["type"] == "not_found_error"


def test_26_prompt_over_context(http: httpx.Client) -> None:
    long = [{"role": "user", "content": "word " * 3000}]
    response = http.post("/v1/chat/completions", json={"model": MODEL, "messages": long})
    assert assert_envelope(response, 400)["code"] == "context_length_exceeded"


def test_27_invalid_json(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", content=b"{not json",
                         headers={"content-type": "application/json"})
    assert_envelope(response, 400)


# -------------------------------------------------------------------- 28-32: security
def test_28_api_key(default_model_path: Path) -> None:
    with served_in_thread([MODEL], api_keys=["s3cret"], preload=False) as url:
        assert_envelope(httpx.get(f"{url}/v1/models"), 401)
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert assert_envelope(wrong, 401)["type"] == "authentication_error"
        right = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200


def test_29_default_bind_is_loopback() -> None:
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    with pytest.raises(localllm.ConfigError, match="api-key"):
        check_bind("0.0.0.0", [], insecure=False)
    check_bind("0.0.0.0", ["k"], insecure=False)
    check_bind("0.0.0.0", [], insecure=True)


def test_30_foreign_host_header(http: httpx.Client) -> None:
    response = http.get("/v1/models", headers={"Host": "evil.example"})
    assert assert_envelope(response, 403)["code"] == "forbidden_host"
    assert http.get("/v1/models", headers={"Host": "localhost"}).status_code == 200


def test_31_cors(http: httpx.Client) -> None:
    preflight = {"Origin": "http://good.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in http.options(
        "/v1/chat/completions", headers=preflight).headers  # CORS off by default
    with served_in_thread([MODEL], cors_origins=["http://good.example"], preload=False) as url:
        good = httpx.options(f"{url}/v1/chat/completions", headers=preflight)
        assert good.headers["access-control-allow-origin"] == "http://good.example"
        bad = httpx.options(f"{url}/v1/chat/completions",
                            headers={**preflight, "Origin": "http://evil.example"})
        assert bad.headers.get("access-control-allow-origin") != "http://evil.example"


def test_32_body_limit(http: httpx.Client) -> None:
    big = b'{"model": "x", "pad": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    assert_envelope(http.post("/v1/chat/completions", content=big), 413)


# -------------------------------------------------------------------- 33-38: serving
def served_model(base: str) -> localllm.Model:
    return harness.served_model(base, MODEL)  # type: ignore[no-any-return]


def test_33_disconnect_stops_generation(base: str, no_eos: dict[str, float]) -> None:
    model = served_model(base)
    scheduler = model._scheduler
    body = {"model": MODEL, "messages": HI, "max_tokens": 400, "stream": True,
            "logit_bias": no_eos}
    with httpx.Client(base_url=base, timeout=60) as client, \
            client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        for _ in range(10):
            next(lines)
        steps_at_disconnect = scheduler.steps
    assert_dropped_soon(scheduler, steps_at_disconnect)


def assert_dropped_soon(scheduler: Any, steps_at_disconnect: int) -> None:
    """The request whose client went away is gone within a few decode steps."""
    deadline = time.monotonic() + 10
    while scheduler.active_sequences and time.monotonic() < deadline:
        time.sleep(0.005)
    assert scheduler.active_sequences == 0
    # The client's close takes an event-loop turn to be seen; the request is dropped at
    # the step after that (at most 2-3 steps were seen here; 6 leaves room for CPUs
    # whose steps are several times shorter). Without it, the stream would run 400 steps.
    assert scheduler.steps - steps_at_disconnect <= 6


def test_34_concurrent_streams_all_complete(base: str, no_eos: dict[str, float]) -> None:
    scheduler = served_model(base)._scheduler
    results: list[int] = []
    steps = scheduler.steps

    def one() -> None:
        body = {"model": MODEL, "messages": HI, "max_tokens": 24, "logit_bias": no_eos,
                "stream": True, "stream_options": {"include_usage": True}}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        events = sse_events(response)
        assert events[-1] == "[DONE]"
        results.append(events[-2]["usage"]["completion_tokens"])

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [24] * 4  # none cut short
    assert scheduler.steps - steps < 4 * 24  # decoded together, not one after another


def test_35_queue_full_is_503_with_retry_after(default_model_path: Path,
                                               no_eos: dict[str, float]) -> None:
    """One sequence and a queue of one, both filled by open streams (closed only at the
    end, so no machine's speed can empty the queue early): a third request is refused."""
    with served_in_thread([MODEL], parallel=1, max_queue=1, context_length=512) as url:
        body = {"model": MODEL, "messages": HI, "logit_bias": no_eos, "stream": True}

        def wait_in_queue() -> None:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                              timeout=120) as queued:
                lines = queued.iter_lines()
                next(lines)

        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                          timeout=120) as running:
            lines = running.iter_lines()  # kept: dropping it would close the connection
            next(lines)  # holds the only sequence
            waiter = threading.Thread(target=wait_in_queue)
            waiter.start()
            deadline = time.monotonic() + 30
            while 'queue_depth{model="smollm2-135m-instruct"} 1' not in httpx.get(
                    f"{url}/metrics").text and time.monotonic() < deadline:
                time.sleep(0.02)
            response = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                                  json={**body, "stream": False})
        waiter.join(timeout=120)  # admitted once the first stream was closed
        assert not waiter.is_alive()
    error = assert_envelope(response, 503)
    assert error["code"] == "queue_full" and int(response.headers["retry-after"]) >= 1


def test_36_health_503_while_loading(default_model_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real_load = localllm.load

    def gated_load(*args: Any, **kwargs: Any) -> localllm.Model:
        gate.wait(60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(localllm, "load", gated_load)
    with served_in_thread([MODEL], context_length=256, wait_loaded=False) as url:
        try:
            first = httpx.get(f"{url}/health")
            assert first.status_code == 503 and first.json()["status"] == "loading"
            gate.set()
            deadline = time.monotonic() + 60
            while httpx.get(f"{url}/health").status_code != 200 and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            assert httpx.get(f"{url}/health").json()["status"] == "ok"
        finally:
            gate.set()


def test_37_embeddings_without_an_embedding_model_is_a_400(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": "hi"})
    assert "embeddings" in assert_envelope(response, 400)["message"]


def test_38_completions_prompt_list(http: httpx.Client) -> None:
    body = http.post("/v1/completions", json={
        "model": MODEL, "prompt": ["One, two,", "Red, green,"], "max_tokens": 4}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["object"] == "text_completion"


# -------------------------------------------------------------------- 39-42: clients
def test_39_openai_client_end_to_end(base: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=2)
    out = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5)  # type: ignore[arg-type]
    assert out.choices[0].message.content
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=5, stream=True) if c.choices)  # type: ignore[arg-type]
    assert text


def test_40_ollama_client(base: str) -> None:
    import ollama

    client = ollama.Client(host=base)
    assert MODEL in [m.model for m in client.list().models]
    reply = client.chat(model=MODEL, messages=HI, options={"num_predict": 4})
    assert reply.done and reply.eval_count is not None and 1 <= reply.eval_count <= 4
    parts = list(client.chat(model=MODEL, messages=HI, stream=True,
                             options={"num_predict": 4}))
    assert parts[-1].done and parts[-1].eval_duration and parts[-1].eval_duration > 0


def test_41_ollama_options_take_effect(base: str, http: httpx.Client) -> None:
    def gen(**options: Any) -> dict[str, Any]:
        fresh(base)
        r = http.post("/api/generate", json={"model": MODEL, "prompt": "Count: 1, 2,",
                                             "stream": False, "options": options})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    assert gen(num_predict=3)["eval_count"] <= 3
    a = gen(num_predict=12, temperature=1.0, seed=5, top_k=20, min_p=0.0)
    assert a["response"] == gen(num_predict=12, temperature=1.0, seed=5, top_k=20,
                                min_p=0.0)["response"]
    greedy = gen(num_predict=8, temperature=0)["response"]
    assert gen(num_predict=8, temperature=1.5, top_k=1)["response"] == greedy
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "word " * 100,
                                         "stream": False, "options": {"num_ctx": 32}})
    assert r.status_code == 400 and "context" in r.json()["error"]
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "x",
                                         "options": {"num_ctx": 99999}})
    assert r.status_code == 400
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "x",
                                         "options": {"nonsense": 1}})
    assert r.status_code == 400 and "nonsense" in r.json()["error"]


def test_42_mid_stream_failure_is_an_error_line(default_model_path: Path,
                                                no_eos: dict[str, float]) -> None:
    """The model is closed under a running stream: a real fault, reported in-band."""
    with served_in_thread([MODEL], context_length=512) as url:
        model = served_model(url)
        # neither stream can end by itself soon: the grammar needs 200 characters before
        # the JSON may close, and the OpenAI one bans the end tokens
        long_json = {"type": "object", "properties": {"a": {"type": "string",
                                                            "minLength": 200}},
                     "required": ["a"]}
        for path, body in (("/api/chat", {"stream": True, "format": long_json,
                                          "options": {"num_predict": 300}}),
                           ("/v1/chat/completions", {"stream": True, "max_tokens": 300,
                                                     "logit_bias": no_eos})):
            with httpx.stream("POST", url + path, timeout=60,
                              json={"model": MODEL, "messages": HI, **body}) as response:
                lines = response.iter_lines()
                next(lines)
                threading.Thread(target=model.close).start()
                rest = [line for line in lines if line.strip()]
            if path == "/api/chat":
                assert "error" in json.loads(rest[-1])
            else:
                assert "error" in json.loads(rest[-1].removeprefix("data: "))
            model = _reload(url)


def _reload(url: str) -> localllm.Model:
    assert httpx.post(f"{url}/api/generate", json={"model": MODEL}).status_code == 200
    return served_model(url)


# -------------------------------------------------------------------- the agent APIs
#: the same rules through Anthropic's Messages API and OpenAI's Responses API: each route,
#: a valid body of its own, and its error envelope
AGENT_APIS = {
    "messages": ("/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": HI}),
    "responses": ("/v1/responses", {"model": MODEL, "max_output_tokens": 8,
                                    "input": "Say hello.", "store": False}),
}


def agent_error(api: str, response: httpx.Response, status: int) -> str:
    """The error's type, after checking the API's own envelope."""
    assert response.status_code == status, response.text
    body = response.json()
    if api == "messages":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
        return str(body["error"]["type"])
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return str(body["error"]["type"])


def agent_text(api: str, body: dict[str, Any]) -> str:
    if api == "messages":
        return "".join(b["text"] for b in body["content"] if b["type"] == "text")
    return "".join(part["text"] for item in body["output"] if item["type"] == "message"
                   for part in item["content"])


def agent_stream_text(api: str, response: httpx.Response) -> str:
    events = [json.loads(line[6:]) for line in response.text.splitlines()
              if line.startswith("data: ")]
    if api == "messages":
        return "".join(e["delta"]["text"] for e in events
                       if e["type"] == "content_block_delta" and e["delta"]["type"] ==
                       "text_delta")
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


@pytest.mark.parametrize("api", AGENT_APIS)
def test_agent_apis_stream_equals_non_stream_at_temperature_0(api: str, base: str,
                                                             http: httpx.Client) -> None:
    path, body = AGENT_APIS[api]
    served_model(base).clear_cache()
    whole = http.post(path, json={**body, "temperature": 0})
    assert whole.status_code == 200, whole.text
    served_model(base).clear_cache()
    streamed_ = http.post(path, json={**body, "temperature": 0, "stream": True})
    assert streamed_.headers["content-type"].startswith("text/event-stream")
    assert agent_stream_text(api, streamed_) == agent_text(api, whole.json())


@pytest.mark.parametrize("api", AGENT_APIS)
def test_agent_apis_refuse_in_their_own_envelope(api: str, http: httpx.Client) -> None:
    path, body = AGENT_APIS[api]
    assert agent_error(api, http.post(path, json={**body, "model": "nope"}),
                       404) == "not_found_error"
    assert agent_error(api, http.post(path, json={**body, "temperature": "hot"}),
                       400) == "invalid_request_error"
    assert agent_error(api, http.post(path, json={**body, "no_such_field": 1}),
                       400) == "invalid_request_error"
    long = {"messages": [{"role": "user", "content": "word " * 3000}]} if api == "messages" \
        else {"input": "word " * 3000}
    response = http.post(path, json={**body, **long})
    assert agent_error(api, response, 400) == "invalid_request_error"
    assert "context" in response.text
    invalid = http.post(path, content=b"{not json", headers={"content-type": "application/json"})
    agent_error(api, invalid, 400)
    big = b'{"model": "x", "pad": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    agent_error(api, http.post(path, content=big), 413)
    assert agent_error(api, http.post(path, json=body, headers={"Host": "evil.example"}),
                       403) == "permission_error"


@pytest.mark.parametrize("api", AGENT_APIS)
def test_agent_apis_need_the_key(api: str, default_model_path: Path) -> None:
    path, body = AGENT_APIS[api]
    with served_in_thread([MODEL], api_keys=["s3cret"], preload=False) as url:
        assert agent_error(api, httpx.post(f"{url}{path}", json=body),
                           401) == "authentication_error"
        header = {"x-api-key": "s3cret"} if api == "messages" else \
            {"Authorization": "Bearer s3cret"}
        assert httpx.post(f"{url}{path}", json=body, headers=header,
                          timeout=120).status_code == 200


@pytest.mark.parametrize("api", AGENT_APIS)
def test_agent_apis_disconnect_stops_generation(api: str, base: str) -> None:
    path, body = AGENT_APIS[api]
    limit = {"max_tokens": 400} if api == "messages" else {"max_output_tokens": 400}
    scheduler = served_model(base)._scheduler
    prompt = {"messages": [{"role": "user", "content": "Tell a very long story."}]} \
        if api == "messages" else {"input": "Tell a very long story."}
    with httpx.Client(base_url=base, timeout=60) as client, \
            client.stream("POST", path, json={**body, **limit, **prompt,
                                              "stream": True}) as response:
        lines = response.iter_lines()
        for _ in range(12):
            next(lines)
        steps_at_disconnect = scheduler.steps
    assert_dropped_soon(scheduler, steps_at_disconnect)
