"""`c2f report OUTPUT`: one parallel pass over a labeled output -> OUTPUT/report/

report.json   the summary: every measure's distribution, label-space usage, instance purity,
              image class -> semantic classes, the worst images by each measure
samples.parquet  the shards' tables (one row per input) extended with each image's measures (what
              `c2f filter` selects on); `--csv`: also as samples.csv
report.html   the same for a person, self-contained (plots as embedded PNGs)
img/*.png     the plots and overlay strips as files

shards --(process pool, measures.measure_shard)--> rows + sums --> summary --> worst images
(a second read of only the shards that hold them) --> plots --> files (each written atomically)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards.errors import UsageError
from shards.location import is_local, local_path
from shards.manifest import LabelerInfo, Manifest
from shards.writer import atomic_write_bytes, atomic_write_json

from . import render
from .config import ReportConfig
from .measures import (
    AREA_EDGES,
    COLUMNS,
    MEASURES,
    PURITY_EDGES,
    ShardMeasures,
    measure_shard,
)
from .output import Output, SemanticClasses, map_shards, open_output, read_some, semantic_classes
from .table import write_parquet, write_table_csv

REPORT_KIND = "c2f-report-v1"
SAMPLES = "samples.parquet"  # the per-input table: what `c2f filter` reads
SAMPLES_CSV = "samples.csv"  # the same, with --csv
TILE = 192  # overlay tiles in the worst-image strips


def fingerprint(manifest: Manifest) -> str:
    """Identifies the labeled data a report describes: the shards' checksums, in order. A report
    (and a subset made from it) is stale once the output is relabeled or extended."""
    h = hashlib.sha256()
    for s in manifest.shards:
        h.update(f"{s.name} {s.sha256}\n".encode())
    return h.hexdigest()


def default_dir(output: str, out: str) -> Path:
    if out:
        return Path(out)
    if not is_local(output):
        raise UsageError("OUTPUT is a URL: pass --out for the report's local directory")
    return Path(local_path(output)) / "report"


@dataclass
class Measured:
    """All shards' rows and sums, merged."""

    columns: dict[str, np.ndarray]
    class_pixels: np.ndarray
    class_images: np.ndarray
    by_image_class: dict[int, np.ndarray]
    area_hist: np.ndarray
    purity_hist: np.ndarray
    out_of_range: int
    problems: list[dict[str, Any]]
    table: Any = None  # the report's per-input table (pyarrow), in shard order


class Merger:
    """Folds each shard's result into the run's as it arrives; rows are kept in shard order."""

    def __init__(self, n_shards: int, k: int):
        self.rows: list[dict[str, np.ndarray] | None] = [None] * n_shards
        self.tables: list[Any] = [None] * n_shards
        self.m = Measured(
            columns={},
            class_pixels=np.zeros(k + 1, np.int64),
            class_images=np.zeros(k, np.int64),
            by_image_class={},
            area_hist=np.zeros(len(AREA_EDGES) - 1, np.int64),
            purity_hist=np.zeros(len(PURITY_EDGES) - 1, np.int64),
            out_of_range=0,
            problems=[],
        )

    def add(self, i: int, p: ShardMeasures) -> None:
        m = self.m
        self.rows[i] = p.columns
        self.tables[i] = p.rows
        m.class_pixels += p.class_pixels
        m.class_images += p.class_images
        for cls, v in p.by_image_class.items():
            if cls in m.by_image_class:
                m.by_image_class[cls] += v
            else:
                m.by_image_class[cls] = v
        m.area_hist += p.area_hist
        m.purity_hist += p.purity_hist
        m.out_of_range += p.out_of_range
        m.problems += [{"shard": p.shard, "key": key, "message": msg} for key, msg in p.problems]

    def result(self) -> Measured:
        parts = [r for r in self.rows if r is not None]
        self.m.columns = {c: np.concatenate([r[c] for r in parts]) for c in COLUMNS}
        import pyarrow as pa

        self.m.table = pa.concat_tables([t for t in self.tables if t is not None])
        return self.m


def measure_edges(name: str, values: np.ndarray, space: SemanticClasses) -> np.ndarray:
    """Histogram bins per measure: shares on [0, 1], counts one bin per integer, entropy up to log2 K."""
    if name in ("classes", "instances"):
        top = int(np.nanmax(values)) if values.size and np.isfinite(values).any() else 1
        top = min(max(top, 1), 100)
        return np.arange(-0.5, top + 1.5)
    if name == "entropy":
        return np.linspace(0, max(1.0, math.log2(max(space.num_classes, 2))), 21)
    return np.linspace(0, 1, 21)


