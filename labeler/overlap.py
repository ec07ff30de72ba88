"""Resolve overlapping instance masks into one non-overlapping id map, on any torch device.

Rule (docs/LABELERS.md): masks are painted largest first, so a smaller mask drawn later stays
visible on top of the larger one it lies on (a cup on a table keeps its pixels); ties go to the
higher score, then to the earlier mask. An instance whose visible area after painting is below
`min_area` is dropped and the rest are painted again in the same order, so its pixels go back to
whatever mask lies beneath (or 0). Survivors are numbered 1..N in painting order.

Painting "in order" is a maximum: each pixel takes the highest painting rank among the masks that
cover it, which can be computed over masks in any order and in chunks (bounded memory).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from shards.pack import Instance

from .postprocess import arange_on, count_ids, count_true, region_stats

# Columns of the records `paint_largest_first` returns, one row per input mask in painting order.
PAINT_FIELDS = ("valid", "instance", "mask", "score", "area", "x0", "y0", "x1", "y1")


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


def painting_order(areas: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Mask indices in painting order: area descending, then score descending, then index."""
    by_score = torch.sort(-scores.double(), stable=True).indices
    return by_score[torch.sort(-areas[by_score], stable=True).indices]


def _paint(get_masks, chunks, rank: torch.Tensor, size) -> torch.Tensor:
    """[H, W] int64: the highest rank (0 = none) among the masks covering each pixel."""
    small = rank.to(torch.int16)  # n < 32767 (checked): a quarter of the memory traffic of int64
    out = torch.zeros(size, dtype=torch.int16, device=rank.device)
    for s in chunks:
        out = torch.maximum(out, torch.where(get_masks(s), small[s, None, None], 0).amax(0))
    return out.long()


def paint_largest_first(
    get_masks: Callable[[slice], torch.Tensor],
    n: int,
    size: tuple[int, int],
    scores: torch.Tensor,
    min_area: int = 1,
    budget: int = 1 << 28,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (n of them, [len(s), H, W] bool from get_masks(s)) -> (inst [H, W] int64, records [n, 9]
    float64 with PAINT_FIELDS in painting order; rows with valid == 0 were dropped).

    When all masks fit `budget` bytes they are fetched once; otherwise in chunks, once per pass
    (areas, paint, repaint), so the caller can recompute them instead of holding them all."""
    device = scores.device
    if n >= 32767:
        raise ValueError(f"{n} masks: more than an instance map can hold")
    if n == 0:
        return torch.zeros(size, dtype=torch.int64, device=device), torch.zeros(
            0, 9, dtype=torch.float64, device=device
        )
    step = max(1, budget // max(size[0] * size[1], 1))
    chunks = [slice(i, min(i + step, n)) for i in range(0, n, step)]
    if len(chunks) == 1:
        held = get_masks(slice(0, n))
        get_masks = lambda s: held[s]  # noqa: E731 - reuse the masks in every pass
    areas = torch.cat([count_true(get_masks(s)) for s in chunks])
    order = painting_order(areas, scores)
    rank = torch.empty(n, dtype=torch.int64, device=device)
    rank[order] = arange_on(n + 1, device)[1:]

    visible = count_ids(_paint(get_masks, chunks, rank, size), n + 1)[1:]  # by rank
    kept = visible >= max(min_area, 1)  # by rank
    rank = torch.where(kept[rank - 1], rank, 0)  # dropped masks are not painted again
    painted = _paint(get_masks, chunks, rank, size)
    new_id = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(kept.long(), 0) * kept])
    inst = new_id[painted]  # ranks -> 1..N among the kept
    stats = region_stats(torch.where(inst > 0, inst - 1, n), n)  # by final id - 1
    ids = new_id[1:]  # final id of each rank (0: dropped)
    by_rank = stats[(ids - 1).clamp(min=0)]
    records = torch.cat(
        [
            torch.stack([kept, ids, order], dim=1).double(),
            scores[order, None].double(),
            by_rank.double() * kept[:, None],
        ],
        dim=1,
    )
    return inst, records


def records_to_instances(
    records: np.ndarray, categories: list[int | None] | None = None, agnostic: bool = False
) -> list[Instance]:
    """Host side: rows of PAINT_FIELDS (or the panoptic RECORD_FIELDS, whose column 2 is the category)
    that are valid and have an instance id -> `Instance`s sorted by id. Column 2 is the category
    itself (panoptic), an index into `categories`, or, with `agnostic`, ignored (category None)."""
    rows = records[(records[:, 0] > 0) & (records[:, 1] > 0)]
    rows = rows[np.argsort(rows[:, 1], kind="stable")]
    out = []
    for r in rows:
        x0, y0, x1, y1 = (int(v) for v in r[5:9])
        if agnostic:
            cat = None
        else:
            cat = int(r[2]) if categories is None else categories[int(r[2])]
        out.append(Instance(int(r[1]), cat, float(r[3]), int(r[4]), [x0, y0, x1 - x0 + 1, y1 - y0 + 1]))
    return out


def resolve_overlaps(
    masks: np.ndarray,
    scores: list[float],
    categories: list[int | None] | None = None,
    min_area: int = 1,
) -> tuple[np.ndarray, list[Instance]]:
    """masks: [N, H, W] bool (may overlap) -> (inst [H, W] uint16, records for ids 1..M, M <= N)."""
    n = masks.shape[0]
    categories = categories if categories is not None else [None] * n
    t = torch.from_numpy(np.ascontiguousarray(masks))
    inst, records = paint_largest_first(
        lambda s: t[s], n, masks.shape[1:], torch.tensor(scores, dtype=torch.float64), min_area
    )
    return inst.numpy().astype(np.uint16), records_to_instances(records.numpy(), categories)
