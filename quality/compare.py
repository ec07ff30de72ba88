"""`c2f compare A B`: how far two labelings of the same images agree (A judged against B).

    shard i of A + shard i of B --(process pool; keys merge-joined, both are sorted)-->
        per image: semantic confusion (sparse), instance IoU matching --> per-image rows + sums
    --> class matching (ids | names | hungarian) --> overall agreement --> plots, most-disagreeing
    images --> OUT/compare.json, samples.csv, compare.html, img/

Semantic agreement is measured on the pixels B labels (B's ignore pixels are left out): pixel
accuracy is the share where A's class, mapped into B's space, equals B's; mIoU averages B-space
classes that either map uses. A's ignore pixels and A classes without a counterpart count as
wrong. Instance agreement matches instances of the two maps whose mask IoU exceeds `--iou`
(>= 0.5, so a match is unique: two non-overlapping masks cannot both cover more than half of a
third); matched fraction is the F1 of the matching (2 x matches / (instances in A + in B)), mean
IoU is over the matches, and PQ (Kirillov et al., CVPR 2019) combines them (sum of matched IoU /
(matches + unmatched / 2)). The `hungarian` matching needs the whole run's confusion first, which
costs a first pass over the semantic maps.

When one output is text-grounded (its label space's kind is `grounded`: each image's own class on
its objects) and the other is not, their class vocabularies have little in common, so the image's
class is compared on its own pixels: per image, the IoU of the grounded output's class pixels with
the other output's class that covers most of them (`class_iou`), and the share of them inside any
instance of the other output (`class_in_instances`); per image class, which of the other output's
classes its pixels get. Instance agreement needs no classes and is measured as always.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shards import format as fmt
from shards.errors import UsageError
from shards.location import is_local, local_path
from shards.manifest import load_json
from shards.pack import decode_png
from shards.tar import TarError
from shards.writer import atomic_write_bytes, atomic_write_json

from . import render
from .config import CompareConfig
from .output import Output, SemanticClasses, iter_samples, map_shards, open_output, read_some, semantic_classes
from .report import write_pictures
from .table import write_csv

COMPARE_KIND = "c2f-compare-v1"
MAX_CONFUSION = 1 << 24  # (classes of A + 1) x (classes of B + 1) cells held per image
PER_IMAGE = [
    "pixel_accuracy",
    "miou",
    "instances_a",
    "instances_b",
    "matched",
    "instance_f1",
    "instance_iou",
    "pq",
    "class_iou",  # one output grounded: its image-class pixels vs the other's class covering most of them
    "class_in_instances",  # one output grounded: share of its image-class pixels inside the other's instances
]
WORST = {
    "pixel_accuracy": "lowest semantic pixel accuracy",
    "instance_f1": "lowest instance matched fraction",
    "class_iou": "lowest IoU of the image's class (one output grounded)",
}
TILE = 160


def compact_lut(space: SemanticClasses) -> np.ndarray:
    """Raw map value -> 0..K-1 for a class, K for ignore or anything out of range."""
    lut = np.full(space.ignore + 1, space.num_classes, np.int64)
    lut[: space.num_classes] = np.arange(space.num_classes)
    return lut


@dataclass(frozen=True)
class Matching:
    """A's classes in B's space: `lut[a]` is the B class of A class a, or Kb when it has none."""

    rule: str
    lut: np.ndarray  # [Ka + 1]; A's unlabelled bin (index Ka) maps to Kb too

    def pairs(self, ka: int, kb: int) -> list[tuple[int, int]]:
        return [(a, int(self.lut[a])) for a in range(ka) if self.lut[a] < kb]


def name_key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def match_by_names(a: SemanticClasses, b: SemanticClasses) -> np.ndarray:
    by_name = {name_key(n): i for i, n in sorted(b.names.items(), reverse=True)}  # first id wins
    lut = np.full(a.num_classes + 1, b.num_classes, np.int64)
    for i, n in a.names.items():
        if i < a.num_classes and name_key(n) in by_name:
            lut[i] = by_name[name_key(n)]
    return lut


def match_hungarian(confusion: np.ndarray, ka: int, kb: int) -> np.ndarray:
    """One-to-one class matching with the most shared pixels (scipy's linear_sum_assignment)."""
    from scipy.optimize import linear_sum_assignment

    lut = np.full(ka + 1, kb, np.int64)
    shared = confusion[:ka, :kb]
    rows, cols = linear_sum_assignment(shared, maximize=True)
    keep = shared[rows, cols] > 0
    lut[rows[keep]] = cols[keep]
    return lut


def choose_rule(rule: str, a: SemanticClasses, b: SemanticClasses) -> str:
    if rule != "auto":
        return rule
    if a.names == b.names:
        return "ids"
    common = int((match_by_names(a, b)[: a.num_classes] < b.num_classes).sum())
    return "names" if common >= max(1, min(a.num_classes, b.num_classes)) / 2 else "hungarian"


# --- per image --------------------------------------------------------------------------------------


def semantic_confusion(sem_a: np.ndarray, sem_b: np.ndarray, lut_a: np.ndarray, lut_b: np.ndarray) -> np.ndarray:
    """[Ka + 1, Kb + 1] pixel counts of (A class, B class); the last row/column: unlabelled."""
    ka1, kb1 = int(lut_a.max()) + 1, int(lut_b.max()) + 1
    a = lut_a.take(sem_a, mode="clip")
    b = lut_b.take(sem_b, mode="clip")
    return np.bincount((a * kb1 + b).ravel(), minlength=ka1 * kb1).reshape(ka1, kb1)


def semantic_scores(conf_b: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """From a [Kb + 1, Kb + 1] confusion in B's space (rows: A mapped, last = none; columns: B,
    last = unlabelled): pixel accuracy, mIoU, and per-class intersection and union [Kb]."""
    kb = conf_b.shape[1] - 1
    c = conf_b[:, :kb]  # only pixels that B labels
    total = c.sum()
    tp = np.diag(c[:kb]).astype(np.float64)
    union = c[:kb].sum(1) + c.sum(0) - tp  # A says c (where B labels) + B says c - both
    acc = float(tp.sum() / total) if total else math.nan
    used = union > 0
    miou = float((tp[used] / union[used]).mean()) if used.any() else math.nan
    return acc, miou, tp, union


def fold(conf: np.ndarray, lut: np.ndarray, kb: int) -> np.ndarray:
    """Rows of an A x B confusion summed into B's space through the class matching."""
    out = np.zeros((kb + 1, conf.shape[1]), conf.dtype)
    np.add.at(out, lut[: conf.shape[0]], conf)
    return out


def instance_agreement(inst_a: np.ndarray, inst_b: np.ndarray, threshold: float) -> tuple[int, int, int, float]:
    """(instances in A, in B, matched pairs, sum of matched IoU) for two instance maps."""
    area_a, area_b = np.bincount(inst_a.ravel()), np.bincount(inst_b.ravel())
    n_a, n_b = int((area_a[1:] > 0).sum()), int((area_b[1:] > 0).sum())
    both = (inst_a > 0) & (inst_b > 0)
    if not n_a or not n_b or not both.any():
        return n_a, n_b, 0, 0.0
    ia, ib = inst_a[both].astype(np.int64), inst_b[both].astype(np.int64)
    width = len(area_b)
    codes, inter = np.unique(ia * width + ib, return_counts=True)
    i, j = codes // width, codes % width
    iou = inter / (area_a[i] + area_b[j] - inter)
    hit = iou > threshold
    return n_a, n_b, int(hit.sum()), float(iou[hit].sum())


@dataclass(frozen=True)
class ClassSide:
    """A comparison where one output is text-grounded: which (`a` or `b`), its classes, and the other's."""

    side: str
    grounded: SemanticClasses
    other: SemanticClasses

    @staticmethod
    def of(sa: SemanticClasses, sb: SemanticClasses) -> ClassSide | None:
        if sa.grounded == sb.grounded:
            return None
        return ClassSide("a", sa, sb) if sa.grounded else ClassSide("b", sb, sa)


def class_agreement(
    sem_g: np.ndarray, class_id: int | None, sem_o: np.ndarray, inst_o: np.ndarray, lut_o: np.ndarray
) -> tuple[float, float, np.ndarray | None]:
    """The image's class pixels in the grounded map `sem_g` against the other output's maps: (IoU with
    the other's class that covers most of them, share inside one of its instances, the other's
    compact classes on them [K_o + 1]); NaN and None when the image has no pixel of its class."""
    if class_id is None:
        return math.nan, math.nan, None
    c = sem_g == class_id
    n = int(c.sum())
    if not n:
        return math.nan, math.nan, None
    k_o = int(lut_o.max())
    o = lut_o.take(sem_o, mode="clip")
    hist = np.bincount(o[c], minlength=k_o + 1)
    iou = 0.0
    if hist[:k_o].any():
        best = int(hist[:k_o].argmax())
        both = int(hist[best])
        iou = both / (n + int((o == best).sum()) - both)
    return iou, float((inst_o[c] > 0).mean()), hist


def matching_scores(n_a: int, n_b: int, matched: int, iou_sum: float) -> tuple[float, float, float]:
    """(F1 of the matching, mean IoU of the matches, PQ) from the counts of one image or a whole run;
    NaN where a score is undefined (no instances at all; no match for the mean IoU)."""
    n = n_a + n_b
    if not n:
        return math.nan, math.nan, math.nan
    return 2 * matched / n, iou_sum / matched if matched else math.nan, iou_sum / (0.5 * n)


# --- per shard pair ----------------------------------------------------------------------------------


@dataclass
class PairResult:
    shard: str
    columns: dict[str, Any] = field(
        default_factory=lambda: {c: [] for c in ["key", "shard", *PER_IMAGE]}
    )  # then arrays
    confusion: np.ndarray | None = None  # [Ka + 1, Kb + 1] over the run
    only_a: int = 0
    only_b: int = 0
    problems: list[tuple[str | None, str]] = field(default_factory=list)
    class_hist: dict[int, np.ndarray] = field(default_factory=dict)  # grounded image class -> other's classes
    class_images: dict[int, int] = field(default_factory=dict)  # grounded image class -> images with its pixels


def join_keys(a: Iterator, b: Iterator) -> Iterator[tuple[str, dict | None, dict | None]]:
    """Merge-join two shards' (key, sample) streams; both are in increasing key order (the writer's rule)."""
    end = ("\uffff", None)
    x, y = next(a, end), next(b, end)
    while x is not end or y is not end:
        if x[0] == y[0]:
            yield x[0], x[1], y[1]
            x, y = next(a, end), next(b, end)
        elif y is end or (x is not end and x[0] < y[0]):
            yield x[0], x[1], None
            x = next(a, end)
        else:
            yield y[0], None, y[1]
            y = next(b, end)


def compare_shards(
    url_a: str,
    url_b: str,
    lut_a: np.ndarray,
    lut_b: np.ndarray,
    matching: np.ndarray | None,
    threshold: float,
    classes: ClassSide | None = None,
) -> PairResult:
    """One shard pair. Without `matching` only the confusion is summed (the hungarian first pass);
    with `classes` (one output grounded) the image's class is compared on its pixels too."""
    name = url_a.rstrip("/").rsplit("/", 1)[-1]
    r = PairResult(name)
    ka1, kb1 = int(lut_a.max()) + 1, int(lut_b.max()) + 1
    r.confusion = np.zeros((ka1, kb1), np.int64)

    def report(key, code, msg):
        r.problems.append((key, msg))

    try:
        for key, sa, sb in join_keys(iter_samples(url_a, report), iter_samples(url_b, report)):
            if sa is None or sb is None:
                r.only_a += sb is None
                r.only_b += sa is None
                continue
            try:
                sem_a, sem_b = decode_png(sa[fmt.SEM]), decode_png(sb[fmt.SEM])
                if sem_a.shape != sem_b.shape:
                    raise ValueError(f"maps differ in size: {sem_a.shape} in A, {sem_b.shape} in B")
                conf = semantic_confusion(sem_a, sem_b, lut_a, lut_b)
                r.confusion += conf
                if matching is None:
                    continue
                acc, miou, _, _ = semantic_scores(fold(conf, matching, kb1 - 1))
                inst_a, inst_b = decode_png(sa[fmt.INST]), decode_png(sb[fmt.INST])
                n_a, n_b, m, iou_sum = instance_agreement(inst_a, inst_b, threshold)
                class_iou = class_in = math.nan
                if classes is not None:
                    g, o = (sa, sb) if classes.side == "a" else (sb, sa)
                    meta = load_json(g[fmt.META], ".json")
                    if not isinstance(meta, dict):
                        raise ValueError(".json is not an object")
                    cid = classes.grounded.image_class(meta)
                    sem_g, sem_o, inst_o = (sem_a, sem_b, inst_b) if classes.side == "a" else (sem_b, sem_a, inst_a)
                    lut_o = lut_b if classes.side == "a" else lut_a
                    class_iou, class_in, hist = class_agreement(sem_g, cid, sem_o, inst_o, lut_o)
                    if hist is not None:
                        r.class_hist[cid] = r.class_hist.get(cid, 0) + hist
                        r.class_images[cid] = r.class_images.get(cid, 0) + 1
            except (KeyError, ValueError, OSError) as e:
                r.problems.append((key, f"not compared: {type(e).__name__}: {e}"))
                continue
            f1, mean_iou, pq = matching_scores(n_a, n_b, m, iou_sum)
            row = {
                "key": key,
                "shard": name,
                "pixel_accuracy": acc,
                "miou": miou,
                "instances_a": n_a,
                "instances_b": n_b,
                "matched": m,
                "instance_f1": f1,
                "instance_iou": mean_iou,
                "pq": pq,
                "class_iou": class_iou,
                "class_in_instances": class_in,
            }
            for c, v in row.items():
                r.columns[c].append(v)
    except TarError as e:
        r.problems.append((None, str(e)))
    except OSError as e:
        r.problems.append((None, f"cannot read: {e}"))
    r.columns = {c: np.array(v, dtype=str if c in ("key", "shard") else np.float64) for c, v in r.columns.items()}
    return r


# --- the command ------------------------------------------------------------------------------------------


def pair_shards(a: Output, b: Output) -> list[tuple[str, str]]:
    pa, pb = a.manifest.plan, b.manifest.plan
    if pa.listing_sha256 != pb.listing_sha256 or pa.num_inputs != pb.num_inputs:
        raise UsageError(f"{a.path} and {b.path} label different inputs (their plans differ): nothing to compare")
    if pa.shard_sizes != pb.shard_sizes:
        raise UsageError(f"{a.path} and {b.path} cut the same inputs into different shards; compare needs one plan")
    by_index_b = {fmt.parse_shard_name(u.rsplit("/", 1)[-1])[1]: u for u in b.shards}  # type: ignore[index]
    pairs = []
    for u in a.shards:
        i = fmt.parse_shard_name(u.rsplit("/", 1)[-1])[1]  # type: ignore[index]
        if i in by_index_b:
            pairs.append((u, by_index_b[i]))
    if not pairs:
        raise UsageError(f"{a.path} and {b.path} have no shard in common")
    return pairs


def default_dir(a: str, b: str, out: str) -> Path:
    if out:
        return Path(out)
    if not is_local(a):
        raise UsageError("A is a URL: pass --out for the comparison's local directory")
    return Path(local_path(a)) / f"compare-{b.rstrip('/').rsplit('/', 1)[-1]}"


def columns_of(parts: list[PairResult]) -> dict[str, np.ndarray]:
    return {c: np.concatenate([p.columns[c] for p in parts]) for c in ["key", "shard", *PER_IMAGE]}


def collect(jobs: list[tuple], workers: int, desc: str, progress: bool) -> tuple[list[PairResult], np.ndarray]:
    """Every shard pair's rows, in shard order, and the run's confusion, folded in as results arrive."""
    parts: list[PairResult | None] = [None] * len(jobs)
    confusion = None
    for i, p in map_shards(compare_shards, jobs, workers, desc, progress):
        confusion = p.confusion if confusion is None else confusion + p.confusion
        p.confusion = None
        parts[i] = p
    return parts, confusion  # type: ignore[return-value]


def summarize(
    a: Output,
    b: Output,
    sa: SemanticClasses,
    sb: SemanticClasses,
    matching: Matching,
    parts: list[PairResult],
    raw: np.ndarray,
    threshold: float,
    classes: ClassSide | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """compare.json's content and the per-image columns; `raw`: the run's [Ka + 1, Kb + 1] confusion."""
    kb = sb.num_classes
    acc, miou, tp, union = semantic_scores(fold(raw, matching.lut, kb))
    cols = columns_of(parts)
    n_a, n_b, m = (int(np.nansum(cols[c])) for c in ("instances_a", "instances_b", "matched"))
    iou_sum = float(np.nansum(cols["instance_iou"] * cols["matched"]))  # NaN only where nothing matched
    f1, mean_iou, pq = matching_scores(n_a, n_b, m, iou_sum)
    per_class = [
        {"id": c, "name": sb.name(c), "iou": float(tp[c] / union[c]), "union_pixels": int(union[c])}
        for c in range(kb)
        if union[c] > 0
    ]

    def dist(name: str) -> dict[str, Any]:
        v = cols[name][np.isfinite(cols[name])]
        if not v.size:
            return {"defined": 0}
        p = np.percentile(v, [5, 50, 95])
        return {
            "defined": int(v.size),
            "mean": float(v.mean()),
            "p05": float(p[0]),
            "median": float(p[1]),
            "p95": float(p[2]),
        }

    return (
        {
            "kind": COMPARE_KIND,
            "a": {"output": a.path, "preset": a.manifest.labeler.preset, "classes": sa.num_classes},
            "b": {"output": b.path, "preset": b.manifest.labeler.preset, "classes": sb.num_classes},
            "samples": len(cols["key"]),
            "only_in_a": sum(p.only_a for p in parts),
            "only_in_b": sum(p.only_b for p in parts),
            "semantic": {
                "matching": matching.rule,
                "pairs": [[x, y, sa.name(x), sb.name(y)] for x, y in matching.pairs(sa.num_classes, kb)],
                "pixel_accuracy": acc,
                "miou": miou,
                "per_class_iou": per_class,
            },
            "instances": {
                "iou_threshold": threshold,
                "in_a": n_a,
                "in_b": n_b,
                "matched": m,
                "matched_fraction": f1,
                "matched_of_a": m / n_a if n_a else math.nan,
                "matched_of_b": m / n_b if n_b else math.nan,
                "mean_iou": mean_iou,
                "pq": pq,
            },
            "per_image": {name: dist(name) for name in ("pixel_accuracy", "miou", "instance_f1", "instance_iou", "pq")},
            "image_class": image_class_summary(parts, classes, dist) if classes is not None else None,
            "problems": [{"shard": p.shard, "key": k, "message": msg} for p in parts for k, msg in p.problems][:1000],
        },
        cols,
    )


def image_class_summary(parts: list[PairResult], classes: ClassSide, dist) -> dict[str, Any]:
    """One output grounded: how the other labels each image's class pixels, overall and per class."""
    hist: dict[int, np.ndarray] = {}
    images: dict[int, int] = {}
    for p in parts:
        for cid, h in p.class_hist.items():
            hist[cid] = hist[cid] + h if cid in hist else h
            images[cid] = images.get(cid, 0) + p.class_images[cid]
    k_o = classes.other.num_classes
    by_class = []
    for cid in sorted(hist, key=lambda c: (-images[c], c))[:1000]:
        h = hist[cid]
        top = np.argsort(-h[:k_o], kind="stable")[:3]
        by_class.append(
            {
                "id": cid,
                "name": classes.grounded.name(cid),
                "images": images[cid],
                "unlabelled_share": float(h[k_o]) / max(int(h.sum()), 1),
                "top": [
                    {"id": int(c), "name": classes.other.name(int(c)), "share": float(h[c]) / h.sum()}
                    for c in top
                    if h[c] > 0
                ],
            }
        )
    return {
        "grounded": classes.side,
        "class_iou": dist("class_iou"),
        "class_in_instances": dist("class_in_instances"),
        "by_class": by_class,
    }


def worst_images(cols: dict[str, np.ndarray], n: int) -> dict[str, list[dict]]:
    out = {}
    for name in WORST:
        v = cols[name]
        ok = np.flatnonzero(np.isfinite(v))
        if not ok.size or v[ok].min() == v[ok].max():
            continue
        order = ok[np.lexsort((cols["key"][ok], v[ok]))][:n]
        out[name] = [{"key": str(cols["key"][i]), "shard": str(cols["shard"][i]), "value": float(v[i])} for i in order]
    return out


def draw_pairs(
    a: Output,
    b: Output,
    pairs: list[tuple[str, str]],
    sa: SemanticClasses,
    sb: SemanticClasses,
    matching: Matching,
    worst: dict[str, list[dict]],
    workers: int,
) -> dict[str, bytes]:
    """RGB | A semantic (in B's colours) | B semantic | where they differ | A instances | B instances."""
    import io

    from PIL import Image

    from shards.inspect import instance_overlay, palette, semantic_overlay, tile

    by_name = {ua.rsplit("/", 1)[-1]: (ua, ub) for ua, ub in pairs}
    wanted: dict[str, set[str]] = {}
    for picks in worst.values():
        for p in picks:
            wanted.setdefault(p["shard"], set()).add(p["key"])
    jobs = [(url, keys) for s, keys in sorted(wanted.items()) for url in by_name[s]]
    found_a: dict[str, dict] = {}
    found_b: dict[str, dict] = {}
    urls_a = {u for u, _ in pairs}
    for i, part in map_shards(read_some, jobs, workers, "worst images", False):
        (found_a if jobs[i][0] in urls_a else found_b).update(part)
    kb = sb.num_classes
    pal = palette(max(kb, 1))
    lut_a = matching.lut[compact_lut(sa)]  # raw A id -> B class, or kb where it has none
    lut_b = compact_lut(sb)
    strips = {}
    for name, picks in worst.items():
        rows = []
        for p in picks:
            if p["key"] not in found_a or p["key"] not in found_b:
                continue
            x, y = found_a[p["key"]], found_b[p["key"]]
            rgb = np.asarray(Image.open(io.BytesIO(x[fmt.JPG])).convert("RGB"))
            sem_a = lut_a.take(decode_png(x[fmt.SEM]), mode="clip")
            sem_b = lut_b.take(decode_png(y[fmt.SEM]), mode="clip")
            differ = (sem_a != sem_b) & (sem_b < kb)
            tiles = [
                rgb,
                semantic_overlay(rgb, sem_a, pal, kb),
                semantic_overlay(rgb, sem_b, pal, kb),
                render.disagreement(rgb, differ),
                instance_overlay(rgb, decode_png(x[fmt.INST])),
                instance_overlay(rgb, decode_png(y[fmt.INST])),
            ]
            rows.append((f"{p['key']}  {name} = {render.fmt_num(p['value'])}", [tile(t, TILE) for t in tiles]))
        if rows:
            strips[name] = render.strip(rows, per_row=1)
    return strips


def page(s: dict[str, Any], pictures: dict[str, bytes]) -> str:
    """compare.html (quality/templates/compare.html)."""
    return render.page(
        "compare.html",
        title=f"c2f compare: {s['a']['output']} vs {s['b']['output']}",
        s=s,
        pictures=pictures,
        worst=WORST,
        image_class=image_class_view(s["image_class"]),
    )


def image_class_view(ic: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the page shows of a grounded output against another: the image's class on its own pixels."""
    if ic is None:
        return None
    f = render.fmt_num
    g, o = ("A", "B") if ic["grounded"] == "a" else ("B", "A")
    return {
        "g": g,
        "o": o,
        "measures": [
            [name, f(ic[key].get("mean", math.nan)), f(ic[key].get("median", math.nan)), ic[key]["defined"]]
            for key, name in (
                ("class_iou", f"IoU with {o}'s best class"),
                ("class_in_instances", f"share inside {o}'s instances"),
            )
        ],
        "rows": [
            [
                f"{c['id']} {c['name']}",
                c["images"],
                *[f"{t['id']} {t['name']} {100 * t['share']:.0f}%" for t in c["top"]],
            ]
            + [""] * (3 - len(c["top"]))
            for c in ic["by_class"][:40]
        ],
    }


def plots(
    s: dict[str, Any], cols: dict[str, np.ndarray], raw: np.ndarray, sa: SemanticClasses, sb: SemanticClasses
) -> dict[str, bytes]:
    panels = []
    for name in ("pixel_accuracy", "miou", "instance_f1", "instance_iou", "pq"):
        v = cols[name][np.isfinite(cols[name])]
        counts, edges = np.histogram(v, np.linspace(0, 1, 21))
        panels.append((name, counts, edges, f"{int(np.isnan(cols[name]).sum())} undefined"))
    out = {"per_image": render.histograms(panels)}
    pc = sorted(s["semantic"]["per_class_iou"], key=lambda c: (-c["union_pixels"], c["id"]))[:30]
    if pc:
        out["class_iou"] = render.bars(
            [f"{c['id']} {c['name']}" for c in pc], [c["iou"] for c in pc], "IoU of B's most frequent classes", "IoU"
        )
    ra = np.argsort(-raw[: sa.num_classes].sum(1), kind="stable")[:25]
    rb = np.argsort(-raw[:, : sb.num_classes].sum(0), kind="stable")[:25]
    sub = raw[np.ix_(ra, rb)].astype(np.float64)
    if sub.sum() > 0:
        norm = sub / np.maximum(raw[ra].sum(1, keepdims=True), 1)
        out["confusion"] = render.heatmap(
            norm,
            [f"{i} {sa.name(int(i))}" for i in ra],
            [f"{i} {sb.name(int(i))}" for i in rb],
            "share of each A class's pixels by B class",
            "B",
            "A",
        )
    return out


def run(cfg: CompareConfig) -> int:
    if not 0.5 <= cfg.iou < 1:
        raise UsageError("--iou must be in [0.5, 1): below 0.5 an instance could match two")
    if cfg.workers < 1 or cfg.worst < 0:
        raise UsageError("--workers must be >= 1 and --worst >= 0")
    out_dir = default_dir(cfg.a, cfg.b, cfg.out)
    t0 = time.perf_counter()
    a, b = open_output(cfg.a), open_output(cfg.b)
    sa, sb = semantic_classes(a.manifest), semantic_classes(b.manifest)
    if (sa.num_classes + 1) * (sb.num_classes + 1) > MAX_CONFUSION:
        raise UsageError(f"label spaces of {sa.num_classes} and {sb.num_classes} classes are too large to compare")
    pairs = pair_shards(a, b)
    lut_a, lut_b = compact_lut(sa), compact_lut(sb)
    rule = choose_rule(cfg.matching, sa, sb)
    if rule == "ids":
        if sa.num_classes > sb.num_classes:
            raise UsageError(f"--matching ids: A has {sa.num_classes} classes, B only {sb.num_classes}")
        lut = np.append(np.arange(sa.num_classes), sb.num_classes)
    elif rule == "names":
        lut = match_by_names(sa, sb)
    else:
        jobs = [(x, y, lut_a, lut_b, None, cfg.iou) for x, y in pairs]
        _, first = collect(jobs, cfg.workers, "match classes", cfg.progress)
        lut = match_hungarian(first, sa.num_classes, sb.num_classes)
    matching = Matching(rule, lut)
    classes = ClassSide.of(sa, sb)  # one output grounded: its image classes compared on their pixels
    jobs = [(x, y, lut_a, lut_b, lut, cfg.iou, classes) for x, y in pairs]
    parts, raw = collect(jobs, cfg.workers, "compare", cfg.progress)
    summary, cols = summarize(a, b, sa, sb, matching, parts, raw, cfg.iou, classes)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    pictures = plots(summary, cols, raw, sa, sb)
    worst = worst_images(cols, cfg.worst)
    summary["worst"] = worst
    for name, data in draw_pairs(a, b, pairs, sa, sb, matching, worst, cfg.workers).items():
        pictures[f"worst_{name}"] = data

    out_dir.mkdir(parents=True, exist_ok=True)
    write_pictures(out_dir / "img", pictures)
    write_csv(out_dir / "samples.csv", cols)
    atomic_write_json(out_dir / "compare.json", render.json_safe(summary))
    atomic_write_bytes(out_dir / "compare.html", page(summary, pictures).encode())
    sem, ins = summary["semantic"], summary["instances"]

    def f(v: float) -> str:
        return render.fmt_num(v) or "n/a"

    print(
        f"compare: {summary['samples']} images; semantic pixel accuracy {f(sem['pixel_accuracy'])}, mIoU "
        f"{f(sem['miou'])} (matching: {sem['matching']}); instances matched {f(ins['matched_fraction'])} "
        f"(IoU > {cfg.iou}), mean IoU {f(ins['mean_iou'])}, PQ {f(ins['pq'])}"
    )
    if (ic := summary["image_class"]) is not None:
        print(
            f"image class ({'A' if ic['grounded'] == 'a' else 'B'} grounded): IoU with the other's best class "
            f"{f(ic['class_iou'].get('mean', math.nan))}, inside its instances "
            f"{f(ic['class_in_instances'].get('mean', math.nan))} ({ic['class_iou']['defined']} images)"
        )
    if summary["problems"]:
        print(f"{len(summary['problems'])} problem(s), see the page; run `c2f validate` on both outputs")
    print(f"compare: {out_dir / 'compare.html'} (and compare.json, samples.csv)")
    return 1 if summary["problems"] else 0
