"""The one interface every labeling backend implements."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from shards.pack import Labels


class Labeler(Protocol):
    """Labels a batch of RGB images at their own resolutions.

    `label` returns one entry per input, in order: `Labels`, or the exception that image raised
    (a labeler never drops an image silently; the pipeline quarantines the failures).
    """

    def label(self, images: list[np.ndarray]) -> list[Labels | Exception]:  # images: [H, W, 3] uint8
        ...

    def label_space(self) -> dict[str, Any]:
        """{"semantic": {id: name}, "instance": "class-agnostic" | {id: name}} for the manifest."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model ids and settings for the manifest; `"random_labels": True` for test presets."""
        ...
