"""Write the fuzzers' seed corpus, tests/data/fuzz_seeds/TARGET/, deterministically.

Seeds are small valid inputs that reach deep into each reader: every GGUF value type and
version, each legacy GGML layout, ONNX folders with and without external data, and real
chat templates with conversations. ``python -m localllm.support.fuzz`` mutates from these.
Run: ``.venv/bin/python scripts/make_fuzz_seeds.py`` (needs the onnx package).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from localllm.support.fuzz.samples import (
    ARRAY,
    BOOL,
    F16_TYPE,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    KV,
    Q4_0_TYPE,
    SEPARATOR,
    STRING,
    U8,
    U16,
    U32,
    U64,
    VOCAB,
    Tensor,
    ggml,
    gguf,
    join_folder,
    tiny_folder,
    tiny_ggjt,
    tiny_gguf,
    tiny_gpt2_ggml,
    tiny_kvs,
    tiny_tensors,
)
from localllm.templates.chat import NAMED_TEMPLATES

ROOT = Path(__file__).resolve().parents[1] / "tests" / "data" / "fuzz_seeds"

SMOLLM2 = (  # the default model's own template (ChatML with a default system prompt)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = (  # Meta-Llama-3-8B-Instruct
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] "
    "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
GEMMA = (  # gemma-2b-it
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
    "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\\n'}}{% endif %}")
TOOLS_STYLE = (  # the constructs of newer templates: namespace, filters, macros, dates
    "{%- set ns = namespace(last_user=-1, n=0) %}{%- for m in messages %}"
    "{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}{%- macro turn(role, text) -%}<|{{ role }}|>{{ text | default('', true) }}"
    "{%- endmacro %}{{- bos_token }}{{- 'Today: ' ~ strftime_now('%d %b %Y') ~ '\\n' }}"
    "{%- for m in messages %}{%- if m.content is string %}{{ turn(m.role, m.content) }}"
    "{%- else %}{{ turn(m.role, m | tojson) }}{%- endif %}{%- set ns.n = ns.n + 1 %}"
    "{%- if loop.index0 == ns.last_user %}{{ '[' ~ ns.n ~ ']' }}{%- endif %}{%- endfor %}"
    "{{- (messages | map(attribute='role') | join(',')) | upper | replace('USER', 'u') }}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}")

LOOP_CONTROL = (  # break/continue (Command R7B, Kimi), {% generation %} (LFM2.5), dict()
    "{%- set seen = dict(first=none) %}{%- for m in messages %}"
    "{%- if m.role == 'system' %}{%- continue %}{%- endif %}"
    "{%- if loop.index > 6 %}{%- break %}{%- endif %}"
    "{%- if m.role == 'assistant' %}<|a|>{% generation %}{{ m.content }}{% endgeneration %}"
    "{%- else %}<|{{ m.role }}|>{{ m.content | tojson(indent=2) }}{%- endif %}{%- endfor %}"
    "{{- dict.fromkeys(['x'], 1) | tojson }}{%- if add_generation_prompt %}<|a|>{%- endif %}")


def conversation(template: str, *turns: tuple[int, str]) -> bytes:
    """A chat-template fuzz input: the template, then each turn (role byte, content)."""
    return SEPARATOR.join([template.encode()] + [bytes([r]) + c.encode() for r, c in turns])


def gguf_seeds() -> dict[str, bytes]:
    every_type = [
        KV(b"tiny.u8", U8, 7), KV(b"tiny.i8", I8, -7), KV(b"tiny.u16", U16, 700),
        KV(b"tiny.i16", I16, -700), KV(b"tiny.i32", I32, -70000), KV(b"tiny.f32", F32, 0.5),
        KV(b"tiny.bool", BOOL, True), KV(b"tiny.u64", U64, 1 << 40),
        KV(b"tiny.i64", I64, -(1 << 40)), KV(b"tiny.f64", F64, 0.25),
        KV(b"llama.attention.head_count_kv", ARRAY, [1], I32),
        KV(b"tokenizer.ggml.merges", ARRAY, ["a b"], STRING),
        KV(b"tokenizer.chat_template", STRING, NAMED_TEMPLATES["chatml"]),
    ]
    tensors = [*tiny_tensors(), Tensor(b"blk.0.attn_q.weight", (32, 2), Q4_0_TYPE),
               Tensor(b"blk.0.ffn_up.weight", (8, 2), F16_TYPE)]
    gemma3 = [  # a sliding-window architecture: the plan reads its window and pattern
        KV(b"general.architecture", STRING, "gemma3"), KV(b"gemma3.context_length", U32, 64),
        KV(b"gemma3.block_count", U32, 2), KV(b"gemma3.embedding_length", U32, 8),
        KV(b"gemma3.attention.head_count", U32, 2),
        KV(b"gemma3.attention.sliding_window", U32, 16),
        KV(b"gemma3.attention.sliding_window_pattern", ARRAY, [True, False], BOOL),
        KV(b"tokenizer.ggml.tokens", ARRAY, ["<s>", "</s>", "a", "b"], STRING)]
    return {
        "tiny.bin": bytes(tiny_gguf().data),
        "gemma3-sliding-window.bin": bytes(gguf(gemma3, [
            *tiny_tensors(), Tensor(b"blk.1.attn_q.weight", (8,))]).data),
        "every-type.bin": bytes(gguf(tiny_kvs() + every_type, tensors).data),
        "version-1.bin": bytes(gguf(tiny_kvs(), tiny_tensors(), version=1).data),
        "version-2.bin": bytes(gguf(tiny_kvs(), tiny_tensors(), version=2).data),
        "vocab-only.bin": bytes(gguf(tiny_kvs(), []).data),
        "alignment-64.bin": bytes(gguf(
            tiny_kvs({"general.alignment": KV(b"general.alignment", U32, 64)}),
            tiny_tensors(), alignment=64).data),
    }


def ggml_seeds() -> dict[str, bytes]:
    def layout(magic: bytes, hparams: tuple[int, ...], names: tuple[bytes, bytes], *,
               counted: bool = False, scored: bool = False) -> bytes:
        tensors = [Tensor(names[0], (8, 4)), Tensor(names[1], (8,))]
        return bytes(ggml(magic, hparams, VOCAB, tensors, counted_vocab=counted,
                          scored=scored).data)

    falcon = [Tensor(b"transformer.word_embeddings.weight", (8, 4)),
              Tensor(b"lm_head.weight", (8, 4))]
    return {
        "ggjt-llama.bin": bytes(tiny_ggjt().data),
        "ggjt-falcon.bin": bytes(tiny_ggjt((4, 8, 2, 1, 1, 40, 0), falcon).data),
        "gpt2.bin": bytes(tiny_gpt2_ggml().data),
        "starcoder.bin": bytes(tiny_gpt2_ggml([Tensor(b"model/wte", (8, 4)),
                                               Tensor(b"model/lm_head", (8, 4))]).data),
        "gptj.bin": layout(b"lmgg", (4, 64, 8, 2, 1, 4, 0),
                           (b"transformer.wte.weight", b"lm_head.weight"), counted=True),
        "gpt-neox.bin": layout(b"lmgg", (4, 64, 8, 2, 1, 4, 1, 0),
                               (b"gpt_neox.embed_in.weight", b"embed_out.weight")),
        "mpt.bin": layout(b"lmgg", (8, 64, 2, 1, 4, 0x41000000, 0, 0),
                          (b"transformer.wte.weight", b"transformer.norm_f.weight")),
        "replit.bin": layout(b"lmgg", (8, 64, 2, 1, 4, 0),
                             (b"transformer.wte.weight", b"transformer.norm_f.weight"),
                             scored=True),
    }


def onnx_seeds() -> dict[str, bytes]:
    bert = tiny_folder()
    bert["config.json"] = json.dumps({
        "model_type": "bert", "max_position_embeddings": 32, "num_hidden_layers": 1,
        "hidden_size": 4, "num_attention_heads": 1, "intermediate_size": 8,
        "vocab_size": 6, "localllm_source": {"name": "tiny-bert"}}).encode()
    unigram = tiny_folder()
    unigram["tokenizer.json"] = json.dumps({
        "model": {"type": "Unigram", "vocab": [["<s>", 0.0], ["</s>", 0.0], ["a", -1.0]]},
        "added_tokens": []}).encode()
    return {
        "decoder.bin": join_folder(tiny_folder()),
        "external-data.bin": join_folder(tiny_folder(external=True)),
        "bert.bin": join_folder(bert),
        "unigram.bin": join_folder(unigram),
    }


def chat_seeds() -> dict[str, bytes]:
    user, assistant, system = 0, 1, 2
    talk = ((system, "Be brief."), (user, "Name the capital of France."),
            (assistant, "Paris."), (user, "And of Italy?"))
    return {
        "chatml.bin": conversation(NAMED_TEMPLATES["chatml"], *talk),
        "smollm2.bin": conversation(SMOLLM2, *talk[1:]),
        "llama-2.bin": conversation(NAMED_TEMPLATES["llama-2"], *talk),
        "llama-3.bin": conversation(LLAMA3, *talk),
        "gemma.bin": conversation(GEMMA, *talk[1:]),
        "zephyr.bin": conversation(NAMED_TEMPLATES["zephyr"], (user, "Hi")),
        "tools-style.bin": conversation(TOOLS_STYLE, *talk),
        "loop-control.bin": conversation(LOOP_CONTROL, *talk),
    }


def image_seeds() -> dict[str, bytes]:
    """Small files of each accepted format (and features their decoders branch on:
    palette and alpha, progressive JPEG, EXIF orientation, a GIF animation, lossless WebP)."""
    import io

    from PIL import Image

    def saved(image: Image.Image, kind: str, **options: object) -> bytes:
        out = io.BytesIO()
        image.save(out, kind, **options)
        return out.getvalue()

    rgb = Image.new("RGB", (6, 4))
    rgb.putdata([(x * 40, y * 60, (x + y) * 20) for y in range(4) for x in range(6)])
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    frames = [Image.new("P", (3, 3), c) for c in (1, 2)]
    return {
        "rgb.png": saved(rgb, "PNG"),
        "palette-alpha.png": saved(rgb.convert("RGBA").convert("P"), "PNG", transparency=0),
        "gray16.png": saved(rgb.convert("I;16"), "PNG"),
        "baseline.jpg": saved(rgb, "JPEG", quality=80),
        "progressive-exif.jpg": saved(rgb, "JPEG", progressive=True, exif=exif),
        "animated.gif": saved(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "lossy.webp": saved(rgb, "WEBP", quality=50),
        "lossless.webp": saved(rgb.convert("RGBA"), "WEBP", lossless=True),
    }


def main() -> int:
    for target, seeds in (("gguf", gguf_seeds()), ("ggml", ggml_seeds()),
                          ("onnx-folder", onnx_seeds()), ("chat-template", chat_seeds()),
                          ("image", image_seeds())):
        folder = ROOT / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{folder}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
