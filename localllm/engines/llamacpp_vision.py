"""Images for the llama.cpp engine, through llama.cpp's multimodal library (libmtmd).

libmtmd encodes an image with the projector (``mmproj*.gguf``) into rows of the language
model's input embeddings; this module puts those rows into the KV cache at the positions
where the prompt's placeholder ids stand (``localllm.images``). An image's embedding is
kept (the last few, by content key), so an image that comes again — a follow-up turn of
the same chat whose KV entries were evicted, or another request with the same picture —
is decoded from the kept rows instead of encoded again.

The pixels libmtmd receives were decoded and checked in Python; llama.cpp's own image
decoder is never used. Its resize (bicubic, padded to a square) still runs in libmtmd.
"""

from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import BackendError, BackendUnavailableError
from ..images import DecodedImage, placeholder_row
from ._compute import LLAMA_CPP

#: encoded images kept for reuse (each is tokens x width floats: 16 KB to a few MB)
KEEP_ENCODED = 8
_MARKER = b"<__media__>"


def load_mtmd() -> Any:
    """llama-cpp-python's libmtmd bindings; a typed error when the build lacks them."""
    try:
        from llama_cpp import mtmd_cpp
    except (ImportError, FileNotFoundError, OSError, AttributeError) as exc:
        raise BackendUnavailableError("llama.cpp (images)", "llama_cpp.mtmd_cpp",
                                      "llama-cpp") from exc
    return mtmd_cpp


def images_available() -> bool:
    """Whether this llama-cpp-python build has libmtmd (``localllm doctor`` says it)."""
    try:
        load_mtmd()
    except BackendUnavailableError:
        return False
    return True


class Vision:
    """One projector attached to one loaded llama.cpp model and context."""

    def __init__(self, lib: Any, model: Any, ctx: Any, projector: Path, *, threads: int,
                 use_gpu: bool, flash_attention: bool | None, log_callback: Any) -> None:
        self._lib = lib
        self._ctx = ctx
        self._mtmd = mtmd = load_mtmd()
        mtmd.mtmd_log_set(log_callback, ctypes.c_void_p(0))
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = True  # a projector that cannot run fails here, at load
        # exact attention unless asked otherwise: the flash path casts K and V to f16
        params.flash_attn_type = 1 if flash_attention else 0
        self._handle = LLAMA_CPP.run(mtmd.mtmd_init_from_file, str(projector).encode(),
                                     model, params)
        if not self._handle:
            raise BackendError(f"llama.cpp could not load the projector {projector.name}")
        self.width = int(lib.llama_model_n_embd(model))
        self._encoded: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.encodes = 0  # images encoded (not served from the kept rows)
        self._batch: Any = None
        self._batch_rows = 0

    def embedding(self, image: DecodedImage) -> np.ndarray:
        """The image's rows of input embeddings (tokens x model width), encoded once."""
        with self._lock:
            rows = self._encoded.get(image.key)
            if rows is not None:
                self._encoded.move_to_end(image.key)
                return rows
            rows = self._encode(image)
            self._encoded[image.key] = rows
            while len(self._encoded) > KEEP_ENCODED:
                self._encoded.popitem(last=False)
            self.encodes += 1
            return rows

    def _encode(self, image: DecodedImage) -> np.ndarray:
        mtmd = self._mtmd
        pixels = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
        bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, pixels)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            text = mtmd.mtmd_input_text(text=_MARKER, text_len=len(_MARKER),
                                        add_special=False, parse_special=True)
            bitmaps = (ctypes.c_void_p * 1)(bitmap)
            rc = mtmd.mtmd_tokenize(self._handle, chunks, ctypes.byref(text), bitmaps, 1)
            if rc != 0 or mtmd.mtmd_input_chunks_size(chunks) != 1:
                raise BackendError(f"llama.cpp could not prepare a {image.width}x"
                                   f"{image.height} image (mtmd_tokenize returned {rc})")
            chunk = mtmd.mtmd_input_chunks_get(chunks, 0)
            n = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
            rc = LLAMA_CPP.run(mtmd.mtmd_encode_chunk, self._handle, chunk)
            if rc != 0:
                raise BackendError(f"llama.cpp could not encode the image (code {rc})")
            out = mtmd.mtmd_get_output_embd(self._handle)
            return np.ctypeslib.as_array(out, shape=(n, self.width)).copy()
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def decode_rows(self, tokens: Sequence[int], images: Mapping[int, DecodedImage],
                    seq: int, pos: int, want_last: bool) -> int:
        """Decode a run of placeholder ids (rows of one or more images) at ``pos``; returns
        the batch row of the last one (for its logits)."""
        lib = self._lib
        n = len(tokens)
        if self._batch is None or self._batch_rows < n:
            if self._batch is not None:
                lib.llama_batch_free(self._batch)
            self._batch_rows = max(n, 64)
            self._batch = lib.llama_batch_init(self._batch_rows, self.width, 1)
        batch = self._batch
        rows = np.empty((n, self.width), dtype=np.float32)
        for k, token in enumerate(tokens):
            key, row = placeholder_row(token)
            image = images.get(key)
            if image is None:
                raise BackendError("a prompt's image placeholder has no image with it")
            embedding = self.embedding(image)
            if row >= len(embedding):
                raise BackendError(f"image row {row} is past its {len(embedding)} tokens")
            rows[k] = embedding[row]
        ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
        for k in range(n):
            batch.pos[k] = pos + k
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = seq
            batch.logits[k] = 0
        batch.logits[n - 1] = 1 if want_last else 0
        batch.n_tokens = n
        rc = LLAMA_CPP.run(lib.llama_decode, self._ctx, batch)
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc} on image embeddings")
        return n - 1

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if self._handle:
            self._mtmd.mtmd_free(self._handle)
            self._handle = None
