"""End-to-end labeling job throughput against its labeler alone, and peak memory.

A `fixed-cost` labeler (no model; a fixed time per image, like a GPU model of known speed) runs
first on its own in this process, then inside the full job on a local Ray (read, decode, label in
an actor, pack, PNG-encode, write, stats). The ratio job / labeler is the share of the labeler's
speed the pipeline keeps (target >= 0.85 on 2 cores), first on a Ray that is already running (as on
a cluster, where `ray job submit` finds one), then including the start of a local Ray.
Peak RSS: the driver (getrusage) and every Ray worker process (polled every 0.2 s).

    .venv/bin/python bench/bench_pipeline.py [--images 600] [--seconds 0.05]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from labeler.fixed_cost import FixedCostLabeler
from shards.image import prepare_image
from shards.synthetic import encode_jpeg, make_scene


def make_tree(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        syn = f"n0{1000000 + i % 10:07d}"
        (root / syn).mkdir(parents=True, exist_ok=True)
        rgb = make_scene(rng, 375, 500)[0]
        (root / syn / f"{syn}_{i:06d}.JPEG").write_bytes(encode_jpeg(rgb, 90))


class RssMonitor(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.max_worker = 0
        self.max_total = 0

    def run(self):
        while not self.stop.is_set():
            total = 0
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "ray::" in cmd and p.info["memory_info"]:
                    rss = p.info["memory_info"].rss
                    total += rss
                    self.max_worker = max(self.max_worker, rss)
            self.max_total = max(self.max_total, total)
            time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=0.05)
    ap.add_argument("--per-shard", type=int, default=50)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory() as d:
        inp, out = Path(d) / "in", Path(d) / "out"
        make_tree(inp, args.images)

        # 1. the labeler alone, on the same images already decoded
        rgbs = [prepare_image(p.read_bytes()).rgb for p in sorted(inp.glob("*/*.JPEG"))[:100]]
        lab = FixedCostLabeler(args.seconds)
        t0 = time.perf_counter()
        for i in range(0, len(rgbs), 16):
            lab.label(rgbs[i : i + 16])
        alone = len(rgbs) / (time.perf_counter() - t0)

        # 2. the whole job, on a Ray started beforehand (as on a cluster) and then once more with its start
        import ray

        from c2f.cli import main as c2f_main
        from pipelines.distributor import init_ray

        job = [
            str(inp),
            "",
            "--preset",
            "fixed-cost",
            "--fixed-cost-seconds",
            str(args.seconds),
            "--samples-per-shard",
            str(args.per_shard),
            "--no-validate",
        ]
        mon = RssMonitor()
        mon.start()
        init_ray("local")
        t0 = time.perf_counter()
        job[1] = str(out)
        assert c2f_main(["label", *job]) == 0
        warm = time.perf_counter() - t0
        ray.shutdown()
        t0 = time.perf_counter()
        job[1] = str(out) + "-cold"
        assert c2f_main(["label", *job]) == 0
        cold = time.perf_counter() - t0
        mon.stop.set()
        driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"labeler alone ({args.seconds * 1000:.0f} ms/image):   {alone:7.1f} images/s")
    print(
        f"job on a running Ray:             {args.images / warm:7.1f} images/s   ratio {args.images / warm / alone:.2f}"
        "  (target >= 0.85)"
    )
    print(
        f"job including Ray's start-up:     {args.images / cold:7.1f} images/s   ratio {args.images / cold / alone:.2f}"
    )
    print(
        f"peak RSS: driver {driver_mb:.0f} MB, largest Ray worker {mon.max_worker / 2**20:.0f} MB, "
        f"all Ray workers together {mon.max_total / 2**20:.0f} MB ({args.images} images, 375x500)"
    )


if __name__ == "__main__":
    main()
