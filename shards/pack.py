"""Pack stage: one labeled image -> the members of one sample (`{ext: bytes}`)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from . import format as fmt
from .image import PreparedImage
from .png import decode_mask_fast, encode_mask, grayscale_header


@dataclass
class Instance:
    """One entry of the sample JSON's instance list; `id` is its value in `inst.png`."""

    id: int
    category: int | None  # semantic class id, None for class-agnostic models (SAM)
    score: float
    area: int  # pixels in the (non-overlapping) instance map
    bbox: list[int]  # [x, y, w, h], COCO convention
    phrase: str | None = None  # text-prompted presets: the phrase of the prompt it matched
    box_score: float | None = None  # grounded: the detector's box score
    mask_score: float | None = None  # grounded: the mask model's predicted IoU of its mask

    def to_json(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "category": self.category,
            "score": round(float(self.score), 4),
            "area": self.area,
            "bbox": self.bbox,
        }
        # Only the text-prompted presets set these: every other sample keeps its bytes.
        if self.phrase is not None:
            d["phrase"] = self.phrase
        for k in ("box_score", "mask_score"):
            if (v := getattr(self, k)) is not None:
                d[k] = round(float(v), 4)
        return d


@dataclass
class Labels:
    """What a labeler returns for one image, at the image's own resolution."""

    semantic: np.ndarray  # [H, W] uint8 or uint16 class ids, ignore value per docs/FORMAT.md
    instance: np.ndarray  # [H, W] uint16, 0 = no instance, 1..N index `instances`
    instances: list[Instance] = field(default_factory=list)
    prompt: str | None = None  # text-prompted presets: the prompt it was labeled with (found: `instances` not empty)


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless single-channel PNG; uint16 arrays stay 16-bit (shards.png: fast to read back)."""
    return encode_mask(arr)


def decode_png(data: bytes, max_pixels: int = fmt.MAX_PIXELS, native: bool = True) -> np.ndarray:
    """Inverse of `encode_png` for any single-channel PNG: [H, W] uint8 or uint16, ids untouched.
    Bounded: the declared size is checked against `max_pixels` before anything is inflated
    (ValueError naming the size). `native=False` may return a 16-bit map as a big-endian view."""
    fast = decode_mask_fast(data, max_pixels, native)
    if fast is not None:
        return fast
    grayscale_header(data)
    im = Image.open(io.BytesIO(data), formats=["PNG"])
    im.load()
    if im.mode not in ("L", "I;16", "I;16B", "I"):
        raise ValueError(f"mask PNG must be single-channel, got mode {im.mode}")
    arr = np.asarray(im)
    return arr.astype(np.uint16) if arr.dtype != np.uint8 else arr


def pack_sample(
    key: str,
    image: PreparedImage,
    labels: Labels,
    source: str,
    class_index: int | None = None,
    synset: str | None = None,
) -> dict[str, bytes]:
    """Check the labels against the image and encode the five members of a sample."""
    hw = (image.height, image.width)
    if labels.semantic.shape != hw or labels.instance.shape != hw:
        raise ValueError(f"{key}: label maps {labels.semantic.shape}/{labels.instance.shape} differ from image {hw}")
    meta: dict[str, Any] = {
        "key": key,
        "source": source,
        "width": image.width,
        "height": image.height,
        "class": None if class_index is None else {"index": class_index, "synset": synset},
        "instances": [inst.to_json() for inst in labels.instances],
        "reencoded": image.reencoded,
        "reencode_reason": image.reencode_reason,
        "exif_orientation": image.exif_orientation,
    }
    if labels.prompt is not None:
        meta["prompt"] = labels.prompt
    members = {
        fmt.JPG: image.jpg,
        fmt.SEM: encode_png(labels.semantic),
        fmt.INST: encode_png(labels.instance.astype(np.uint16, copy=False)),
        fmt.META: json.dumps(meta, sort_keys=True).encode(),
    }
    if class_index is not None:
        members[fmt.CLS] = str(class_index).encode()
    return members
