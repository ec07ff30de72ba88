"""What each preset asks of a GPU, counted on any device: torch ops dispatched per image (each at least
one kernel launch on CUDA) and the host syncs per batch, by stage, on the GPU code path
(`--code-path gpu`, the layout CUDA runs, here on a CPU). shards/opcount.py explains the counting.

    .venv/bin/python bench/bench_dispatch.py                    # all tables, batch 16, GPU path
    .venv/bin/python bench/bench_dispatch.py --code-path cpu    # the CPU layout, for comparison
    .venv/bin/python bench/bench_dispatch.py --only shapes

presets  every tiny preset (production classes and code, tiny random weights) at batch 16 of ImageNet-
         sized images: ops per image and host syncs per batch in each stage (preprocess, forward,
         postprocess, download, records), uploads (non-blocking host -> device copies) and ops that
         would mix host and device tensors.
shapes   post-processing at production shapes (model-shaped synthetic outputs: Mask2Former and EoMT
         with 200 queries and 150 classes, SegFormer's 150 class maps) at ImageNet sizes and at twice
         them (750x1000): ops per image and syncs per batch. Targets: <= 100 ops per image, the same
         (+-10%) at both sizes, no sync.
sam      SAM's host syncs per batch against the prompts per image (grids 4x4 to 16x16, 32 prompts per
         decoder pass). Target: independent of the prompts.
real     (not in the default set: minutes of CPU) the presets' real architectures at random weights
         (Mask2Former Swin-L, EoMT-L, SegFormer-B5 + SAM ViT-H; bench_gpu_labeling.py builds them) in
         bf16 autocast, one batch of --real-batch images: what transformers' and segment_anything's
         forward passes do on top of ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labeler import imagenet_sized  # noqa: E402

from labeler.config import LabelerConfig, SamConfig, Settings  # noqa: E402
from labeler.registry import build_labeler  # noqa: E402
from shards.opcount import STAGES, OpCounter, count_batch  # noqa: E402

PRESETS = ("tiny-random-panoptic", "tiny-random-eomt", "tiny-random")
SIZES = [(375, 500), (500, 375), (333, 500), (400, 400)]


def _syncs(counts, stage) -> str:
    kinds = counts.syncs.get(stage, {})
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) if kinds else "0"


def presets(batch: int, code_path: str) -> None:
    images = imagenet_sized(batch)
    print(f"\nper preset, batch {batch}, --code-path {code_path}: ops/image | host syncs per batch (by kind)")
    for preset in PRESETS:
        labeler = build_labeler(Settings(LabelerConfig(preset=preset, device="cpu", code_path=code_path)))
        labeler.label(images[:2])  # warm: caches of sampling grids, rel-pos tables
        counts = count_batch(labeler, images)
        print(f"{preset}")
        for stage in STAGES:
            if counts.ops[stage] or counts.syncs.get(stage):
                extra = f", uploads {counts.uploads[stage]}" if counts.uploads[stage] else ""
                extra += f", MIXED {counts.mixed[stage]}" if counts.mixed[stage] else ""
                print(f"  {stage:<12} {counts.ops[stage] / batch:7.1f} ops/img | syncs: {_syncs(counts, stage)}{extra}")
        print(f"  {'batch':<12} {counts.op_total() / batch:7.1f} ops/img | syncs: {counts.sync_total()}")


def count_postprocess(fn, n: int):
    """fn(i) for i < n, counted; every image size is seen for the first time (no cached grids)."""
    from labeler.postprocess import clear_geometry_cache

    clear_geometry_cache()
    with OpCounter() as counter, counter.phase("postprocess"):
        for i in range(n):
            fn(i)
    return counter.counts


def production_shapes(gpu: bool, n: int = 4) -> dict[str, tuple[float, float, int, int]]:
    """name -> (ops/img at ImageNet sizes, ops/img at twice them, syncs per batch at each)."""
    from labeler.postprocess import RULES, PanopticParams, panoptic, semantic_from_logits, semantic_from_queries
    from labeler.tiny import synthetic_query_logits, synthetic_semantic_logits

    params = PanopticParams(0.8, 0.5, 0.8, 255)
    is_thing = torch.zeros(150, dtype=torch.bool)
    is_thing[:100] = True
    m2f = synthetic_query_logits(n, 200, 150, (96, 96), seed=0)  # 384 x 384 input, outputs at 1/4
    eomt = synthetic_query_logits(n, 200, 150, (160, 160), seed=1)  # 640 x 640 canvas
    segformer = synthetic_semantic_logits(n, 150, (160, 160), seed=2)
    compact = not gpu

    def placed(size):  # an image's part of a padded 640 canvas, in its 160 x 160 outputs, and the step
        s = 640 / max(size)
        return (round(size[0] * s) / 4, round(size[1] * s) / 4), (0.25, 0.25)

    def m2f_panoptic(i, size):
        return panoptic(
            m2f[0][i], m2f[1][i], (96.0, 96.0), size, RULES["mask2former"], params, is_thing, compact, None, gpu
        )

    def eomt_panoptic(i, size):
        valid, step = placed(size)
        return panoptic(eomt[0][i], eomt[1][i], valid, size, RULES["eomt"], params, is_thing, compact, step, gpu)

    def m2f_semantic(i, size):
        return semantic_from_queries(m2f[0][i], m2f[1][i], (96.0, 96.0), size, gpu=gpu)

    def segformer_semantic(i, size):
        valid, step = placed(size)
        return semantic_from_logits(segformer[i], valid, size, step, gpu=gpu)

    cases = {
        "panoptic, Mask2Former": m2f_panoptic,
        "panoptic, EoMT": eomt_panoptic,
        "semantic, Mask2Former": m2f_semantic,
        "semantic, SegFormer": segformer_semantic,
    }
    out = {}
    for name, fn in cases.items():
        row = []
        for scale in (1, 2):
            sizes = [(h * scale, w * scale) for h, w in SIZES]
            counts = count_postprocess(lambda i, fn=fn, sizes=sizes: fn(i, sizes[i % len(sizes)]), n)
            row.append((counts.ops["postprocess"] / n, counts.sync_total()))
        out[name] = (row[0][0], row[1][0], row[0][1], row[1][1])
    return out


def shapes(code_path: str) -> None:
    gpu = code_path != "cpu"
    print(f"\npost-processing at production shapes (200 queries, 150 classes), --code-path {code_path}")
    print(f"{'case':<24} {'ops/img 375x500':>16} {'ops/img 750x1000':>17} {'ratio':>6} {'syncs/batch':>12}")
    for name, (small, large, s_small, s_large) in production_shapes(gpu).items():
        print(f"{name:<24} {small:16.1f} {large:17.1f} {large / small:6.2f} {s_small:>5} / {s_large:<5}")


def sam_syncs(gpu: bool, grids=(4, 8, 16), batch: int = 4, points_per_batch: int = 32) -> dict[int, dict]:
    """grid -> {stage: syncs} for one batch through the batched SAM generator (tiny SAM)."""
    import tempfile

    from labeler.sam import build_instances, load_sam
    from labeler.tiny import save_sam_tiny
    from labeler.transfer import Download, upload

    ckpt = save_sam_tiny(Path(tempfile.mkdtemp(prefix="c2f-sam-")) / "tiny.pth")
    images = imagenet_sized(batch)
    out = {}
    for grid in grids:
        cfg = SamConfig(points_per_side=grid, points_per_batch=points_per_batch, pred_iou_thresh=0.0)
        cfg = dataclasses.replace(cfg, stability_score_thresh=0.5)
        gen = build_instances(load_sam("vit_tiny", str(ckpt), "cpu"), cfg, gpu=gpu)
        with OpCounter() as counter:
            with counter.phase("download"):
                results = gen.run(images, upload(images, torch.device("cpu"), gpu))
                download = Download([t for pair in results for t in pair], gpu)
            with counter.phase("records"):
                download.result()
        out[grid] = {s: counter.counts.sync_total(s) for s in STAGES}
        out[grid]["decoder passes"] = -(-batch * grid * grid // points_per_batch)
    return out


def sam(code_path: str) -> None:
    gpu = code_path != "cpu"
    print(f"\nSAM (tiny), batch 4, 32 prompts per decoder pass, --code-path {code_path}: host syncs per batch")
    print(f"{'grid':<8} {'decoder passes':>15} " + " ".join(f"{s:>12}" for s in STAGES))
    for grid, row in sam_syncs(gpu).items():
        print(f"{grid}x{grid:<6} {row['decoder passes']:15d} " + " ".join(f"{row[s]:12d}" for s in STAGES))


def real(batch: int, code_path: str, keys: list[str]) -> None:
    import argparse as _argparse
    import shutil
    import tempfile

    from bench_gpu_labeling import real_presets

    args = _argparse.Namespace(
        device="cpu", precision="bf16", code_path=code_path, compile=False, grid=16, sam_type="vit_h"
    )
    root = Path(tempfile.mkdtemp(prefix="c2f-dispatch-"))
    images = imagenet_sized(batch)
    print(f"\nreal architectures, random weights, bf16, batch {batch}, --code-path {code_path}")
    try:
        for key, (title, build) in real_presets(root, args).items():
            if keys and key not in keys:
                continue
            labeler = build_labeler(build())
            counts = count_batch(labeler, images)
            print(title)
            for stage in STAGES:
                if counts.ops[stage] or counts.syncs.get(stage):
                    extra = f", MIXED {counts.mixed[stage]}" if counts.mixed[stage] else ""
                    ops = counts.ops[stage] / batch
                    print(f"  {stage:<12} {ops:8.1f} ops/img | syncs: {_syncs(counts, stage)}{extra}")
            del labeler
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--code-path", default="gpu", choices=["gpu", "cpu"])
    ap.add_argument("--only", default="presets,shapes,sam")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real-batch", type=int, default=2)
    ap.add_argument("--real-presets", default="", help="real: comma-separated keys (m2f-384, m2f-640, eomt, sam)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    if "presets" in only:
        presets(args.batch, args.code_path)
    if "shapes" in only:
        shapes(args.code_path)
    if "sam" in only:
        sam(args.code_path)
    if "real" in only:
        real(args.real_batch, args.code_path, [k for k in args.real_presets.split(",") if k])


if __name__ == "__main__":
    main()
