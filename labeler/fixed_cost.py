"""`fixed-cost`: no model; spends a fixed time per image, like a GPU model of known speed.

For benchmarks and fault-injection tests of the labeling job: the pipeline's overhead is
measured against this labeler's own throughput. Its maps are cheap functions of the pixels
(semantic = 4 brightness bands, instances = the 4x4 grid cells), so every downstream check
sees real structure; the manifest marks its labels as synthetic.
"""

from __future__ import annotations

import time

import numpy as np

from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels

from .base import LocalLabeler
from .overlap import instance_records


class FixedCostLabeler(LocalLabeler):
    def __init__(self, seconds_per_image: float):
        self.seconds = seconds_per_image

    def label(self, images: list[np.ndarray], contexts=None) -> list[Labels]:
        deadline = time.perf_counter() + self.seconds * len(images)
        out = []
        for im in images:
            h, w = im.shape[:2]
            semantic = (im.mean(axis=2) // 64).astype(np.uint8)  # 0..3
            rows = np.minimum(np.arange(h) * 4 // h, 3)
            cols = np.minimum(np.arange(w) * 4 // w, 3)
            inst = (rows[:, None] * 4 + cols[None, :] + 1).astype(np.uint16)
            out.append(Labels(semantic, inst, instance_records(inst, [None] * 16, [1.0] * 16)))
        time.sleep(max(0.0, deadline - time.perf_counter()))
        return out

    def label_space(self) -> LabelSpace:
        return LabelSpace(semantic={"0": "dark", "1": "dim", "2": "bright", "3": "light"})

    def describe(self) -> LabelerInfo:
        return LabelerInfo(
            "fixed-cost",
            seconds_per_image=self.seconds,
            random_labels=True,
            note="synthetic labels from pixel brightness and a grid, for benchmarks and tests",
        )
