"""Semantic and panoptic post-processing in torch, on the model's device, one image at a time and,
on GPUs, without waiting for the device (see `panoptic(compact=...)`).

What transformers' `post_process_*_segmentation` do per image and per query with a `.item()` each,
these functions do with whole-tensor operations: the score filter, the mask-probability argmax at the
target size, the overlap-area rule, the look-up to class and instance ids, and the instance records
(area, bbox, score). Every image is cut out of its padded canvas before it is resized (`resample`), so
its maps do not depend on the other images of its batch.

Rules per model family (`PanopticRule`) mirror transformers' post-processors, which the equivalence
tests check pixel by pixel; docs/LABELERS.md lists where they differ from the papers' code.

Two layouts of the same computation (`gpu`; default: by device). GPU-shaped: whole-tensor passes over
every query and pixel of an image at once (chunked only by memory), counts by `scatter_add` into
tensors of known size, sampling grids built once per geometry: a few dozen kernel launches per image
whatever its size, and nothing that reads device data back to the host. CPU-shaped: passes band by
band of rows so each band stays in the cache, filtered queries dropped first, and the semantic maps
decided cell by cell at the model's resolution (a host sync costs nothing on a CPU; pixels do). Both
give the same maps (tested); the GPU layout runs on a CPU too, which is how its launches and syncs are
counted without a GPU (shards/opcount.py, bench/bench_dispatch.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RECORD_FIELDS = ("valid", "instance", "category", "score", "area", "x0", "y0", "x1", "y1")


@dataclass(frozen=True)
class PanopticRule:
    """How a family turns query masks into segments; each field mirrors its transformers post-processor."""

    weighted_area: bool  # "original area" counts score-weighted probabilities >= mask threshold (M2F, OneFormer)
    intersect: bool  # a segment keeps only its pixels whose own probability >= mask threshold (EoMT)
    # Resample probabilities (transformers' OneFormer) rather than logits (the papers' code, transformers'
    # EoMT, and Mask2Former's main upsampling step).
    prob_space: bool = False


RULES = {
    "mask2former": PanopticRule(weighted_area=True, intersect=False),
    "maskformer": PanopticRule(weighted_area=True, intersect=False),
    "oneformer": PanopticRule(weighted_area=True, intersect=False, prob_space=True),
    "eomt": PanopticRule(weighted_area=False, intersect=True),
}


@dataclass(frozen=True)
class PanopticParams:
    threshold: float  # minimum class score of a query
    mask_threshold: float  # mask probability that counts as "inside"
    overlap: float  # minimum visible / original area of a segment
    ignore: int  # semantic value of pixels no segment claims


def resample(
    x: torch.Tensor, valid: tuple[float, float], size: tuple[int, int], step: tuple[float, float] | None = None
) -> torch.Tensor:
    """x [N, h, w] -> [N, H, W]: the image's region [0, vh) x [0, vw) of x (an output map covering the
    padded canvas, in x's pixels; fractional) sampled bilinearly (align_corners=False) at the centres
    of an H x W grid.

    This is what the papers' code and transformers do in two passes (upsample x to the canvas, crop
    the image, resize the crop to H x W) in one, without the canvas-sized intermediate. `step` is x's
    pixels per canvas pixel (e.g. 1/4): as in the two-pass chain, sampling stops at the centre of the
    image's last canvas pixel, so padding enters the last row/column only as much as it does there."""
    h, w = x.shape[-2:]
    vh, vw = valid
    if (vh, vw) == (h, w):
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
    grid = sampling_grid((h, w), (vh, vw), size, step if step is not None else (1.0, 1.0), x.device)
    out = F.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].to(x.dtype)


class _Cache:
    """A small LRU of device tensors that depend only on geometry (sampling coordinates, index ranges):
    built once per key instead of a dozen small ops (and launches) per image. Thread-safe."""

    def __init__(self, entries: int = 256):
        self.entries, self.items, self.lock = entries, OrderedDict(), threading.Lock()

    def get(self, key, build):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = build()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.entries:
                self.items.popitem(last=False)
        return value


