"""What reading tool calls and thinking out of a stream costs, against decoding itself.

Streamed chat on the default model (temperature 0, 128 tokens, end of generation banned),
one stream and eight concurrent streams, in one process and one run:

* **plain**: no tools, a template without thinking markers: nothing is parsed;
* **tools_prompt**: the prompt two tools make (localllm's own format describes them in the
  system message), sent without tools: the baseline for what tools cost beyond the text;
* **tools**: the request with the two tools, ``tool_choice="auto"``: the lazy grammar
  watches for the trigger per token, and the call parser reads every piece;
* **thinking**: the model under a thinking template (QwQ's, from the tools cache), whose
  answer is split into thinking and text as it streams.

Modes are interleaved within each repetition (plain, tools, thinking, plain, ...) so a
slow spell of this shared machine hits them alike; each figure is the median of
``--reps``. Reported: aggregate decode tokens/s per mode and load (prompt evaluation left
out: the tools make the prompt longer, which is not parsing), the process's CPU time per
generated token (steady where wall time is not: other tenants of this host take the CPU
for seconds at a time, which wall time counts and CPU time does not), the ratios to plain,
and the parsers' own cost per piece, timed apart on the pieces the plain run produced
(``ToolCallStream.feed`` and ``ThinkingSplit.feed``), as a share of the time per token.

The server adds HTTP framing on top of the same per-piece path; its noise on this machine
(10-20 % between runs of the same binary) is larger than the budget measured here, which
is why this runs in one process.

Usage: python benchmarks/bench_tool_parsing.py [--reps 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

from bench_batching import tools_dir
from results_file import write_result

import localllm
from localllm.decoding.reasoning import ThinkingSplit, detect_thinking
from localllm.decoding.tool_formats import LOCALLLM
from localllm.decoding.tool_stream import ToolCallStream
from localllm.decoding.tools import prepare, system_text
from localllm.models.store import ModelStore

TOOLS = [{"type": "function", "function": {
    "name": name, "description": what,
    "parameters": {"type": "object", "required": [arg],
                   "properties": {arg: {"type": "string"}}}}}
    for name, what, arg in (("get_weather", "Current weather in a city", "city"),
                            ("get_time", "Current time in a time zone", "tz"))]


def asks(n: int, system: str | None = None) -> list[list[dict[str, str]]]:
    head = [{"role": "system", "content": system}] if system else []
    return [[*head, {"role": "user", "content": f"Story {i}: tell me about a quiet harbour "
                                                 "town."}] for i in range(n)]


def eog_ban(model: localllm.Model) -> dict[int, float]:
    engine = model._generator.live()  # the runtime's own end-of-generation tokens
    return {t: -100.0 for t in range(engine.vocab_size) if engine.is_end_of_generation(t)}


def run_load(model: localllm.Model, streams: int, tokens: int, system: str | None = None,
             **extra: Any) -> tuple[float, float, list[str]]:
    """Aggregate decode tokens/s of ``streams`` concurrent streamed chats (from the moment
    every stream has its first token to the last one's end, so prompt evaluation, which
    the tools' longer prompt makes longer, is not counted), the process's CPU seconds per
    token decoded over the same span (unlike wall time, untouched by other tenants' load
    on this shared host), and the first stream's pieces."""
    ban = eog_ban(model)
    counts = [0] * streams
    firsts = [0.0] * streams
    cpu_firsts = [0.0] * streams
    ends = [0.0] * streams
    pieces: list[str] = []

    def one(i: int, ask: list[dict[str, str]]) -> None:
        for chunk in model.stream_chat(ask, temperature=0, max_tokens=tokens,
                                       logit_bias=ban, **extra):
            if not firsts[i]:
                firsts[i], cpu_firsts[i] = time.perf_counter(), time.process_time()
            if i == 0:
                pieces.append(chunk.text)
            if chunk.completion is not None:
                counts[i] = chunk.completion.usage.completion_tokens
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=one, args=(i, a))
               for i, a in enumerate(asks(streams, system))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    # tokens decoded after the last stream started, over that span
    start = max(firsts)
    decoded = sum(c * (e - start) / (e - f) for c, f, e in zip(counts, firsts, ends,
                                                                 strict=True))
    cpu_per_token = (time.process_time() - max(cpu_firsts)) / decoded
    return decoded / (max(ends) - start), cpu_per_token, pieces


