"""Images in chats, end to end on real llama.cpp (libmtmd) and the real default model.

No vision-language model's weights can be installed here, so the projector is the seeded
synthetic LLaVA-1.5-style one of ``vision_oracle`` (its embedding is checked against an
independent numpy implementation there and once more here, through the engine), attached
to the real 135M default model whose width it matches. The answers are not about the
picture (the text model never learned this projector); what is asserted is what holds by
construction: the prompt holds exactly the image's tokens, greedy output is repeatable,
the same image is not encoded twice, isolation and batching give the same tokens, and
every bad input is a typed error before any compute.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from vision_oracle import VisionConfig, draw_images, encode, write_projector

import localllm
from localllm.images import decode_image
from localllm.models.projector import check_projector, find_projector
from localllm.templates.chat import normalize_messages
from localllm.testing import BATCH_NEAR_TIE, NEAR_TIE

CONFIG = VisionConfig()
TOKENS = (CONFIG.image_size // CONFIG.patch_size) ** 2
QUESTION = "Describe the picture in one sentence."


def png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("vision") / "mmproj-synthetic.gguf"
    return path, write_projector(path, CONFIG)


@pytest.fixture(scope="module")
def pictures() -> dict[str, bytes]:
    return {name: png(rgb) for name, rgb in draw_images(CONFIG.image_size).items()}


@pytest.fixture(scope="module")
def vision(default_model_path: Path, projector: tuple[Path, Any]) -> Any:
    with localllm.load(default_model_path, projector=str(projector[0]), context_length=1024,
                       threads=2, parallel=2) as model:
        yield model


def chat(image: bytes | None, text: str = QUESTION) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image", "image": image})
    return [{"role": "user", "content": parts}]


def test_the_prompt_holds_exactly_the_image_tokens_and_greedy_output_repeats(
        vision: localllm.Model, pictures: dict[str, bytes]) -> None:
    assert vision.info.image_tokens == TOKENS and vision.info.projector
    without = vision.count_tokens(chat(None))
    assert vision.count_tokens(chat(pictures["picture"])) == without + TOKENS
    two = [{"role": "user", "content": [{"type": "image", "image": pictures["gradient"]},
                                        {"type": "text", "text": QUESTION},
                                        {"type": "image", "image": pictures["noise"]}]}]
    assert vision.count_tokens(two) == without + 2 * TOKENS
    vision.clear_cache()
    first = vision.chat(chat(pictures["picture"]), max_tokens=16, temperature=0, logprobs=2)
    assert first.usage.prompt_tokens == without + TOKENS
    # again, its prompt now from the cache: the same tokens, but at a near tie
    again = vision.chat(chat(pictures["picture"]), max_tokens=16, temperature=0)
    assert again.usage.cached_prompt_tokens > 0
    _agrees(again.token_ids, first, NEAR_TIE)
    other = vision.chat(chat(pictures["noise"]), max_tokens=16, temperature=0)
    assert other.usage.prompt_tokens == first.usage.prompt_tokens
    # the image reached the model: another picture changes the next-token distribution
    a = vision.chat(chat(pictures["picture"]), max_tokens=1, temperature=0, logprobs=5)
    b = vision.chat(chat(pictures["noise"]), max_tokens=1, temperature=0, logprobs=5)
    assert a.logprobs[0].top_logprobs != b.logprobs[0].top_logprobs


def test_the_engine_embedding_is_the_numpy_oracles(vision: localllm.Model,
                                                   projector: tuple[Path, Any],
                                                   pictures: dict[str, bytes]) -> None:
    engine = vision._generator.engine  # type: ignore[attr-defined]
    for name, rgb in draw_images(CONFIG.image_size).items():
        got = engine._vision.embedding(decode_image(pictures[name]))
        want = encode(projector[1], CONFIG, rgb)
        assert got.shape == (TOKENS, CONFIG.text_width)
        # llama.cpp rounds the patch convolution and GELU to float16 (see vision_oracle)
        assert np.abs(got - want).max() <= 4e-3 * np.abs(want).max(), name


def test_a_repeated_image_is_served_from_the_cache(vision: localllm.Model,
                                                   pictures: dict[str, bytes]) -> None:
    engine = vision._generator.engine  # type: ignore[attr-defined]
    vision.clear_cache()
    turn = chat(pictures["gradient"], "What colours are in it?")
    first = vision.chat(turn, max_tokens=8, temperature=0)
    encodes = engine._vision.encodes
    follow_up = [*turn, {"role": "assistant", "content": first.text},
                 {"role": "user", "content": "And what shapes?"}]
    second = vision.chat(follow_up, max_tokens=8, temperature=0)
    # the follow-up's prompt starts with the same turn: its image's KV entries are reused
    image_end = vision.count_tokens(turn) - 1
    assert second.usage.cached_prompt_tokens >= image_end
    vision.clear_cache()  # KV gone: the kept embedding rows still spare the encoder
    vision.chat(follow_up, max_tokens=8, temperature=0)
    assert engine._vision.encodes == encodes


def _agrees(tokens: tuple[int, ...], alone: localllm.Completion, near_tie: float) -> None:
    """Greedy ``tokens`` equal the solo run's, up to a step where the solo run's top-2
    log-probability margin was a near tie (another batch shape may tip it)."""
    at = next((i for i, (a, b) in enumerate(zip(tokens, alone.token_ids, strict=False))
               if a != b), None)
    if at is None:
        assert len(tokens) == len(alone.token_ids)
        return
    top = alone.logprobs[at].top_logprobs
    assert top[0].logprob - top[1].logprob < near_tie, (at, tokens, alone.token_ids)


def test_batched_and_isolated_runs_give_the_same_tokens(vision: localllm.Model,
                                                        default_model_path: Path,
                                                        projector: tuple[Path, Any],
                                                        pictures: dict[str, bytes]) -> None:
    names = ["picture", "noise"]
    alone: dict[str, localllm.Completion] = {}
    for name in names:
        vision.clear_cache()
        alone[name] = vision.chat(chat(pictures[name]), max_tokens=12, temperature=0,
                                  logprobs=2)
    vision.clear_cache()
    together: dict[str, localllm.Completion] = {}

    def run(name: str) -> None:
        together[name] = vision.chat(chat(pictures[name]), max_tokens=12, temperature=0)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for name in names:  # decoded in one batch: the batch margin rule
        assert together[name].usage.prompt_tokens == alone[name].usage.prompt_tokens
        _agrees(together[name].token_ids, alone[name], BATCH_NEAR_TIE)
    with localllm.load(default_model_path, projector=str(projector[0]), context_length=1024,
                       threads=2, isolation="process") as isolated:
        assert isolated.info.isolation == "process"
        there = isolated.chat(chat(pictures["picture"]), max_tokens=12, temperature=0)
        _agrees(there.token_ids, alone["picture"], NEAR_TIE)


def test_a_model_without_a_projector_refuses_images(shared_model: localllm.Model,
                                                    pictures: dict[str, bytes]) -> None:
    assert shared_model.info.image_tokens is None
    with pytest.raises(localllm.UnsupportedFeatureError, match="projector"):
        shared_model.chat(chat(pictures["picture"]), max_tokens=4)
    with pytest.raises(localllm.UnsupportedFeatureError, match="projector"):
        shared_model.count_tokens(chat(pictures["picture"]))


def test_a_projector_for_another_width_is_refused_at_load(default_model_path: Path,
                                                          tmp_path: Path) -> None:
    other = tmp_path / "mmproj-other.gguf"
    write_projector(other, VisionConfig(text_width=64))
    with pytest.raises(localllm.ConfigError, match="64-wide embeddings but the model's width "
                                                   "is 576"):
        localllm.load(default_model_path, projector=str(other), context_length=512)
    with pytest.raises(localllm.ConfigError, match="not a vision projector"):
        localllm.load(default_model_path, projector=str(default_model_path))


def _image(kind: str, size: tuple[int, int] = (8, 8), **save: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, kind, **save)
    return out.getvalue()


def _bomb() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (10 gigapixels) in a few bytes."""
    data = bytearray(_image("PNG", (1, 1)))
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data[8:8 + 25] = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


