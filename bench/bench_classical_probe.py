"""Does pretraining on `classical` labels beat pretraining on random masks of the same images?

.venv/bin/python bench/bench_classical_probe.py [--images 400] [--steps 400] [--seeds 0,1,2]

Input: synthetic scenes (shards.synthetic.make_scene) saved as JPEGs in an ImageNet-style tree
whose folder is the class of each scene's largest object (3 classes: disc, box, triangle). The
same images are labeled twice through `c2f label`: `classical` (weight-free) and `tiny-random`
(random models: masks with no relation to the objects). A micro C2FMAE is pretrained on each,
with the same seeds, steps and curriculum, and `c2f probe` (kNN and linear on frozen features,
80/20 split by key) scores each checkpoint on the same images; a random-init encoder is the floor.
Prints one line per run and the mean and spread per labeling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shards.synthetic import encode_jpeg, make_scene


def write_tree(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for j in range(n):
        rgb, _, _, instances = make_scene(rng, 160, 224)
        cls = max(instances, key=lambda r: r.area).category
        folder = root / f"n{cls:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"n{cls:08d}_{j:06d}.JPEG").write_bytes(encode_jpeg(rgb))


def c2f(*args: str) -> str:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-m", "c2f", *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"c2f {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def probe(shards: Path, checkpoint: str) -> dict:
    args = [str(shards), "--json", "--batch-size", "32"]
    args += ["--checkpoint", checkpoint] if checkpoint else ["--model", "c2fmae_vit_micro"]
    return json.loads(c2f("probe", *args).strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--dir", default="", help="keep the inputs, outputs and checkpoints here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.dir or tmp)
        if not (d / "in").exists():
            write_tree(d / "in", args.images, seed=123)
        for preset in ("classical", "tiny-random"):
            if not (d / preset / "manifest.json").exists():
                t0 = time.perf_counter()
                c2f("label", str(d / "in"), str(d / preset), "--preset", preset, "--samples-per-shard", "50")
                print(f"labeled {args.images} images with {preset} in {time.perf_counter() - t0:.0f}s", flush=True)
        results: dict[str, list[dict]] = {"classical": [], "tiny-random": []}
        floor = probe(d / "classical", "")
        for seed in args.seeds.split(","):
            for preset in results:
                run = d / f"pretrain-{preset}-{seed}"
                if not (run / "checkpoint.pt").exists():
                    c2f(
                        "pretrain", str(d / preset), "--output", str(run), "--model", "c2fmae_vit_micro",
                        "--steps", str(args.steps), "--batch-size", "16", "--blr", "1e-2", "--workers", "1",
                        "--seed", seed, "--vis-every", "0", "--log-every", "1000",
                    )  # fmt: skip
                # Same images, same split: the classical output's shards (their RGB and .cls are identical).
                r = probe(d / "classical", str(run / "checkpoint.pt"))
                results[preset].append(r)
                print(f"{preset:<12} seed {seed}: kNN {r['knn_top1']:.3f}  linear {r['linear_top1']:.3f}", flush=True)
        print(f"random init   : kNN {floor['knn_top1']:.3f}  linear {floor['linear_top1']:.3f}  ({floor['samples']})")
        for preset, rs in results.items():
            knn = np.array([r["knn_top1"] for r in rs])
            lin = np.array([r["linear_top1"] for r in rs])
            print(
                f"{preset:<12}: kNN {knn.mean():.3f} ± {knn.std():.3f}  linear {lin.mean():.3f} ± {lin.std():.3f}"
                f"  over {len(rs)} seeds"
            )


if __name__ == "__main__":
    main()
