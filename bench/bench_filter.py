"""`c2f filter` conditions at ImageNet scale: DuckDB over the report's Parquet table against the
hand-written condition parser it replaced (numpy over samples.csv's columns), in this process.

.venv/bin/python bench/bench_filter.py [--rows 1281167] [--repeats 5]

Builds a synthetic per-sample table of `--rows` rows (the report's columns: measures, class, size,
keys like ImageNet's), writes it as the report writes it (samples.parquet; and samples.csv as the
old report did), then times for each condition, best of `--repeats`:
  evaluate  the selection from the table in memory to the keys, shards and positions the subset
            file is written from: old = the parser + numpy over the exact columns; new = DuckDB over
            the Arrow table, parse, refusal checks and a new connection included (quality.query.select);
            both must pick the same rows, in the same order
  end to end  reading the table from disk + evaluating: old = samples.csv through the old reader;
            new = samples.parquet through pyarrow
The old parser is loaded from the git history (quality/where.py at OLD_COMMIT). Where the old
samples.csv (numbers to 6 significant digits) would have selected other rows, it says how many.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OLD_COMMIT = "0230d8d"  # the last commit with the hand-written parser (quality/where.py, quality/table.py read_csv)

CONDITIONS = [  # (old language, SQL)
    ("coverage > 0.5 and instances >= 1", "coverage > 0.5 AND instances >= 1"),
    ("0.2 < coverage <= 0.9 and not (score >= 0)", "coverage > 0.2 AND coverage <= 0.9 AND score IS NULL"),
    ("instance_coverage > 0.1 and width * height >= 100000", "instance_coverage > 0.1 AND width * height >= 100000"),
    ("cls_index == 7 and instances > 3", "cls_index = 7 AND instances > 3"),
    ("key == 'n01440764_00000421'", "key = 'n01440764_00000421'"),
]


def old_module(name: str, path: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:{path}"], cwd=REPO, capture_output=True, text=True, check=True)
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up while the class is made
    exec(compile(src.stdout, f"{OLD_COMMIT}:{path}", "exec"), mod.__dict__)
    return mod


def synthetic_table(n: int, seed: int = 0):
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 1000, n)
    synsets = np.array([f"n{1440764 + 9 * c:08d}" for c in range(1000)])
    keys = np.char.add(np.char.add(synsets[cls], "_"), np.char.zfill(np.arange(n).astype(str), 8))
    instances = rng.poisson(4, n)
    score = np.where(instances > 0, rng.uniform(0.3, 1.0, n), np.nan)
    cols = {
        "key": keys,
        "shard": np.char.add("c2f-", np.char.zfill((np.arange(n) // 1000).astype(str), 6)),
        "index": np.arange(n) % 1000,
        "cls_index": cls,
        "width": rng.integers(200, 800, n),
        "height": rng.integers(200, 600, n),
        "coverage": rng.uniform(0, 1, n),
        "instances": instances,
        "instance_coverage": rng.uniform(0, 0.8, n),
        "score": score,
        "purity": np.where(instances > 0, rng.uniform(0.5, 1.0, n), np.nan),
    }
    arrow = {k: pa.array(v, from_pandas=True) for k, v in cols.items()}  # NaN -> null, as the report writes
    arrow["status"] = pa.array(np.full(n, "packed"))
    return cols, pa.table(arrow)


def old_select(where_old, condition: str, cols) -> tuple[list, list, list]:
    """What the old filter handed the subset writer: the selected keys, shards and positions."""
    mask = where_old.select(condition, cols)
    return cols["key"][mask].tolist(), cols["shard"][mask].tolist(), cols["index"][mask].astype(np.int64).tolist()


def new_select(select, condition: str, table) -> tuple[list, list, list]:
    picked, _ = select(condition, table)
    return tuple(picked.column(c).to_pylist() for c in ("key", "shard", "index"))


def alternate(old, new, repeats: int) -> tuple[tuple[float, object], tuple[float, object]]:
    """Best time and result of each, run in turns (a busy machine slows both alike)."""
    times, out = [float("inf"), float("inf")], [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((old, new)):
            t0 = time.perf_counter()
            out[i] = fn()
            times[i] = min(times[i], time.perf_counter() - t0)
    return (times[0], out[0]), (times[1], out[1])


def best(fn, repeats: int) -> tuple[float, object]:
    t, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import pyarrow.parquet as pq

    from quality.query import select

    where_old = old_module("quality.where_old", "quality/where.py")
    table_old = old_module("quality.table_old", "quality/table.py")
    t0 = time.perf_counter()
    cols, table = synthetic_table(args.rows)
    print(f"{args.rows} rows built in {time.perf_counter() - t0:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(table, Path(tmp) / "samples.parquet", compression="zstd")
        table_old.write_csv(Path(tmp) / "samples.csv", cols)
        sizes = {p.name: p.stat().st_size / 1e6 for p in Path(tmp).iterdir()}
        print(f"samples.parquet {sizes['samples.parquet']:.0f} MB, samples.csv {sizes['samples.csv']:.0f} MB")
        t_csv, old_cols = best(lambda: table_old.read_csv(Path(tmp) / "samples.csv"), 1)
        exact = {k: v.astype(np.float64) if v.dtype.kind in "iu" else v for k, v in cols.items()}  # as read_csv types
        t_pq, _ = best(lambda: pq.read_table(Path(tmp) / "samples.parquet"), args.repeats)
        print(f"read: samples.csv (old reader) {t_csv:.2f}s, samples.parquet (pyarrow) {t_pq:.3f}s")
        print(f"{'condition':<58} {'old ms':>8} {'duckdb ms':>10} {'ratio':>7} {'rows':>9}")
        for old, sql in CONDITIONS:
            (t_old, want), (t_new, got) = alternate(
                lambda old=old: old_select(where_old, old, exact),
                lambda sql=sql: new_select(select, sql, table),
                args.repeats,
            )
            via_csv = old_select(where_old, old, old_cols)[0]
            if got != want:
                same = sorted(zip(*got, strict=True)) == sorted(zip(*want, strict=True))
                raise SystemExit(f"{sql}: {len(got[0])} rows vs {len(want[0])}; the same rows in another order: {same}")
            want = want[0]
            print(f"{sql:<58} {1e3 * t_old:8.1f} {1e3 * t_new:10.1f} {t_old / t_new:7.2f} {len(want):9d}")
            if via_csv != want:  # samples.csv kept 6 significant digits: values at a threshold moved
                print(f"  the old samples.csv (6 significant digits) selects {len(via_csv)} rows, not {len(want)}")
            print(
                f"{'  end to end (read the table + evaluate)':<58} {1e3 * (t_csv + t_old):8.0f} "
                f"{1e3 * (t_pq + t_new):10.1f} {(t_csv + t_old) / (t_pq + t_new):7.1f}"
            )


if __name__ == "__main__":
    main()
