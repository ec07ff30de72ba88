"""`classical`: weight-free labels from image structure alone (no learned weights, no downloads).

    RGB -> working size (longest side <= max_side)
        -> Felzenszwalb-Huttenlocher graph segmentation (scikit-image)        regions that follow edges
        -> merge adjacent regions whose mean CIELAB colours are close         fewer, object-sized parts
        -> semantic: each region's colour name x texture -> one of 20 fixed stuff classes
        -> instances: regions of object size (1%-50% of the image, not mostly on the border)
        -> both maps back to the image's size (nearest neighbour)

FH is the mask source DetCon pretrained on (Hénaff et al., ICCV 2021). The semantic classes are a
fixed, documented codebook (`CLASS_NAMES`), not per-image cluster ids: "textured green" means the
same thing in every image, so a model can learn to predict it from context. Every step is a pure
function of the pixels: the same image always gives the same maps (tested). Why this rule and
what it cannot do: docs/LABELERS.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels

from .base import LocalLabeler
from .composite import label_each
from .overlap import instance_records

# CIELAB hue sectors (degrees of atan2(b*, a*)), chosen so sRGB's primaries and the common scene
# colours land in the sector their name says: red 40, orange/brown 55-75, skin 75, yellow 102,
# green 136, cyan 196, sky 235, blue 290-306, violet 311, magenta 328.
HUES = [("red", 345.0), ("orange", 45.0), ("yellow", 80.0), ("green", 110.0), ("cyan", 180.0), ("blue", 230.0)]
HUES += [("purple", 315.0)]  # each sector runs from its start to the next one's
NEUTRALS = ["black", "grey", "white"]  # chroma below `neutral_chroma`: by lightness
COLOURS = NEUTRALS + [name for name, _ in HUES]
TEXTURES = ["smooth", "textured"]
CLASS_NAMES = [f"{t} {c}" for c in COLOURS for t in TEXTURES]  # class id = 2 * colour + texture


@dataclass(frozen=True)
class ClassicalParams:
    """Every constant of the rule; recorded in the manifest. Fractions are of the image's area."""

    max_side: int = 320  # FH works at this longest side, so its settings mean the same on every image
    scale: float = 300.0  # FH `k`: larger gives fewer, larger regions
    sigma: float = 0.8  # FH Gaussian pre-smoothing (pixels at working size)
    min_region: float = 0.002  # FH `min_size`: smaller regions are absorbed by a neighbour
    merge_delta_e: float = 10.0  # adjacent regions closer than this CIE76 colour distance are merged
    min_instance: float = 0.01  # instances cover at least this share of the image ...
    max_instance: float = 0.5  # ... and at most this share (larger regions are background)
    max_border: float = 0.4  # a region with more of its boundary on the image border is background
    neutral_chroma: float = 12.0  # CIELAB chroma below which a colour is black / grey / white
    dark_l: float = 30.0  # L* below this: black
    light_l: float = 75.0  # L* at or above this: white
    texture_std: float = 6.0  # median local std of L* (5x5) above which a region is "textured"
    contrast_scale: float = 40.0  # score = min(1, colour distance to neighbours / this)


def working_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def resize_nearest(ids: np.ndarray, h: int, w: int) -> np.ndarray:
    """[h0, w0] ids -> [h, w], sampling at pixel centres (ids are never blended)."""
    h0, w0 = ids.shape
    rows = np.minimum(((np.arange(h) + 0.5) * (h0 / h)).astype(np.int64), h0 - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (w0 / w)).astype(np.int64), w0 - 1)
    return ids[rows][:, cols]


def adjacency(regions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b) of 4-adjacent regions and the length of their shared boundary."""
    a = np.concatenate([regions[:, :-1].ravel(), regions[:-1].ravel()])
    b = np.concatenate([regions[:, 1:].ravel(), regions[1:].ravel()])
    diff = a != b
    lo, hi = np.minimum(a[diff], b[diff]).astype(np.int64), np.maximum(a[diff], b[diff]).astype(np.int64)
    pairs, length = np.unique(lo * n + hi, return_counts=True)
    return pairs // n, pairs % n, length


def region_means(regions: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-region pixel count [n] and mean of each channel of `values` [H, W, C] -> [n, C]."""
    flat = regions.ravel()
    count = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat, values[..., c].ravel(), minlength=n) for c in range(values.shape[-1])], 1)
    return count, sums / np.maximum(count, 1)[:, None]


