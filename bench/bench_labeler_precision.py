"""bf16 (or fp16) forward passes against fp32: how many label pixels change. CPU autocast runs bf16, so
this needs no GPU (a GPU's bf16 kernels round like the CPU's up to accumulation order).

    .venv/bin/python bench/bench_labeler_precision.py [--images 16] [--precision bf16]

presets   every tiny preset end to end (production code, tiny random weights), fp32 against --precision:
          semantic pixels equal, instance-map pixels equal up to numbering (each fp32 instance paired
          with the instance it overlaps most), instance/background equal, instances per image.
rounding  post-processing of model-shaped outputs (labeler.tiny's synthetic logits: Mask2Former and EoMT
          panoptic with 200 queries and 150 classes, SegFormer's 150 class maps) against the same outputs
          rounded to bf16: what bf16 costs if it only rounded the model's outputs, at the presets'
          thresholds (score 0.8, overlap 0.8). A real model's bf16 forward also perturbs its features, so
          the end-to-end figure with trained weights is lower; measure it on a GPU with real weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labeler import imagenet_sized  # noqa: E402

from labeler.config import LabelerConfig, Settings  # noqa: E402
from labeler.registry import build_labeler  # noqa: E402

PRESETS = ("tiny-random-panoptic", "tiny-random-eomt", "tiny-random")


def matched(a: np.ndarray, b: np.ndarray) -> int:
    """Pixels on which two instance maps agree up to numbering: each instance of `a` is paired with the
    instance of `b` it overlaps most (one dropped instance renumbers every later one, so equal ids
    understate agreement)."""
    pairs = a.astype(np.int64) * (int(b.max()) + 1) + b
    ids, counts = np.unique(pairs, return_counts=True)
    best: dict[int, int] = {}
    for pair, count in zip(ids.tolist(), counts.tolist(), strict=True):
        best[pair // (int(b.max()) + 1)] = max(best.get(pair // (int(b.max()) + 1), 0), count)
    return sum(best.values())


def agreement(a, b) -> dict[str, float]:
    """Two lists of Labels -> shares of equal pixels and instances per image."""
    pixels = sum(x.semantic.size for x in a)
    return {
        "semantic": sum(int((x.semantic == y.semantic).sum()) for x, y in zip(a, b, strict=True)) / pixels,
        "instance": sum(matched(x.instance, y.instance) for x, y in zip(a, b, strict=True)) / pixels,
        "inst/bg": sum(int(((x.instance > 0) == (y.instance > 0)).sum()) for x, y in zip(a, b, strict=True)) / pixels,
        "inst/img": (sum(len(x.instances) for x in a) / len(a), sum(len(y.instances) for y in b) / len(b)),
    }


def presets(n: int, precision: str) -> None:
    images = imagenet_sized(n)
    print(f"\nend to end, {n} ImageNet-sized images, fp32 against {precision} (tiny random weights)")
    print(f"{'preset':<24} {'semantic':>9} {'instance':>9} {'inst/bg':>8} {'inst/img fp32 / ' + precision:>20}")
    for preset in PRESETS:
        out = {}
        for p in ("fp32", precision):
            labeler = build_labeler(Settings(LabelerConfig(preset=preset, device="cpu", precision=p, code_path="gpu")))
            out[p] = [x for i in range(0, n, 8) for x in labeler.label(images[i : i + 8])]
            assert not any(isinstance(x, Exception) for x in out[p]), out[p]
        r = agreement(out["fp32"], out[precision])
        counts = f"{r['inst/img'][0]:.1f} / {r['inst/img'][1]:.1f}"
        print(f"{preset:<24} {r['semantic']:9.4%} {r['instance']:9.4%} {r['inst/bg']:8.4%} {counts:>20}")


def rounding(n: int) -> None:
    from labeler.postprocess import RULES, PanopticParams, panoptic, semantic_from_logits, semantic_from_queries
    from labeler.tiny import synthetic_query_logits, synthetic_semantic_logits

    sizes = [(375, 500), (500, 375), (333, 500), (400, 400)]
    params = PanopticParams(0.8, 0.5, 0.8, 255)
    is_thing = torch.zeros(150, dtype=torch.bool)
    is_thing[:100] = True

    def bf16(t):
        return t.to(torch.bfloat16).float()

    print(f"\npost-processing of model-shaped outputs, fp32 against outputs rounded to bf16 ({n} images)")
    print(f"{'case':<24} {'semantic':>9} {'instance':>9} {'segments fp32':>14} {'segments bf16':>14}")
    rows = {
        "panoptic, Mask2Former": ("mask2former", (96, 96)),
        "panoptic, EoMT": ("eomt", (160, 160)),
    }
    for name, (family, side) in rows.items():
        cls, masks = synthetic_query_logits(n, 200, 150, side, seed=11)
        equal_s = equal_i = total = seg_a = seg_b = 0
        for i in range(n):
            size = sizes[i % len(sizes)]
            region = (float(side[0]), float(side[1]))
            a = panoptic(cls[i], masks[i], region, size, RULES[family], params, is_thing, True)
            b = panoptic(bf16(cls[i]), bf16(masks[i]), region, size, RULES[family], params, is_thing, True)
            equal_s += int((a[0] == b[0]).sum())
            equal_i += int((a[1] == b[1]).sum())
            total += a[0].numel()
            seg_a += int((a[2][:, 0] > 0).sum())
            seg_b += int((b[2][:, 0] > 0).sum())
        print(f"{name:<24} {equal_s / total:9.4%} {equal_i / total:9.4%} {seg_a / n:14.1f} {seg_b / n:14.1f}")
    cls, masks = synthetic_query_logits(n, 200, 150, (96, 96), seed=12)
    logits = synthetic_semantic_logits(n, 150, (160, 160), seed=13)
    for name, fn in (
        (
            "semantic, Mask2Former",
            lambda i, f: semantic_from_queries(f(cls[i]), f(masks[i]), (96.0, 96.0), sizes[i % 4]),
        ),
        ("semantic, SegFormer", lambda i, f: semantic_from_logits(f(logits[i]), (160.0, 160.0), sizes[i % 4])),
    ):
        equal = total = 0
        for i in range(n):
            a, b = fn(i, lambda t: t), fn(i, bf16)
            equal += int((a == b).sum())
            total += a.numel()
        print(f"{name:<24} {equal / total:9.4%} {'':>9}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--only", default="presets,rounding")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.seterr(all="ignore")
    only = set(args.only.split(","))
    if "presets" in only:
        presets(args.images, args.precision)
    if "rounding" in only:
        rounding(args.images)


if __name__ == "__main__":
    main()
