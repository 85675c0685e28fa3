"""libmtmd computes LLaVA-1.5's image embedding: checked against an independent numpy oracle.

A seeded synthetic projector (``vision_oracle.write_projector``: CLIP ViT 32×32 px, 8×8
patches, width 32, 4 heads, ffn 48, 3 blocks, LLaVA-1.5 MLP projector to SmolLM2-135M's
576) is loaded by llama.cpp's libmtmd next to the real default text model; its embedding of
three images is compared with ``vision_oracle.encode``, a float64 forward pass written from
the architecture's definition.

Tolerance. llama.cpp rounds the patch convolution's inputs and kernel and every GELU output
to float16 (unit roundoff 2^-11 ≈ 4.9e-4); the reference computes in float64 and emulates
none of that. Errors measured (x86-64, llama-cpp-python 0.3.36), as max |a - b| / max |ref|
and ||a - b||_F / ||ref||_F, against the reference with the projector's GELU in ggml's tanh
form and in LLaVA's exact (erf) form:

    image      tanh form            erf form
    gradient   5.5e-4 / 4.8e-4      5.1e-4 / 5.2e-4
    noise      4.4e-4 / 4.7e-4      4.7e-4 / 5.0e-4
    picture    4.0e-4 / 4.2e-4      4.1e-4 / 4.5e-4

That this is float16 rounding and nothing else was checked once by hand: a copy of the
reference that rounds the same values to float16 agrees with llama.cpp to 5e-6.
``TOLERANCE`` = 2.5e-3 on both measures, 4.6× the worst observed (5.5e-4); it leaves room
for other CPUs' float32 kernels, which can move a value across a float16 rounding boundary.
(The tanh and erf forms of the projector's GELU differ by less than that rounding, so the
test cannot tell them apart; both are asserted.)

Sensitivity: what a real bug gives, as max |a - b| / max |ref| against llama.cpp's output
(lowest and highest over the three images):

    two patches swapped (patch order)          0.51 .. 1.3     (≥ 200× TOLERANCE)
    image transposed (column-major patches)    0.86 .. 1.03
    BGR instead of RGB                         1.09 .. 1.28
    all 3 blocks run (last layer, not -2)      0.42 .. 0.55    (≥ 168× TOLERANCE)
    exact GELU instead of quick-GELU (encoder) 6.4e-3 .. 7.3e-3 (≥ 2.6× TOLERANCE)

The first four are asserted at ≥ 10× the tolerance. The activation flavour is a far subtler
change (quick-GELU and GELU differ by at most 0.02 on O(1) inputs) and is asserted at ≥ 2×:
it is still caught, with less margin. The module runs in 1-3 s (model load included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vision_oracle import VisionConfig, draw_images, encode, mtmd_embeddings, write_projector

try:
    import llama_cpp.mtmd_cpp  # noqa: F401  (FileNotFoundError when libmtmd.so is absent)
except (ImportError, OSError) as exc:
    raise ImportError(
        f"llama_cpp.mtmd_cpp cannot be loaded ({exc}): this llama-cpp-python was built "
        "without libmtmd. `make test` rebuilds llama-cpp-python with libmtmd "
        "(scripts/install_llama_cpp.py, -DLLAVA_BUILD=ON)") from exc

pytestmark = pytest.mark.real_model

CONFIG = VisionConfig()
IMAGES = draw_images(CONFIG.image_size)
#: On max|a-b|/max|ref| and on the relative Frobenius norm; see the module docstring.
TOLERANCE = 2.5e-3


def errors(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max |got - ref| / max |ref|, ||got - ref||_F / ||ref||_F)."""
    diff = np.asarray(got, np.float64) - ref
    return (float(np.abs(diff).max() / np.abs(ref).max()),
            float(np.linalg.norm(diff) / np.linalg.norm(ref)))


