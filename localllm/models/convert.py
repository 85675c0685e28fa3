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
from typing import Any, NamedTuple

from .._errors import (
    BackendUnavailableError,
    ConfigError,
    ModelFormatError,
    UnsupportedModelError,
)
from .gguf import GGUFFile, read_gguf

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "smollm")
#: fp32: exact. fp16: half-size weights, matrix products in fp16 (norms, attention and the
#: residual stream stay fp32). int8: 8-bit blocks of 32 with integer zero points and int8
#: activations (MatMulNBits accuracy level 4): onnxruntime's fast CPU path, the same kind of
#: arithmetic as llama.cpp's. int4: 4-bit blocks of 32 with float zero points, which hold
#: Q4_1 weights exactly but run on onnxruntime's slow reference path; output head fp32.
DTYPES = ("fp32", "fp16", "int8", "int4")
OPSET = 17


def _modules() -> tuple[Any, Any, Any]:
    """gguf, numpy and onnx, imported on use; a missing one names the extra to install."""
    try:
        import gguf
        import numpy as np
        import onnx
    except ImportError as exc:
        raise BackendUnavailableError("convert", exc.name or "onnx", "onnx") from exc
    return gguf, np, onnx


class _Dims(NamedTuple):
    """The decoder's hyperparameters, read once from the GGUF metadata."""

    n_layer: int
    n_embd: int
    n_head: int
    n_kv: int
    hd: int
    eps: float
    base: float
    max_pos: int


def convert_gguf_to_onnx(source: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                         *, dtype: str = "fp32", progress: Any = None) -> Path:
    """Write ``model.onnx`` (+ external weights), tokenizer and config files to ``out_dir``."""
    gguf_mod, np, onnx = _modules()
    if dtype not in DTYPES:
        raise UnsupportedModelError(f"dtype={dtype!r} is not supported; use one of "
                                    f"{', '.join(DTYPES)}")
    out = Path(out_dir)
    _check_out_dir(out)
    info = _read_source(source)
    dims = _dims(info)
    weights = _load_weights(gguf_mod, np, info, progress)
    vocab = weights["token_embd.weight"].shape[0]
    if info.vocab_size != vocab:  # ids past the embedding would fail at run time
        raise ModelFormatError(
            f"{info.path.name} lists {info.vocab_size} tokens but its embedding has {vocab} "
            "rows; the file is inconsistent — download or convert it again")
    model = _build_model(np, weights, dims, vocab, dtype)
    _save(onnx, model, out, info, dims, vocab)
    return out


def _check_out_dir(out: Path) -> None:
    """Refuse a target that holds anything but an earlier conversion, which is replaced."""
    if out.exists() and (not out.is_dir() or (
            any(out.iterdir()) and not (out / "model.onnx").is_file())):
        raise ConfigError(f"{out} exists and is not an earlier conversion; choose a new or "
                          "empty folder (an earlier conversion there is replaced)")


def _read_source(source: str | os.PathLike[str]) -> GGUFFile:
    """The GGUF's metadata, refused unless the gguf package reads it and the graph built
    here matches its architecture."""
    info = read_gguf(source)
    if info.version < 2:
        raise UnsupportedModelError(f"{info.path.name} is GGUF version 1; convert reads "
                                    "versions 2 and 3 (the gguf package dropped version 1)")
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"cannot convert architecture {info.architecture!r}; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    return info


def _dims(info: GGUFFile) -> _Dims:
    """The hyperparameters, with llama.cpp's defaults where the metadata leaves them out."""
    n_embd = int(info.arch_value("embedding_length"))
    n_head = int(info.arch_value("attention.head_count"))
    return _Dims(n_layer=info.block_count, n_embd=n_embd, n_head=n_head,
                 n_kv=int(info.arch_value("attention.head_count_kv", n_head)),
                 hd=n_embd // n_head,
                 eps=float(info.arch_value("attention.layer_norm_rms_epsilon", 1e-5)),
                 base=float(info.arch_value("rope.freq_base", 10000.0)),
                 max_pos=info.context_length or 4096)


def _load_weights(gguf_mod: Any, np: Any, info: GGUFFile, progress: Any) -> dict[str, Any]:
    """Every tensor dequantized to float32 in its logical (row-major) shape, by GGUF name;
    ``progress(done, total)`` is called after each one."""
    reader = gguf_mod.GGUFReader(str(info.path))
    weights: dict[str, Any] = {}
    for i, t in enumerate(reader.tensors):
        data = gguf_mod.quants.dequantize(t.data, t.tensor_type)
        weights[t.name] = np.asarray(data, dtype=np.float32).reshape(
            [int(d) for d in reversed(t.shape)])
        if progress:
            progress(i + 1, len(reader.tensors))
    return weights


