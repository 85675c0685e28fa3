"""GGUF → ONNX conversion and the ONNX Runtime backend.

Oracles: an independent numpy forward pass of the GGUF weights (tests/llama_reference.py),
and the llama.cpp backend on the same file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from llama_reference import forward
from margins import TINY_NEAR_TIE, assert_greedy_agrees, wide_greedy_prefix
from synthetic_models import Shape, write_model

import localllm
from localllm.engines.onnx import choose_provider
from localllm.models.convert import convert_gguf_to_onnx
from localllm.models.gguf import OnnxFolder, copy_with_metadata
from localllm.models.loader import describe_source
from localllm.testing import NEAR_TIE, BackendContract, next_token_logits

PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "1, 1, 2, 3, 5,",
           "The three primary colors are", "Water boils at", "My favourite food is",
           "import numpy as np\n"]
TINY = Shape("onnx-tiny", n_layer=2, n_embd=128, n_head=4, n_head_kv=2, n_ff=352,
             n_vocab=600, dtype="f32", n_ctx_train=512)
QUESTION = [{"role": "user", "content": "Name the capital of France."}]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(TINY, tmp_path_factory.mktemp("onnx") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_gguf: Path) -> Path:
    return convert_gguf_to_onnx(tiny_gguf, tiny_gguf.parent / "tiny-onnx")


@pytest.fixture(scope="module")
def default_onnx(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf_to_onnx(default_model_path, tmp_path_factory.mktemp("smol") / "onnx")


class TestOnnxContract(BackendContract):
    prompt = "the quick brown fox"

    @pytest.fixture
    def model(self, tiny_onnx: Path) -> Iterator[localllm.Model]:
        with localllm.load(tiny_onnx, context_length=256, threads=2,
                           chat_template="chatml") as m:
            yield m


def test_conversion_writes_the_optimum_layout(tiny_onnx: Path) -> None:
    described = describe_source(tiny_onnx)  # the folder's own descriptor
    assert isinstance(described, OnnxFolder) and described.format == "onnx"
    assert described.block_count > 0 and described.vocab_size > 0
    names = {p.name for p in tiny_onnx.iterdir()}
    assert {"model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json",
            "config.json"} <= names
    graph = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert "past_key_values.1.value" in inputs and "present.1.value" in outputs
    assert outputs[0] == "logits"


def test_tiny_model_logits_and_greedy_match(tiny_gguf: Path, tiny_onnx: Path) -> None:
    ids = [1, 300, 301, 302, 450, 17, 599, 260]
    with localllm.load(tiny_onnx, context_length=256, chat_template="chatml") as ox, \
            localllm.load(tiny_gguf, context_length=256, chat_template="chatml") as lc:
        assert ox._engine is not None
        logits = next_token_logits(ox, ids)
        assert float(np.abs(logits - forward(tiny_gguf, ids)).max()) < 1e-4
        a = ox.complete("the quick brown fox", max_tokens=16, temperature=0)
        # the KV cache is carried: after the prompt, one token per step
        assert ox._engine._n_past == a.usage.prompt_tokens + a.usage.completion_tokens - 1
        assert_greedy_agrees(a.token_ids, lc, "the quick brown fox", max_tokens=16,
                             near_tie=TINY_NEAR_TIE)


def test_default_model_conversion_is_exact_and_close_to_llama_cpp(
        default_model_path: Path, default_onnx: Path) -> None:
    """fp32 ONNX equals the exact numpy forward pass; llama.cpp computes Q4_1 matrix
    products with 8-bit-quantized activations, so it is close, not equal: the two may
    rank a near-tied pair of next tokens differently (on some CPUs and not others), never
    a pair that either runtime separates by NEAR_TIE or more. "Paris" is asserted after
    checking that every greedy step up to it has a wide top-2 margin."""
    with localllm.load(default_onnx, context_length=1024) as ox, \
            localllm.load(default_model_path, context_length=1024) as lc:
        assert ox._engine is not None and lc._engine is not None
        ids = ox.tokenizer.encode(PROMPTS[0])
        exact = forward(default_model_path, ids)
        assert float(np.abs(next_token_logits(ox, ids) - exact).max()) < 1e-3
        for prompt in PROMPTS:
            ids = ox.tokenizer.encode(prompt)
            a, b = next_token_logits(ox, ids), next_token_logits(lc, ids)
            cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            assert cosine >= 0.99, (prompt, cosine)
            ia, ib = int(np.argmax(a)), int(np.argmax(b))
            assert a[ia] - a[ib] < NEAR_TIE and b[ib] - b[ia] < NEAR_TIE, prompt
        wide_greedy_prefix(ox, QUESTION, "Paris", max_tokens=20)
        chat = ox.chat(QUESTION, max_tokens=20, temperature=0)
        assert "Paris" in chat.text


def test_greedy_equals_llama_cpp_on_the_same_weights(default_onnx: Path,
                                                      default_model_f32: Path) -> None:
    """Conformance: llama.cpp on the F32 copy of the very weights the ONNX folder holds
    (no 8-bit activation quantization) gives the same 32 greedy tokens for all 8 prompts,
    up to a step whose top-2 margin is below NEAR_TIE, if any: there llama.cpp's fp16 KV
    cache and each CPU's float kernels may tip the choice either way."""
    with localllm.load(default_onnx, context_length=512, threads=2) as ox, \
            localllm.load(default_model_f32, context_length=512, threads=2) as lc:
        for prompt in PROMPTS:
            tokens = ox.complete(prompt, max_tokens=32, temperature=0).token_ids
            assert_greedy_agrees(tokens, lc, prompt, max_tokens=32)


