"""Real picture files made on the fly, and small builders shared by the tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "face-mask"


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """Encode a Pillow image to bytes."""
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """An RGB picture with structure (no symmetry), so rotations and flips are detectable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                  (x * y) % 256], axis=-1).astype(np.uint8)
    a[: h // 4, : w // 4] = rng.integers(0, 255, size=3, dtype=np.uint8)  # a corner marker
    return Image.fromarray(a, "RGB")


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header that claims ``width`` x ``height``, with a tiny (wrong) body.

    It lets a test offer a decompression bomb without building one.
    """
    small = encode(Image.new("RGB", (1, 1)), "PNG")
    ihdr_start = 8
    length = struct.unpack(">I", small[ihdr_start:ihdr_start + 4])[0]
    body = bytearray(small[ihdr_start + 8: ihdr_start + 8 + length])
    body[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    end = ihdr_start + 8 + length + 4
    return small[:ihdr_start + 8] + bytes(body) + crc + small[end:]


def gif_with_size(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim ``width`` x ``height``."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    i = data.index(b",")  # the image descriptor
    data[i + 5:i + 9] = struct.pack("<HH", width, height)
    return bytes(data)


BAD_INPUTS: dict[str, bytes] = {
    "empty": b"",
    "text": b"hello, this is not a picture\n" * 10,
    "random": np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
           b'<rect width="10" height="10"/></svg>',
    "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200,
    "truncated_header": encode(gradient(), "PNG")[:20],
    "truncated_body": encode(gradient(256, 256), "JPEG", quality=90)[:600],
}
