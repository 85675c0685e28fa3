"""Three OpenAI-compatible HTTP servers on the default model, one at a time, same load.

* **localllm**: ``localllm serve MODEL --host 127.0.0.1 --port P --parallel 8`` (plus
  ``--threads`` and ``--context`` when ``localllm serve --help`` lists them, and the model
  as ``--model MODEL`` if it lists that);
* **llama-server**: llama.cpp's own server, built by ``scripts/build_reference_tools.py``
  from the wheel's llama.cpp, ``-np 8 -t 2 -c 8×CTX`` (with ``-np`` given, llama-server
  splits ``-c`` evenly over its slots, so each slot gets CTX tokens, as each of localllm's
  sequences does); flash attention and batch sizes at their defaults;
* **llama-cpp-python**: ``python -m llama_cpp.server --n_threads 2 --n_threads_batch 2
  --n_ctx CTX --interrupt_requests false`` (without the last flag a waiting request cuts
  the running stream short); it serves one request at a time, by design.

CTX is the context per sequence that ``localllm.plan(model, parallel=8)`` chooses on this
machine (``--context`` overrides it); all three use the same threads (``--threads``, 2).
Each server is started by this script on a free port of 127.0.0.1, waited for
(``GET /health``; ``/v1/models`` for llama-cpp-python, which has no health route), asked
for its model's id (``/v1/models``; localllm requires ``model``), warmed with one short
request (which also loads a lazily loaded model) and killed (its whole process group)
before the next one starts.

Load: N concurrent clients (N = 1, 4, 8, 16), each sending R requests back to back
(asyncio + httpx, one stream per client). Every request is a ``/v1/completions`` stream
(``temperature`` 0, ``max_tokens`` 64) with a distinct prompt of about 32 tokens (unique
first words, so no server reuses a cached prefix); the same prompts go to every server.
End of generation is banned so every request generates 64 tokens: ``ignore_eos`` for
llama-server, ``logit_bias`` -100 on every end-of-generation token id (llama.cpp's
``llama_vocab_is_eog``) for the others; the table says how many requests came back full.

Reported per server and N: aggregate generated tokens/s (all requests' tokens, from the
streamed ``usage`` when the server sends it, else one per non-empty chunk, over the wall
time from the first request sent to the last stream's end; median over ``--reps``), and
TTFT p50 / p95 (request sent to first non-empty chunk, pooled over all requests of all
reps). Ratios are localllm / llama-server. Per request timeout 120 s, whole run bounded by
``--time-limit``.

Usage: python benchmarks/bench_server.py [--quick] [--servers localllm,llama-server,...]
       [--reps 3] [--requests 2] [--threads 2] [--context CTX] [--tools DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from bench_batching import cpu_seconds, tools_dir
from bench_llamacpp import FILLER
from results_file import write_result

import localllm

SERVERS = ("localllm", "llama-server", "llama-cpp-python")
LOADS, QUICK_LOADS = (1, 4, 8, 16), (1, 4)
PROMPT_TOKENS, MAX_TOKENS = 32, 64
TIMEOUT = 120.0  # seconds for any one request
START_TIMEOUT = 180.0  # seconds for a server to become ready


@dataclass
class Server:
    name: str
    argv: list[str]
    ready_path: str  # GET this until it answers 200
    extra: dict[str, Any]  # request fields that ban end of generation
    eos_ban: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    port: int = 0
    notes: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vocab_facts(path: Path) -> tuple[list[int], Any]:
    """The model's end-of-generation token ids, and a tokenizer (text -> ids), from llama.cpp."""
    import llama_cpp

    vocab_model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(vocab_model._model.model)
    eog = [i for i in range(llama_cpp.llama_vocab_n_tokens(vocab))
           if llama_cpp.llama_vocab_is_eog(vocab, i)]

    def count(text: str) -> int:
        return len(vocab_model.tokenize(text.encode(), add_bos=True, special=False))

    return eog, count


def make_prompt(tag: str, count: Any) -> tuple[str, int]:
    """A prompt of about PROMPT_TOKENS tokens starting with a unique tag."""
    words = FILLER.split()
    text = f"Request {tag}:"
    k = 0
    while (n := count(text)) < PROMPT_TOKENS:
        text += " " + words[k % len(words)]
        k += 1
    return text, n


