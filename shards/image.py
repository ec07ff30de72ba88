"""Decode stage: input bytes -> the JPEG we store and the RGB array the labelers see.

Policy (docs/FORMAT.md):
- Only the formats an image collection holds are decoded (`ALLOWED_FORMATS`, passed to
  `Image.open(formats=...)`): a PostScript file named `.JPEG` never reaches Ghostscript, and the
  quarantine reason names the format that was refused.
- The declared size is checked against `max_pixels` from the header, before a pixel is decoded:
  a 300-byte JPEG that declares 9000x9000 costs nothing (docs/LABELERS.md, "Memory", says what an
  accepted pixel costs the labeler). Pillow's decompression-bomb guard stays on as a second line.
- A JPEG that decodes as RGB or L is stored byte for byte. When the labeler needs no pixels
  (`prepare_image(pixels=False)`, the `empty` preset), such a JPEG is decoded with libjpeg's 1/8
  DCT scaling, as `c2f validate` checks JPEGs: every marker is parsed and every Huffman-coded
  coefficient decoded, so it fails exactly when a full decode fails, but the full-size inverse
  DCT, upsampling and colour conversion (which cannot fail) and the RGB array are skipped.
- Anything else that decodes (CMYK JPEG, PNG or WebP named .JPEG, 16-bit, palette, alpha) is
  converted to RGB once and re-encoded at quality 95; the sample's JSON says so and why.
- EXIF orientation is *not* applied: every map is aligned with the stored pixel grid as decoders
  return it by default (PIL, torchvision, webdataset). A valid tag (2..8) is recorded in the JSON
  so a user who wants upright images rotates all three arrays together; an invalid tag or an
  unreadable EXIF block is recorded as absent and never costs the image.
- Anything else that goes wrong (empty, truncated, undecodable, or any exception a plugin raises,
  MemoryError included) raises `BadImage` with a reason naming the exception; the pipeline
  quarantines that input only.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from . import format as fmt
from .errors import first_line

REENCODE_QUALITY = 95
_EXIF_ORIENTATION = 0x0112

# What an image collection holds; everything else Pillow can open (EPS via Ghostscript, PSD, ICO,
# FITS, SGI, ...) is refused with its name. (Camera JPEGs that carry a second picture open through
# the JPEG plugin as format "MPO"; they are decoded and re-encoded like any non-plain JPEG.)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


class BadImage(Exception):
    """An input that cannot be packed; the message is the quarantine reason."""


@dataclass
class PreparedImage:
    jpg: bytes  # bytes stored as `{key}.jpg`
    rgb: np.ndarray | None  # [H, W, 3] uint8, what the labelers see; None from `prepare_image(pixels=False)`
    reencoded: bool
    reencode_reason: str | None  # e.g. "format PNG", "mode CMYK"
    exif_orientation: int | None  # EXIF tag 2..8 when present, never applied
    width: int
    height: int

    def labeler_input(self) -> np.ndarray:
        """[H, W, 3] uint8: the pixels, or for an image prepared without them a read-only all-zero
        view of that shape holding no memory (what a labeler with `needs_pixels = False` gets)."""
        if self.rgb is not None:
            return self.rgb
        return np.broadcast_to(np.zeros((), np.uint8), (self.height, self.width, 3))


def sniff_format(head: bytes) -> str | None:
    """The format Pillow would take `head` (the file's first bytes) for, by its plugins' magic-number
    checks only: no plugin code beyond those runs. None when no plugin claims it."""
    Image.init()
    for fmt_id in Image.ID:
        _, accept = Image.OPEN[fmt_id]
        try:
            if accept is not None and accept(head[:16]):
                return fmt_id
        except Exception:  # noqa: BLE001, S112 - a magic check that cannot read this prefix claims nothing
            continue
    return None


def open_image(data: bytes, formats: tuple[str, ...], max_pixels: int) -> Image.Image:
    """`Image.open` restricted to `formats`, with the declared size checked against `max_pixels`
    before anything is decoded; the image is not loaded yet. Raises BadImage with the reason.

    Pillow's decompression-bomb guard stays on (it raises above 2 x MAX_IMAGE_PIXELS); below
    that, `max_pixels` (never above MAX_IMAGE_PIXELS, `c2f label` checks) is the stricter bound."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        im = Image.open(io.BytesIO(data), formats=list(formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too large (decompression-bomb guard): {e}") from None
    except Image.UnidentifiedImageError:
        found = sniff_format(data)
        if found is not None and found not in formats:
            raise BadImage(f"format {found} refused (by its magic number; c2f decodes {', '.join(formats)})") from None
        raise BadImage("not a decodable image" + (f" (unreadable {found} header)" if found else "")) from None
    except Exception as e:  # noqa: BLE001 - a plugin's header parser may raise anything
        raise BadImage(f"decode failed: {first_line(e, 300, typed=True)}") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise BadImage(f"degenerate size {w}x{h}")
    if w * h > max_pixels:
        raise BadImage(
            f"too large: {im.format} declares {w}x{h} = {w * h / 1e6:.1f} MP, over the {max_pixels}-pixel limit"
        )
    return im


