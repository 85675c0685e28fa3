"""The second real model, Gemma 3 270M (base, Q4_K_M): another architecture (gemma3, with
sliding-window attention), another tokenizer (SentencePiece, 262,144 tokens, BOS added)
and no chat template in the file. It is a base model, so nothing here asserts what its
answers say. Fetched once into the store (Gemma Terms of Use; see the catalog)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tokenizer import VocabOnly

import localllm
from localllm.models.gguf import read_gguf
from localllm.support.corpus import tokenizer_corpus
from localllm.testing import NEAR_TIE, first_divergence, greedy_with_margins
from localllm.tokenizer import tokenizer_from_gguf

pytestmark = pytest.mark.real_model
CHAT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    return localllm.ModelStore().ensure("gemma-3-270m")


@pytest.fixture(scope="module")
def gemma(gemma_path: Path) -> Iterator[localllm.Model]:
    with localllm.load(gemma_path, context_length=1024, threads=2,
                       chat_template="gemma") as model:
        yield model


def test_facts_from_the_header(gemma_path: Path) -> None:
    info = read_gguf(gemma_path)
    assert info.architecture == "gemma3" and info.vocab_size == 262144
    assert info.arch_value("attention.sliding_window") == 512
    assert info.chat_template is None and info.quantization == "Q4_K_M"


def test_no_template_needs_an_explicit_one(gemma_path: Path, gemma: localllm.Model) -> None:
    with localllm.load(gemma_path, context_length=256, threads=2) as bare:
        assert not bare.info.has_chat_template
        with pytest.raises(localllm.ChatTemplateError, match="chat_template"):
            bare.chat(CHAT, max_tokens=4)
        assert bare.complete("The capital of France is", max_tokens=4).usage.completion_tokens
    prompt = gemma.render_chat(CHAT)
    assert prompt == ("<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n"
                      "<start_of_turn>model\n")
    ids = gemma.tokenizer.encode(prompt)
    assert ids[0] == 2 and ids.count(2) == 1  # the tokenizer adds the one BOS
    assert gemma.count_tokens(CHAT) == len(ids)
    reply = gemma.chat(CHAT, max_tokens=16, temperature=0)
    assert reply.finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 16


def test_tokenizer_matches_llama_cpp(gemma_path: Path) -> None:
    """localllm's tokenizer, rebuilt from the GGUF alone, against llama.cpp's on the
    2,000-string multilingual corpus: at least 99.9 % identical ids."""
    ours = tokenizer_from_gguf(read_gguf(gemma_path))
    theirs = VocabOnly(gemma_path)
    corpus = tokenizer_corpus(2000)
    try:
        differ = [s for s in corpus if ours.encode(s, add_special=True, parse_special=False)
                  != theirs.tokenize(s, add_special=True, parse_special=False)]
    finally:
        theirs.close()
    share = 1 - len(differ) / len(corpus)
    print(f"\nGemma tokenizer: {share:.4%} identical to llama.cpp; differing: {differ[:5]!r}")
    assert share >= 0.999
    ids = ours.encode("Hello world", add_special=True, parse_special=False)
    assert ids[0] == 2  # BOS added


def test_greedy_is_deterministic_and_both_samplers_agree(gemma: localllm.Model) -> None:
    """llama.cpp's sampler and localllm's on the same logits give the same greedy text, up
    to a near tie; each run from an empty KV cache."""
    for prompt in ["The capital of France is", "def fibonacci(n):", "Once upon a time"]:
        gemma.clear_cache()
        native = gemma.complete(prompt, max_tokens=16, temperature=0).token_ids
        gemma.clear_cache()
        again = gemma.complete(prompt, max_tokens=16, temperature=0).token_ids
        assert native == again
        gemma.clear_cache()
        ours, margins = greedy_with_margins(gemma, prompt, 16)
        at = first_divergence(native, ours)
        assert at is None or margins[at] < NEAR_TIE, (prompt, at, margins)


def test_streaming_stops_and_limits(gemma: localllm.Model) -> None:
    gemma.clear_cache()  # both runs from an empty cache: the same float path
    chunks = list(gemma.stream("One, two, three,", max_tokens=12, temperature=0))
    final = chunks[-1].completion
    assert final is not None and "".join(c.text for c in chunks) == final.text
    assert final.usage.completion_tokens <= 12
    first_word = final.text.split()[0] if final.text.split() else ""
    if first_word:
        gemma.clear_cache()
        cut = gemma.complete("One, two, three,", max_tokens=12, temperature=0,
                             stop=[first_word])
        assert first_word not in cut.text and cut.finish_reason == "stop"


def test_other_backends_refuse_it_clearly(gemma_path: Path, tmp_path: Path) -> None:
    """gemma3 runs on llama.cpp only: gpt4all's 2024 llama.cpp and ctransformers predate
    it, and the GGUF to ONNX converter handles llama-family decoders; each says so."""
    from localllm.models.convert import convert_gguf_to_onnx

    with pytest.raises(localllm.UnsupportedModelError, match="gemma3"):
        convert_gguf_to_onnx(gemma_path, tmp_path / "out")
    for backend in ("gpt4all", "ctransformers"):
        with pytest.raises(localllm.UnsupportedModelError, match="gemma3"):
            localllm.load(gemma_path, backend=backend, context_length=256)


def test_memory_plan_within_five_percent(gemma_path: Path) -> None:
    """Predicted vs measured RSS (VmHWM) in fresh processes, after load and at the peak
    (a prompt filling the context). 15 of the 18 layers attend to a 512-token window and
    llama.cpp sizes their KV cache by it (window + one micro-batch), so the plan does too:
    at 32k tokens the cache is a fifth of a full-size one."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from bench_memory import run_case

    shape = localllm.plan(gemma_path, context_length=32768, parallel=1, batch_size=512).memory
    full = 18 * 32768 * 1024  # 1 KV head x 256 dims x (K + V) x f16 per token per layer
    assert shape.host.kv_cache == 3 * 32768 * 1024 + 15 * 1024 * 1024 < full / 4
    for ctx, moments in ((1024, ("after", "peak")), (4096, ("after", "peak")),
                         (32768, ("after",))):
        for moment in moments:
            r = run_case(gemma_path, ctx, "f16", moment)
            error = (r["predicted"] - r["measured"]) / r["measured"]
            print(f"\nGemma ctx {ctx} {moment}: predicted {r['predicted'] / 2**20:.0f} MiB, "
                  f"measured {r['measured'] / 2**20:.0f} MiB ({error:+.1%})")
            assert abs(error) <= 0.05, (ctx, moment, r)


