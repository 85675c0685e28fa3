"""Images as a model reads them: decoded and checked in Python before native code sees them.

An image file is untrusted input. Image decoders are a classic home of memory-safety bugs,
and a 100 KB PNG can claim a gigapixel canvas. So the file's format is read from its first
bytes and must be one of PNG, JPEG, WebP or GIF (its first frame); the pixel count is
checked from the header before any pixel is decoded; a truncated or corrupt file is an
error, never a half-grey picture. What reaches the runtime is plain RGB pixels of a known
size, so llama.cpp's own decoder is never used.

In a prompt an image stands as a run of placeholder token ids, one per image token. They
are negative (no vocabulary has them) and spell the image's content hash and the row of its
embedding, so the same image gives the same ids in every request: the scheduler's prefix
reuse then keeps an image's KV entries like any text, and the engine finds the embedding
row of any placeholder without more bookkeeping.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from ._defaults import DEFAULTS
from ._errors import BackendUnavailableError, ConfigError

#: the formats accepted, by their first bytes (WebP: "RIFF", 4 bytes of size, "WEBP")
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF",
              b"GIF89a": "GIF"}
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
ROW_BITS = 16                       # an image has at most 65536 tokens
KEY_BITS = 46                       # placeholders stay within a signed 64-bit id


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image's RGB pixels (row-major, 3 bytes a pixel) and its content key."""

    width: int
    height: int
    rgb: bytes
    key: int          # from the pixels' SHA-256: the same picture, the same key

    def __repr__(self) -> str:
        return f"DecodedImage({self.width}x{self.height}, key={self.key:#x})"


def sniff_format(data: bytes) -> str | None:
    """The format the file's first bytes announce, if it is one that is accepted."""
    for magic, name in SIGNATURES.items():
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULTS.max_image_pixels) -> DecodedImage:
    """Decode an image file to RGB; a ``ConfigError`` that names the problem otherwise."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise BackendUnavailableError("images", "PIL", "images") from None
    kind = sniff_format(data)
    if kind is None:
        head = data[:8].hex(" ") if data else "empty"
        raise ConfigError(f"the image is not PNG, JPEG, WebP or GIF (its first bytes: {head}); "
                          "convert it to one of those")
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as img:
            width, height = img.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise ConfigError(
                    f"the {kind} image claims {width}x{height} pixels, over the limit of "
                    f"{max_pixels} (a decompression bomb, or a picture to scale down first)")
            img.seek(0)  # a GIF's first frame
            img.load()   # a truncated file fails here, not later
            upright = ImageOps.exif_transpose(img) if kind in ("JPEG", "WEBP") else img
            rgb = upright.convert("RGB")
    except ConfigError:
        raise
    except Image.DecompressionBombError:
        raise ConfigError(f"the {kind} image claims more pixels than Pillow decodes, over the "
                          f"limit of {max_pixels} (a decompression bomb, or a picture to "
                          "scale down first)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncation and corruption as OSError/SyntaxError/ValueError
        raise ConfigError(f"the {kind} image is damaged or truncated ({exc}); "
                          "save it again from an image editor") from None
    pixels = rgb.tobytes()
    digest = hashlib.sha256(b"%d %d " % rgb.size + pixels).digest()
    key = int.from_bytes(digest[:8], "little") & ((1 << KEY_BITS) - 1)
    return DecodedImage(rgb.size[0], rgb.size[1], pixels, key)


def placeholders(image: DecodedImage, n_tokens: int) -> list[int]:
    """The prompt ids that stand for ``image``'s ``n_tokens`` embedding rows."""
    if n_tokens > 1 << ROW_BITS:
        raise ConfigError(f"an image of {n_tokens} tokens is more than this prompt format "
                          f"holds ({1 << ROW_BITS})")
    base = image.key << ROW_BITS
    return [-(base | row) - 1 for row in range(n_tokens)]


def placeholder_row(token: int) -> tuple[int, int]:
    """The (image key, embedding row) a placeholder id stands for."""
    value = -token - 1
    return value >> ROW_BITS, value & ((1 << ROW_BITS) - 1)


def is_placeholder(token: int) -> bool:
    return token < 0
