"""Per-image label measures, computed from the stored maps alone (no ground truth), and the
per-shard sums a report is built from. Runs in the report's worker processes.

One shard: tar stream -> (key, members) -> decode both maps (shards.png fast path) and the JSON
-> one row of measures + additions to the shard's sums (class pixels, instance histograms,
semantic pixels per image-level class). The JPEG is never decoded: no measure needs it.

Definitions (docs/QUALITY.md): "labelled" pixels are those whose semantic id is a class of the
label space (not ignore, not out of range). An instance's purity is the share of its pixels in its
majority semantic class; ignore pixels inside an instance count against it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards import format as fmt
from shards.pack import decode_png
from shards.samples import TableError, read_url, url_beside
from shards.tar import TarError

from .output import SemanticClasses, iter_samples


@dataclass(frozen=True)
class Measure:
    name: str
    help: str
    worst: str | None  # "low" | "high": which end of the range is worth a look; None: neither
    binary: bool = False  # a yes/no measure (1/0): the worst images are only those at the bad end


MEASURES = [
    Measure("coverage", "share of pixels with a semantic class (not ignore)", "low"),
    Measure("classes", "semantic classes present in the image", None),
    Measure("entropy", "entropy of the image's semantic class distribution, in bits (0: one class)", "high"),
    Measure("instances", "instances in the image", "low"),
    Measure("instance_coverage", "share of pixels inside an instance", None),
    Measure("instance_area", "median instance area, as a share of the image (empty: no instances)", "low"),
    Measure("largest_instance", "largest instance area, as a share of the image (empty: no instances)", None),
    Measure("score", "mean instance score from the labeler (empty: no instances)", "low"),
    Measure("purity", "share of instance pixels in their instance's majority semantic class", "low"),
    Measure("thing_fraction", "share of instance pixels whose semantic class is a thing", "low"),
    Measure(
        "found",
        "text-prompted presets: 1 if the image's prompt found its object, else 0 (empty: others)",
        "low",
        binary=True,
    ),
]
MEASURE_NAMES = [m.name for m in MEASURES]
# Columns that identify a sample; `index` is its position in its shard (what wids addresses);
# `cls_index` is -1 for an image without a class.
ID_COLUMNS = ["key", "shard", "index", "cls_index", "width", "height", "source"]
COLUMNS = ID_COLUMNS + MEASURE_NAMES
INT_COLUMNS = {"index", "cls_index", "width", "height", "classes", "instances"}
TEXT_COLUMNS = {"key", "shard", "source"}

# Fixed bins for per-instance distributions, so shards add up without a second pass.
AREA_EDGES = np.linspace(-5.0, 0.0, 26)  # log10 of an instance's area share: 1e-5 .. 1
PURITY_EDGES = np.linspace(0.0, 1.0, 21)


@dataclass
class ShardMeasures:
    """One shard's rows and sums; shards are concatenated and summed by the report."""

    shard: str
    columns: dict[str, Any] = field(default_factory=lambda: {c: [] for c in COLUMNS})  # lists, then arrays
    class_pixels: np.ndarray | None = None  # [K + 1]: pixels per class; the last bin: ignore and out of range
    class_images: np.ndarray | None = None  # [K]: images in which each class appears
    by_image_class: dict[int, np.ndarray] = field(default_factory=dict)  # .cls -> [K + 1] pixels
    area_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(AREA_EDGES) - 1, np.int64))
    purity_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(PURITY_EDGES) - 1, np.int64))
    out_of_range: int = 0  # pixels whose id is neither a class nor ignore (`c2f validate` flags them)
    problems: list[tuple[str | None, str]] = field(default_factory=list)  # (key, message)
    rows: Any = None  # the shard's rows of the report's table (a pyarrow Table, quality.table.extend)

    @property
    def samples(self) -> int:
        return len(self.columns["key"])


def entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return math.nan
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one class gives 0.0, not -0.0