def test_cached_prefixes_are_reused_only_while_the_window_holds(gemma_path: Path) -> None:
    """The sliding-window layers keep each sequence's last 512 positions plus a
    micro-batch (1,024 cells with one sequence), dropping older ones as a sequence grows.
    A request continuing a cached conversation (its window still there) reuses the cache;
    one sharing only an early prefix (whose window is gone) is evaluated afresh. Either
    way the greedy text is the one an empty cache gives."""
    from localllm.testing import assert_batched_agrees, greedy_trace

    story = " ".join(f"Day {i}: the river rose and the village moved its boats." for i in
                     range(90))  # about 1,350 tokens: more than the window's cells
    with localllm.load(gemma_path, context_length=2048, parallel=1, threads=2) as gemma:
        first = gemma.complete(story, max_tokens=8, temperature=0)
        assert first.usage.prompt_tokens > 1100
        follow = story + first.text + " The next day"
        continued = gemma.complete(follow, max_tokens=12, temperature=0)
        assert continued.usage.cached_prompt_tokens > 1100  # the conversation's cache
        branched = story[:200] + " Meanwhile, in the city"
        fresh = gemma.complete(branched, max_tokens=12, temperature=0)
        assert fresh.usage.cached_prompt_tokens == 0  # its window was dropped: no reuse
        for prompt, done in ((follow, continued), (branched, fresh)):
            gemma.clear_cache()
            assert_batched_agrees(greedy_trace(gemma, prompt, 12), done.token_ids)
