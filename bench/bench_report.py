"""`c2f report` against `c2f validate` on the same output: both read every byte of every shard.

.venv/bin/python bench/bench_report.py [--samples 10000] [--per-shard 100] [--workers 2] [--repeats 2]

Writes a synthetic output (375x500 scenes, ImageNet's typical size), then runs validate (every
check on) and the report (measures, plots, worst-image strips, all files) alternately in this
process, and prints samples/s of each and the ratio report / validate (target >= 0.8).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from quality.config import ReportConfig
from quality.report import run as run_report
from shards.synthetic import write_synthetic_dataset
from shards.validate import validate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", default="", help="reuse (or create) the synthetic output here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.dir or tmp)
        if not (d / "manifest.json").exists():
            t0 = time.perf_counter()
            write_synthetic_dataset(d, args.samples, args.per_shard, seed=0, size=(375, 500))
            print(f"wrote {args.samples} samples in {time.perf_counter() - t0:.0f}s")
        best = {"validate": float("inf"), "report": float("inf")}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rep = validate([str(d)], workers=args.workers, progress=False)
            best["validate"] = min(best["validate"], time.perf_counter() - t0)
            assert rep.ok, rep.findings[:3]
            t0 = time.perf_counter()
            cfg = ReportConfig(str(d), out=str(Path(tmp) / "report"), workers=args.workers, progress=False)
            assert run_report(cfg) == 0
            best["report"] = min(best["report"], time.perf_counter() - t0)
        import pyarrow.parquet as pq

        n = pq.read_metadata(Path(tmp) / "report" / "samples.parquet").num_rows
        mb = sum(p.stat().st_size for p in d.glob("*.tar")) / 1e6
        for name, secs in best.items():
            print(f"{name:<9} {n / secs:8.1f} samples/s  {mb / secs:7.1f} MB/s  ({secs:.1f}s, best of {args.repeats})")
        print(f"ratio report / validate: {best['validate'] / best['report']:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