@pytest.fixture(scope="module")
def weights_and_embeddings(tmp_path_factory: pytest.TempPathFactory, default_model_path: Path
                           ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The projector's weights and libmtmd's embedding of each image (one model load)."""
    mmproj = tmp_path_factory.mktemp("mmproj") / "mmproj-synthetic-llava15.gguf"
    weights = write_projector(mmproj, CONFIG, seed=0)
    got = mtmd_embeddings(mmproj, default_model_path, list(IMAGES.values()))
    return weights, dict(zip(IMAGES, got, strict=True))


@pytest.mark.parametrize("name", list(IMAGES))
def test_libmtmd_matches_the_llava15_definition(
        name: str, weights_and_embeddings: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
) -> None:
    """Within float16 precision of the definition, with the projector's GELU in ggml's tanh
    form (what llama.cpp computes) and in LLaVA's exact form (``nn.GELU()``) alike."""
    weights, got = weights_and_embeddings
    for projector_act in ("gelu_tanh", "gelu_erf"):
        ref = encode(weights, CONFIG, IMAGES[name], projector_act=projector_act)
        max_err, fro_err = errors(got[name], ref)
        assert max_err < TOLERANCE and fro_err < TOLERANCE, (name, projector_act, max_err,
                                                             fro_err)


def test_one_row_per_patch_at_the_text_width_and_images_differ(
        weights_and_embeddings: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    _, got = weights_and_embeddings
    for emb in got.values():
        assert emb.shape == (CONFIG.n_patches, CONFIG.text_width) == (16, 576)
        assert np.isfinite(emb).all()
    names = list(got)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert errors(got[a], got[b].astype(np.float64))[1] > 100 * TOLERANCE, (a, b)


def _swap_patches(rgb: np.ndarray, first: tuple[int, int], second: tuple[int, int]
                  ) -> np.ndarray:
    p = CONFIG.patch_size
    out = rgb.copy()
    (r0, c0), (r1, c1) = first, second
    out[r0 * p:(r0 + 1) * p, c0 * p:(c0 + 1) * p] = rgb[r1 * p:(r1 + 1) * p, c1 * p:(c1 + 1) * p]
    out[r1 * p:(r1 + 1) * p, c1 * p:(c1 + 1) * p] = rgb[r0 * p:(r0 + 1) * p, c0 * p:(c0 + 1) * p]
    return out


#: What a bug would compute instead (as the reference's arguments), for every image.
BUGS = {
    "two patches swapped (patch order)": lambda w, rgb: encode(
        w, CONFIG, _swap_patches(rgb, (0, 1), (2, 3))),
    "image transposed (column-major patches)": lambda w, rgb: encode(
        w, CONFIG, np.ascontiguousarray(rgb.transpose(1, 0, 2))),
    "BGR instead of RGB": lambda w, rgb: encode(w, CONFIG, np.ascontiguousarray(rgb[..., ::-1])),
    "all 3 blocks run (last layer, not -2)": lambda w, rgb: encode(w, CONFIG, rgb, layers=3),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_the_comparison_catches_a_wrong_forward_pass(
        bug: str,
        weights_and_embeddings: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    """Each bug moves the result at least 10× the tolerance away from libmtmd's output on
    every image, so the comparison above can fail."""
    weights, got = weights_and_embeddings
    for name, rgb in IMAGES.items():
        max_err, _ = errors(got[name], BUGS[bug](weights, rgb))
        assert max_err > 10 * TOLERANCE, (bug, name, max_err)


def test_the_comparison_catches_the_wrong_gelu_in_the_encoder(
        weights_and_embeddings: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> None:
    """CLIP's quick-GELU, x·sigmoid(1.702x), replaced by GELU (what ``clip.use_gelu`` would
    select, there in its tanh form): a small change, still at least 2× the tolerance."""
    weights, got = weights_and_embeddings
    for name, rgb in IMAGES.items():
        max_err, _ = errors(got[name], encode(weights, CONFIG, rgb, encoder_act="gelu_erf"))
        assert max_err > 2 * TOLERANCE, (name, max_err)