def merge_regions(regions: np.ndarray, lab: np.ndarray, threshold: float) -> np.ndarray:
    """Join adjacent regions whose mean colours are closer than `threshold` (connected components
    of the graph of close neighbours, the rule of skimage's `cut_threshold`, without its per-edge
    Python loop); ids are renumbered 0..m-1 in order of first appearance."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(regions.max()) + 1
    _, mean = region_means(regions, lab, n)
    a, b, _ = adjacency(regions, n)
    close = np.linalg.norm(mean[a] - mean[b], axis=1) < threshold
    graph = coo_matrix((np.ones(int(close.sum())), (a[close], b[close])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    merged = component[regions]
    _, first, inverse = np.unique(merged.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # components numbered by where they first appear
    return order[inverse].reshape(regions.shape)


def colour_class(lab_mean: np.ndarray, p: ClassicalParams) -> np.ndarray:
    """[n, 3] mean CIELAB -> [n] colour index into COLOURS."""
    L, a, b = lab_mean[:, 0], lab_mean[:, 1], lab_mean[:, 2]
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a)) % 360
    starts = np.array([s for _, s in HUES])
    # Sector i spans [starts[i], starts[i+1]); red wraps around 0 (its start is the largest).
    sector = (np.searchsorted(starts[1:], hue, side="right") % len(HUES)).astype(np.int64)
    sector[(hue >= starts[0]) | (hue < starts[1])] = 0
    neutral = np.where(L < p.dark_l, 0, np.where(L < p.light_l, 1, 2))
    return np.where(chroma < p.neutral_chroma, neutral, len(NEUTRALS) + sector)


def local_std(gray: np.ndarray, size: int = 5) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    m = uniform_filter(gray, size, mode="reflect")
    m2 = uniform_filter(gray * gray, size, mode="reflect")
    return np.sqrt(np.maximum(m2 - m * m, 0))


def region_median(regions: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Median of `values` over each region's pixels: [n] (0 for empty regions)."""
    flat, v = regions.ravel(), values.ravel()
    order = np.lexsort((v, flat))
    starts = np.searchsorted(flat[order], np.arange(n))
    counts = np.bincount(flat, minlength=n)
    mid = np.minimum(starts + counts // 2, len(v) - 1)
    return np.where(counts > 0, v[order][mid], 0.0)


def label_image(rgb: np.ndarray, p: ClassicalParams) -> Labels:
    """[H, W, 3] uint8 -> semantic (uint8 ids into CLASS_NAMES) and instance maps at [H, W]."""
    from skimage.color import rgb2lab
    from skimage.segmentation import felzenszwalb

    h, w = rgb.shape[:2]
    wh, ww = working_size(h, w, p.max_side)
    small = rgb if (wh, ww) == (h, w) else _resize_rgb(rgb, wh, ww)
    min_size = max(4, round(p.min_region * wh * ww))
    regions = felzenszwalb(small, scale=p.scale, sigma=p.sigma, min_size=min_size).astype(np.int64)
    lab = rgb2lab(small)
    regions = merge_regions(regions, lab, p.merge_delta_e)
    n = int(regions.max()) + 1
    count, mean = region_means(regions, lab, n)

    # Semantic: colour name x texture of each region.
    texture = region_median(regions, local_std(lab[..., 0]), n) >= p.texture_std
    cls = 2 * colour_class(mean, p) + texture.astype(np.int64)
    semantic = cls[regions].astype(np.uint8)

    # Instances: object-sized regions that are not mostly image border.
    border = np.zeros(n)
    for edge in (regions[0], regions[-1], regions[:, 0], regions[:, -1]):
        border += np.bincount(edge, minlength=n)
    a, b, length = adjacency(regions, n)
    perimeter = border + np.bincount(a, length, minlength=n) + np.bincount(b, length, minlength=n)
    area = count / (wh * ww)
    keep = (area >= p.min_instance) & (area <= p.max_instance) & (border <= p.max_border * perimeter)
    # Score: colour distance to the neighbours, weighted by shared boundary length.
    dist = np.linalg.norm(mean[a] - mean[b], axis=1) * length
    contrast = (np.bincount(a, dist, minlength=n) + np.bincount(b, dist, minlength=n)) / np.maximum(
        perimeter - border, 1
    )
    kept = np.flatnonzero(keep)
    ids = np.zeros(n, np.int64)
    ids[kept] = np.arange(1, len(kept) + 1)
    instance = ids[regions]
    if (wh, ww) != (h, w):
        semantic, instance = resize_nearest(semantic, h, w), resize_nearest(instance, h, w)
    # Number instances largest first (areas at full size), ties by region order.
    area_full = np.bincount(instance.ravel(), minlength=len(kept) + 1)[1:]
    order = np.lexsort((np.arange(len(kept)), -area_full))
    renumber = np.zeros(len(kept) + 1, np.uint16)
    renumber[order + 1] = np.arange(1, len(kept) + 1)
    instance = renumber[instance]
    scores = [min(1.0, float(contrast[kept[i]]) / p.contrast_scale) for i in order]
    return Labels(semantic, instance, instance_records(instance, [None] * len(kept), scores))


def _resize_rgb(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None))


class ClassicalLabeler(LocalLabeler):
    """Weight-free labels (see the module docstring); class-agnostic instances."""

    def __init__(self, params: ClassicalParams | None = None):
        self.params = params or ClassicalParams()

    def _run(self, images: list[np.ndarray]) -> list[Labels]:
        return [label_image(im, self.params) for im in images]

    def label(self, images: list[np.ndarray], contexts=None) -> list[Labels | Exception]:
        return label_each(self._run, images)

    def label_space(self) -> LabelSpace:
        return LabelSpace(semantic={str(i): n for i, n in enumerate(CLASS_NAMES)})

    def describe(self) -> LabelerInfo:
        import skimage

        return LabelerInfo(
            "classical",
            weight_free=True,
            note=(
                "weight-free: instances are Felzenszwalb-Huttenlocher regions (scikit-image) merged by colour "
                "and kept at object size; semantic classes are a fixed colour x texture codebook of 20 stuff "
                "classes. No learned weights: the labels describe image structure, not object categories."
            ),
            settings=dataclasses.asdict(self.params),
            scikit_image=skimage.__version__,
        )
