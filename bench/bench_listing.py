"""Listing and planning 1.28M inputs: must not be the bottleneck of an ImageNet run.

1. plan from a listing of 1,281,167 ImageNet-style names (layout, keys, classes, sort, duplicate
   check, listing hash), the part that is the same whatever the storage; then `plan.inputs.jsonl`
   written (a new plan) and read back against the listing (a rerun), and the process's peak RSS;
2. os.scandir over a real tree of 1,000 class folders x 128 empty files (128k files, the
   filesystem part), scaled to 1.28M.

    .venv/bin/python bench/bench_listing.py
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

from pipelines.listing import Files, Listing, scan_dir
from pipelines.plan import check_or_write_plan, plan_from_listing
from shards.store import Store

N = 1_281_167


def listing() -> Listing:
    files = Files()
    for i in range(N):
        wnid = f"n{1440764 + i % 1000:08d}"
        files.append((f"{wnid}/{wnid}_{i}.JPEG", 110_000, 1_600_000_000_000_000_000 + i))
    return Listing("/data/imagenet/train", files)


def main():
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        plan = plan_from_listing(listing(), 1000, "c2f")
        _ = plan._order, plan.listing_sha256
        t_plan = time.perf_counter() - t0
        assert plan.num_inputs == N and plan.imagenet and len(plan.classes) == 1000
        out = Store(Path(d) / "out")
        out.makedirs()
        t0 = time.perf_counter()
        check_or_write_plan(out, plan, overwrite=False)
        t_write = time.perf_counter() - t0
        size = os.path.getsize(Path(d) / "out" / "plan.inputs.jsonl")
        del plan
        rerun = plan_from_listing(listing(), 1000, "c2f")
        _ = rerun._order, rerun.listing_sha256
        t0 = time.perf_counter()
        assert check_or_write_plan(out, rerun, overwrite=False) is None
        t_check = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

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
    print(
        f"plan.inputs.jsonl ({size / 1e6:.0f} MB): written in {t_write:.1f} s, read back against the listing "
        f"(a rerun) in {t_check:.1f} s; peak RSS of this process {peak:.0f} MiB"
    )
    print(f"scandir of 128,000 files in 1,000 folders: {t_scan:.2f} s -> {t_scan * N / 128_000:.1f} s for {N:,}")
    print(f"(labeling 1.28M images at 100 images/s takes {N / 100 / 3600:.1f} h)")


if __name__ == "__main__":
    main()