def distribution(values: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    ok = values[np.isfinite(values)]
    counts, _ = np.histogram(np.clip(ok, edges[0], edges[-1]), edges)
    stats = {"defined": int(ok.size), "undefined": int(values.size - ok.size)}
    if ok.size:
        p = np.percentile(ok, [5, 50, 95])
        stats |= {
            "mean": float(ok.mean()),
            "min": float(ok.min()),
            "p05": float(p[0]),
            "median": float(p[1]),
            "p95": float(p[2]),
            "max": float(ok.max()),
        }
    return stats | {"histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def pick_worst(columns: dict[str, np.ndarray], n: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """The `n` worst images by each measure that has a direction, and why a measure has none
    (every image has the same value, or none is defined)."""
    worst: dict[str, list[dict]] = {}
    skipped: dict[str, str] = {}
    for m in MEASURES:
        if m.worst is None:
            continue
        v = columns[m.name].astype(np.float64)
        ok = np.flatnonzero(np.isfinite(v))
        if ok.size == 0:
            skipped[m.name] = "undefined on every image"
            continue
        if v[ok].min() == v[ok].max():
            skipped[m.name] = f"every image has {render.fmt_num(float(v[ok][0]))}"
            continue
        if m.binary:  # only the images that say no
            ok = ok[v[ok] == (0.0 if m.worst == "low" else 1.0)]
        sign = 1 if m.worst == "low" else -1
        order = ok[np.lexsort((columns["key"][ok], sign * v[ok]))][:n]
        worst[m.name] = [
            {"key": str(columns["key"][i]), "shard": str(columns["shard"][i]), "value": float(v[i])} for i in order
        ]
    return worst, skipped


def summarize(output: Output, space: SemanticClasses, m: Measured, seconds: float) -> dict[str, Any]:
    cols, k = m.columns, space.num_classes
    n = len(cols["key"])
    total_px = int(m.class_pixels.sum())
    labelled = int(m.class_pixels[:k].sum())
    classes = [
        {
            "id": c,
            "name": space.name(c),
            "pixels": int(m.class_pixels[c]),
            "pixel_share": float(m.class_pixels[c]) / max(labelled, 1),
            "images": int(m.class_images[c]),
            "image_share": float(m.class_images[c]) / max(n, 1),
        }
        for c in range(k)
    ]
    synsets = output.manifest.plan.classes
    image_classes = []
    counts = np.bincount(cols["cls_index"][cols["cls_index"] >= 0]) if n else np.zeros(0, np.int64)
    found = cols["found"]
    for cls in sorted(m.by_image_class):
        v = m.by_image_class[cls]
        lab = v[:k].sum()
        top = np.argsort(-v[:k], kind="stable")[:3]
        synset = synsets[cls] if 0 <= cls < len(synsets) else None
        entry = {
            "index": cls,
            "synset": synset,
            "images": int(counts[cls]) if cls < len(counts) else 0,
            "unlabelled_share": float(v[k]) / max(int(v.sum()), 1),
            "top": [{"id": int(c), "name": space.name(int(c)), "share": float(v[c]) / lab} for c in top if v[c] > 0],
        }
        if synset in space.class_of_synset:  # grounded: the class's name in the label space
            entry["name"] = space.name(space.class_of_synset[synset])
        of_class = found[cols["cls_index"] == cls]
        if np.isfinite(of_class).any():  # text-prompted: how often the class's prompt found its object
            entry["found_share"] = float(np.nanmean(of_class))
        image_classes.append(entry)
    grounded = None
    if np.isfinite(found).any():
        hit = int(np.nansum(found))
        grounded = {"found": hit, "not_found": int(np.isfinite(found).sum()) - hit}
    return {
        "kind": REPORT_KIND,
        "output": output.path,
        "fingerprint": fingerprint(output.manifest),
        "labeler": output.manifest.labeler.brief(),
        "samples": n,
        "shards": len(output.shards),
        "seconds": round(seconds, 2),
        "things": {"rule": space.things_rule, "ids": sorted(space.things) if space.things is not None else None},
        "measures": {
            mm.name: {
                "help": mm.help,
                **distribution(cols[mm.name].astype(float), measure_edges(mm.name, cols[mm.name].astype(float), space)),
            }
            for mm in MEASURES
        },
        "instances": {
            "total": int(cols["instances"].sum()),
            "area_share_log10": {"edges": AREA_EDGES.tolist(), "counts": m.area_hist.tolist()},
            "purity": {"edges": PURITY_EDGES.tolist(), "counts": m.purity_hist.tolist()},
        },
        "label_space": {
            "classes": classes,
            "never_predicted": [c["id"] for c in classes if c["pixels"] == 0],
            "unlabelled_pixel_share": float(m.class_pixels[k]) / max(total_px, 1),
            "out_of_range_pixels": m.out_of_range,
        },
        "image_classes": image_classes,
        "grounded": grounded,  # text-prompted presets: images whose prompt found / did not find its object
        "problems": m.problems[:1000],
        "problem_count": len(m.problems),
    }


def draw_worst(output: Output, space: SemanticClasses, worst: dict[str, list[dict]], workers: int) -> dict[str, bytes]:
    """One overlay strip per measure: RGB | semantic | instances of each of its worst images."""
    from shards.inspect import palette, sample_tiles

    wanted: dict[str, set[str]] = {}
    for picks in worst.values():
        for p in picks:
            wanted.setdefault(p["shard"], set()).add(p["key"])
    by_name = {u.rsplit("/", 1)[-1]: u for u in output.shards}
    jobs = [(by_name[s], keys) for s, keys in sorted(wanted.items())]
    found: dict[str, dict[str, bytes]] = {}
    for _, part in map_shards(read_some, jobs, workers, "worst images", False):
        found.update(part)
    pal = palette(max(space.num_classes, 1))
    strips = {}
    for name, picks in worst.items():
        rows = [
            (
                f"{p['key']}  {name} = {render.fmt_num(p['value'])}",
                sample_tiles(found[p["key"]], pal, space.ignore, TILE),
            )
            for p in picks
            if p["key"] in found
        ]
        if rows:
            strips[name] = render.strip(rows)
    return strips


def plots(summary: dict[str, Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    panels = []
    for name, d in summary["measures"].items():
        h = d["histogram"]
        panels.append((name, np.array(h["counts"]), np.array(h["edges"]), f"{d['undefined']} undefined"))
    out["measures"] = render.histograms(panels)
    inst = summary["instances"]
    out["instances"] = render.histograms(
        [
            (
                "instance area (log10 share of image)",
                np.array(inst["area_share_log10"]["counts"]),
                np.array(inst["area_share_log10"]["edges"]),
                "log10(area / image area)",
            ),
            (
                "instance purity",
                np.array(inst["purity"]["counts"]),
                np.array(inst["purity"]["edges"]),
                "share of pixels in the majority class",
            ),
        ],
        cols=2,
    )
    used = [c for c in summary["label_space"]["classes"] if c["pixels"] > 0]
    used.sort(key=lambda c: (-c["pixels"], c["id"]))
    if used:
        top = used[:20]
        out["classes_top"] = render.bars(
            [f"{c['id']} {c['name']}" for c in top],
            [100 * c["pixel_share"] for c in top],
            f"most frequent classes ({len(used)} of {len(summary['label_space']['classes'])} used)",
            "% of labelled pixels",
        )
        if len(used) > 20:
            bottom = used[-20:]
            out["classes_bottom"] = render.bars(
                [f"{c['id']} {c['name']}" for c in bottom],
                [100 * c["pixel_share"] for c in bottom],
                "least frequent classes (of those used)",
                "% of labelled pixels",
            )
    return out


def page(summary: dict[str, Any], lab: LabelerInfo, pictures: dict[str, bytes], skipped: dict[str, str]) -> str:
    """report.html (quality/templates/report.html): the summary's numbers as the page shows them."""
    fmt_n = render.fmt_num
    s = summary
    notes = []
    if lab.weight_free:
        notes.append(lab.note or "Weight-free labels: no learned model made them.")
    if lab.random_labels:
        notes.append("These labels come from random models and carry no meaning: " + (lab.note or ""))
    if lab.empty_labels:
        notes.append("These shards carry empty labels (preset 'empty').")
    ls = s["label_space"]
    used = sorted((c for c in ls["classes"] if c["pixels"]), key=lambda c: (-c["pixels"], c["id"]))
    shown = used if len(used) <= 40 else used[:20] + used[-20:]
    prompted = any("found_share" in c for c in s["image_classes"])
    worst = []
    for name, picks in s["worst"].items():
        direction = next(m.worst for m in MEASURES if m.name == name)
        worst.append(
            {
                "name": name,
                "direction": "lowest" if direction == "low" else "highest",
                "strip": pictures.get(f"worst_{name}"),
                "rows": [[p["key"], p["shard"], fmt_n(p["value"])] for p in picks],
            }
        )
    return render.page(
        "report.html",
        title=f"c2f report: {s['output']}",
        s=s,
        labeler=lab,
        notes=notes,
        pictures=pictures,
        measure_rows=[
            [name, d["help"], *(fmt_n(d.get(q, math.nan)) for q in ("mean", "p05", "median", "p95")), d["undefined"]]
            for name, d in s["measures"].items()
        ],
        class_rows=[
            [f"{c['id']} {c['name']}", f"{100 * c['pixel_share']:.2f}", f"{100 * c['image_share']:.1f}"] for c in shown
        ],
        classes_cut=shown != used,
        never=[f"{c['id']} {c['name']}" for c in ls["classes"] if c["pixels"] == 0],
        prompted=prompted,
        image_class_rows=[
            [
                f"{c['index']} {c['synset'] or ''} {c.get('name', '')}".strip(),
                c["images"],
                *([fmt_n(c.get("found_share", math.nan))] if prompted else []),
                *[f"{t['name']} {100 * t['share']:.0f}%" for t in c["top"]] + [""] * (3 - len(c["top"])),
            ]
            for c in s["image_classes"]
        ],
        worst=worst,
        skipped=skipped,
    )


def run(cfg: ReportConfig) -> int:
    if cfg.workers < 1 or cfg.worst < 0:
        raise UsageError("--workers must be >= 1 and --worst >= 0")
    out_dir = default_dir(cfg.output, cfg.out)
    t0 = time.perf_counter()
    output = open_output(cfg.output)
    space = semantic_classes(output.manifest, cfg.things)
    merger = Merger(len(output.shards), space.num_classes)
    jobs = [(u, space, output.manifest.plan.classes) for u in output.shards]
    for i, part in map_shards(measure_shard, jobs, cfg.workers, "report", cfg.progress):
        merger.add(i, part)
    measured = merger.result()
    seconds = time.perf_counter() - t0
    summary = summarize(output, space, measured, seconds)
    worst, skipped = pick_worst(measured.columns, cfg.worst)
    summary["worst"] = worst
    summary["worst_skipped"] = skipped
    pictures = plots(summary)
    for name, png in draw_worst(output, space, worst, cfg.workers).items():
        pictures[f"worst_{name}"] = png

    out_dir.mkdir(parents=True, exist_ok=True)
    write_pictures(out_dir / "img", pictures)
    write_parquet(out_dir / SAMPLES, measured.table)
    if cfg.csv:
        write_table_csv(out_dir / SAMPLES_CSV, measured.table)
    else:  # a CSV of an earlier run would no longer describe these shards
        (out_dir / SAMPLES_CSV).unlink(missing_ok=True)
    atomic_write_json(out_dir / "report.json", render.json_safe(summary))
    atomic_write_bytes(out_dir / "report.html", page(summary, output.manifest.labeler, pictures, skipped).encode())
    n = summary["samples"]
    print(
        f"report: {n} images in {summary['shards']} shards, measured in {seconds:.1f}s "
        f"({n / max(seconds, 1e-9):.0f} images/s); {time.perf_counter() - t0:.1f}s in all"
    )
    if summary["grounded"]:
        g = summary["grounded"]
        total = g["found"] + g["not_found"]
        print(f"  grounded: the prompt found its object in {g['found']} of {total} images, {g['not_found']} not found")
    for name in ("coverage", "instances", "purity"):
        d = summary["measures"][name]
        if d["defined"]:
            q = {key: render.fmt_num(d[key]) for key in ("mean", "p05", "median")}
            print(f"  {name:<10} mean {q['mean']}, 5% {q['p05']}, median {q['median']}")
    if measured.problems:
        print(f"{len(measured.problems)} problem(s) (see the report; run `c2f validate {cfg.output}`)")
    print(f"report: {out_dir / 'report.html'} (and report.json, {SAMPLES}{', ' + SAMPLES_CSV if cfg.csv else ''})")
    return 1 if measured.problems else 0


def write_pictures(folder: Path, pictures: dict[str, bytes]) -> None:
    """`{name}.png|jpg` for each picture; pictures of an earlier run that this one did not draw
    (a measure with no worst images now) are removed, so the folder matches the page."""
    folder.mkdir(parents=True, exist_ok=True)
    keep = {f"{name}.{render.ext(data)}" for name, data in pictures.items()}
    for old in folder.iterdir():
        if old.suffix in (".png", ".jpg") and old.name not in keep:
            old.unlink()
    for name, data in pictures.items():
        atomic_write_bytes(folder / f"{name}.{render.ext(data)}", data)


def load_summary(report_dir: Path) -> dict[str, Any]:
    """report.json of a report directory; UsageError when there is none."""
    path = report_dir / "report.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no report at {report_dir}: run `c2f report` first") from None
    except ValueError as e:
        raise UsageError(f"{path} is not a report ({e}); run `c2f report` again") from None
    if not isinstance(summary, dict) or summary.get("kind") != REPORT_KIND:
        raise UsageError(f"{path} is not a {REPORT_KIND} report; run `c2f report` again")
    return summary