_CACHE = _Cache()


def clear_geometry_cache() -> None:
    """Forget the cached grids and ranges (benchmarks and tests that count a first sight of each size)."""
    with _CACHE.lock:
        _CACHE.items.clear()


def sampling_grid(hw, valid, size, step, device) -> torch.Tensor:
    """`resample`'s grid_sample coordinates [1, H, W, 2] (a broadcast view of per-axis coordinates, which
    are cached per geometry and device)."""

    def coords(n_out: int, extent: float, n_in: int, st: float) -> torch.Tensor:
        def build():
            src = (torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (extent / n_out) - 0.5
            src = src.clamp(0.0, extent - 0.5 * st - 0.5)
            return ((2 * src + 1) / n_in - 1).to(torch.float32)  # grid_sample's normalised coordinates

        return _CACHE.get(("coords", n_out, extent, n_in, st, str(device)), build)

    gy, gx = coords(size[0], valid[0], hw[0], step[0]), coords(size[1], valid[1], hw[1], step[1])
    return torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]  # (x, y)


def arange_on(n: int, device) -> torch.Tensor:
    """torch.arange(n) on `device`, built once per (n, device)."""
    return _CACHE.get(("arange", n, str(device)), lambda: torch.arange(n, device=device))


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """masks [N, H, W] bool -> [N] int64 counts. Summing the bytes as uint8 into int32 is 1.5x faster on
    CPUs than torch's bool reductions (sum, count_nonzero); the same on GPUs."""
    return masks.view(torch.uint8).sum((1, 2), dtype=torch.int32).long()