def parser_cost_us(pieces: list[str], thinking: Any) -> dict[str, float]:
    """Microseconds per piece of each parser on real pieces (best of several passes)."""
    out = {}
    for name, make in (("tool_call_stream", lambda: ToolCallStream(LOCALLLM, forced=False)),
                       ("thinking_split", lambda: ThinkingSplit(thinking, opened=True))):
        best = float("inf")
        for _ in range(20):
            parser = make()
            start = time.perf_counter()
            for piece in pieces:
                parser.feed(piece)
            best = min(best, time.perf_counter() - start)
        out[name] = best / max(1, len(pieces)) * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    path = ModelStore().ensure(localllm.DEFAULT_MODEL)
    qwq = (tools_dir(None) / "templates" / "Qwen-QwQ-32B.jinja").read_text()
    thinking = detect_thinking(qwq)
    loaded = {"plain": localllm.load(path, context_length=1024, threads=args.threads,
                                     parallel=8),
              "thinking": localllm.load(path, context_length=1024, threads=args.threads,
                                        parallel=8, chat_template=qwq)}
    setup = prepare(TOOLS, "auto")
    assert setup is not None
    modes = {"plain": (loaded["plain"], {}),
             # the prompt the tools make (localllm's format describes them in the system
             # message), without tools: what the tools cost beyond a longer prompt
             "tools_prompt": (loaded["plain"], {"system": system_text(setup)}),
             "tools": (loaded["plain"], {"tools": TOOLS}),
             "thinking": (loaded["thinking"], {})}
    results: dict[str, Any] = {"tokens": args.tokens, "reps": args.reps, "loads": {}}
    for streams in (1, 8):
        for model, extra in modes.values():  # warm: grammar compiled, prompts cached
            run_load(model, streams, 8, **extra)  # (and the tokens/s, CPU, pieces unused)
        rates: dict[str, list[float]] = {m: [] for m in modes}
        cpus: dict[str, list[float]] = {m: [] for m in modes}
        pieces: list[str] = []
        for _ in range(args.reps):
            for mode, (model, extra) in modes.items():
                model.clear_cache()  # every rep evaluates its prompts afresh
                rate, cpu, got = run_load(model, streams, args.tokens, **extra)
                rates[mode].append(rate)
                cpus[mode].append(cpu * 1e6)
                pieces = got if mode == "plain" else pieces
        med = {m: statistics.median(r) for m, r in rates.items()}
        cpu_med = {m: statistics.median(c) for m, c in cpus.items()}
        row: dict[str, Any] = {"tok_s": med, "all": rates,
                               "ratio_to_plain": {m: med[m] / med["plain"] for m in modes},
                               "cpu_us_per_token": cpu_med, "cpu_all": cpus,
                               "cpu_ratio_to_plain": {m: cpu_med[m] / cpu_med["plain"]
                                                      for m in modes}}
        if streams == 1:
            cost = parser_cost_us(pieces, thinking)
            per_token_us = 1e6 / med["plain"]
            row["parser_us_per_piece"] = cost
            row["parser_share_of_token"] = {k: v / per_token_us for k, v in cost.items()}
        results["loads"][str(streams)] = row
        print(f"{streams} stream(s): " + ", ".join(
            f"{m} {med[m]:.1f} tok/s ({med[m] / med['plain']:.3f}x), "
            f"{cpu_med[m]:.0f} CPU us/token ({cpu_med[m] / cpu_med['plain']:.3f}x)"
            for m in modes))
        if streams == 1:
            print("  parsers per piece: " + ", ".join(
                f"{k} {v:.1f} us ({row['parser_share_of_token'][k] * 100:.2f} % of a token)"
                for k, v in row["parser_us_per_piece"].items()))
    for model in loaded.values():
        model.close()
    write_result("tool-parsing", results)


if __name__ == "__main__":
    main()