def test_symlinked_weights_leaving_the_folder_are_refused(tiny_onnx: Path,
                                                         tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    linked.mkdir()
    for item in tiny_onnx.iterdir():
        if item.name == "model.onnx.data":
            (linked / item.name).symlink_to(item)
        else:
            (linked / item.name).write_bytes(item.read_bytes())
    with pytest.raises(localllm.ModelFormatError, match="outside its folder"):
        localllm.load(linked, chat_template="chatml")


def test_external_data_outside_the_folder_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    model = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (evil / name).write_bytes((tiny_onnx / name).read_bytes())
    onnx.save_model(model, str(evil / "model.onnx"))
    with pytest.raises(localllm.ModelFormatError, match="outside its folder"):
        localllm.load(evil, chat_template="chatml")


def test_unsupported_architecture_and_provider(tiny_gguf: Path, tiny_onnx: Path,
                                               tmp_path: Path) -> None:
    odd = tmp_path / "odd.gguf"
    copy_with_metadata(tiny_gguf, odd, {"general.architecture": "mamba"})
    with pytest.raises(localllm.UnsupportedModelError, match="supported: llama"):
        convert_gguf_to_onnx(odd, tmp_path / "out")
    with pytest.raises(localllm.UnsupportedFeatureError, match="CUDAExecutionProvider"):
        localllm.load(tiny_onnx, chat_template="chatml",
                      backend_options={"provider": "CUDAExecutionProvider"})


def test_provider_follows_the_plan() -> None:
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_provider(cuda, gpu=True) == "CUDAExecutionProvider"
    assert choose_provider(cuda, gpu=False) == "CPUExecutionProvider"
    assert choose_provider(["DmlExecutionProvider", "CPUExecutionProvider"], gpu=True) == \
        "DmlExecutionProvider"
    assert choose_provider(["CoreMLExecutionProvider", "CPUExecutionProvider"], gpu=True) == \
        "CoreMLExecutionProvider"
    assert choose_provider(["OpenVINOExecutionProvider", "CPUExecutionProvider"],
                           gpu=False) == "OpenVINOExecutionProvider"
    with pytest.raises(localllm.UnsupportedFeatureError, match="onnxruntime-gpu"):
        choose_provider(["CPUExecutionProvider"], gpu=True)
    with pytest.raises(localllm.UnsupportedFeatureError, match="has CPUExecutionProvider"):
        choose_provider(["CPUExecutionProvider"], gpu=False, requested="DmlExecutionProvider")


def test_placement_reports_the_provider_and_refuses_a_layer_split(tiny_onnx: Path) -> None:
    with localllm.load(tiny_onnx, chat_template="chatml", context_length=256) as model:
        placement = model.info.placement
        assert placement.provider == "CPUExecutionProvider" and placement.device == "cpu"
        assert placement.total_layers == TINY.n_layer + 1 and placement.gpu_layers == 0
        assert model.info.plan is not None and model.info.plan.gpu_layers == 0
    with pytest.raises(localllm.ConfigError, match="whole model on one device"):
        localllm.load(tiny_onnx, chat_template="chatml", gpu_layers=1)


def test_optimum_merged_decoder_gets_its_cache_branch_flag(tiny_onnx: Path,
                                                           tmp_path: Path) -> None:
    """An Optimum-style folder: ``decoder_model_merged.onnx`` is chosen over the cache-less
    ``decoder_model.onnx``, and ``use_cache_branch`` is False on the first step only
    (the test graph adds 1e4 to token 5's logit when it is True)."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False)
    graph = model.graph
    last = next(n for n in graph.node if "logits" in n.output)
    last.output[0] = "logits_raw"
    bump = np.zeros(TINY.n_vocab, dtype=np.float32)
    bump[5] = 1e4
    graph.initializer.append(numpy_helper.from_array(bump, "bump"))
    graph.input.append(helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]))
    graph.node.extend([
        helper.make_node("Cast", ["use_cache_branch"], ["ucb_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ucb_f", "bump"], ["ucb_bump"]),
        helper.make_node("Add", ["logits_raw", "ucb_bump"], ["logits"])])
    folder = tmp_path / "optimum"
    folder.mkdir()
    for item in tiny_onnx.iterdir():
        if item.name != "model.onnx":
            (folder / item.name).write_bytes(item.read_bytes())
    onnx.save_model(model, str(folder / "decoder_model_merged.onnx"))
    (folder / "decoder_model.onnx").write_bytes(b"not the decoder to pick")
    with localllm.load(folder, chat_template="chatml", context_length=256) as m:
        ids = m.complete("the quick brown fox", max_tokens=3, temperature=0).token_ids
    assert ids[0] != 5 and list(ids[1:]) == [5, 5]


def test_decoder_without_a_kv_cache_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((TINY.n_vocab, TINY.n_vocab), np.float32), "t")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["t", "input_ids"], ["logits"])], "nocache",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], [table])
    folder = tmp_path / "nocache"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (folder / name).write_bytes((tiny_onnx / name).read_bytes())
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    str(folder / "decoder_model.onnx"))
    with pytest.raises(localllm.ModelFormatError, match="text-generation-with-past"):
        localllm.load(folder, chat_template="chatml", context_length=256)


class TestGenAIContract(BackendContract):
    prompt = "the quick brown fox"

    @pytest.fixture
    def model(self, tiny_onnx: Path) -> Iterator[localllm.Model]:
        with localllm.load(tiny_onnx, backend="onnxruntime-genai", context_length=256,
                           threads=2, chat_template="chatml") as m:
            yield m


def test_genai_engine_matches_the_onnxruntime_engine(default_onnx: Path) -> None:
    """The same fp32 graph through two ONNX Runtime sessions: the same greedy tokens, up
    to a near-tied step if any (their kernels may differ on some CPU)."""
    assert (default_onnx / "genai_config.json").is_file()
    with localllm.load(default_onnx, backend="onnxruntime-genai", context_length=512) as g, \
            localllm.load(default_onnx, context_length=512) as o:
        for prompt in PROMPTS[:3]:
            tokens = g.complete(prompt, max_tokens=12, temperature=0).token_ids
            assert_greedy_agrees(tokens, o, prompt, max_tokens=12)
        assert g.info.backend == "onnxruntime-genai"


def test_genai_needs_its_config(tiny_onnx: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for item in tiny_onnx.iterdir():
        if item.name != "genai_config.json":
            (bare / item.name).write_bytes(item.read_bytes())
    with pytest.raises(localllm.UnsupportedModelError, match=r"genai_config\.json"):
        localllm.load(bare, backend="onnxruntime-genai", chat_template="chatml")


@pytest.mark.parametrize(("dtype", "op", "weight_type", "min_cosine"), [
    ("int4", "MatMulNBits", onnx.TensorProto.UINT8, 0.99),
    ("int8", "MatMulNBits", onnx.TensorProto.UINT8, 0.99),
    ("fp16", "MatMul", onnx.TensorProto.FLOAT16, 0.9999)])
def test_smaller_conversions_stay_close_to_fp32(tiny_gguf: Path, tiny_onnx: Path,
                                                tmp_path: Path, dtype: str, op: str,
                                                weight_type: int, min_cosine: float) -> None:
    small = convert_gguf_to_onnx(tiny_gguf, tmp_path / dtype, dtype=dtype)
    graph = onnx.load(str(small / "model.onnx"), load_external_data=False).graph
    weights = {i.name: i.data_type for i in graph.initializer}
    assert any(n.op_type == op and weights.get(n.input[1]) == weight_type for n in graph.node)
    size = sum(f.stat().st_size for f in small.glob("model.onnx*"))
    assert size < 0.6 * sum(f.stat().st_size for f in tiny_onnx.glob("model.onnx*"))
    ids = [1, 300, 301, 302, 450, 17, 599, 260]
    with localllm.load(small, context_length=256, chat_template="chatml") as q, \
            localllm.load(tiny_onnx, context_length=256, chat_template="chatml") as f:
        assert q._engine is not None and f._engine is not None
        a, b = next_token_logits(q, ids), next_token_logits(f, ids)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > min_cosine
        result = q.complete("the quick brown fox", max_tokens=8, seed=1)
        # whether a draw ends at the end-of-sequence token depends on the float path
        assert result.usage.completion_tokens == 8 or result.finish_reason == "stop"


def test_vocabulary_longer_than_the_embedding_is_refused(tmp_path: Path) -> None:
    """354 token strings (byte tokens, ASCII, …) but a 300-row embedding."""
    odd = write_model(Shape("odd", n_layer=1, n_embd=64, n_head=2, n_head_kv=2, n_ff=128,
                            n_vocab=300, dtype="f32", n_ctx_train=256), tmp_path / "odd.gguf")
    with pytest.raises(localllm.ModelFormatError, match="300 rows"):
        convert_gguf_to_onnx(odd, tmp_path / "out")


def test_unknown_dtype_is_refused_with_the_choices(tiny_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(localllm.UnsupportedModelError, match="fp32, fp16, int8, int4"):
        convert_gguf_to_onnx(tiny_gguf, tmp_path / "x", dtype="q4_k")


def test_converting_again_replaces_the_folder(tiny_gguf: Path, tiny_onnx: Path,
                                              tmp_path: Path) -> None:
    again = tmp_path / "again"
    convert_gguf_to_onnx(tiny_gguf, again)
    convert_gguf_to_onnx(tiny_gguf, again)  # onnx alone would append to model.onnx.data
    assert (again / "model.onnx.data").stat().st_size == \
        (tiny_onnx / "model.onnx.data").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no staging left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(localllm.ConfigError, match="not an earlier conversion"):
        convert_gguf_to_onnx(tiny_gguf, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_structured_output_on_an_onnx_folder(tiny_onnx: Path) -> None:
    """The ONNX backend's own tokenizer drives the constraint (its folder has no GGUF)."""
    with localllm.load(tiny_onnx, context_length=256, chat_template="chatml") as model:
        result = model.complete("the fox", max_tokens=10, temperature=0,
                                response_format={"type": "regex", "pattern": "[a-f]{3}"})
    assert len(result.text) == 3 and set(result.text) <= set("abcdef")
