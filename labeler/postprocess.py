"""Semantic and panoptic post-processing in torch, on the model's device, one image at a time and,
on GPUs, without waiting for the device (see `panoptic(compact=...)`).

What transformers' `post_process_*_segmentation` do per image and per query with a `.item()` each,
these functions do with whole-tensor operations: the score filter, the mask-probability argmax at the
target size, the overlap-area rule, the look-up to class and instance ids, and the instance records
(area, bbox, score). Every image is cut out of its padded canvas before it is resized (`resample`), so
its maps do not depend on the other images of its batch.

Rules per model family (`PanopticRule`) mirror transformers' post-processors, which the equivalence
tests check pixel by pixel; docs/LABELERS.md lists where they differ from the papers' code.
"""

from __future__ import annotations

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
    sh, sw = step if step is not None else (1.0, 1.0)

    def coords(n_out: int, extent: float, n_in: int, st: float) -> torch.Tensor:
        src = (torch.arange(n_out, dtype=torch.float64, device=x.device) + 0.5) * (extent / n_out) - 0.5
        src = src.clamp(0.0, extent - 0.5 * st - 0.5)
        return ((2 * src + 1) / n_in - 1).to(torch.float32)  # grid_sample's normalised coordinates

    gy, gx = coords(size[0], vh, h, sh), coords(size[1], vw, w, sw)
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]  # [1, H, W, 2] (x, y)
    out = F.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].to(x.dtype)


def count_true(masks: torch.Tensor) -> torch.Tensor:
    """masks [N, H, W] bool -> [N] int64 counts. Summing the bytes as uint8 into int32 is 1.5x faster on
    CPUs than torch's bool reductions (sum, count_nonzero); the same on GPUs."""
    return masks.view(torch.uint8).sum((1, 2), dtype=torch.int32).long()


