"""Single-channel PNG maps, written so they read back fast.

Masks are written as standard grayscale PNGs (8- or 16-bit, not interlaced) whose rows all use
filter type 0 ("None") and whose image data is compressed with zlib-ng at level 1. Every PNG
reader decodes them. Our own reader recognises that layout and decodes it with one zlib-ng
inflate and a numpy reshape, which is about 3x faster than libpng on these maps
(bench/bench_reader.py); any other PNG (another writer, other filters) goes through libpng.

Every decode is bounded before it starts: `png_header` reads the declared size, `check_pixels`
refuses more than the format's `MAX_PIXELS`, and the fast path inflates at most what the header
declares (docs/FORMAT.md, "What readers refuse").
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from zlib_ng import zlib_ng

from . import format as fmt

SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 1  # masks are long runs: level 1 is within ~15% of level 9 in size, and far faster


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_mask(arr: np.ndarray) -> bytes:
    """[H, W] uint8 or uint16 -> PNG bytes (grayscale, filter None on every row). A constant map
    given as a zero-stride view (`np.broadcast_to(value, (h, w))`) is encoded once per size and
    value and then served from a cache: the same bytes, without deflating it again."""
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"masks are [H, W] uint8 or uint16, got {arr.shape} {arr.dtype}")
    if arr.strides == (0, 0) and arr.size:
        return _encode_constant(arr.shape, arr.dtype.str, int(arr.flat[0]))
    return _encode(arr)


@functools.lru_cache(maxsize=256)  # a few KB per entry; ImageNet has 500x375 or 375x500 mostly
def _encode_constant(shape: tuple[int, int], dtype: str, value: int) -> bytes:
    return _encode(np.full(shape, value, np.dtype(dtype)))


def _encode(arr: np.ndarray) -> bytes:
    h, w = arr.shape
    depth = 8 * arr.dtype.itemsize
    rows = np.ascontiguousarray(arr, dtype=">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter byte 0, then the row
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)  # grayscale, deflate, adaptive filters, no interlace
    return (
        SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib_ng.compress(raw.tobytes(), LEVEL))
        + _chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    depth: int
    color: int  # 0 grayscale, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA
    interlace: int


def png_header(data: bytes) -> PngHeader | None:
    """The IHDR fields, read before anything is inflated; None when `data` is not a PNG. Raises
    ValueError for a PNG whose first chunk is not a well-formed IHDR."""
    if not data.startswith(SIGNATURE):
        return None
    if len(data) < 33 or data[12:16] != b"IHDR" or struct.unpack_from(">I", data, 8)[0] != 13:
        raise ValueError("PNG without an IHDR chunk first")
    w, h, depth, color, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    return PngHeader(w, h, depth, color, interlace)


def check_pixels(w: int, h: int, max_pixels: int, what: str = "image") -> None:
    """Refuse a declared size before anything is decoded (ValueError with the numbers)."""
    if w < 1 or h < 1:
        raise ValueError(f"{what} declares a degenerate size {w}x{h}")
    if w * h > max_pixels:
        raise ValueError(f"{what} declares {w}x{h} = {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP limit")


def grayscale_header(data: bytes) -> PngHeader:
    """The IHDR of a mask PNG for a full decoder; ValueError unless `data` is a single-channel PNG."""
    hdr = png_header(data)
    if hdr is None:
        raise ValueError("mask is not a PNG")
    if hdr.color != 0:
        raise ValueError(f"mask PNG must be single-channel, got PNG colour type {hdr.color}")
    return hdr


def decode_mask_fast(data: bytes, max_pixels: int = fmt.MAX_PIXELS, native: bool = True) -> np.ndarray | None:
    """The fast path: [H, W] uint8/uint16 for a grayscale, non-interlaced PNG whose rows all use
    filter None; None for any other PNG (the caller falls back to a full decoder, after checking
    `png_header` itself). Raises ValueError for a PNG that declares more than `max_pixels`, whose
    data is corrupt, or whose data inflates to more than its IHDR declares: inflating stops at the
    declared size, so a small member that would inflate to gigabytes costs nothing.
    `native=False` returns 16-bit maps as a big-endian view (no copy: enough for comparisons)."""
    hdr = png_header(data)
    if hdr is None:
        return None
    check_pixels(hdr.width, hdr.height, max_pixels, "PNG")
    if hdr.color != 0 or hdr.interlace or hdr.depth not in (8, 16):
        return None
    stride = hdr.width * hdr.depth // 8 + 1
    expected = hdr.height * stride
    inflate = zlib_ng.decompressobj()
    parts, got = [], 0
    pos, end = 33, len(data)
    try:
        while pos + 8 <= end:
            (length,) = struct.unpack_from(">I", data, pos)
            kind = data[pos + 4 : pos + 8]
            if kind == b"IDAT":
                part = inflate.decompress(data[pos + 8 : pos + 8 + length], expected - got + 1)
                got += len(part)
                if got > expected or inflate.unconsumed_tail:
                    raise ValueError(f"PNG data inflates past the {expected} bytes its IHDR declares")
                parts.append(part)
            elif kind == b"IEND":
                break
            pos += 12 + length
    except zlib_ng.error as e:
        raise ValueError(f"corrupt PNG data: {e}") from None
    if got != expected or not inflate.eof:
        raise ValueError(f"PNG data holds {got} bytes, {hdr.height} rows of {stride} expected")
    raw = parts[0] if len(parts) == 1 else b"".join(parts)
    rows = np.frombuffer(raw, np.uint8).reshape(hdr.height, stride)
    if rows[:, 0].any():
        return None  # some rows use Sub/Up/Average/Paeth: leave them to libpng
    body = rows[:, 1:]
    if hdr.depth == 16:
        be = body.view(">u2")
        return be.astype(np.uint16) if native else be
    return body
