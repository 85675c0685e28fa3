"""Reach the memory peak of a long prompt without paying for its attention.

The peak of a prompt filling the context comes from pages written once: the KV cells of
every position, and the compute buffer at its largest, which is the last full micro-batch
attending over the whole cache. Prefilling 7,000 tokens on 2 cores takes minutes, almost
all of it attention arithmetic that the measurement does not look at. So the cells before
the last micro-batch are restored from a llama.cpp sequence-state file (the runtime's own
format, its layout read from a one-token state of the same context, the values zero),
and only the last micro-batch is evaluated for real. ``bench_memory.py --compare`` shows
both ways give the same peak.
"""

from __future__ import annotations

import ctypes
import os
import struct
import tempfile
from typing import Any

CHUNK = 1 << 20
IO_MAGIC = 0xAF143CD8  # opens llama_state_seq_get_data's buffer (not the file format)


def _layout(state: bytes) -> tuple[int, list[tuple[int, int]], list[tuple[int, ...]]]:
    """(v_trans, per-layer (k_type, k_row_bytes), per-layer V entries) of a one-cell
    sequence state: [io magic, seq id,] n_stream, cell_count, the cell (pos, n_seq_id,
    seq_id), v_trans, n_layer, then each layer's K type, row size and row, then each
    layer's V."""
    at = 8 if struct.unpack_from("<I", state, 0)[0] == IO_MAGIC else 0  # magic, seq id
    n_stream, cells = struct.unpack_from("<II", state, at)
    if (n_stream, cells) != (1, 1):
        raise RuntimeError(f"unexpected state header {n_stream=}, {cells=}")
    at += 8 + 12  # one cell: pos, n_seq_id, seq_id (no per-cell extension for these models)
    v_trans, n_layer = struct.unpack_from("<II", state, at)
    at += 8
    keys = []
    for _ in range(n_layer):
        k_type, row = struct.unpack_from("<iQ", state, at)
        keys.append((k_type, row))
        at += 12 + row
    values: list[tuple[int, ...]] = []
    for _ in range(n_layer):
        if v_trans:
            v_type, size_el, n_embd = struct.unpack_from("<iII", state, at)
            values.append((v_type, size_el, n_embd))
            at += 12 + size_el * n_embd
        else:
            v_type, row = struct.unpack_from("<iQ", state, at)
            values.append((v_type, row))
            at += 12 + row
    if at != len(state):
        raise RuntimeError(f"the state layout is not the expected one ({at} != {len(state)})")
    return v_trans, keys, values


def _zeros(out: Any, n: int) -> None:
    block = bytes(min(n, CHUNK))
    while n > 0:
        out.write(block[:min(n, CHUNK)])
        n -= CHUNK


def write_state_file(path: str, state: bytes, n_cells: int, magic: int, version: int) -> None:
    """A sequence-state file of ``n_cells`` cells at positions 0..n-1, written in chunks
    (the process never holds it whole, so its own pages do not raise the peak)."""
    v_trans, keys, values = _layout(state)
    with open(path, "wb") as out:
        out.write(struct.pack("<III", magic, version, 0))  # no prompt tokens stored
        out.write(struct.pack("<II", 1, n_cells))
        for start in range(0, n_cells, 4096):
            out.write(b"".join(struct.pack("<iIi", pos, 1, 0)
                               for pos in range(start, min(n_cells, start + 4096))))
        out.write(struct.pack("<II", v_trans, len(keys)))
        for k_type, row in keys:
            out.write(struct.pack("<iQ", k_type, row))
            _zeros(out, row * n_cells)
        for entry in values:
            if v_trans:
                v_type, size_el, n_embd = entry
                out.write(struct.pack("<iII", v_type, size_el, n_embd))
                _zeros(out, size_el * n_embd * n_cells)
            else:
                v_type, row = entry
                out.write(struct.pack("<iQ", v_type, row))
                _zeros(out, row * n_cells)


def fill_then_evaluate_last_batch(model: Any, ids: list[int]) -> None:
    """Leave ``model``'s llama.cpp context as a prefill of ``ids`` would: every cell
    written and the last full micro-batch evaluated over all of them."""
    import llama_cpp as lib

    engine = model._live()
    ctx, memory = engine._ctx, lib.llama_get_memory(engine._ctx)
    tail = min(model.info.batch_size, len(ids))
    one = (lib.llama_token * 1)(ids[0])
    if lib.llama_decode(ctx, lib.llama_batch_get_one(one, 1)) != 0:
        raise RuntimeError("the one-token decode failed")
    size = lib.llama_state_seq_get_size(ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    lib.llama_state_seq_get_data(ctx, buf, size, 0)
    lib.llama_memory_clear(memory, True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cells.state")
        write_state_file(path, bytes(buf), len(ids) - tail, lib.LLAMA_STATE_SEQ_MAGIC,
                         lib.LLAMA_STATE_SEQ_VERSION)
        count = ctypes.c_size_t(0)
        tokens = (lib.llama_token * 1)()
        if not lib.llama_state_seq_load_file(ctx, path.encode(), 0, tokens, 1,
                                             ctypes.byref(count)):
            raise RuntimeError("llama.cpp refused the state file")
    if lib.llama_memory_seq_pos_max(memory, 0) != len(ids) - tail - 1:
        raise RuntimeError("the restored cells are not at the expected positions")
    last = (lib.llama_token * tail)(*ids[-tail:])
    if lib.llama_decode(ctx, lib.llama_batch_get_one(last, tail)) != 0:
        raise RuntimeError("the last micro-batch failed to decode")
