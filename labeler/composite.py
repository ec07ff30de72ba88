"""Composite labelers: the presets' models combined into one `Labeler`.

`SemanticPlusInstances` runs a semantic model for the scene map and SAM for class-agnostic
instances; `OnePassPanoptic` gets both maps from one panoptic pass. Both isolate failures per image
(`label_each`), so one bad image costs only itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shards.pack import Labels

from .base import LocalLabeler


def label_each(fn: Callable[[list[np.ndarray]], list[Labels]], images: list[np.ndarray]) -> list[Labels | Exception]:
    """Run a batch; if it fails, run the images one by one so one bad image costs only itself."""
    try:
        return list(fn(images))
    except Exception as e:  # noqa: BLE001 - isolated below, every failure is reported per image
        if len(images) == 1:
            return [e]
    return [label_each(fn, [im])[0] for im in images]


class SemanticPlusInstances(LocalLabeler):
    """A semantic model for the scene map and SAM for class-agnostic instances."""

    def __init__(self, semantic, instances, describe: dict[str, Any]):
        self.semantic, self.instances, self._describe = semantic, instances, describe

    def _run(self, images: list[np.ndarray]) -> list[Labels]:
        sems = self.semantic(images)
        out = []
        for im, sem in zip(images, sems, strict=True):
            inst, records = self.instances(im)
            out.append(Labels(sem, inst, records))
        return out

    def label(self, images: list[np.ndarray]) -> list[Labels | Exception]:
        return label_each(self._run, images)

    def label_space(self) -> dict[str, Any]:
        names = self.semantic.seg.id2label
        return {"semantic": {str(k): v for k, v in sorted(names.items())}, "instance": "class-agnostic"}

    def describe(self) -> dict[str, Any]:
        return self._describe


class OnePassPanoptic(LocalLabeler):
    def __init__(self, panoptic, describe: dict[str, Any]):
        self.panoptic, self._describe = panoptic, describe

    def label(self, images: list[np.ndarray]) -> list[Labels | Exception]:
        return label_each(self.panoptic.label, images)

    def label_space(self) -> dict[str, Any]:
        return self.panoptic.label_space()

    def describe(self) -> dict[str, Any]:
        return self._describe