def joint_counts(inst: np.ndarray, sem: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids present (> 0) and their pixels per semantic class: ([N], [N, k + 1]); the last
    column counts pixels with no class (ignore or out of range). Linear in the pixels: no sort."""
    mask = inst > 0
    iv = inst[mask].astype(np.int64)
    if iv.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, k + 1), np.int64)
    sv = np.minimum(sem[mask], k).astype(np.int64)
    present = np.bincount(iv)
    ids = np.flatnonzero(present)
    ids = ids[ids > 0]
    compact = np.zeros(len(present), np.int64)
    compact[ids] = np.arange(len(ids))
    joint = np.bincount(compact[iv] * (k + 1) + sv, minlength=len(ids) * (k + 1)).reshape(len(ids), k + 1)
    return ids, joint


class Accumulator:
    """Measures every sample `add`ed, for one shard of one output."""

    def __init__(self, shard: str, space: SemanticClasses):
        self.space = space
        k = space.num_classes
        self.n_raw = space.ignore + 1  # raw semantic ids run 0..ignore
        self.result = ShardMeasures(shard, class_pixels=np.zeros(k + 1, np.int64), class_images=np.zeros(k, np.int64))
        self.is_thing = np.zeros(k + 1, bool)
        if space.things is not None:
            self.is_thing[[t for t in space.things if t < k]] = True

    def add(self, key: str, index: int, sem: np.ndarray, inst: np.ndarray, meta: dict) -> None:
        r, k = self.result, self.space.num_classes
        if sem.shape != inst.shape:
            raise ValueError(f"semantic map {sem.shape} and instance map {inst.shape} differ in size")
        h, w = sem.shape
        pixels = h * w
        raw = np.bincount(sem.ravel(), minlength=self.n_raw)
        classes = raw[:k]
        unlabelled = int(raw[k:].sum())
        r.out_of_range += unlabelled - int(raw[self.space.ignore])
        r.class_pixels[:k] += classes
        r.class_pixels[k] += unlabelled
        r.class_images += classes > 0
        cls = (meta.get("class") or {}).get("index")
        if isinstance(cls, int):
            acc = r.by_image_class.setdefault(cls, np.zeros(k + 1, np.int64))
            acc[:k] += classes
            acc[k] += unlabelled

        ids, joint = joint_counts(inst, sem, k)
        areas = joint.sum(1)
        inst_pixels = int(areas.sum())
        majority = joint[:, :k].max(1) if k else np.zeros(len(ids), np.int64)
        if len(ids):
            np.add.at(r.area_hist, _bin(np.log10(areas / pixels), AREA_EDGES), 1)
            np.add.at(r.purity_hist, _bin(majority / areas, PURITY_EDGES), 1)
        is_thing = self.is_thing
        if self.space.things is None:  # this image's instance categories name its thing classes
            cats = [i.get("category") for i in meta.get("instances", [])]
            is_thing = np.zeros(k + 1, bool)
            named = [c for c in cats if isinstance(c, int) and 0 <= c < k]
            is_thing[named] = True
            thing_known = bool(named)
        else:
            thing_known = True
        scores = [float(i["score"]) for i in meta.get("instances", []) if isinstance(i.get("score"), (int, float))]
        prompted = isinstance(meta.get("prompt"), str)
        row = {
            "key": key,
            "shard": r.shard,
            "index": index,
            "cls_index": cls if isinstance(cls, int) else -1,
            "width": w,
            "height": h,
            "source": str(meta.get("source", "")),
            "coverage": float(classes.sum()) / pixels,
            "classes": int((classes > 0).sum()),
            "entropy": entropy_bits(classes),
            "instances": len(ids),
            "instance_coverage": inst_pixels / pixels,
            "instance_area": float(np.median(areas)) / pixels if len(ids) else math.nan,
            "largest_instance": float(areas.max()) / pixels if len(ids) else math.nan,
            "score": float(np.mean(scores)) if scores else math.nan,
            "purity": float(majority.sum()) / inst_pixels if inst_pixels else math.nan,
            "thing_fraction": (
                float(joint[:, is_thing].sum()) / inst_pixels if inst_pixels and thing_known else math.nan
            ),
            "found": float(len(ids) > 0) if prompted else math.nan,
        }
        for c in COLUMNS:
            r.columns[c].append(row[c])


def _bin(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value in uniform `edges`, computed arithmetically so that a value on an edge
    (purity 0.6) lands in the bin it starts, whatever the edges' rounding; outside values clip."""
    lo, hi, n = edges[0], edges[-1], len(edges) - 1
    return np.clip(np.floor((values - lo) * (n / (hi - lo)) + 1e-9), 0, n - 1).astype(np.int64)


def measure_shard(url: str, space: SemanticClasses, classes: list[str] | None = None) -> ShardMeasures:
    """Every sample of one shard, and the shard's table extended with them (`rows`, quality.table).
    A sample that does not decode, a shard that is not a tar or a table that cannot be read is
    recorded as a problem (the report lists them and points at `c2f validate`), never raised."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    acc = Accumulator(name, space)
    problems = acc.result.problems
    try:
        for index, (key, s) in enumerate(iter_samples(url, lambda key, code, msg: problems.append((key, msg)))):
            try:
                acc.add(key, index, decode_png(s[fmt.SEM]), decode_png(s[fmt.INST]), json.loads(s[fmt.META]))
            except (KeyError, ValueError, TypeError, OSError) as e:
                problems.append((key, f"not measured: {type(e).__name__}: {e}"))
    except TarError as e:
        problems.append((None, str(e)))
    except OSError as e:
        problems.append((None, f"cannot read: {e}"))
    acc.result.columns = as_arrays(acc.result.columns)
    try:
        rows = read_url(url_beside(url))
    except TableError as e:
        problems.append((None, f"{fmt.table_name(name)}: {e}"))
        rows = None
    from .table import extend

    acc.result.rows = extend(name, rows, acc.result.columns, classes or [])
    return acc.result


def as_arrays(columns: dict[str, list]) -> dict[str, np.ndarray]:
    """Column lists -> compact arrays (what crosses the process boundary and what the report keeps)."""
    out = {}
    for c, values in columns.items():
        if c in TEXT_COLUMNS:
            out[c] = np.array(values, dtype=str)
        elif c in INT_COLUMNS:
            out[c] = np.array(values, dtype=np.int64)
        else:
            out[c] = np.array(values, dtype=np.float64)
    return out
