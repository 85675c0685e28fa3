"""``python -m localllm.support.fuzz TARGET --seconds N [--corpus DIR]``: run one fuzz target.

The command runs the fuzzer in a child process (``child.py``) and watches it: libFuzzer
ends a run by exiting the process from C, so only a parent can report how many inputs ran
(from libFuzzer's final statistics) and hold a hard deadline over the whole run. The exit
status is the child's: 0 when no input crashed, raised an untyped exception, ran over
1 s or went over the memory limit; the offending input is saved under ``--artifacts``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from .targets import TARGETS, Scratch

SEEDS = Path(__file__).resolve().parents[3] / "tests" / "data" / "fuzz_seeds"
RSS_LIMIT_MB = 2048
_INSIDE = "LOCALLLM_FUZZING"  # set in the child's environment
MAX_LEN = {"gguf": 16384, "ggml": 16384, "onnx-folder": 16384, "chat-template": 8192,
           "image": 16384}

# tokens worth splicing into inputs (libFuzzer dictionaries): field names and syntax that
# random mutation would take long to spell
_DICTIONARY: dict[str, tuple[str, ...]] = {
    "gguf": ("general.alignment", "general.architecture", "llama.block_count",
             "llama.context_length", "llama.attention.head_count", "tokenizer.ggml.tokens",
             "tokenizer.ggml.bos_token_id", "tokenizer.chat_template", "general.file_type",
             "blk.0.attn_q.weight", "GGUF", "gemma3", "attention.sliding_window_pattern"),
    "ggml": ("lmgg", "tjgg", "model/", "transformer.", "gpt_neox.", "transformer.word_"
             "embeddings.", "<fim_prefix>", "model/lm_head"),
    "onnx-folder": ('"vocab_size"', '"num_hidden_layers"', '"hidden_size"', '"model"',
                    '"vocab"', '"added_tokens"', '"content"', '"id"', '"bos_token"',
                    '"chat_template"', '"localllm_source"', '"model_type"', '"bert"',
                    "model.onnx.data", "location", "offset", "length", "../", "null",
                    "true", "[]", "{}", '"x"', "-1", "1.5", "1e999", "99999999999999999999"),
    "chat-template": ("{%", "%}", "{{", "}}", "for ", " in ", "endfor", "if ", "endif",
                      "set ", "namespace(", "range(", "loop.", "messages", "message[",
                      "'content'", "'role'", "macro ", "endmacro", "|tojson", "|join",
                      "raise_exception(", "strftime_now(", "add_generation_prompt",
                      "bos_token", "*", "**", "~", "|center(", ".format(", "%"),
    "image": ("IHDR", "IDAT", "IEND", "PLTE", "tRNS", "iCCP", "eXIf", "acTL", "\x89PNG",
              "\xff\xd8\xff\xe0", "\xff\xc0", "\xff\xc2", "\xff\xda", "\xff\xd9", "JFIF",
              "Exif", "GIF89a", "NETSCAPE2.0", "RIFF", "WEBP", "VP8 ", "VP8L", "VP8X", "ANIM",
              "ANMF", "ALPH"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localllm.support.fuzz",
                                     description="Fuzz one of localllm's untrusted readers.")
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seconds", type=int, default=60, help="run time (default 60)")
    parser.add_argument("--corpus", type=Path, help="keep the inputs found here (default: "
                        "a temporary folder); the committed seeds are read too")
    parser.add_argument("--seeds", type=Path, help="seed folder (default: the committed "
                        "tests/data/fuzz_seeds/TARGET)")
    parser.add_argument("--artifacts", type=Path, default=Path("build/fuzz"),
                        help="where a crashing or slow input is saved (default build/fuzz)")
    parser.add_argument("--rss-limit-mb", type=int, default=RSS_LIMIT_MB)
    args = parser.parse_args(argv)
    if os.environ.get(_INSIDE):
        print("refusing to start a fuzzer from inside a fuzzing process", file=sys.stderr)
        return 2
    seeds = args.seeds or SEEDS / args.target
    if not seeds.is_dir() or not any(seeds.iterdir()):
        print(f"no seed files in {seeds}; run scripts/make_fuzz_seeds.py", file=sys.stderr)
        return 2
    scratch = Scratch.create()
    corpus = args.corpus or scratch.root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = args.artifacts / args.target
    artifacts.mkdir(parents=True, exist_ok=True)
    dictionary = scratch.root / "dictionary.txt"
    dictionary.write_text("".join(f"{_quote(t)}\n" for t in _DICTIONARY[args.target]))
    libfuzzer = [f"-max_total_time={args.seconds}", "-timeout=1",
                 f"-rss_limit_mb={args.rss_limit_mb}", f"-max_len={MAX_LEN[args.target]}",
                 "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
                 f"-dict={dictionary}", str(corpus), str(seeds)]
    command = [sys.executable, "-m", "localllm.support.fuzz.child", args.target, str(scratch.root),
               *libfuzzer]
    started = time.monotonic()
    try:
        rc, stats = _watch(command, deadline=args.seconds + 120)
    finally:
        scratch.remove()  # with the default corpus, which lives in it
    elapsed = time.monotonic() - started
    runs, rate = stats.get("number_of_executed_units"), stats.get("average_exec_per_sec")
    print(f"fuzz {args.target}: {runs if runs is not None else '?'} inputs executed "
          f"({rate if rate is not None else '?'}/s) in {elapsed:.0f} s, "
          f"{stats.get('new_units_added', '?')} of them new coverage; exit status {rc}",
          flush=True)
    return rc


def _quote(token: str) -> str:
    plain = " ._/<>{}%|()[]'*~:-="
    return '"' + "".join(c if (c.isascii() and c.isalnum()) or c in plain
                         else f"\\x{ord(c):02x}" for c in token) + '"'


def _watch(command: list[str], deadline: float) -> tuple[int, dict[str, int]]:
    """Run ``command``, copying its stderr through and reading libFuzzer's final stats
    (``stat::name: value`` lines); kill it past ``deadline`` seconds."""
    stats: dict[str, int] = {}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, env={**os.environ, _INSIDE: "1"})
    assert proc.stderr is not None

    def copy(stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace")
            sys.stderr.write(line)
            m = re.match(r"stat::(\w+):\s+(\d+)", line)
            if m:
                stats[m.group(1)] = int(m.group(2))

    reader = threading.Thread(target=copy, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"the fuzzer ran past its {deadline:.0f} s deadline and was killed",
              file=sys.stderr)
        rc = 124
    reader.join(timeout=10)
    return rc, stats


if __name__ == "__main__":
    sys.exit(main())
