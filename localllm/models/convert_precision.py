"""A GGUF rewritten at another precision: the same weights, dequantized (f16, f32) or
requantized to Q8_0.

Why: a draft model for speculative decoding must share the target's vocabulary, and the
surest same-vocabulary pair from one file is the quantized model drafting for its own
higher-precision copy (the f16 copy reads 3.5x the bytes per token, so it decodes that
much slower on a memory-bound CPU, and the quantized original guesses its tokens well).
It is also how to compare a quantization's output against its unquantized weights.
Q8_0 holds the weights of a 4-bit file to within a small rounding of each value, and
llama.cpp's x86 CPU backend multiplies batches of Q8_0 rows with GEMM kernels that
formats like Q4_1 lack: a step that checks 32 drafted tokens then costs a fraction of 32
single steps, so speculative decoding gains far more (see docs/concurrency.md).
Only numpy and ``gguf`` are used; every header field is copied as it is, except the
file type, and the tensors go through gguf's own reference (de)quantizers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import BackendUnavailableError, ConfigError, ModelFormatError

DTYPES = ("f16", "f32", "q8_0")
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType ALL_F32, MOSTLY_F16, _Q8_0


def change_precision(source: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                    dtype: str = "f16",
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Write ``source`` (a GGUF file) to ``out_path`` with its matrices in ``dtype``
    ("f16", "f32" or "q8_0"; a matrix whose rows do not split into Q8_0's 32-value
    blocks is written f16); vectors (norms, biases) stay f32 as llama.cpp's converter
    keeps them. Returns the written path."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        import gguf
        import numpy as np
    except ImportError as exc:
        raise BackendUnavailableError("convert", exc.name or "gguf", "llama-cpp") from exc
    src, out = Path(source), Path(out_path)
    if out.exists():
        raise ConfigError(f"{out} exists; remove it or choose another path")
    try:
        reader = gguf.GGUFReader(src)
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{src}: not a readable GGUF file ({exc})") from exc
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(path=None, arch=arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value: Any = _FILE_TYPES[dtype] if field.name == "general.file_type" \
            else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub)
    total = len(reader.tensors)
    for done, tensor in enumerate(reader.tensors, 1):
        weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if weights.ndim < 2 or dtype == "f32":
            writer.add_tensor(tensor.name, weights.astype(np.float32))
        elif dtype == "q8_0" and weights.shape[-1] % 32 == 0:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(tensor.name, gguf.quants.quantize(
                weights.astype(np.float32), q8), raw_dtype=q8)
        else:
            writer.add_tensor(tensor.name, weights.astype(np.float16))
        if progress is not None:
            progress(done, total)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        writer.write_header_to_file(partial)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out