class _Graph:
    """The decoder graph under construction: nodes and initializers in the order they are
    added (which is the order they are saved in), and the building blocks each layer
    repeats, with matrix products in the requested ``dtype``."""

    def __init__(self, np: Any, weights: dict[str, Any], dtype: str) -> None:
        from onnx import TensorProto, helper, numpy_helper

        self.np, self.weights, self.dtype = np, weights, dtype
        self.tensor_proto, self.helper, self.numpy_helper = TensorProto, helper, numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.cos = self.sin = self.mask = ""  # set once the position nodes exist

    def init(self, name: str, array: Any) -> str:
        """Add a constant tensor; returns its name for use as a node input."""
        self.inits.append(self.numpy_helper.from_array(self.np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Add a single-output node whose output and node name are both ``name``."""
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def rms(self, x: str, w: str, tag: str) -> str:
        """RMS norm over the last axis, scaled by the weight ``w``; kept in fp32."""
        node = self.node
        sq = node("Mul", [x, x], f"{tag}_sq")
        ms = node("ReduceMean", [sq], f"{tag}_ms", axes=[-1], keepdims=1)
        den = node("Sqrt", [node("Add", [ms, "eps"], f"{tag}_mse")], f"{tag}_den")
        return node("Mul", [node("Div", [x, den], f"{tag}_n"), w], f"{tag}_out")

    def linear(self, x: str, w: str, tag: str) -> str:
        """``x @ W.T`` for the GGUF weight ``w``, in the form the dtype picks."""
        weights = self.weights
        if self.dtype == "int4":
            return self.int4_matmul(x, weights[w], w, tag)
        if self.dtype == "int8":
            return self.int8_matmul(x, weights[w], w, tag)
        if self.dtype == "fp16":
            return self.half_matmul(x, weights[w].T, w, tag)
        return self.node("MatMul", [x, self.init(f"{w}.T", weights[w].T)], tag)

    def half_matmul(self, x: str, matrix_t: Any, name: str, tag: str) -> str:
        """``x @ matrix_t`` computed in fp16, with fp32 in and out."""
        np, node, proto = self.np, self.node, self.tensor_proto
        x16 = node("Cast", [x], f"{tag}_x16", to=proto.FLOAT16)
        y16 = node("MatMul", [x16, self.init(f"{name}.T16", matrix_t.astype(np.float16))],
                   f"{tag}_y16")
        return node("Cast", [y16], tag, to=proto.FLOAT)

    def int8_matmul(self, x: str, matrix: Any, name: str, tag: str) -> str:
        """``x @ matrix.T`` with 8-bit blocks of 32 and integer zero points
        (com.microsoft MatMulNBits, accuracy level 4: onnxruntime's fast CPU path)."""
        np, init = self.np, self.init
        n, k = matrix.shape
        blocks = matrix.reshape(n, k // 32, 32)
        low, high = blocks.min(axis=2), blocks.max(axis=2)
        scale = (high - low) / 254.0
        scale[scale == 0] = 1.0
        zero = np.clip(np.round(-low / scale), 0, 255)
        q = np.clip(np.round(blocks / scale[..., None] + zero[..., None]), 0, 255
                    ).astype(np.uint8)
        self.nodes.append(self.helper.make_node(
            "MatMulNBits", [x, init(f"{name}.q8", q),
                            init(f"{name}.scales", scale.astype(np.float32).reshape(-1)),
                            init(f"{name}.zero", zero.astype(np.uint8).reshape(-1))],
            [tag], name=tag, domain="com.microsoft", K=k, N=n, bits=8, block_size=32,
            accuracy_level=4))
        return tag

    def int4_matmul(self, x: str, matrix: Any, name: str, tag: str) -> str:
        """``x @ matrix.T`` with 4-bit block-quantized weights (com.microsoft MatMulNBits).

        Blocks of 32 along K with a scale and a *float* zero point each: Q4_1's own
        min/scale form, so Q4_1 weights come through exactly. (onnxruntime's fast 4-bit CPU
        kernels need integer zero points; moving Q4_1 blocks onto that grid costs ~9 %
        relative weight error, which this small model does not survive.)"""
        np, init = self.np, self.init
        n, k = matrix.shape
        blocks = matrix.reshape(n, k // 32, 32)
        low = blocks.min(axis=2)
        scale = (blocks.max(axis=2) - low) / 15.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round((blocks - low[..., None]) / scale[..., None]), 0, 15
                    ).astype(np.uint8)
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
        self.nodes.append(self.helper.make_node(
            "MatMulNBits", [x, init(f"{name}.q4", packed),
                            init(f"{name}.scales", scale.astype(np.float32).reshape(-1)),
                            init(f"{name}.zero", (-low / scale).astype(np.float32).reshape(-1))],
            [tag], name=tag, domain="com.microsoft", K=k, N=n, bits=4, block_size=32))
        return tag

    def rope(self, x: str, tag: str) -> str:
        """Rotary embedding of x: [B, heads, S, hd], adjacent pairs rotated (llama GGUF's
        Q/K layout), by the ``cos``/``sin`` tables gathered for these positions."""
        node, helper, cos, sin = self.node, self.helper, self.cos, self.sin
        pairs = node("Reshape", [x, "shape_pairs_q"], f"{tag}_pairs")
        self.nodes.append(helper.make_node("Split", [pairs], [f"{tag}_x0", f"{tag}_x1"],
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


def _build_model(np: Any, weights: dict[str, Any], dims: _Dims, vocab: int,
                 dtype: str) -> Any:
    """The whole decoder as an onnx ModelProto: shared constants, position tables and
    mask, embedding, the layers, the head; com.microsoft opset only for MatMulNBits."""
    g = _Graph(np, weights, dtype)
    helper, proto = g.helper, g.tensor_proto
    _add_constants(g, dims)
    g.cos, g.sin, g.mask = _add_positions(g, dims.hd)
    x = _embed(g)
    g.inputs = [helper.make_tensor_value_info("input_ids", proto.INT64, ["batch", "seq"]),
                helper.make_tensor_value_info("attention_mask", proto.INT64,
                                              ["batch", "total"]),
                helper.make_tensor_value_info("position_ids", proto.INT64, ["batch", "seq"])]
    g.outputs = [helper.make_tensor_value_info("logits", proto.FLOAT,
                                               ["batch", "seq", vocab])]
    for i in range(dims.n_layer):
        x = _add_layer(g, i, x, dims)
    g.init("axis2", np.array([2], dtype=np.int64))
    _add_head(g, x)
    graph = helper.make_graph(g.nodes, "decoder", g.inputs, g.outputs, g.inits)
    opsets = [helper.make_opsetid("", OPSET)]
    if dtype in ("int4", "int8"):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    return helper.make_model(graph, opset_imports=opsets, producer_name="localllm")


def _add_constants(g: _Graph, dims: _Dims) -> None:
    """Scalars, reshape targets and the rotary cos/sin tables for every position up to
    the context length, shared by all layers."""
    np, init, hd = g.np, g.init, dims.hd
    init("axes_last", np.array([-1], dtype=np.int64))
    init("eps", np.array(dims.eps, dtype=np.float32))
    init("one", np.array(1, dtype=np.int64))
    init("zero_f", np.array(0.0, dtype=np.float32))
    init("neg_big", np.array(-1e9, dtype=np.float32))
    inv = dims.base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(dims.max_pos, dtype=np.float64)[:, None] * inv[None, :]
    init("cos_table", np.cos(ang).astype(np.float32))
    init("sin_table", np.sin(ang).astype(np.float32))
    for shape_name, shape in {"shape_q": [0, 0, dims.n_head, hd],
                              "shape_kv": [0, 0, dims.n_kv, hd],
                              "shape_pairs_q": [0, 0, 0, hd // 2, 2],
                              "shape_heads": [0, 0, 0, hd],
                              "shape_merge": [0, 0, dims.n_head * hd],
                              "shape_rep": [0, dims.n_head, -1, hd]}.items():
        init(shape_name, np.array(shape, dtype=np.int64))


def _add_positions(g: _Graph, hd: int) -> tuple[str, str, str]:
    """Nodes that depend only on positions and padding, computed once for all layers:
    the cos and sin rows for these positions [B, 1, S, hd/2], and the additive mask
    [B, 1, S, T] (causal by absolute position, and the padding mask)."""
    np, node, init = g.np, g.node, g.init
    cos = node("Unsqueeze", [node("Gather", ["cos_table", "position_ids"], "cos_g"), "one"],
               "cos")
    sin = node("Unsqueeze", [node("Gather", ["sin_table", "position_ids"], "sin_g"), "one"],
               "sin")
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
    return cos, sin, mask


def _embed(g: _Graph) -> str:
    """The token-embedding lookup; fp16 and int8 store the table in fp16, as its rows are
    gathered, never multiplied."""
    np, node, init, weights = g.np, g.node, g.init, g.weights
    if g.dtype in ("fp16", "int8"):  # rows are gathered, never multiplied: fp16 is plenty
        return node("Cast", [node("Gather", [init("token_embd", weights["token_embd.weight"]
                                                  .astype(np.float16)), "input_ids"],
                                  "embed16")], "embed", to=g.tensor_proto.FLOAT)
    return node("Gather", [init("token_embd", weights["token_embd.weight"]), "input_ids"],
                "embed")


def _add_layer(g: _Graph, i: int, x: str, dims: _Dims) -> str:
    """Block ``i`` (attention with its past/present key-value cache, then the SwiGLU
    feed-forward) on the residual stream ``x``; declares the block's cache inputs and
    outputs and returns the new residual stream."""
    node, helper, proto, weights = g.node, g.helper, g.tensor_proto, g.weights
    n_kv, hd, rep = dims.n_kv, dims.hd, dims.n_head // dims.n_kv
    p, t = f"blk.{i}.", f"l{i}"
    h = g.rms(x, g.init(f"{p}attn_norm", weights[p + "attn_norm.weight"]), f"{t}_n1")
    q = node("Transpose", [node("Reshape", [g.linear(h, p + "attn_q.weight", f"{t}_q"),
                                            "shape_q"], f"{t}_qr")], f"{t}_qt",
             perm=[0, 2, 1, 3])
    k = node("Transpose", [node("Reshape", [g.linear(h, p + "attn_k.weight", f"{t}_k"),
                                            "shape_kv"], f"{t}_kr")], f"{t}_kt",
             perm=[0, 2, 1, 3])
    v = node("Transpose", [node("Reshape", [g.linear(h, p + "attn_v.weight", f"{t}_v"),
                                            "shape_kv"], f"{t}_vr")], f"{t}_vt",
             perm=[0, 2, 1, 3])
    q, k = g.rope(q, f"{t}_rq"), g.rope(k, f"{t}_rk")
    pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
    for name in (pk, pv):
        g.inputs.append(helper.make_tensor_value_info(name, proto.FLOAT,
                                                      ["batch", n_kv, "past", hd]))
    k_all = node("Concat", [pk, k], f"present.{i}.key", axis=2)
    v_all = node("Concat", [pv, v], f"present.{i}.value", axis=2)
    for name in (k_all, v_all):
        g.outputs.append(helper.make_tensor_value_info(name, proto.FLOAT,
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
        f"{t}_qks"), g.mask], f"{t}_scores")
    att = node("MatMul", [node("Softmax", [scores], f"{t}_probs", axis=-1), v_all],
               f"{t}_att")
    merged = node("Reshape", [node("Transpose", [att], f"{t}_at", perm=[0, 2, 1, 3]),
                              "shape_merge"], f"{t}_merged")
    x = node("Add", [x, g.linear(merged, p + "attn_output.weight", f"{t}_o")], f"{t}_x1")
    h = g.rms(x, g.init(f"{p}ffn_norm", weights[p + "ffn_norm.weight"]), f"{t}_n2")
    gate = g.linear(h, p + "ffn_gate.weight", f"{t}_g")
    act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], f"{t}_sg")], f"{t}_silu"),
                       g.linear(h, p + "ffn_up.weight", f"{t}_u")], f"{t}_act")
    return node("Add", [x, g.linear(act, p + "ffn_down.weight", f"{t}_d")], f"{t}_x2")


