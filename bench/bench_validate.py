"""Validator throughput (MB/s, samples/s): full decode checks with 1 and 2 workers, and `--sample 2`.

.venv/bin/python bench/bench_validate.py [--samples 800] [--per-shard 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from shards.synthetic import write_synthetic_dataset
from shards.validate import validate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=800)
    ap.add_argument("--per-shard", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_dataset(d, args.samples, args.per_shard, seed=0, size=(375, 500))
        rows = []
        for label, workers, sample in [
            ("1 worker, full", 1, None),
            ("2 workers, full", 2, None),
            ("2 workers, --sample 2", 2, 2),
        ]:
            t0 = time.perf_counter()
            report = validate([d], workers=workers, sample=sample, progress=False)
            dt = time.perf_counter() - t0
            assert report.ok, report.findings[:3]
            mb = sum(r.bytes for r in report.shards) / 1e6
            n = sum(r.samples for r in report.shards)
            rows.append((label, mb / dt, n / dt))
        base = rows[0][2]
        for label, mbs, sps in rows:
            print(f"{label:<24} {mbs:7.1f} MB/s {sps:8.1f} samples/s  ({sps / base:.2f}x of 1 worker)")


if __name__ == "__main__":
    main()
