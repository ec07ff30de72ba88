"""`empty`: no model at all. Every pixel is `ignore` and there are no instances.

It packs a collection into valid v1 shards (RGB, class, metadata) without any GPU, for example
to check an input tree before a labeling run; the manifest says that the masks are empty.
"""

from __future__ import annotations

import numpy as np

from shards import format as fmt
from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels

from .base import LocalLabeler


class EmptyLabeler(LocalLabeler):
    # Only the images' sizes are read: the pipeline checks each input with a DCT-scaled decode
    # instead of decoding it into an array (shards.image.prepare_image(pixels=False)).
    needs_pixels = False

    def label(self, images: list[np.ndarray], contexts=None) -> list[Labels]:
        # Constant maps as zero-stride views: no memory per pixel, and shards.png encodes each
        # (size, value) once instead of deflating every map.
        ignore, zero = np.uint8(fmt.semantic_ignore(0)), np.uint16(0)
        return [Labels(np.broadcast_to(ignore, im.shape[:2]), np.broadcast_to(zero, im.shape[:2]), []) for im in images]

    def label_space(self) -> LabelSpace:
        return LabelSpace(semantic={})

    def describe(self) -> LabelerInfo:
        return LabelerInfo("empty", empty_labels=True)
