"""Single-channel PNG maps, written so they read back fast.

Masks are written as standard grayscale PNGs (8- or 16-bit, not interlaced) whose rows all use
filter type 0 ("None") and whose image data is compressed with zlib-ng at level 1. Every PNG
reader decodes them. Our own reader recognises that layout and decodes it with one zlib-ng
inflate and a numpy reshape, which is about 3x faster than libpng on these maps
(bench/bench_reader.py); any other PNG (another writer, other filters) goes through libpng.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from zlib_ng import zlib_ng

SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 1  # masks are long runs: level 1 is within ~15% of level 9 in size, and far faster


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_mask(arr: np.ndarray) -> bytes:
    """[H, W] uint8 or uint16 -> PNG bytes (grayscale, filter None on every row)."""
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"masks are [H, W] uint8 or uint16, got {arr.shape} {arr.dtype}")
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


def decode_mask_fast(data: bytes) -> np.ndarray | None:
    """The fast path: [H, W] uint8/uint16 for a grayscale, non-interlaced PNG whose rows all use
    filter None; None for anything else (the caller falls back to a full decoder). Raises
    ValueError for a PNG whose data is corrupt."""
    if not data.startswith(SIGNATURE):
        return None
    pos, ihdr, idat = 8, None, []
    end = len(data)
    while pos + 8 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None:
        return None
    w, h, depth, color, _, _, interlace = ihdr
    if color != 0 or interlace or depth not in (8, 16):
        return None
    try:
        raw = zlib_ng.decompress(b"".join(idat))
    except zlib_ng.error as e:
        raise ValueError(f"corrupt PNG data: {e}") from None
    stride = w * depth // 8 + 1
    if len(raw) != h * stride:
        raise ValueError(f"PNG data holds {len(raw)} bytes, {h} rows of {stride} expected")
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride)
    if rows[:, 0].any():
        return None  # some rows use Sub/Up/Average/Paeth: leave them to libpng
    body = rows[:, 1:]
    return body.view(">u2").astype(np.uint16) if depth == 16 else body
