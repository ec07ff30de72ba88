"""Trainer cost on this machine: the cascade against plain MAE, and whether the loader keeps up.

1. Optimizer-step throughput of C2FMAE (cascaded semantic -> instance -> pixel decoder, curriculum
   masking) against the same encoder as plain MAE (pixel stage only, random masking), alternating
   in one process on in-memory batches: the ratio is the cost of the cascade.
2. Loader throughput (shards -> joint augmentation -> targets, default 2 workers) against what
   one C2FMAE step consumes per second.

    .venv/bin/python bench/bench_train.py [--model c2fmae_vit_tiny] [--batch-size 16] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from c2fmae.data import make_loader
from c2fmae.engine import Loop, Schedule, param_groups, train_steps
from c2fmae.model import C2FMAE, model_config
from shards.synthetic import write_synthetic_dataset


def batches(n: int, bs: int, num_classes: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        sem = torch.randint(0, num_classes, (bs, 56, 56), generator=g)
        out.append(
            {
                "image": torch.randn(bs, 3, 224, 224, generator=g),
                "sem_cells": sem,
                "inst_cells": torch.rand(bs, 4, 56, 56, generator=g).round(),
                "sem_patch": sem[:, 2::4, 2::4].reshape(bs, -1),
                "inst_patch": torch.randint(0, 8, (bs, 196), generator=g),
                "cls": torch.zeros(bs, dtype=torch.long),
            }
        )
    return out


def step_rate(model, data, masking: str, steps: int) -> float:
    loop = Loop(Schedule(steps + 1, 1, 1e-4), masking=masking, mask_ratio=0.75)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    it = iter(data * (steps + 1))
    gen = torch.Generator().manual_seed(0)
    for _ in train_steps(model, opt, it, range(0, 1), loop, gen):  # warm-up
        pass
    t0 = time.perf_counter()
    for _ in train_steps(model, opt, it, range(1, steps + 1), loop, gen):
        pass
    return steps * data[0]["image"].shape[0] / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="c2fmae_vit_tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    c2f = C2FMAE(model_config(args.model, num_classes=150))
    mae = C2FMAE(model_config(args.model, num_classes=150, stages=("pixel",)))
    data = batches(2, args.batch_size, 150)
    a, b = [], []
    for _ in range(args.repeats):
        b.append(step_rate(mae, data, "random", args.steps))
        a.append(step_rate(c2f, data, "curriculum", args.steps))
    fa, fb = statistics.median(a), statistics.median(b)
    print(f"{args.model}, batch {args.batch_size}, CPU fp32, {torch.get_num_threads()} threads")
    print(f"C2FMAE step (3-stage cascade, curriculum masking): {fa:6.1f} images/s")
    print(f"MAE step (same encoder, pixel stage, random):      {fb:6.1f} images/s")
    print(f"ratio C2FMAE / MAE: {fa / fb:.2f}  (the cascade's cost)")

    with tempfile.TemporaryDirectory() as d:
        write_synthetic_dataset(d, 256, 32, seed=0, size=(375, 500))
        loader = iter(make_loader(d, args.batch_size, args.workers, seed=0, epoch=0))
        next(loader)
        n = 8
        t0 = time.perf_counter()
        for _ in range(n):
            next(loader)
        rate = n * args.batch_size / (time.perf_counter() - t0)
    print(
        f"loader, {args.workers} workers (375x500 shards -> 224 + targets): {rate:6.1f} samples/s "
        f"= {rate / fa:.1f}x what a C2FMAE step consumes here"
    )


if __name__ == "__main__":
    main()
