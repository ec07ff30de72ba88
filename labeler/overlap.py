"""Resolve overlapping instance masks into one non-overlapping uint16 id map.

Rule (docs/LABELERS.md): masks are painted largest first, so a smaller mask drawn later stays
visible on top of the larger one it lies on (a cup on a table keeps its pixels); ties go to the
higher score, then to the earlier mask. An instance whose visible area after painting is below
`min_area` is dropped and the rest are painted again in the same order, so its pixels go back to
whatever mask lies beneath (or 0). Survivors are numbered 1..N in painting order.
"""

from __future__ import annotations

import numpy as np

from shards.pack import Instance


def instance_records(inst: np.ndarray, categories: list[int | None], scores: list[float]) -> list[Instance]:
    """Area and COCO bbox of ids 1..N in `inst` in one pass over the pixels."""
    n = len(scores)
    ys, xs = np.nonzero(inst)
    ids = inst[ys, xs].astype(np.int64)
    area = np.bincount(ids, minlength=n + 1)
    big = np.iinfo(np.int64).max
    x0, y0 = np.full(n + 1, big), np.full(n + 1, big)
    x1, y1 = np.full(n + 1, -1), np.full(n + 1, -1)
    np.minimum.at(x0, ids, xs)
    np.minimum.at(y0, ids, ys)
    np.maximum.at(x1, ids, xs)
    np.maximum.at(y1, ids, ys)
    return [
        Instance(
            i,
            categories[i - 1],
            float(scores[i - 1]),
            int(area[i]),
            [int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)],
        )
        for i in range(1, n + 1)
    ]


def resolve_overlaps(
    masks: np.ndarray,
    scores: list[float],
    categories: list[int | None] | None = None,
    min_area: int = 1,
) -> tuple[np.ndarray, list[Instance]]:
    """masks: [N, H, W] bool (may overlap) -> (inst [H, W] uint16, records for ids 1..M, M <= N)."""
    n = masks.shape[0]
    categories = categories if categories is not None else [None] * n
    if n >= 65535:
        raise ValueError(f"{n} instances do not fit a uint16 map")
    areas = masks.reshape(n, -1).sum(1) if n else []
    order = sorted(range(n), key=lambda i: (-int(areas[i]), -float(scores[i]), i))
    inst = _paint(masks, order)
    visible = np.bincount(inst.ravel(), minlength=n + 1)
    kept = [i for rank, i in enumerate(order, start=1) if visible[rank] >= max(min_area, 1)]
    if len(kept) < n:
        inst = _paint(masks, kept)
    return inst, instance_records(inst, [categories[i] for i in kept], [float(scores[i]) for i in kept])


def _paint(masks: np.ndarray, order: list[int]) -> np.ndarray:
    inst = np.zeros(masks.shape[1:], np.uint16)
    for rank, i in enumerate(order, start=1):
        inst[masks[i]] = rank
    return inst
