"""Hostile inputs, made byte by byte: what a scraped folder, a NAS share or a shard written by
someone else can hold. Each function returns the bytes (or writes the file) and says what it is."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image, PngImagePlugin


def photo(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (JPEG-friendly), [h, w, 3] uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(h + w, 1)], -1)
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def encode(arr_or_im, fmt: str, **kw) -> bytes:
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def jpeg(h: int = 60, w: int = 80, seed: int = 0, **kw) -> bytes:
    return encode(photo(h, w, seed), "JPEG", **kw)


# --- class 1: decoders that raise something other than OSError ---------------------------------


def exif_jpeg(orientation: int | None = None, raw_exif: bytes | None = None) -> bytes:
    """A good JPEG whose EXIF orientation is out of range, or whose EXIF block is garbage."""
    if raw_exif is None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        raw_exif = exif.tobytes()
    return encode(photo(), "JPEG", exif=raw_exif)


def tiff_strip_offsets_typed(type_code: int, value: bytes | None = None) -> bytes:
    """A TIFF whose StripOffsets tag (273) has another field type: 2 (ASCII) makes Pillow raise
    TypeError while decoding; 16 (LONG8) with `value` 2**64-1 makes it raise OverflowError."""
    data = bytearray(encode(photo(40, 50), "TIFF"))
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    for e in range(n):
        pos = ifd + 2 + 12 * e
        if struct.unpack_from("<H", data, pos)[0] == 273:
            struct.pack_into("<HII", data, pos + 2, type_code, 1, len(data) if value else 0)
            return bytes(data + (value or b""))
    raise AssertionError("no StripOffsets tag")


def tiff_strip_offset_overflow() -> bytes:
    return tiff_strip_offsets_typed(16, b"\xff" * 8)


def png_text_bomb() -> bytes:
    """A PNG with a zTXt chunk that inflates past Pillow's MAX_TEXT_CHUNK (ValueError)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * (20 << 20), zip=True)
    return encode(photo(), "PNG", pnginfo=info)


# --- class 2: headers that declare more pixels than the file holds -------------------------------


def jpeg_declaring(w: int, h: int) -> bytes:
    """A few hundred bytes of JPEG whose frame header declares w x h."""
    data = bytearray(jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, h, w)
    return bytes(data)


def png_declaring(w: int, h: int, mode: str = "L") -> bytes:
    """A valid-looking PNG whose IHDR claims w x h (its data is an 8x8 image's)."""
    data = bytearray(encode(Image.new(mode, (8, 8)), "PNG"))
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def gif_declaring(w: int, h: int) -> bytes:
    data = bytearray(encode(photo(16, 16), "GIF"))
    struct.pack_into("<HH", data, 6, w, h)
    return bytes(data)


def mask_png_inflating(w: int, h: int, inflated: int) -> bytes:
    """A grayscale PNG declaring w x h whose IDAT inflates to `inflated` bytes (a zip bomb in a
    mask: a few KB on disk)."""
    from shards.png import SIGNATURE, _chunk

    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(b"\0" * (1 << 20)) for _ in range(inflated >> 20)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


# --- class 3: formats Pillow can open that an image collection does not hold ----------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n"


def psd() -> bytes:
    """A Photoshop header (Pillow has a reader; a dataset has no business holding one)."""
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 64, 64, 8, 3) + b"\0" * 64


def ico() -> bytes:
    return encode(photo(32, 32), "ICO")


# --- class 8 and 9: tar members ------------------------------------------------------------------


def gnu_sparse_header(name: str, realsize: int, stored: int = 512) -> bytes:
    """An old-GNU sparse member header ('S') that claims `realsize` bytes, followed by `stored`
    bytes of data: what `tar --sparse` writes for a mostly-empty file."""
    hdr = bytearray(512)
    hdr[0 : len(name)] = name.encode()
    hdr[100:108] = b"0000644\0"
    hdr[108:116] = b"0000000\0"
    hdr[116:124] = b"0000000\0"
    hdr[124:136] = f"{stored:011o}\0".encode()
    hdr[136:148] = b"00000000000\0"
    hdr[156:157] = b"S"
    hdr[257:265] = b"ustar  \0"
    hdr[386:398] = f"{0:011o}\0".encode()  # sparse map: one region at 0 ...
    hdr[398:410] = f"{stored:011o}\0".encode()  # ... of `stored` bytes
    hdr[483:495] = f"{realsize:011o}\0".encode()  # the size it claims
    hdr[148:156] = b"        "
    hdr[148:156] = f"{sum(hdr):06o}\0 ".encode()
    return bytes(hdr) + b"\0" * stored


def pax_sparse_member(name: str, realsize: int) -> list[tarfile.TarInfo | bytes]:
    """A POSIX (pax) GNU sparse 1.0 member claiming `realsize` bytes: (TarInfo, data)."""
    ti = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    data = b"1\n0\n512\n".ljust(512, b"\0") + b"x" * 512
    ti.size = len(data)
    ti.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    return [ti, data]


def write_tar(path, members: list[tuple[str, bytes]], raw_tail: bytes = b"", extra: list | None = None) -> None:
    """A pax tar of (name, data) members; `extra`: [TarInfo, data] pairs; `raw_tail`: hand-made
    header blocks appended before the end-of-archive marker."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for ti, data in extra or []:
            tf.addfile(ti, io.BytesIO(data))
        end = tf.offset  # before the end-of-archive marker
    body = buf.getvalue()[:end]
    with open(path, "wb") as f:
        f.write(body + raw_tail + b"\0" * 1024)


def damaged_copies(bases: list[bytes], n: int, seed: int):
    """n damaged copies of files drawn from `bases`: cut short, bytes overwritten, or a run deleted."""
    import random

    rng = random.Random(seed)
    for _ in range(n):
        d = bytearray(rng.choice(bases))
        op = rng.randrange(3)
        if op == 0:
            d = d[: rng.randrange(len(d))]
        elif op == 1:
            for _ in range(rng.randint(1, 5)):
                d[rng.randrange(len(d))] = rng.randrange(256)
        else:
            i = rng.randrange(len(d))
            del d[i : i + rng.randrange(1, 50)]
        yield bytes(d)
