"""How much a pipelined labeling actor overlaps host work with device time, through the real job.

The `fixed-cost` labeler spends D ms per image on a simulated device (batches back to back on one
timeline, waited for without the GIL, as a CUDA stream is) and H ms per image of host work that
holds the GIL (spinning). Each case runs the whole job (`c2f label`, one actor, a local Ray started
once with `--cpus` logical CPUs, so that several shard tasks feed the actor as on a GPU node) with
`--actor-batches 1` (serial: 1/(H + D) at best) and more (1/max(H, D) at best), and prints the
actor's rate while busy, the overlap of its stages (device + host over busy time) and the ratio to
the serial run of the same case; beside it, the actor's own code called from as many threads
without Ray ("alone"). CPU only; on a GPU the device time is real.

    .venv/bin/python bench/bench_pool_overlap.py [--images 96] [--batch-size 2] [--repeats 2] [--cpus 6]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SUMMARY = re.compile(
    r"actors busy [\d.]+ per image \((?P<rate>[\d.]+) images/s while busy\), stages overlapped (?P<overlap>[\d.]+)x"
)
DONE = re.compile(r"this run labeled \d+ inputs \(\d+ shards\) in (?P<secs>[\d.]+)s")


def make_tree(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"n0{1000000 + i % 4:07d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / f"{d.name}_{i:04d}.JPEG")


def job(inp: Path, out: Path, host: float, device: float, batches: int, batch_size: int) -> tuple[float, float, float]:
    """(rate while busy, overlap, seconds of the whole run) of one `c2f label` run."""
    from c2f.cli import main

    args = [str(inp), str(out), "--preset", "fixed-cost", "--fixed-cost-seconds", str(device)]
    args += ["--fixed-cost-host-seconds", str(host), "--batch-size", str(batch_size), "--samples-per-shard", "8"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["label", *args, "--no-validate", "--actor-batches", str(batches)]) == 0
    text = buf.getvalue()
    m, d = SUMMARY.search(text), DONE.search(text)
    assert m and d, text
    return float(m["rate"]), float(m["overlap"]), float(d["secs"])


def alone(host: float, device: float, batches: int, batch_size: int, n: int) -> tuple[float, float]:
    """(rate, overlap) of the actor's own code path called from `batches` threads, without Ray."""
    from concurrent.futures import ThreadPoolExecutor

    from labeler.config import LabelerConfig, Settings
    from pipelines.pool import LabelActor

    cfg = LabelerConfig(preset="fixed-cost", fixed_cost_seconds=device, fixed_cost_host_seconds=host)
    actor = LabelActor(Settings(cfg), 1)
    images = [np.zeros((24, 32, 3), np.uint8)] * batch_size
    t0 = time.perf_counter()
    with ThreadPoolExecutor(batches) as pool:
        list(pool.map(actor.label, [images] * (n // batch_size)))
    rate = n // batch_size * batch_size / (time.perf_counter() - t0)
    t = actor.timings()
    return rate, (t["device_ms"] + t["host_ms"]) / t["busy_ms"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting; the best is kept (noise only slows)")
    ap.add_argument("--cpus", type=int, default=6, help="logical CPUs of the local Ray: shard tasks feeding the actor")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    # Ray starts its workers at nice 15: on a shared machine any other load would starve the job.
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    cases = [(0.02, 0.02), (0.01, 0.02), (0.02, 0.01), (0.04, 0.04)]  # (H, D) seconds per image
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in"
        make_tree(inp, args.images)
        ray.init(  # started once, as on a cluster
            address="local",
            num_cpus=args.cpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        try:
            print(f"{args.images} images, batches of {args.batch_size}, one actor; rate = images/s while busy")
            head = ("H ms", "D ms", "batches", "ideal", "alone", "overlap", "job", "of ideal", "overlap", "vs 1")
            widths = (5, 5, 7, 7, 7, 7, 7, 8, 7, 6)
            print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
            for host, device in cases:
                serial = None
                for batches in (1, 2, 3):
                    best, best_alone = (0.0, 0.0, 0.0), (0.0, 0.0)
                    for r in range(args.repeats):
                        best_alone = max(best_alone, alone(host, device, batches, args.batch_size, args.images))
                        out = Path(tmp) / f"out-{host}-{device}-{batches}-{r}-{time.monotonic_ns()}"
                        best = max(best, job(inp, out, host, device, batches, args.batch_size))
                    rate, overlap, _ = best
                    serial = serial or rate
                    ideal = 1 / (host + device) if batches == 1 else 1 / max(host, device)
                    print(
                        f"{1000 * host:5.0f} {1000 * device:5.0f} {batches:7d} {ideal:7.1f} {best_alone[0]:7.1f} "
                        f"{best_alone[1]:7.2f} {rate:7.1f} {rate / ideal:8.2f} {overlap:7.2f} {rate / serial:6.2f}"
                    )
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
