"""GGUF → ONNX conversion of llama-family decoders, with no torch: the ``gguf`` package
dequantizes the weights and the ``onnx`` package builds the graph.

The graph follows the Hugging Face Optimum / onnxruntime-genai decoder convention:
inputs ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key/value``
(empty on the first step); outputs ``logits`` and ``present.N.key/value``. Rotary
embeddings rotate adjacent pairs, the layout llama GGUF files store Q and K in, so the
weights are used exactly as llama.cpp uses them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ._errors import (
    BackendUnavailableError,
    ConfigError,
    ModelFormatError,
    UnsupportedModelError,
)
from ._gguf import GGUFFile, read_gguf

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "smollm")
#: fp32: exact. fp16: half-size weights, matrix products in fp16 (norms, attention and the
#: residual stream stay fp32). int8: 8-bit blocks of 32 with integer zero points and int8
#: activations (MatMulNBits accuracy level 4): onnxruntime's fast CPU path, the same kind of
#: arithmetic as llama.cpp's. int4: 4-bit blocks of 32 with float zero points, which hold
#: Q4_1 weights exactly but run on onnxruntime's slow reference path; output head fp32.
DTYPES = ("fp32", "fp16", "int8", "int4")
OPSET = 17


def _modules() -> tuple[Any, Any, Any]:
    try:
        import gguf
        import numpy as np
        import onnx
    except ImportError as exc:
        raise BackendUnavailableError("convert", exc.name or "onnx", "onnx") from exc
    return gguf, np, onnx


def convert_gguf_to_onnx(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                         *, dtype: str = "fp32", progress: Any = None) -> Path:
    """Write ``model.onnx`` (+ external weights), tokenizer and config files to ``out_dir``."""
    gguf_mod, np, onnx = _modules()
    from onnx import TensorProto, helper, numpy_helper

    if dtype not in DTYPES:
        raise UnsupportedModelError(f"dtype={dtype!r} is not supported; use one of "
                                    f"{', '.join(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (
            any(out.iterdir()) and not (out / "model.onnx").is_file())):
        raise ConfigError(f"{out} exists and is not an earlier conversion; choose a new or "
                          "empty folder (an earlier conversion there is replaced)")
    info = read_gguf(source)
    if info.version < 2:
        raise UnsupportedModelError(f"{info.path.name} is GGUF version 1; convert reads "
                                    "versions 2 and 3 (the gguf package dropped version 1)")
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"cannot convert architecture {info.architecture!r}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    arch = info.architecture
    n_layer, n_embd = info.block_count, int(info.arch_value("embedding_length"))
    n_head = int(info.arch_value("attention.head_count"))
    n_kv = int(info.arch_value("attention.head_count_kv", n_head))
    hd = n_embd // n_head
    eps = float(info.arch_value("attention.layer_norm_rms_epsilon", 1e-5))
    base = float(info.arch_value("rope.freq_base", 10000.0))
    max_pos = info.context_length or 4096

    reader = gguf_mod.GGUFReader(str(info.path))
    weights: dict[str, Any] = {}
    for i, t in enumerate(reader.tensors):
        data = gguf_mod.quants.dequantize(t.data, t.tensor_type)
        weights[t.name] = np.asarray(data, dtype=np.float32).reshape(
            [int(d) for d in reversed(t.shape)])
        if progress:
            progress(i + 1, len(reader.tensors))
    vocab = weights["token_embd.weight"].shape[0]
    if info.vocab_size != vocab:  # ids past the embedding would fail at run time
        raise ModelFormatError(
            f"{info.path.name} lists {info.vocab_size} tokens but its embedding has {vocab} "
            "rows; the file is inconsistent — download or convert it again")
    out_w = weights.get("output.weight", weights["token_embd.weight"])

    nodes: list[Any] = []
    inits: list[Any] = []

    def init(name: str, array: Any) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    init("axes_last", np.array([-1], dtype=np.int64))
    init("eps", np.array(eps, dtype=np.float32))
    init("one", np.array(1, dtype=np.int64))
    init("zero_f", np.array(0.0, dtype=np.float32))
    init("neg_big", np.array(-1e9, dtype=np.float32))
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(max_pos, dtype=np.float64)[:, None] * inv[None, :]
    init("cos_table", np.cos(ang).astype(np.float32))
    init("sin_table", np.sin(ang).astype(np.float32))
    for shape_name, shape in {"shape_q": [0, 0, n_head, hd], "shape_kv": [0, 0, n_kv, hd],
                              "shape_pairs_q": [0, 0, 0, hd // 2, 2],
                              "shape_heads": [0, 0, 0, hd], "shape_merge": [0, 0, n_head * hd],
                              "shape_rep": [0, n_head, -1, hd]}.items():
        init(shape_name, np.array(shape, dtype=np.int64))

    def rms(x: str, w: str, tag: str) -> str:
        sq = node("Mul", [x, x], f"{tag}_sq")
        ms = node("ReduceMean", [sq], f"{tag}_ms", axes=[-1], keepdims=1)
        den = node("Sqrt", [node("Add", [ms, "eps"], f"{tag}_mse")], f"{tag}_den")
        return node("Mul", [node("Div", [x, den], f"{tag}_n"), w], f"{tag}_out")

    def linear(x: str, w: str, tag: str) -> str:
        if dtype == "int4":
            return int4_matmul(x, weights[w], w, tag)
        if dtype == "int8":
            return int8_matmul(x, weights[w], w, tag)
        if dtype == "fp16":
            return half_matmul(x, weights[w].T, w, tag)
        return node("MatMul", [x, init(f"{w}.T", weights[w].T)], tag)

    def half_matmul(x: str, matrix_t: Any, name: str, tag: str) -> str:
        x16 = node("Cast", [x], f"{tag}_x16", to=TensorProto.FLOAT16)
        y16 = node("MatMul", [x16, init(f"{name}.T16", matrix_t.astype(np.float16))],
                   f"{tag}_y16")
        return node("Cast", [y16], tag, to=TensorProto.FLOAT)

    def int8_matmul(x: str, matrix: Any, name: str, tag: str) -> str:
        n, k = matrix.shape
        blocks = matrix.reshape(n, k // 32, 32)
        low, high = blocks.min(axis=2), blocks.max(axis=2)
        scale = (high - low) / 254.0
        scale[scale == 0] = 1.0
        zero = np.clip(np.round(-low / scale), 0, 255)
        q = np.clip(np.round(blocks / scale[..., None] + zero[..., None]), 0, 255
                    ).astype(np.uint8)
        nodes.append(helper.make_node(
            "MatMulNBits", [x, init(f"{name}.q8", q),
                            init(f"{name}.scales", scale.astype(np.float32).reshape(-1)),
                            init(f"{name}.zero", zero.astype(np.uint8).reshape(-1))],
            [tag], name=tag, domain="com.microsoft", K=k, N=n, bits=8, block_size=32,
            accuracy_level=4))
        return tag

    def int4_matmul(x: str, matrix: Any, name: str, tag: str) -> str:
        """``x @ matrix.T`` with 4-bit block-quantized weights (com.microsoft MatMulNBits).

        Blocks of 32 along K with a scale and a *float* zero point each: Q4_1's own
        min/scale form, so Q4_1 weights come through exactly. (onnxruntime's fast 4-bit CPU
        kernels need integer zero points; moving Q4_1 blocks onto that grid costs ~9 %
        relative weight error, which this small model does not survive.)"""
        n, k = matrix.shape
        blocks = matrix.reshape(n, k // 32, 32)
        low = blocks.min(axis=2)
        scale = (blocks.max(axis=2) - low) / 15.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round((blocks - low[..., None]) / scale[..., None]), 0, 15
                    ).astype(np.uint8)
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
        nodes.append(helper.make_node(
            "MatMulNBits", [x, init(f"{name}.q4", packed),
                            init(f"{name}.scales", scale.astype(np.float32).reshape(-1)),
                            init(f"{name}.zero", (-low / scale).astype(np.float32).reshape(-1))],
            [tag], name=tag, domain="com.microsoft", K=k, N=n, bits=4, block_size=32))
        return tag

    # rotary tables for these positions: [B, 1, S, hd/2]
    cos = node("Unsqueeze", [node("Gather", ["cos_table", "position_ids"], "cos_g"), "one"],
               "cos")
    sin = node("Unsqueeze", [node("Gather", ["sin_table", "position_ids"], "sin_g"), "one"],
               "sin")

    def rope(x: str, tag: str) -> str:  # x: [B, heads, S, hd], adjacent pairs rotated
        pairs = node("Reshape", [x, "shape_pairs_q"], f"{tag}_pairs")
        nodes.append(helper.make_node("Split", [pairs], [f"{tag}_x0", f"{tag}_x1"],
                                      name=f"{tag}_split", axis=-1, num_outputs=2)
                     if OPSET >= 18 else
                     helper.make_node("Split", [pairs], [f"{tag}_x0", f"{tag}_x1"],
                                      name=f"{tag}_split", axis=-1))
        x0 = node("Squeeze", [f"{tag}_x0", "axes_last"], f"{tag}_s0")
        x1 = node("Squeeze", [f"{tag}_x1", "axes_last"], f"{tag}_s1")
        r0 = node("Sub", [node("Mul", [x0, cos], f"{tag}_a"),
                          node("Mul", [x1, sin], f"{tag}_b")], f"{tag}_r0")
        r1 = node("Add", [node("Mul", [x0, sin], f"{tag}_c"),
                          node("Mul", [x1, cos], f"{tag}_d")], f"{tag}_r1")
        both = node("Concat", [node("Unsqueeze", [r0, "axes_last"], f"{tag}_u0"),
                               node("Unsqueeze", [r1, "axes_last"], f"{tag}_u1")],
                    f"{tag}_cat", axis=-1)
        return node("Reshape", [both, "shape_heads"], f"{tag}_rot")

    # additive mask [B, 1, S, T]: causal by absolute position, and the padding mask
    total = node("Gather", [node("Shape", ["attention_mask"], "am_shape"), "one"], "total",
                 axis=0)
    init("zero_i", np.array(0, dtype=np.int64))
    keys = node("Range", ["zero_i", total, "one"], "key_idx")
    causal = node("LessOrEqual", [keys, node("Unsqueeze", ["position_ids", "axes_last"],
                                             "pos_u")], "causal")
    init("axis1", np.array([1], dtype=np.int64))
    padding = node("Equal", [node("Unsqueeze", ["attention_mask", "axis1"], "am_u"), "one"],
                   "padding")
    allowed = node("And", [causal, padding], "allowed")
    mask = node("Unsqueeze", [node("Where", [allowed, "zero_f", "neg_big"], "mask_f"), "axis1"],
                "mask")
    init("scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))

    if dtype in ("fp16", "int8"):  # rows are gathered, never multiplied: fp16 is plenty
        x = node("Cast", [node("Gather", [init("token_embd", weights["token_embd.weight"]
                                               .astype(np.float16)), "input_ids"],
                               "embed16")], "embed", to=TensorProto.FLOAT)
    else:
        x = node("Gather", [init("token_embd", weights["token_embd.weight"]), "input_ids"],
                 "embed")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch", "total"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch", "seq", vocab])]
    rep = n_head // n_kv
    for i in range(n_layer):
        p, t = f"blk.{i}.", f"l{i}"
        h = rms(x, init(f"{p}attn_norm", weights[p + "attn_norm.weight"]), f"{t}_n1")
        q = node("Transpose", [node("Reshape", [linear(h, p + "attn_q.weight", f"{t}_q"),
                                                "shape_q"], f"{t}_qr")], f"{t}_qt",
                 perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(h, p + "attn_k.weight", f"{t}_k"),
                                                "shape_kv"], f"{t}_kr")], f"{t}_kt",
                 perm=[0, 2, 1, 3])
        v = node("Transpose", [node("Reshape", [linear(h, p + "attn_v.weight", f"{t}_v"),
                                                "shape_kv"], f"{t}_vr")], f"{t}_vt",
                 perm=[0, 2, 1, 3])
        q, k = rope(q, f"{t}_rq"), rope(k, f"{t}_rk")
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        for name in (pk, pv):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                        ["batch", n_kv, "past", hd]))
        k_all = node("Concat", [pk, k], f"present.{i}.key", axis=2)
        v_all = node("Concat", [pv, v], f"present.{i}.value", axis=2)
        for name in (k_all, v_all):
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                         ["batch", n_kv, "total", hd]))
        if rep > 1:
            k_all = node("Reshape", [node("Concat", [node("Unsqueeze", [k_all, "axis2"],
                                                           f"{t}_ku")] * rep, f"{t}_kc",
                                          axis=2), "shape_rep"], f"{t}_krep")
            v_all = node("Reshape", [node("Concat", [node("Unsqueeze", [v_all, "axis2"],
                                                           f"{t}_vu")] * rep, f"{t}_vc",
                                          axis=2), "shape_rep"], f"{t}_vrep")
        scores = node("Add", [node("Mul", [node("MatMul", [q, node(
            "Transpose", [k_all], f"{t}_kT", perm=[0, 1, 3, 2])], f"{t}_qk"), "scale"],
            f"{t}_qks"), mask], f"{t}_scores")
        att = node("MatMul", [node("Softmax", [scores], f"{t}_probs", axis=-1), v_all],
                   f"{t}_att")
        merged = node("Reshape", [node("Transpose", [att], f"{t}_at", perm=[0, 2, 1, 3]),
                                  "shape_merge"], f"{t}_merged")
        x = node("Add", [x, linear(merged, p + "attn_output.weight", f"{t}_o")], f"{t}_x1")
        h = rms(x, init(f"{p}ffn_norm", weights[p + "ffn_norm.weight"]), f"{t}_n2")
        gate = linear(h, p + "ffn_gate.weight", f"{t}_g")
        act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"{t}_sg")], f"{t}_silu"),
                           linear(h, p + "ffn_up.weight", f"{t}_u")], f"{t}_act")
        x = node("Add", [x, linear(act, p + "ffn_down.weight", f"{t}_d")], f"{t}_x2")
    init("axis2", np.array([2], dtype=np.int64))
    h = rms(x, init("output_norm", weights["output_norm.weight"]), "final")
    if dtype == "fp16":
        half_matmul(h, out_w.T, "output", "logits")
    elif dtype == "int8":
        int8_matmul(h, out_w, "output", "logits")
    else:  # int4 keeps an fp32 head: it picks the tokens, and 4 bits cost too much there
        node("MatMul", [h, init("output.T", out_w.T)], "logits")

    graph = helper.make_graph(nodes, "decoder", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if dtype in ("int4", "int8"):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="localllm")
    # written next to the target, then moved in: onnx appends to an existing weights file,
    # and an interrupted run must not leave a folder that looks complete
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    onnx.save_model(model, str(staging / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data")
    _write_side_files(info, staging, arch, n_layer, n_embd, n_head, n_kv, hd, vocab, eps,
                      base)
    out.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    return out


def _write_side_files(info: GGUFFile, out: Path, arch: str, n_layer: int, n_embd: int,
                      n_head: int, n_kv: int, hd: int, vocab: int, eps: float,
                      base: float) -> None:
    from .tokenizer import tokenizer_from_gguf

    tok = tokenizer_from_gguf(info)
    (out / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
    text = info.token_text
    config = {"bos_token": text(tok.bos_id), "eos_token": text(tok.eos_id),
              "add_bos_token": tok.add_bos, "add_eos_token": tok.add_eos,
              "chat_template": info.chat_template,
              "localllm_eog_ids": sorted(tok.eog_ids)}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": n_embd,
          "num_hidden_layers": n_layer, "num_attention_heads": n_head,
          "num_key_value_heads": n_kv, "head_dim": hd,
          "intermediate_size": int(info.arch_value("feed_forward_length", 4 * n_embd)),
          "vocab_size": vocab, "rms_norm_eps": eps, "rope_theta": base,
          "max_position_embeddings": info.context_length,
          "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
          "localllm_source": {"name": info.name, "quantization": info.quantization,
                              "architecture": arch}}
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    genai = {  # onnxruntime-genai's description of the same decoder
        "model": {
            "type": "llama", "vocab_size": vocab, "context_length": info.context_length,
            "bos_token_id": tok.bos_id, "eos_token_id": sorted(tok.eog_ids) or tok.eos_id,
            "pad_token_id": tok.eos_id,
            "decoder": {
                "filename": "model.onnx", "session_options": {"provider_options": []},
                "head_size": hd, "hidden_size": n_embd, "num_attention_heads": n_head,
                "num_hidden_layers": n_layer, "num_key_value_heads": n_kv,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"}}},
        "search": {"do_sample": False, "num_beams": 1, "max_length": info.context_length,
                   "past_present_share_buffer": False, "top_k": 1, "top_p": 1.0,
                   "temperature": 1.0, "repetition_penalty": 1.0}}
    (out / "genai_config.json").write_text(json.dumps(genai, indent=2))
