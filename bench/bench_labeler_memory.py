"""Labeler memory per pixel: the peak RSS one image costs a labeling process, by image size.

.venv/bin/python bench/bench_labeler_memory.py [--presets tiny-random tiny-random-panoptic] [--mp 1 4]

Each preset runs in a fresh process: build the labeler, label a small warm-up image (so model
weights, thread pools and allocator arenas are in place), then label one image of each size while
a thread samples the process's RSS every 2 ms. The cost per pixel is the slope of the peak between
the two largest sizes (the constant part, whatever the image, drops out). This is what `--max-pixels`
must be weighed against: an accepted image of N pixels costs the labeling actor about N x slope.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import gc, json, sys, threading, time
import numpy as np, psutil
from labeler.registry import build_labeler

preset, sizes = sys.argv[1], [float(s) for s in sys.argv[2:]]
proc = psutil.Process()
lab = build_labeler(preset)
rng = np.random.default_rng(0)
lab.label([rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)])
out = []
for mp in sizes:
    h = int((mp * 1e6 * 3 / 4) ** 0.5); w = int(mp * 1e6 / h)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    gc.collect()
    base = proc.memory_info().rss
    peak = [base]; stop = threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.002)
    t = threading.Thread(target=sample); t.start()
    t0 = time.perf_counter(); res = lab.label([img]); dt = time.perf_counter() - t0
    stop.set(); t.join()
    if isinstance(res[0], Exception):
        raise res[0]
    out.append({"pixels": h * w, "h": h, "w": w, "peak_delta": peak[0] - base, "seconds": dt})
    del img, res
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny-random", "tiny-random-panoptic"])
    ap.add_argument("--mp", nargs="+", type=float, default=[1.0, 4.0], help="image sizes in megapixels")
    args = ap.parse_args()
    for preset in args.presets:
        r = subprocess.run(
            [sys.executable, "-c", CHILD, preset, *map(str, args.mp)], capture_output=True, text=True, check=False
        )
        if r.returncode:
            print(f"{preset}: failed\n{r.stderr[-2000:]}")
            continue
        rows = json.loads(r.stdout.strip().splitlines()[-1])
        for row in rows:
            print(
                f"{preset:<22} {row['w']}x{row['h']} ({row['pixels'] / 1e6:.1f} MP): "
                f"peak +{row['peak_delta'] / 2**20:7.0f} MiB, {row['peak_delta'] / row['pixels']:6.0f} B/px, "
                f"{row['seconds']:.1f}s"
            )
        a, b = rows[-2], rows[-1]
        slope = (b["peak_delta"] - a["peak_delta"]) / (b["pixels"] - a["pixels"])
        print(f"{preset:<22} slope: {slope:.0f} bytes per pixel")


if __name__ == "__main__":
    main()