HOSTILE = {
    "empty": (b"", "not PNG, JPEG, WebP or GIF"),
    "text": (b"hello, I am not an image", "not PNG, JPEG, WebP or GIF"),
    "bmp": (_image("BMP"), "not PNG, JPEG, WebP or GIF"),
    "tiff": (_image("TIFF"), "not PNG, JPEG, WebP or GIF"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>',
            "not PNG, JPEG, WebP or GIF"),
    "truncated png": (_image("PNG", (64, 64))[:80], "damaged or truncated"),
    "truncated jpeg": (_image("JPEG", (64, 64))[:200], "damaged or truncated"),
    "png header only": (_image("PNG")[:8], "damaged or truncated"),
    "decompression bomb": (_bomb(), "over the limit"),
    "garbage after a jpeg magic": (b"\xff\xd8\xff" + bytes(range(256)) * 4,
                                   "damaged or truncated"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_images_are_typed_errors_before_any_runtime(name: str) -> None:
    data, message = HOSTILE[name]
    with pytest.raises(localllm.ConfigError, match=message):
        decode_image(data)


def test_hostile_images_reach_no_compute_through_a_model(vision: localllm.Model) -> None:
    steps = vision.stats.decode_steps
    for data, message in HOSTILE.values():
        if not data:
            continue
        with pytest.raises(localllm.ConfigError, match=message):
            vision.chat(chat(data), max_tokens=4)
    with pytest.raises(localllm.ConfigError, match="--fetch-images"):
        vision.chat([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert vision.stats.decode_steps == steps


def test_accepted_formats_and_sources(tmp_path: Path) -> None:
    rgb = draw_images(CONFIG.image_size)["picture"]
    for kind in ("PNG", "JPEG", "WEBP", "GIF"):
        image = decode_image(_image(kind, (5, 3)))
        assert (image.width, image.height, len(image.rgb)) == (5, 3, 45), kind
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    first = decode_image(out.getvalue())
    assert first.rgb[:3] == bytes((255, 0, 0))  # an animation reads as its first frame
    path = tmp_path / "p.png"
    path.write_bytes(png(rgb))
    import base64

    uri = "data:image/png;base64," + base64.b64encode(png(rgb)).decode()
    parts = [localllm.Message(role="user", content=[{"type": "image", "image": source}])
             .images[0] for source in (png(rgb), path, str(path), uri)]
    assert len({p.data for p in parts}) == 1
    same = [decode_image(p.data).key for p in parts]
    assert len(set(same)) == 1  # the content key depends on the pixels only
    with pytest.raises(localllm.ChatTemplateError,
                       match=r"messages\[0\] is invalid: content.0.image: Value error, cannot read "
                             "the image"):
        normalize_messages([{"role": "user", "content": [
            {"type": "image", "image": str(tmp_path / "missing.png")}]}])


def test_projectors_are_found_where_apps_keep_them(default_model_path: Path,
                                                   projector: tuple[Path, Any],
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "lmstudio" / "pub" / "model"
    folder.mkdir(parents=True)
    model = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model.symlink_to(default_model_path)
    assert find_projector(model) is None
    shutil.copy(projector[0], folder / "mmproj-model-f16.gguf")
    assert find_projector(model) == folder / "mmproj-model-f16.gguf"
    with localllm.load(model, context_length=512, threads=2) as found:
        assert found.info.image_tokens == TOKENS
    with localllm.load(model, context_length=512, threads=2, projector=False) as text_only:
        assert text_only.info.projector is None
    # Ollama: the projector is a layer of the manifest whose model blob is loaded
    root = tmp_path / "ollama"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "sha256-aa").symlink_to(default_model_path)
    shutil.copy(projector[0], blobs / "sha256-bb")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "llava" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:aa"},
        {"mediaType": "application/vnd.ollama.image.projector", "digest": "sha256:bb"}]}))
    assert find_projector(blobs / "sha256-aa") == blobs / "sha256-bb"
    assert check_projector(blobs / "sha256-bb", 576).tokens_per_image == TOKENS


def test_the_plan_sets_the_projectors_memory_aside(vision: localllm.Model,
                                                   default_model_path: Path,
                                                   projector: tuple[Path, Any]) -> None:
    size = check_projector(projector[0]).n_bytes
    assert size > 0
    assert any("vision projector" in r and f"{TOKENS} prompt tokens" in r
               for r in vision.info.plan.reasons)
    planned = localllm.plan(default_model_path, projector=str(projector[0]),
                            context_length=512, device="cpu")
    assert any(f"vision projector: {size / 2**20:,.1f} MiB" in r for r in planned.reasons)
    assert not any("vision projector" in r for r in localllm.plan(
        default_model_path, context_length=512, device="cpu").reasons)


def test_an_image_path_is_read_only_as_a_regular_file_and_only_so_far(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block forever; /dev/zero would never end
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(localllm.ChatTemplateError, match="not a regular file"):
            normalize_messages([{"role": "user", "content": [{"type": "image", "image": path}]}])
    big = tmp_path / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(21 * 1024 * 1024)
    with pytest.raises(localllm.ChatTemplateError, match="over the image limit"):
        normalize_messages([{"role": "user", "content": [{"type": "image", "image": big}]}])
