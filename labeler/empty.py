"""`empty`: no model at all. Every pixel is `ignore` and there are no instances.

It packs a collection into valid v1 shards (RGB, class, metadata) without any GPU, for example
to check an input tree before a labeling run; the manifest says that the masks are empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shards import format as fmt
from shards.pack import Labels

from .base import LocalLabeler


class EmptyLabeler(LocalLabeler):
    def label(self, images: list[np.ndarray]) -> list[Labels]:
        ignore = fmt.semantic_ignore(0)
        return [Labels(np.full(im.shape[:2], ignore, np.uint8), np.zeros(im.shape[:2], np.uint16), []) for im in images]

    def label_space(self) -> dict[str, Any]:
        return {"semantic": {}, "instance": "class-agnostic"}

    def describe(self) -> dict[str, Any]:
        return {"preset": "empty", "models": [], "empty_labels": True}