def localllm_server(path: Path, threads: int, parallel: int, context: int) -> Server:
    exe = Path(sys.executable).with_name("localllm")
    argv = [str(exe) if exe.exists() else "localllm", "serve", str(path),
            "--host", "127.0.0.1", "--port", "{port}", "--parallel", str(parallel)]
    notes = []
    try:
        shown = subprocess.run([*argv[:2], "--help"], capture_output=True, text=True,
                               timeout=60)
        helptext = shown.stdout if shown.returncode == 0 else ""
        if shown.returncode:
            notes.append(f"localllm serve --help failed: {shown.stderr.strip()[-300:]}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        helptext = ""
        notes.append(f"localllm serve --help failed: {exc}")
    if "--model" in helptext:  # the model as an option rather than positional
        argv[2:3] = ["--model", str(path)]
    for flag, value in (("--threads", threads), ("--context", context)):
        if flag in helptext:
            argv += [flag, str(value)]
        else:
            notes.append(f"localllm serve has no {flag}: its default is used")
    return Server("localllm", argv, "/health", {}, "logit_bias", notes=notes)


def make_servers(names: list[str], path: Path, threads: int, parallel: int, context: int,
                 tools: str | None, eog: list[int]) -> list[Server]:
    bias = {"logit_bias": {str(i): -100 for i in eog}}
    out = []
    for name in names:
        if name == "localllm":
            server = localllm_server(path, threads, parallel, context)
        elif name == "llama-server":
            binary = tools_dir(tools) / "llama-server"
            server = Server(name, [str(binary), "-m", str(path), "-np", str(parallel),
                                   "-t", str(threads), "-c", str(context * parallel),
                                   "--host", "127.0.0.1", "--port", "{port}"],
                            "/health", {"ignore_eos": True}, "ignore_eos")
        else:
            server = Server(name, [sys.executable, "-m", "llama_cpp.server", "--model",
                                   str(path), "--host", "127.0.0.1", "--port", "{port}",
                                   "--n_threads", str(threads), "--n_threads_batch",
                                   str(threads), "--n_ctx", str(context),
                                   "--interrupt_requests", "false"],
                            "/v1/models", {}, "logit_bias")
        if server.eos_ban == "logit_bias":
            server.extra = dict(bias)
        out.append(server)
    return out


def log_tail(server: Server, chars: int = 3000) -> str:
    if server.log is None or not server.log.exists():
        return ""
    return server.log.read_text(errors="replace")[-chars:]


@contextlib.contextmanager
def running(server: Server, logdir: Path, deadline: float) -> Iterator[str]:
    """Start ``server``, wait until it is ready, yield its base URL; kill it afterwards."""
    server.port = free_port()
    argv = [a.replace("{port}", str(server.port)) for a in server.argv]
    server.log = logdir / f"{server.name}.log"
    base = f"http://127.0.0.1:{server.port}"
    with server.log.open("wb") as log:
        server.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        limit = time.monotonic() + min(START_TIMEOUT, max(deadline - time.monotonic(), 0))
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited ({server.proc.returncode}) before "
                                   f"it was ready:\n{log_tail(server)}")
            with contextlib.suppress(httpx.HTTPError):
                probe = httpx.get(base + server.ready_path, timeout=2, trust_env=False)
                if probe.status_code == 200:
                    break
            if time.monotonic() > limit:
                raise RuntimeError(f"{server.name} not ready within {START_TIMEOUT:.0f} s "
                                   f"(or the run's time limit):\n{log_tail(server)}")
            time.sleep(0.25)
        yield base
    finally:
        stop(server.proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any]
                      ) -> dict[str, Any]:
    """One streamed completion: send time, first content time, end time, tokens."""
    sent = time.perf_counter()
    first = 0.0
    chunks, usage = 0, None
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            detail = (await resp.aread()).decode(errors="replace")[:500]
            raise RuntimeError(f"HTTP {resp.status_code}: {detail}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, SSE comments (pings)
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens", usage)
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    first = first or time.perf_counter()
                    chunks += 1
        else:
            raise RuntimeError("stream ended without data: [DONE]")
    end = time.perf_counter()
    if not first:
        raise RuntimeError(f"no content in the stream (usage {usage})")
    return {"sent": sent, "first": first, "end": end, "chunks": chunks, "usage": usage,
            "tokens": usage if usage is not None else chunks}


async def run_load(client: httpx.AsyncClient, url: str, prompts: list[list[str]],
                   extra: dict[str, Any]) -> dict[str, Any]:
    """len(prompts) clients at once, each sending its prompts back to back."""

    async def one_client(mine: list[str]) -> list[dict[str, Any]]:
        done = []
        for prompt in mine:
            body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True}, **extra}
            done.append(await asyncio.wait_for(one_request(client, url, body), TIMEOUT))
        return done

    start = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(p) for p in prompts))
    end = time.perf_counter()
    reqs = [r for client_reqs in per_client for r in client_reqs]
    return {"wall_s": end - start, "tokens": sum(r["tokens"] for r in reqs),
            "agg_tokens_per_s": sum(r["tokens"] for r in reqs) / (end - start),
            "ttft_s": [r["first"] - r["sent"] for r in reqs],
            "completion_tokens": [r["tokens"] for r in reqs],
            "usage_reported": all(r["usage"] is not None for r in reqs),
            "chunks": [r["chunks"] for r in reqs]}


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method, so it stays within the data)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def model_id(client: httpx.AsyncClient, base: str, path: Path) -> str:
    """The id the server lists for ``path`` (localllm requires ``model``; the others
    serve one model whatever the field says)."""
    resp = await client.get(base + "/v1/models")
    resp.raise_for_status()
    ids = [m["id"] for m in resp.json().get("data", [])]
    for wanted in (str(path), path.name, path.stem):
        if wanted in ids:
            return wanted
    return next((i for i in ids if path.stem in i), ids[0] if ids else path.stem)


