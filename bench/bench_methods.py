"""Every pretraining method end to end on CPU: pretrain, then probe, same data, steps and seed.

.venv/bin/python bench/bench_methods.py [--images 400] [--steps 100] [--img-size 64 --patch-size 8]

Input: synthetic scenes (shards.synthetic.write_synthetic_dataset) whose image class (`.cls`) is
the class of the largest object (disc, box or triangle), so a probe has something to find. A micro
C2FMAE is pretrained with each `--method` (mae, c2fmae with the centre and with the local instance
target, smir online, smir in rounds, folk with two views and with one, srmae) through `c2f
pretrain`, with the same seed (so the same data order and crops; initial weights differ where a
method adds modules, which draw from the same generator), steps, batch and learning rate; then
`c2f probe` (kNN and linear on frozen CLS features, 80/20 split by key hash) scores each
checkpoint. The floor is the mae arm's initial encoder untrained: `--method mae` with a learning
rate of 0 (AdamW with lr 0 changes nothing, weight decay included).

Prints one table: method, steps, wall and CPU seconds of the pretraining (model build and data
included; the loader runs in this process, `--workers 0`, so CPU time is the whole cost, and it
is less disturbed than wall time by other jobs on a shared machine), the loss terms averaged over
the last 10 steps, kNN and linear top-1. At this scale it shows that each method's path runs end
to end and what it costs against MAE, not which method learns better features.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

# name -> flags on top of the shared ones; "floor" trains nothing (blr 0)
ARMS: dict[str, list[str]] = {
    "floor (untrained)": ["--method", "mae", "--blr", "0"],
    "mae": ["--method", "mae"],
    "c2fmae": ["--method", "c2fmae"],
    "c2fmae (local target)": ["--method", "c2fmae", "--instance-target", "local"],
    "smir (online)": ["--method", "smir"],
    "smir (2 rounds)": ["--method", "smir", "--selective-rounds", "2"],
    "folk": ["--method", "folk"],
    "folk (1 view com)": ["--method", "folk", "--folk-views", "1", "--folk-filters", "com"],
    "srmae": ["--method", "srmae"],
}


def c2f(*args: str) -> str:
    """Run a `c2f` command in this process (no interpreter start-up per arm); its stdout, or exit."""
    from c2f.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(list(args))
    if rc != 0:
        raise SystemExit(f"c2f {' '.join(args)} exited {rc}:\n{buf.getvalue()[-2000:]}")
    return buf.getvalue()


def final_losses(run: Path, tail: int = 10) -> dict[str, float]:
    """Each loss term averaged over the last `tail` steps of metrics.jsonl (one step's batch is noisy)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[-tail:]]
    keys = [k for k in records[-1] if k.startswith("loss_")]
    return {k[5:]: sum(r[k] for r in records) / len(records) for k in keys}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--blr", default="1e-2", help="base lr (micro models at a few hundred steps want a high one)")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    ap.add_argument("--dir", default="", help="keep the shards and runs here (reruns skip finished arms)")
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}")

    from shards.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.dir or tmp)
        shards = d / "scenes"
        if not (shards / "manifest.json").exists():
            write_synthetic_dataset(shards, args.images, 50, seed=123, size=(160, 224))
        rows = []
        for arm in arms:
            run = d / ("run-" + "".join(c if c.isalnum() else "-" for c in arm))
            seconds = cpu = float("nan")
            if not (run / "checkpoint.pt").exists():
                t0, c0 = time.perf_counter(), time.process_time()
                c2f(
                    "pretrain",
                    str(shards),
                    "--output",
                    str(run),
                    "--model",
                    "c2fmae_vit_micro",
                    "--img-size",
                    str(args.img_size),
                    "--patch-size",
                    str(args.patch_size),
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--blr",
                    args.blr,
                    "--workers",
                    "0",
                    "--seed",
                    args.seed,
                    "--vis-every",
                    "0",
                    "--log-every",
                    "1000",
                    *ARMS[arm],
                )  # fmt: skip  (a later --blr, the floor's, wins)
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            probe = json.loads(c2f("probe", str(shards), "--checkpoint", str(run / "checkpoint.pt"), "--json"))
            row = (arm, args.steps, seconds, cpu, final_losses(run), probe["knn_top1"], probe["linear_top1"])
            rows.append(row)
            print(f"{arm:<18} {seconds:6.0f}s wall {cpu:6.0f}s CPU  kNN {row[5]:.3f}  linear {row[6]:.3f}", flush=True)

        mae = next((r[3] for r in rows if r[0] == "mae"), float("nan"))
        print(
            f"\n{args.images} scenes (3 classes), c2fmae_vit_micro at {args.img_size} px, patch {args.patch_size}, "
            f"batch {args.batch_size}, blr {args.blr}, seed {args.seed}; probe: {probe['samples']}"
        )
        print("| method | steps | wall s | CPU s | CPU vs mae | final losses | kNN top-1 | linear top-1 |")
        print("|---|---|---|---|---|---|---|---|")
        for arm, steps, sec, cpu, losses, knn, lin in rows:
            terms = ", ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "total") or "-"
            ratio = f"{cpu / mae:.2f}" if cpu == cpu and mae == mae else "-"
            print(f"| {arm} | {steps} | {sec:.0f} | {cpu:.0f} | {ratio} | {terms} | {knn:.3f} | {lin:.3f} |")


if __name__ == "__main__":
    main()
