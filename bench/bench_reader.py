"""Reader throughput: RGB + both masks with the joint transform, against RGB alone.

The baseline is the same reader on the same shards with `masks=False`: the same JPEG decoder,
the same RandomResizedCrop(224) + flip, the same metadata; it just never touches the masks, so
the ratio is what the masks cost (target >= 0.8). For reference it also runs the leanest RGB
loader webdataset allows (tarfile_to_samples + decode + v2 transform, no metadata at all).
Runs alternate in one process (this machine is noisy); ratios of medians are reported.

    .venv/bin/python bench/bench_reader.py [--samples 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from shards.reader import JointTransform, _decode_rgb, make_dataset
from shards.synthetic import write_synthetic_dataset


class RgbOnly:
    def __init__(self, size=224):
        from torchvision.transforms import v2

        self._t = v2.Compose([v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip()])

    def __call__(self, sample):
        return {"image": self._t(_decode_rgb(sample["jpg"]))}


def run(ds, n):
    t0 = time.perf_counter()
    count = sum(1 for _ in ds)
    dt = time.perf_counter() - t0
    assert count == n, (count, n)
    return n / dt


def breakdown_ms(raw: list[dict]) -> dict[str, float]:
    """Median per-sample cost of each step on samples already in memory."""
    from shards.reader import _decode_mask, decode_sample

    joint, rgb_only = JointTransform(224), RgbOnly()
    decoded = [decode_sample(s, as_tensors=False) for s in raw]
    steps = {
        "jpeg decode": lambda i: _decode_rgb(raw[i]["jpg"]),
        "rgb-only transform": lambda i: rgb_only._t(decoded[i]["image"]),
        "2 mask PNG decodes": lambda i: (_decode_mask(raw[i]["sem.png"]), _decode_mask(raw[i]["inst.png"])),
        "joint transform": lambda i: joint(decoded[i]),
    }
    out = {}
    for name, fn in steps.items():
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(len(raw)):
                fn(i)
            runs.append((time.perf_counter() - t0) / len(raw) * 1e3)
        out[name] = statistics.median(runs)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker's view
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_dataset(d, args.samples, 100, seed=0, size=(375, 500))
        import glob

        import webdataset as wds

        urls = sorted(glob.glob(d + "/*.tar"))
        full = make_dataset(urls, transform=JointTransform(224), shuffle=0)
        base = make_dataset(urls, transform=JointTransform(224), shuffle=0, masks=False)
        lean = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.map(RgbOnly()))
        a, b, c = [], [], []
        for _ in range(args.repeats):
            b.append(run(base, args.samples))
            a.append(run(full, args.samples))
            c.append(run(lean, args.samples))
        raw = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
        breakdown = breakdown_ms(raw)
    fa, fb, fc = statistics.median(a), statistics.median(b), statistics.median(c)
    print(f"reader, RGB + sem + inst, joint transform:   {fa:7.1f} samples/s")
    print(f"baseline: same reader, masks=False:          {fb:7.1f} samples/s")
    print(f"reference: bare webdataset RGB loader:       {fc:7.1f} samples/s")
    print(f"ratio masks / baseline: {fa / fb:.2f}   (target >= 0.80; 375x500 images -> 224, 1 thread)")
    print(f"ratio masks / bare RGB loader: {fa / fc:.2f}")
    print("per-sample breakdown, in memory (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in breakdown.items()))


if __name__ == "__main__":
    main()
