"""Decode stage: input bytes -> the JPEG we store and the RGB array the labelers see.

Policy (docs/FORMAT.md):
- A JPEG that decodes as RGB or L is stored byte for byte.
- Anything else that decodes (CMYK JPEG, PNG or WebP named .JPEG, 16-bit, palette, alpha) is
  converted to RGB once and re-encoded at quality 95; the sample's JSON says so and why.
- EXIF orientation is *not* applied: every map is aligned with the stored pixel grid as decoders
  return it by default (PIL, torchvision, webdataset). The tag is recorded in the JSON so a user
  who wants upright images rotates all three arrays together.
- Anything that does not decode, is truncated, empty, or trips Pillow's decompression-bomb guard
  raises `BadImage` with a reason; the pipeline quarantines it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

REENCODE_QUALITY = 95
_EXIF_ORIENTATION = 0x0112


class BadImage(Exception):
    """An input that cannot be packed; the message is the quarantine reason."""


@dataclass
class PreparedImage:
    jpg: bytes  # bytes stored as `{key}.jpg`
    rgb: np.ndarray  # [H, W, 3] uint8, what the labelers see
    reencoded: bool
    reencode_reason: str | None  # e.g. "format PNG", "mode CMYK"
    exif_orientation: int | None  # raw EXIF tag when not 1, never applied

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    @property
    def width(self) -> int:
        return self.rgb.shape[1]


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


def prepare_image(data: bytes) -> PreparedImage:
    """Decode `data` under the policy above. Raises `BadImage` with the quarantine reason."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # The bomb guard stays on; its warning tier (> MAX_IMAGE_PIXELS) is treated as an error too,
            # because one 40k x 40k image would take a labeling worker's whole memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            im.load()
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large (decompression-bomb guard): {e}") from None
    except Image.DecompressionBombWarning as e:
        raise BadImage(f"too large (decompression-bomb guard): {e}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not a decodable image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"decode failed: {e}") from None
    if im.width < 1 or im.height < 1:
        raise BadImage(f"degenerate size {im.width}x{im.height}")

    orientation = im.getexif().get(_EXIF_ORIENTATION)
    orientation = int(orientation) if orientation not in (None, 1) else None

    if im.format == "JPEG" and im.mode in ("RGB", "L"):
        rgb = np.asarray(im.convert("RGB") if im.mode == "L" else im)
        return PreparedImage(data, rgb, False, None, orientation)

    reason = f"format {im.format}" if im.format != "JPEG" else f"mode {im.mode}"
    if im.format != "JPEG" and im.mode not in ("RGB", "L"):
        reason += f", mode {im.mode}"
    try:
        rgb_im = _to_rgb(im)
    except (OSError, ValueError) as e:
        raise BadImage(f"cannot convert {reason} to RGB: {e}") from None
    buf = io.BytesIO()
    rgb_im.save(buf, format="JPEG", quality=REENCODE_QUALITY)
    return PreparedImage(buf.getvalue(), np.asarray(rgb_im), True, reason, orientation)