async def measure(server: Server, base: str, path: Path, loads: tuple[int, ...], reps: int,
                  requests: int, prompts: dict[tuple[int, int], list[list[str]]],
                  deadline: float) -> dict[str, Any]:
    url = base + "/v1/completions"
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, connect=10),
                                 limits=limits, trust_env=False) as client:
        server.extra["model"] = await model_id(client, base, path)
        print(f"  model id: {server.extra['model']}", flush=True)
        warm = {"prompt": "Warm up: the river", "max_tokens": 8, "temperature": 0,
                "stream": True, **server.extra}
        await asyncio.wait_for(one_request(client, url, warm), TIMEOUT)
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in loads}
        for rep in range(reps):
            for n in loads:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the run's --time-limit was reached")
                runs[n].append(await asyncio.wait_for(
                    run_load(client, url, prompts[rep, n], server.extra), left))
                print(f"  {server.name} rep {rep + 1}/{reps} N={n}: "
                      f"{runs[n][-1]['agg_tokens_per_s']:.1f} tok/s", flush=True)
    out = {}
    for n, rs in runs.items():
        ttft = [t for r in rs for t in r["ttft_s"]]
        tokens = [c for r in rs for c in r["completion_tokens"]]
        out[n] = {"agg_tokens_per_s": statistics.median(r["agg_tokens_per_s"] for r in rs),
                  "agg_tokens_per_s_reps": [r["agg_tokens_per_s"] for r in rs],
                  "ttft_p50_s": quantile(ttft, 50), "ttft_p95_s": quantile(ttft, 95),
                  "requests": len(tokens),
                  "full_length_requests": sum(c == MAX_TOKENS for c in tokens),
                  "completion_tokens_min": min(tokens), "completion_tokens_max": max(tokens),
                  "tokens_from": "usage" if all(r["usage_reported"] for r in rs)
                  else "chunks",
                  "wall_s_reps": [r["wall_s"] for r in rs]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N in 1,4 only, one request each, "
                    "one rep")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help=f"comma-separated subset of {','.join(SERVERS)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2, help="requests per client (R)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8, help="slots / parallel sequences")
    ap.add_argument("--context", type=int, default=None,
                    help="context per sequence (default: what localllm.plan chooses)")
    ap.add_argument("--tools", help="directory with llama-server (default: cached build)")
    ap.add_argument("--time-limit", type=float, default=1800.0,
                    help="seconds for the whole run")
    opts = ap.parse_args()
    names = [s.strip() for s in opts.servers.split(",") if s.strip()]
    unknown = set(names) - set(SERVERS)
    if unknown or not names:
        ap.error(f"--servers: unknown {sorted(unknown)}; choose from {','.join(SERVERS)}")
    loads = QUICK_LOADS if opts.quick else LOADS
    reps, requests = (1, 1) if opts.quick else (opts.reps, opts.requests)
    deadline = time.monotonic() + opts.time_limit
    # A SIGTERM to this script still runs the finally blocks that kill the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cpu0 = cpu_seconds()
    path = localllm.ModelStore().ensure(localllm.DEFAULT_MODEL)
    context = opts.context or localllm.plan(path, threads=opts.threads,
                                            parallel=opts.parallel).context_length
    eog, count = vocab_facts(path)
    prompts: dict[tuple[int, int], list[list[str]]] = {}
    prompt_lengths = []
    for rep in range(reps):
        for n in loads:
            prompts[rep, n] = []
            for c in range(n):
                mine = []
                for q in range(requests):
                    text, length = make_prompt(f"{rep}-{n}-{c}-{q}", count)
                    mine.append(text)
                    prompt_lengths.append(length)
                prompts[rep, n].append(mine)
    servers = make_servers(names, path, opts.threads, opts.parallel, context, opts.tools, eog)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-server-") as logdir:
        for server in servers:
            print(f"== {server.name}: {' '.join(server.argv)}", flush=True)
            for note in server.notes:
                print(f"  note: {note}")
            entry: dict[str, Any] = {"command": server.argv, "eos_ban": server.eos_ban,
                                     "notes": server.notes}
            try:
                if time.monotonic() > deadline:
                    raise TimeoutError("the run's --time-limit was reached")
                with running(server, Path(logdir), deadline) as base:
                    entry["loads"] = asyncio.run(measure(server, base, path, loads, reps,
                                                         requests, prompts, deadline))
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                print(f"  FAILED: {entry['error']}\n{log_tail(server, 1500)}", flush=True)
            results[server.name] = entry
    cpu1 = cpu_seconds()
    other = ((cpu1[1] - cpu0[1]) - (cpu1[2] - cpu0[2])) / (
        (cpu1[0] - cpu0[0]) * (os.cpu_count() or 1))

    ratios = {}
    ours, ref = results.get("localllm", {}), results.get("llama-server", {})
    if "loads" in ours and "loads" in ref:
        ratios = {n: {"aggregate": ours["loads"][n]["agg_tokens_per_s"]
                      / ref["loads"][n]["agg_tokens_per_s"],
                      "ttft_p95": ours["loads"][n]["ttft_p95_s"] / ref["loads"][n]["ttft_p95_s"]}
                  for n in loads}
    result = {
        "date": date.today().isoformat(), "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(), "model": localllm.DEFAULT_MODEL,
        "model_path": str(path), "threads": opts.threads, "parallel": opts.parallel,
        "context_per_sequence": context, "quick": opts.quick, "reps": reps,
        "requests_per_client": requests, "loads": list(loads),
        "prompt_tokens_mean": statistics.mean(prompt_lengths), "max_tokens": MAX_TOKENS,
        "eog_token_ids": eog, "other_cpu_busy": other, "servers": results,
        "ratio_localllm_vs_llama_server": ratios,
    }
    write_result("server", result)

    print(f"\n| server | N | agg tok/s (median of {reps}) | TTFT p50 s | TTFT p95 s | "
          f"full {MAX_TOKENS}-token requests |")
    print("|---|---|---|---|---|---|")
    for name, entry in results.items():
        if "loads" not in entry:
            print(f"| {name} | - | failed: {entry['error'].splitlines()[0][:80]} | | | |")
            continue
        for n, r in entry["loads"].items():
            print(f"| {name} | {n} | {r['agg_tokens_per_s']:.1f} | {r['ttft_p50_s']:.3f} | "
                  f"{r['ttft_p95_s']:.3f} | {r['full_length_requests']}/{r['requests']} |")
    if ratios:
        print("\n| N | aggregate localllm / llama-server | TTFT p95 localllm / llama-server |")
        print("|---|---|---|")
        for n, r in ratios.items():
            print(f"| {n} | {r['aggregate']:.3f} | {r['ttft_p95']:.3f} |")
    print(f"\nthreads={opts.threads}, {opts.parallel} slots of {context} tokens; CPUs busy "
          f"with other work during the run: {other:.0%}"
          + (" (numbers are noisy)" if other > 0.1 else ""))
    if any("error" in e for e in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