def _chunks(n: int, pixels: int, budget: int = 1 << 25):
    """Slices of range(n) whose [len, pixels] float32 tensors stay within `budget` elements (128 MB), so
    memory is bounded for any image size while an ImageNet-sized image (~0.2 MP) takes one step."""
    step = max(1, budget // max(pixels, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _running_argmax(maps, n: int, pixels: int) -> torch.Tensor:
    """argmax over n channels of maps(chunk) [len(chunk), H, W] -> [H, W] int64, chunk by chunk with a
    running maximum; ties go to the first channel, as with one argmax over all of them."""
    best = winner = None
    for s in _chunks(n, pixels):
        v, a = maps(s).max(0)
        if best is None:
            best, winner = v, a
        else:
            better = v > best
            best, winner = torch.where(better, v, best), torch.where(better, a + s.start, winner)
    return winner


def semantic_from_logits(
    logits: torch.Tensor, valid: tuple[float, float], size: tuple[int, int], step: tuple[float, float] | None = None
) -> torch.Tensor:
    """Per-pixel class scores (SegFormer, UperNet, BEiT...) logits [C, h, w] -> class ids [H, W] int64."""
    logits = logits.float()
    return _running_argmax(lambda s: resample(logits[s], valid, size, step), logits.shape[0], size[0] * size[1])


def semantic_from_queries(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    valid: tuple[float, float],
    size: tuple[int, int],
    step: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Mask-classification models' semantic map: class_logits [Q, C+1], mask_logits [Q, h, w] ->
    class ids [H, W] int64: argmax over classes of sum_q p(class | q) * sigmoid(mask_q), with the mask
    logits resampled to the target size first (the Mask2Former authors' order)."""
    cls = class_logits.float().softmax(-1)[:, :-1]  # [Q, C]
    masks = mask_logits.float()
    pixels = size[0] * size[1]

    def class_scores(cs: slice) -> torch.Tensor:  # [len(cs), H, W], summed over query chunks
        total = None
        for qs in _chunks(cls.shape[0], pixels):
            prob = resample(masks[qs], valid, size, step).sigmoid_()
            part = torch.einsum("qc,qhw->chw", cls[qs, cs], prob)
            total = part if total is None else total + part
        return total

    return _running_argmax(class_scores, cls.shape[1], pixels)


def region_stats(bins: torch.Tensor, n: int) -> torch.Tensor:
    """bins [H, W] int64 in [0, n] (n = no region) -> [n, 5] int64: area, x0, y0, x1, y1 (inclusive;
    x0 = W, x1 = -1 for an empty region). Reduces row by row, so memory is [H, n+1], not per pixel."""
    height, width = bins.shape
    device = bins.device
    xs = torch.arange(width, device=device).expand(height, width)
    x0 = torch.full((height, n + 1), width, dtype=torch.int64, device=device).scatter_reduce(1, bins, xs, "amin")
    x1 = torch.full((height, n + 1), -1, dtype=torch.int64, device=device).scatter_reduce(1, bins, xs, "amax")
    present = x1 >= 0  # [H, n+1]: the region has a pixel in this row
    rows = torch.arange(height, device=device)[:, None]
    y0 = torch.where(present, rows, height).amin(0)
    y1 = torch.where(present, rows, -1).amax(0)
    area = torch.bincount(bins.flatten(), minlength=n + 1)
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's panoptic segments -> (semantic [H, W] int64, instance [H, W] int64, records [K, 9] float64).

    class_logits [Q, C+1] (last = no object), mask_logits [Q, h, w], is_thing [C] bool; `valid` and
    `step` place the image in mask_logits (see `resample`).
    Segments are the queries that pass the score filter, win pixels in the score-weighted argmax and
    keep more than `overlap` of their own mask. Thing segments become instances 1..N in query order.

    `compact=True` drops filtered queries first (a host sync: free on a CPU, where pixels are the cost);
    `compact=False` keeps every query and masks the filtered ones out (no sync: for GPUs). Both give
    the same maps. Records: one row per kept query (all Q rows when not compact) with RECORD_FIELDS;
    rows with valid == 0 are not segments; instance == 0 for stuff.
    """
    num_classes = class_logits.shape[-1] - 1
    device = class_logits.device
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
    original = torch.empty(q, dtype=torch.int64, device=device)
    for s in _chunks(q, size[0] * size[1]):
        m = mask_logits[s].float()
        if rule.prob_space:
            prob = resample(m.sigmoid(), valid, size, step)
        else:
            prob = resample(m, valid, size, step).sigmoid_()
        weighted = prob * score[s, None, None]
        if not compact:  # filtered queries never win a pixel (kept ones weigh >= 0)
            weighted.masked_fill_(~keep[s, None, None], -1.0)
        counted = weighted if rule.weighted_area else prob
        original[s] = count_true(counted >= params.mask_threshold)
        v, a = weighted.max(0)  # ties: the first query, as transformers' argmax
        p = prob.gather(0, a[None])[0] if rule.intersect else None
        if best is None:
            best, winner, winner_prob = v, a, p
        else:
            better = v > best
            best, winner = torch.where(better, v, best), torch.where(better, a + s.start, winner)
            winner_prob = torch.where(better, p, winner_prob) if rule.intersect else None

    flat = winner.flatten()
    area = torch.bincount(flat, minlength=q)  # pixels each query wins
    if rule.intersect:
        inside = winner_prob >= params.mask_threshold  # a segment keeps its own confident pixels only
        final = torch.bincount(flat, weights=inside.flatten().to(torch.float32), minlength=q)
    else:
        inside, final = None, area
    ratio = area.to(torch.float32) / original.to(torch.float32)  # the float32 ratio transformers tests
    segment = keep & (area > 0) & (original > 0) & (final > 0) & (ratio > params.overlap)

    thing = segment & is_thing[label.clamp(max=num_classes - 1)]
    instance_of = torch.cumsum(thing.to(torch.int64), 0) * thing  # query -> instance id (0: none)
    claimed = segment[winner] if inside is None else segment[winner] & inside
    sem = torch.where(claimed, label[winner], params.ignore)
    inst = torch.where(claimed, instance_of[winner], 0)
    stats = region_stats(torch.where(claimed, winner, q), q)  # area, box of each query's claimed pixels
    records = torch.cat(
        [torch.stack([segment, instance_of, label], dim=1).double(), score[:, None].double(), stats.double()], dim=1
    )
    return sem, inst, records
