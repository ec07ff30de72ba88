"""Validator throughput against its floor: decoding the same JPEGs alone.

`c2f validate` decodes every JPEG, so decoding them is the least a full check can cost. This
bench writes ImageNet-sized samples (375x500 scenes, q95 JPEG ~110 KB, the masks c2f writes),
then alternates, `--rounds` times, in this one process tree:

    baseline   2 processes, one shard at a time each: read the tar, decode every .jpg with PIL
               in full (the least any check that decodes JPEGs must do)
    validate   `validate(workers=2)`: everything `c2f validate` does (sha256, tar structure, keys,
               JSON record, JPEG decode, both maps decoded and checked, plan and manifest)

and prints samples/s of each and the ratio (target >= 0.8), plus `--sample 2`, and validate with
full-resolution JPEG decoding (`shards.validate.JPEG_DCT_SCALING = False`) for reference.
The machine may be shared: the CPU seconds per sample of both runs (this process and its worker
processes, from getrusage) are printed too; their ratio is what the rates' ratio is on an idle
machine, where both runs are CPU-bound on the same 2 cores.

    .venv/bin/python bench/bench_validate.py [--samples 10000] [--per-shard 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from shards import format as fmt
from shards import validate as validate_module
from shards.image import prepare_image
from shards.manifest import LabelerInfo, LabelSpace, PlanHeader, ShardStats, write_dataset_files, write_stats
from shards.pack import Labels, pack_sample
from shards.synthetic import CLASS_NAMES, encode_jpeg, make_scene
from shards.tar import tar_members
from shards.validate import validate
from shards.writer import ShardWriter


def write_dataset(out: Path, n: int, per_shard: int, distinct: int = 200) -> None:
    """`n` samples cycling over `distinct` scenes (unique keys; decoding costs the same)."""
    rng = np.random.default_rng(0)
    scenes = []
    for _ in range(min(distinct, n)):
        rgb, sem, inst, instances = make_scene(rng, 375, 500)
        scenes.append((prepare_image(encode_jpeg(rgb)), Labels(sem, inst, instances)))
    packed = [pack_sample("k", im, lab, "x", 0, None) for im, lab in scenes]
    stats, sizes = [], []
    for index, start in enumerate(range(0, n, per_shard)):
        shard = fmt.shard_name("bench", index)
        count = min(per_shard, n - start)
        with ShardWriter(out / shard) as w:
            for j in range(start, start + count):
                key = f"s{j:08d}"
                members = dict(packed[j % len(packed)])
                members[fmt.META] = members[fmt.META].replace(b'"key": "k"', f'"key": "{key}"'.encode())
                w.write(key, members)
        info = w.info
        stats.append(ShardStats(index, shard, count, info.samples, info.bytes, info.sha256))
        write_stats(out, stats[-1])
        sizes.append(count)
    plan = PlanHeader("bench", False, ["any"], per_shard, "bench", n, len(sizes), "", sizes)
    label_space = LabelSpace(semantic={str(i): c for i, c in enumerate(CLASS_NAMES)})
    write_dataset_files(out, label_space, LabelerInfo("bench"), plan, stats)


def decode_jpegs(shard: str) -> int:
    """Read the shard's members (no hashing, no checks) and decode every JPEG in full."""
    n = 0
    with open(shard, "rb") as f:
        for name, data, _ in tar_members(io.BufferedReader(f, 1 << 20)):
            if name.endswith("." + fmt.JPG):
                Image.open(io.BytesIO(data)).load()
                n += 1
    return n


def cpu_seconds() -> float:
    """CPU time of this process and of every worker process it has waited for."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def baseline(shards: list[str]) -> tuple[float, float]:
    """(samples/s, CPU ms/sample) decoding every JPEG of the shards with 2 processes."""
    c0 = cpu_seconds()
    with ProcessPoolExecutor(2) as pool:
        pool.submit(int).result()  # workers up before the clock starts (validate's pool starts inside)
        t0 = time.perf_counter()
        n = sum(pool.map(decode_jpegs, shards))
        dt = time.perf_counter() - t0
    return n / dt, (cpu_seconds() - c0) / n * 1e3


def run_validate(d: str, sample: int | None = None) -> tuple[float, float]:
    """(samples/s, CPU ms/sample) of `validate` with 2 workers."""
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    report = validate([d], workers=2, sample=sample, progress=False)
    dt = time.perf_counter() - t0
    assert report.ok, report.findings[:3]
    n = sum(r.samples for r in report.shards)
    return n / dt, (cpu_seconds() - c0) / n * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        write_dataset(Path(d), args.samples, args.per_shard)
        shards = sorted(str(p) for p in Path(d).glob("*.tar"))
        mb = sum(Path(s).stat().st_size for s in shards) / 1e6
        print(f"{args.samples} samples, {len(shards)} shards, {mb:.0f} MB (written in {time.perf_counter() - t0:.0f}s)")
        base, val = [], []
        for r in range(args.rounds):
            base.append(baseline(shards))
            val.append(run_validate(d))
            print(
                f"round {r}: decode JPEGs {base[-1][0]:7.1f} samples/s ({base[-1][1]:.2f} CPU ms/sample)   "
                f"validate {val[-1][0]:7.1f} samples/s ({val[-1][1]:.2f} CPU ms/sample)"
            )
        ratios = [v[0] / b[0] for v, b in zip(val, base, strict=True)]
        cpu_ratios = [b[1] / v[1] for v, b in zip(val, base, strict=True)]
        sampled = run_validate(d, sample=2)[0]
        validate_module.JPEG_DCT_SCALING = False  # the worker processes fork from here
        full = run_validate(d)
        validate_module.JPEG_DCT_SCALING = True
        print(f"decode JPEGs alone, 2 processes: {statistics.median(b[0] for b in base):7.1f} samples/s")
        print(f"c2f validate, 2 workers:         {statistics.median(v[0] for v in val):7.1f} samples/s")
        print(f"c2f validate --sample 2:         {sampled:7.1f} samples/s")
        print(
            f"validate, full-size JPEG decode: {full[0]:7.1f} samples/s ({full[1]:.2f} CPU ms/sample; "
            f"CPU ratio {statistics.median(b[1] for b in base) / full[1]:.2f})"
        )
        for what, rs in (("rate", ratios), ("CPU", cpu_ratios)):
            rounds = ", ".join(f"{x:.2f}" for x in rs)
            print(f"ratio validate / decode ({what}): {statistics.median(rs):.2f} (rounds: {rounds})")


if __name__ == "__main__":
    main()