def _add_head(g: _Graph, x: str) -> None:
    """Final norm and the ``logits`` projection (the tied embedding when the file has no
    ``output.weight``); int4 keeps this head in fp32."""
    weights = g.weights
    out_w = weights.get("output.weight", weights["token_embd.weight"])
    h = g.rms(x, g.init("output_norm", weights["output_norm.weight"]), "final")
    if g.dtype == "fp16":
        g.half_matmul(h, out_w.T, "output", "logits")
    elif g.dtype == "int8":
        g.int8_matmul(h, out_w, "output", "logits")
    else:  # int4 keeps an fp32 head: it picks the tokens, and 4 bits cost too much there
        g.node("MatMul", [h, g.init("output.T", out_w.T)], "logits")


def _save(onnx: Any, model: Any, out: Path, info: GGUFFile, dims: _Dims, vocab: int) -> None:
    """Write the model and its side files into ``out``, all or nothing."""
    # written next to the target, then moved in: onnx appends to an existing weights file,
    # and an interrupted run must not leave a folder that looks complete
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    onnx.save_model(model, str(staging / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data")
    _write_side_files(info, staging, info.architecture, dims.n_layer, dims.n_embd,
                      dims.n_head, dims.n_kv, dims.hd, vocab, dims.eps, dims.base)
    out.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()


def _write_side_files(info: GGUFFile, out: Path, arch: str, n_layer: int, n_embd: int,
                      n_head: int, n_kv: int, hd: int, vocab: int, eps: float,
                      base: float) -> None:
    """The tokenizer, Hugging Face config and onnxruntime-genai config beside the model."""
    from ..tokenizer import tokenizer_from_gguf

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
