"""Listing and planning 1.28M inputs: must not be the bottleneck of an ImageNet run.

1. plan from a listing of 1,281,167 ImageNet-style names (layout, keys, classes, sort, duplicate
   check, listing hash), the part that is the same whatever the storage;
2. os.scandir over a real tree of 1,000 class folders x 128 empty files (128k files, the
   filesystem part), scaled to 1.28M.

    .venv/bin/python bench/bench_listing.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pipelines.listing import Listing, scan_dir
from pipelines.plan import plan_from_listing

N = 1_281_167


def main():
    with tempfile.TemporaryDirectory() as d:
        names = [(f"n{1440764 + i % 1000:08d}/n{1440764 + i % 1000:08d}_{i}.JPEG", 110_000, 0) for i in range(N)]
        t0 = time.perf_counter()
        plan = plan_from_listing(Listing("/data/imagenet/train", names), 1000, "c2f")
        t_plan = time.perf_counter() - t0
        assert len(plan.items) == N and plan.imagenet and len(plan.classes) == 1000

        root = Path(d) / "tree"
        for c in range(1000):
            sub = root / f"n{1440764 + c:08d}"
            sub.mkdir(parents=True)
            for j in range(128):
                (sub / f"n{1440764 + c:08d}_{j}.JPEG").touch()
        t0 = time.perf_counter()
        found = scan_dir(root).files
        t_scan = time.perf_counter() - t0
        assert len(found) == 128_000
    print(f"plan from a listing of {N:,} names: {t_plan:.1f} s ({N / t_plan:,.0f} names/s)")
    print(f"scandir of 128,000 files in 1,000 folders: {t_scan:.2f} s -> {t_scan * N / 128_000:.1f} s for {N:,}")
    print(f"(labeling 1.28M images at 100 images/s takes {N / 100 / 3600:.1f} h)")


if __name__ == "__main__":
    main()