def load_image(im: Image.Image) -> Image.Image:
    """Decode an opened image's pixels; any failure is BadImage naming the exception."""
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - truncated data, plugin errors, MemoryError: one input each
        raise BadImage(f"decode failed: {first_line(e, 300, typed=True)}") from None
    return im


def _orientation(im: Image.Image) -> int | None:
    """EXIF orientation 2..8 (1, absent, out of range or unreadable: None)."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is metadata we can do without
        return None
    return value if isinstance(value, int) and 2 <= value <= 8 else None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB; alpha is composited onto white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.uint32)
        im = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return im.convert("RGB")


def prepare_image(data: bytes, max_pixels: int = fmt.MAX_PIXELS, pixels: bool = True) -> PreparedImage:
    """Decode `data` under the policy above. Raises `BadImage` with the quarantine reason.
    `pixels=False`: the caller needs no RGB array (`rgb` is None); a JPEG stored as it is is then
    checked by a DCT-scaled decode, which fails on exactly the inputs a full decode fails on."""
    with warnings.catch_warnings():
        # Warnings about metadata we do not use (corrupt EXIF, unknown chunks) would flood the
        # job's log once per worker; the bomb guard's warning tier is an error like its other tier.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _prepare(data, max_pixels, pixels)


def check_scaled(im: Image.Image) -> Image.Image:
    """Decode an opened JPEG at 1/8 scale: every marker and entropy-coded coefficient is read, so
    this raises BadImage exactly when a full decode would (tests/test_image.py fuzzes it against
    one); only the DC term goes through the inverse DCT. `im.size` becomes the scaled size."""
    try:
        im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
    except Exception:  # noqa: BLE001, S110 - a layout draft() cannot scale: the full decode below checks it
        pass
    return load_image(im)


def _prepare(data: bytes, max_pixels: int, pixels: bool) -> PreparedImage:
    im = open_image(data, ALLOWED_FORMATS, max_pixels)
    (w, h), fmt_id, mode = im.size, im.format, im.mode  # draft() changes the size to the scaled one
    stored_as_is = fmt_id == "JPEG" and mode in ("RGB", "L")
    if stored_as_is and not pixels:
        im = check_scaled(im)
        return PreparedImage(data, None, False, None, _orientation(im), w, h)
    im = load_image(im)
    orientation = _orientation(im)
    try:
        if stored_as_is:
            rgb = np.asarray(im.convert("RGB") if im.mode == "L" else im)
            return PreparedImage(data, rgb, False, None, orientation, w, h)
        reason = f"format {im.format}" if im.format != "JPEG" else f"mode {im.mode}"
        if im.format != "JPEG" and im.mode not in ("RGB", "L"):
            reason += f", mode {im.mode}"
        try:
            rgb_im = _to_rgb(im)
        except (OSError, ValueError) as e:
            raise BadImage(f"cannot convert {reason} to RGB: {e}") from None
        buf = io.BytesIO()
        rgb_im.save(buf, format="JPEG", quality=REENCODE_QUALITY)
        rgb = np.asarray(rgb_im) if pixels else None
        return PreparedImage(buf.getvalue(), rgb, True, reason, orientation, *rgb_im.size)
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - conversion and re-encoding can fail like decoding
        raise BadImage(f"decode failed: {first_line(e, 300, typed=True)}") from None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, read by walking the markers (no decoding);
    None when `data` is not a JPEG with a frame header before its scan."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length field
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _SOF:
            if pos + 9 > end:
                return None
            h, w = struct.unpack_from(">HH", data, pos + 5)
            return w, h
        if marker in (0xDA, 0xD9) or length < 2:  # scan or end before any frame header
            return None
        pos += 2 + length
    return None