def count_ids(ids: torch.Tensor, n: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """ids (any shape, int64 in [0, n)) -> [n] int64: how often each id occurs (or the sum of integer
    `weights` per id). torch.bincount's result, but into a tensor of known size: on CUDA bincount
    reads the ids' minimum and maximum back to the host first, a sync per call."""
    ids = ids.reshape(-1)
    if weights is None:
        weights = torch.ones((), dtype=torch.int64, device=ids.device).expand(ids.shape[0])
    return torch.zeros(n, dtype=torch.int64, device=ids.device).scatter_add_(0, ids, weights.reshape(-1).long())


# Elements of a GPU-shaped [queries or classes, pixels] float32 intermediate (1 GiB): every query of an
# image up to ~1.3 MP at 200 queries in one pass, so the number of launches does not grow with the
# image; larger images are chunked (memory bounded).
GPU_CHUNK = 1 << 28


def _chunks(n: int, pixels: int, budget: int = 1 << 25):
    """Slices of range(n) whose [len, pixels] float32 tensors stay within `budget` elements (128 MB), so
    memory is bounded for any image size while an ImageNet-sized image (~0.2 MP) takes one step."""
    step = max(1, budget // max(pixels, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _bands(row_elements: int, rows: int, budget: int = 1 << 18) -> list[slice]:
    """Row bands of an [N, rows, W] map whose elements (`row_elements` = N x W per row) stay within
    `budget` (1 MB of float32): small enough to stay in a CPU's cache between elementwise passes."""
    step = max(1, budget // max(row_elements, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _running_argmax(maps, n: int, pixels: int, gpu: bool = False) -> torch.Tensor:
    """argmax over n channels of maps(chunk) [len(chunk), H, W] -> [H, W] int64, chunk by chunk with a
    running maximum; ties go to the first channel, as with one argmax over all of them."""
    best = winner = None
    for s in _chunks(n, pixels, GPU_CHUNK) if gpu else _chunks(n, pixels):
        v, a = maps(s).max(0)
        if best is None:
            best, winner = v, a
        else:
            better = v > best
            best, winner = torch.where(better, v, best), torch.where(better, a + s.start, winner)
    return winner


# Elements per [channels, pixels] block when sampling at class borders: 128 KB blocks stay in the
# CPU's caches (128 MB blocks, `_chunks`' default, make the sampling 3-5x slower) and within torch's
# grain size, so that its many small operations run without thread hand-offs, which cost 10-50x on
# a busy machine (measured).
BORDER_BLOCK = 1 << 15
# Scoring a pixel over all classes from gathered source pixels costs about twice as much as in the
# dense path: beyond this share of such pixels (white noise, not a model's output) the dense path wins.
DENSE_ABOVE = 0.25


def _taps(n_out: int, extent: float, n_in: int, step: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`resample`'s sampling along one axis -> (i0, i1, lam) [n_out]: the two source indices each
    output index mixes and the weight of the second. Where the image fills the axis, F.interpolate's:
    float32 scale, (i + 0.5) * scale - 0.5 rounded once as its CPU kernel's fused multiply-add does,
    clamped at 0; otherwise `resample`'s clamped grid (grid_sample's own float rounding aside)."""
    i = torch.arange(n_out, dtype=torch.float64)
    if extent == n_in:
        scale = float(torch.tensor(n_in, dtype=torch.float32) / n_out)
        src = ((i + 0.5) * scale - 0.5).clamp(min=0.0)
    else:
        src = ((i + 0.5) * (extent / n_out) - 0.5).clamp(0.0, min(extent - 0.5 * step - 0.5, n_in - 1.0))
    src = src.to(torch.float32)
    i0 = src.long().clamp(max=n_in - 1)
    return i0, (i0 + 1).clamp(max=n_in - 1), (src - i0).clamp(0.0, 1.0)


def _corners(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x [..., h, w] -> the values at the four corners of each source cell (y, x)-(y+1, x+1), each
    [..., h, w]; the last row and column are their own neighbours, as in the samplers."""
    h, w = x.shape[-2:]
    below = x.index_select(-2, torch.arange(1, h + 1, device=x.device).clamp(max=h - 1))
    right = torch.arange(1, w + 1, device=x.device).clamp(max=w - 1)
    return x, x.index_select(-1, right), below, below.index_select(-1, right)


class _Grid:
    """Where `resample` samples x [N, h, w] for a target: per output row (y0, y1, ly) and column
    (x0, x1, lx), the source indices mixed and the second one's weight (`_taps`)."""

    def __init__(self, x: torch.Tensor, valid, size, step):
        h, w = x.shape[-2:]
        sh, sw = step if step is not None else (1.0, 1.0)
        self.y0, self.y1, self.ly = (t.to(x.device) for t in _taps(size[0], valid[0], h, sh))
        self.x0, self.x1, self.lx = (t.to(x.device) for t in _taps(size[1], valid[1], w, sw))
        self.width, self.size = w, size
        self.cell = (self.y0[:, None] * w + self.x0[None, :]).view(-1)  # [H * W]: each pixel's cell

    def cells(self, m: torch.Tensor) -> torch.Tensor:
        """A map per source cell [h, w] -> per output pixel [H, W]: the value of the pixel's cell."""
        return m.reshape(-1).index_select(0, self.cell).view(self.size)

    def pixels(self, todo: torch.Tensor) -> torch.Tensor:
        """todo [H, W] bool -> the flat indices of its pixels (a host sync: CPUs only)."""
        return todo.view(-1).nonzero()[:, 0]

    def sample(self, x: torch.Tensor, rows: torch.Tensor | None, at: torch.Tensor) -> torch.Tensor:
        """x [N, h, w] sampled bilinearly at flat output pixels `at` [P] -> [P, N], in small blocks,
        gathering from rows = x as [h * w, N] if given (2x faster per pixel, but a transposed copy)."""
        w, flat = self.width, x.flatten(1)
        py, px = at // self.size[1], at % self.size[1]
        y0, y1 = self.y0.index_select(0, py) * w, self.y1.index_select(0, py) * w
        x0, x1 = self.x0.index_select(0, px), self.x1.index_select(0, px)
        corners = y0 + x0, y0 + x1, y1 + x0, y1 + x1  # each [P]: indices of source pixels
        wy, wx = self.ly.index_select(0, py)[:, None], self.lx.index_select(0, px)[:, None]
        out = x.new_empty(at.shape[0], x.shape[0])
        for s in _chunks(at.shape[0], x.shape[0], BORDER_BLOCK):
            if rows is not None:
                v00, v01, v10, v11 = (rows.index_select(0, i[s]) for i in corners)
            else:
                v00, v01, v10, v11 = (flat.index_select(1, i[s]).T for i in corners)
            torch.lerp(torch.lerp(v00, v01, wx[s]), torch.lerp(v10, v11, wx[s]), wy[s], out=out[s])
        return out

    def score(self, x: torch.Tensor, at: torch.Tensor, out: torch.Tensor, decide, width: int) -> torch.Tensor:
        """out [H, W] with its pixels `at` (flat indices [P]) replaced by decide(xs, at) [P]: their
        labels from x [N, h, w] sampled there, xs [P, N] (`at` to look up per-pixel candidates);
        `width`: decide's widest intermediate [P, width]."""
        rows = x.flatten(1).T.contiguous() if 4 * at.shape[0] > x[0].numel() else None
        flat = out.view(-1)
        for s in _chunks(at.shape[0], max(x.shape[0], width)):
            flat.index_copy_(0, at[s], decide(self.sample(x, rows, at[s]), at[s]))
        return out


def _same_at_corners(*maps: torch.Tensor) -> torch.Tensor:
    """maps [h, w] -> [h, w] bool: each map has one value at all four corners of the cell."""
    same = None
    for m in maps:
        for corner in _corners(m)[1:]:
            same = corner == m if same is None else same & (corner == m)
    return same


def _pick(lo: torch.Tensor, hi: torch.Tensor, score_lo: torch.Tensor, score_hi: torch.Tensor) -> torch.Tensor:
    """The better of two classes lo < hi per pixel; a tie goes to lo, as with argmax."""
    return torch.where(score_hi > score_lo, hi, lo)


def semantic_from_logits(
    logits: torch.Tensor,
    valid: tuple[float, float],
    size: tuple[int, int],
    step: tuple[float, float] | None = None,
    dense: bool | None = None,
    gpu: bool | None = None,
) -> torch.Tensor:
    """Per-pixel class scores (SegFormer, UperNet, BEiT...) logits [C, h, w] -> class ids [H, W] int64:
    argmax over classes of the logits resampled to the target size.

    `dense` (default: GPU-shaped, `gpu`, whose default is by device) resamples all C maps, in one pass
    up to GPU_CHUNK elements when GPU-shaped. Otherwise (CPUs), as few as needed: a bilinear
    sample is a convex combination of its cell's four corners, so a class that beats another at all
    four beats it at every sample in the cell. Where one class is the best at all four corners, it
    wins the cell; where the same two classes are the best two at all four, only those two are
    resampled, and compared exactly as in a full resampling; the remaining pixels (where three
    classes meet: ~3% on model-shaped logits) are interpolated over all classes, which can differ
    from F.interpolate in the last bit; beyond a quarter of the pixels (white noise) the dense path
    takes over. "Best" means by more than float rounding, so that no excluded class can tie after
    interpolation."""
    logits = logits.float()
    gpu = logits.device.type != "cpu" if gpu is None else gpu
    dense = gpu if dense is None else dense
    if dense or logits.shape[0] < 3:
        return _running_argmax(
            lambda s: resample(logits[s], valid, size, step), logits.shape[0], size[0] * size[1], gpu
        )
    # The best three per source pixel (topk is 2x slower on CPUs than masking the best out twice).
    v1, c1 = logits.max(0)
    rest = logits.scatter(0, c1[None], -torch.inf)
    v2, c2 = rest.max(0)
    v3 = rest.scatter_(0, c2[None], -torch.inf).amax(0)
    lo, hi, in_order = torch.minimum(c1, c2), torch.maximum(c1, c2), c1 < c2
    # Interpolation rounds each compared value by ~1e-7 of the larger magnitude: margins of 1e-5 of the
    # largest magnitude among the best three leave no excluded class a tie (larger ones lose by more).
    tol = 1e-5 * torch.maximum(v1.abs().max(), v3.abs().max())
    single = _same_at_corners(c1, v1 - v2 > tol)
    pair = _same_at_corners(lo, hi, v2 - v3 > tol) & ~single
    grid = _Grid(logits, valid, size, step)
    rest = grid.pixels(grid.cells(~(single | pair)))
    if rest.shape[0] > DENSE_ABOVE * size[0] * size[1]:
        return semantic_from_logits(logits, valid, size, step, dense=True)
    # Per cell, the candidates (lo, hi) of a pair; a single class twice. The resampled values of the
    # pair's two classes decide between them (elsewhere they do not matter).
    first, second = torch.where(pair, lo, c1), torch.where(pair, hi, c1)
    pair_values = resample(
        torch.stack([torch.where(in_order, v1, v2), torch.where(in_order, v2, v1)]), valid, size, step
    )
    out = _pick(grid.cells(first), grid.cells(second), pair_values[0], pair_values[1])
    return grid.score(logits, rest, out, lambda xs, at: xs.argmax(1), logits.shape[0])


def semantic_from_queries(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    valid: tuple[float, float],
    size: tuple[int, int],
    step: tuple[float, float] | None = None,
    dense: bool | None = None,
    gpu: bool | None = None,
) -> torch.Tensor:
    """Mask-classification models' semantic map: class_logits [Q, C+1], mask_logits [Q, h, w] ->
    class ids [H, W] int64: argmax over classes of sum_q p(class | q) * sigmoid(mask_q), with the mask
    logits resampled to the target size first (the Mask2Former authors' order).

    `dense` (default: GPU-shaped, `gpu`, whose default is by device) scores every class at every pixel,
    in one pass up to GPU_CHUNK elements when GPU-shaped. Otherwise (CPUs): within a source
    cell each resampled mask logit lies between the minimum and maximum of the cell's four corners
    and the sigmoid is increasing, so each class's score lies in [sum_q p sigmoid(min), sum_q p
    sigmoid(max)]. A class whose upper bound is below the best lower bound cannot win the cell (with
    a relative margin of 1e-4 for float rounding). Where one class is left, it wins the cell; where
    two are, only those two are scored per pixel; elsewhere all classes are."""
    cls = class_logits.float().softmax(-1)[:, :-1]  # [Q, C]
    masks = mask_logits.float()
    gpu = masks.device.type != "cpu" if gpu is None else gpu
    dense = gpu if dense is None else dense
    if dense:
        pixels = size[0] * size[1]

        def class_scores(cs: slice) -> torch.Tensor:  # [len(cs), H, W], summed over query chunks
            total = None
            for qs in _chunks(cls.shape[0], pixels, GPU_CHUNK) if gpu else _chunks(cls.shape[0], pixels):
                prob = resample(masks[qs], valid, size, step).sigmoid_()
                part = torch.einsum("qc,qhw->chw", cls[qs, cs], prob)
                total = part if total is None else total + part
            return total

        return _running_argmax(class_scores, cls.shape[1], pixels, gpu)

    def prob(m: torch.Tensor) -> torch.Tensor:
        # Scaled by 2^64 (exact; the argmax stays): mask logits below -87 give subnormal floats,
        # which make CPU matrix products 10x slower.
        return m.sigmoid_().mul_(2.0**64)

    c00, c01, c10, c11 = _corners(masks)
    low = prob(torch.minimum(torch.minimum(c00, c01), torch.minimum(c10, c11)))
    high = prob(torch.maximum(torch.maximum(c00, c01), torch.maximum(c10, c11)))
    low, high = (torch.einsum("qc,qhw->chw", cls, m) for m in (low, high))
    best, label = low.max(0)
    others = high.scatter(0, label[None], -1.0)  # upper bounds of the classes but the best
    rival, runner = others.max(0)
    third = others.scatter_(0, runner[None], -1.0).amax(0)
    single = best > rival * (1 + 1e-4)
    pair = best > third * (1 + 1e-4)  # every class but the two is out
    grid = _Grid(masks, valid, size, step)
    rest = grid.pixels(grid.cells(~pair))
    if rest.shape[0] > DENSE_ABOVE * size[0] * size[1]:
        return semantic_from_queries(class_logits, mask_logits, valid, size, step, dense=True)
    lo, hi = torch.minimum(label, runner).view(-1), torch.maximum(label, runner).view(-1)  # per cell
    by_class = cls.T.contiguous()  # [C, Q]
    weights = by_class.index_select(0, hi) - by_class.index_select(0, lo)  # [h * w, Q]: score(hi) - score(lo)

    def two(xs: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        cell = grid.cell[at]
        return torch.where((prob(xs) * weights.index_select(0, cell)).sum(1) > 0, hi[cell], lo[cell])

    out = grid.score(masks, grid.pixels(grid.cells(pair & ~single)), grid.cells(label), two, cls.shape[0])
    return grid.score(masks, rest, out, lambda xs, at: (prob(xs) @ cls).argmax(1), cls.shape[1])


def region_stats(bins: torch.Tensor, n: int) -> torch.Tensor:
    """bins [H, W] int64 in [0, n] (n = no region) -> [n, 5] int64: area, x0, y0, x1, y1 (inclusive;
    x0 = W, x1 = -1 for an empty region). Reduces row by row, so memory is [H, n+1], not per pixel."""
    height, width = bins.shape
    device = bins.device
    xs = arange_on(width, device).expand(height, width)
    x0 = torch.full((height, n + 1), width, dtype=torch.int64, device=device).scatter_reduce_(1, bins, xs, "amin")
    x1 = torch.full((height, n + 1), -1, dtype=torch.int64, device=device).scatter_reduce_(1, bins, xs, "amax")
    present = x1 >= 0  # [H, n+1]: the region has a pixel in this row
    rows = arange_on(height, device)[:, None]
    y0 = torch.where(present, rows, height).amin(0)
    y1 = torch.where(present, rows, -1).amax(0)
    area = count_ids(bins, n + 1)
    return torch.stack([area, x0.amin(0), y0, x1.amax(0), y1], dim=1)[:n]


def panoptic(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    valid: tuple[float, float],
    size: tuple[int, int],
    rule: PanopticRule,
    params: PanopticParams,
    is_thing: torch.Tensor,
    compact: bool,
    step: tuple[float, float] | None = None,
    gpu: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's panoptic segments -> (semantic [H, W] int64, instance [H, W] int64, records [K, 9] float64).

    class_logits [Q, C+1] (last = no object), mask_logits [Q, h, w], is_thing [C] bool; `valid` and
    `step` place the image in mask_logits (see `resample`).
    Segments are the queries that pass the score filter, win pixels in the score-weighted argmax and
    keep more than `overlap` of their own mask. Thing segments become instances 1..N in query order.

    `compact=True` drops filtered queries first (a host sync: free on a CPU, where pixels are the cost);
    `compact=False` keeps every query and masks the filtered ones out (no sync: for GPUs). Both give
    the same maps. Records: one row per kept query (all Q rows when not compact) with RECORD_FIELDS;
    rows with valid == 0 are not segments; instance == 0 for stuff. `gpu` (default: by device): every
    pass over all pixels at once (CPU-shaped: band by band of rows, in the cache).
    """
    num_classes = class_logits.shape[-1] - 1
    device = class_logits.device
    gpu = device.type != "cpu" if gpu is None else gpu
    score, label = class_logits.float().softmax(-1).max(-1)  # [Q]
    keep = (label != num_classes) & (score > params.threshold)
    if compact:
        idx = keep.nonzero()[:, 0]
        score, label, keep, mask_logits = score[idx], label[idx], keep[idx], mask_logits[idx]
    q = score.shape[0]
    if q == 0:  # nothing passed the filter
        sem = torch.full(size, params.ignore, dtype=torch.int64, device=device)
        empty = torch.zeros(0, 9, dtype=torch.float64, device=device)
        return sem, torch.zeros(size, dtype=torch.int64, device=device), empty

    # Score-weighted argmax over queries at the target size, chunk by chunk (memory bounded).
    best = winner = winner_prob = None
    original = []
    reuse = rule.weighted_area and not rule.intersect  # prob is not read after weighting: weigh in place
    dropped = None if compact else ~keep
    pixels = size[0] * size[1]
    for s in _chunks(q, pixels, GPU_CHUNK) if gpu else _chunks(q, pixels):
        m = mask_logits[s].float()
        x = resample(m.sigmoid(), valid, size, step) if rule.prob_space else resample(m, valid, size, step)
        # CPUs: the elementwise passes run band by band of rows, in place where the probabilities are not
        # needed again: each band stays in the cache through all of them (1.5x). GPUs: one pass each.
        bands = [slice(None)] if gpu else _bands(x.shape[0] * size[1], size[0])
        parts = [
            _weigh(x[:, rows], score[s], None if dropped is None else dropped[s], rule, params, reuse) for rows in bands
        ]
        if len(parts) == 1:
            counts, v, a, p = parts[0]
        else:
            counts = torch.stack([c for c, _, _, _ in parts]).sum(0)
            v, a = torch.cat([v for _, v, _, _ in parts]), torch.cat([a for _, _, a, _ in parts])
            p = torch.cat([p for _, _, _, p in parts]) if rule.intersect else None
        original.append(counts)
        if best is None:
            best, winner, winner_prob = v, a, p
        else:
            better = v > best
            best, winner = torch.where(better, v, best), torch.where(better, a + s.start, winner)
            winner_prob = torch.where(better, p, winner_prob) if rule.intersect else None
    original = original[0] if len(original) == 1 else torch.cat(original)

    area = count_ids(winner, q)  # pixels each query wins
    if rule.intersect:
        inside = winner_prob >= params.mask_threshold  # a segment keeps its own confident pixels only
        final = count_ids(winner, q, inside)
    else:
        inside, final = None, area
    ratio = area.to(torch.float32) / original.to(torch.float32)  # the float32 ratio transformers tests
    segment = keep & (area > 0) & (original > 0) & (final > 0) & (ratio > params.overlap)

    thing = segment & is_thing[label.clamp(max=num_classes - 1)]
    instance_of = torch.cumsum(thing.to(torch.int64), 0) * thing  # query -> instance id (0: none)
    claimed = segment[winner] if inside is None else segment[winner] & inside
    region = torch.where(claimed, winner, q)  # each pixel's segment, q: none
    # Per query (and q: no segment) its semantic class and instance id: two look-ups per pixel.
    sem = torch.cat([label, label.new_full((1,), params.ignore)])[region]
    inst = torch.cat([instance_of, instance_of.new_zeros(1)])[region]
    stats = region_stats(region, q)  # area, box of each query's claimed pixels
    records = torch.cat(
        [torch.stack([segment, instance_of, label], dim=1).double(), score[:, None].double(), stats.double()], dim=1
    )
    return sem, inst, records


def _weigh(x, score, dropped, rule: PanopticRule, params: PanopticParams, reuse: bool):
    """One pass over mask logits (or probabilities) x [q, rows, W] of a chunk of queries -> (pixels each
    query counts in its original area [q], best weighted probability [rows, W], its query, and with
    EoMT's rule that query's own probability there)."""
    prob = x if rule.prob_space else x.sigmoid_()
    weighted = prob.mul_(score[:, None, None]) if reuse else prob * score[:, None, None]
    if dropped is not None:  # filtered queries never win a pixel (kept ones weigh >= 0)
        weighted.masked_fill_(dropped[:, None, None], -1.0)
    counted = weighted if rule.weighted_area else prob
    counts = count_true(counted >= params.mask_threshold)
    v, a = weighted.max(0)  # ties: the first query, as transformers' argmax
    p = prob.gather(0, a[None])[0] if rule.intersect else None
    return counts, v, a, p
