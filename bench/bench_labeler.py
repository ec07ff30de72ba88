"""Labelers on this CPU with the tiny random models: where the time goes, and our pieces against the
library code they replace, on the same inputs in the same process.

    .venv/bin/python bench/bench_labeler.py [--images 16] [--only shares,postprocess,sam,drift] [--threads 2]

shares       img/s per preset and the share of labeling time (decoded image -> packed sample) spent in
             the model's forward passes, in pre/post-processing on the device (resizing, mask
             resampling, argmax, filtering, NMS, painting: the tensor work transformers' processors
             and SAM's generator did before), and in host glue (copies, records, checks, PNG encoding
             of both maps). Target: host glue < 10% for every preset.
postprocess  panoptic and semantic post-processing of one batch (16 images, 100 queries, 150
             classes, ImageNet-sized targets): transformers' post_process_* vs ours, timed in
             alternation, best of --rounds. Target >= 5x.
sam          automatic masks per image on the tiny SAM, same grid: SamAutomaticMaskGenerator vs ours
             (low-res filtering). Target >= 3x.
drift        what filtering on the low-res logits changes against filtering at full resolution.
layouts      (not in the default set) our post-processing in its CPU layout (bands in the cache,
             compaction, per-cell semantic decisions) against its GPU layout (whole-image passes),
             both on this CPU, same batch as postprocess: where the CPU layout pays.
grid         16x16 against 32x32 prompts: masks per image, and how many of the 32x32 instances the
             16x16 grid recovers (IoU >= 0.8).
drift, grid: meaningful with real weights and photos: --sam-checkpoint sam_vit_h_4b8939.pth
             --sam-type vit_h --photos DIR (SAM's own thresholds); without, the tiny SAM.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from skimage import data as skdata

from labeler.config import LabelerConfig, SamConfig, Settings
from labeler.registry import build_labeler
from shards.image import prepare_image
from shards.pack import pack_sample
from shards.synthetic import encode_jpeg


class ForwardTimer:
    """Sums wall time spent inside the given (non-nested) modules' forward()."""

    def __init__(self, modules):
        self.total = 0.0
        self._t0 = 0.0
        for m in modules:
            m.register_forward_pre_hook(self._pre)
            m.register_forward_hook(self._post)

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0


def imagenet_sized(n: int) -> list[np.ndarray]:
    """Photos at ImageNet's typical sizes (500 x 375, 375 x 500, 500 x 333, 400 x 400...)."""
    import torch.nn.functional as F

    base = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    sizes = [(375, 500), (500, 375), (333, 500), (400, 400), (375, 500), (281, 500)]
    out = []
    for i in range(n):
        t = torch.from_numpy(base[i % len(base)]).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, sizes[i % len(sizes)], mode="bilinear", antialias=True)
        out.append(np.ascontiguousarray(t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()))
    return out


def _model_modules(lab) -> list:
    if hasattr(lab, "panoptic"):
        return [lab.panoptic.seg.model]
    sam = lab.instances.model if hasattr(lab.instances, "model") else lab.instances.generator.predictor.model
    dec = sam.mask_decoder
    return [
        lab.semantic.seg.model,
        sam.image_encoder,
        sam.prompt_encoder,
        dec.transformer,
        dec.output_upscaling,
        dec.iou_prediction_head,
        *dec.output_hypernetworks_mlps,
    ]


def shares(preset: str, images: list[np.ndarray], batch: int, sam: dict | None = None) -> dict[str, float]:
    settings = Settings(LabelerConfig(preset=preset, device="cpu"))
    lab = build_labeler(settings)
    if sam:  # the tiny-random preset with other SAM settings: rebuild its instance stage
        from labeler.sam import build_instances

        cfg = dataclasses.replace(lab.instances.cfg, **sam)
        model = lab.instances.model if hasattr(lab.instances, "model") else lab.instances.generator.predictor.model
        lab.instances = build_instances(model, cfg, lab.clock)
    model = ForwardTimer(_model_modules(lab))
    prepared = [prepare_image(encode_jpeg(im, 90)) for im in images]
    lab.label([p.rgb for p in prepared[:2]])  # warm-up
    before, model.total = lab.timings(), 0.0
    t0 = time.perf_counter()
    for i in range(0, len(prepared), batch):
        chunk = prepared[i : i + batch]
        for p, labels in zip(chunk, lab.label([p.rgb for p in chunk]), strict=True):
            assert not isinstance(labels, Exception), labels
            pack_sample("k", p, labels, "bench")
    total = time.perf_counter() - t0
    after = lab.timings()
    staged = sum(after[k] - before.get(k, 0.0) for k in ("preprocess_ms", "forward_ms", "postprocess_ms")) / 1000
    prepost = staged - model.total
    glue = total - model.total - prepost
    return {
        "img/s": len(images) / total,
        "model": model.total / total,
        "prepost": prepost / total,
        "glue": glue / total,
    }


def bench_shares(n: int) -> None:
    images = imagenet_sized(n)
    print(f"\n{'preset (tiny, CPU, batch 8)':<44} {'img/s':>7} {'model':>7} {'pre/post':>9} {'glue':>7}")
    rows = [
        ("tiny-random (SegFormer + SAM, batched)", "tiny-random", None),
        ("tiny-random, SAM stock generator", "tiny-random", {"sam_generator": "stock"}),
        ("tiny-random-panoptic (Mask2Former)", "tiny-random-panoptic", None),
        ("tiny-random-eomt (EoMT)", "tiny-random-eomt", None),
    ]
    for name, preset, sam in rows:
        r = shares(preset, images, 8, sam)
        print(f"{name:<44} {r['img/s']:7.2f} {r['model']:7.1%} {r['prepost']:9.1%} {r['glue']:7.1%}")


def _timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _ratio(name: str, theirs, ours, rounds: int = 3) -> None:
    """Times transformers' and our post-processing in alternation (so that a busy spell of the machine
    hits both alike), best of `rounds` each, and prints the row."""
    theirs(), ours()  # warm-up
    t_theirs = t_ours = float("inf")
    for _ in range(rounds):
        for fn, is_ours in ((theirs, False), (ours, True)):
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            t_theirs, t_ours = (t_theirs, min(t_ours, t)) if is_ours else (min(t_theirs, t), t_ours)
    print(f"{name:<40} {t_theirs:15.2f} {t_ours:8.3f} {t_theirs / t_ours:6.1f}x")


def bench_postprocess(rounds: int = 3) -> None:
    from transformers import EomtImageProcessor, Mask2FormerImageProcessor, SegformerImageProcessor

    from labeler.postprocess import RULES, PanopticParams, panoptic, semantic_from_logits, semantic_from_queries
    from labeler.tiny import synthetic_query_logits, synthetic_semantic_logits

    b, q, c = 16, 100, 150
    targets = [(375, 500), (500, 375), (400, 500), (333, 500)] * 4
    is_thing = torch.zeros(c, dtype=torch.bool)
    is_thing[:100] = True
    params = PanopticParams(0.8, 0.5, 0.8, 255)
    threads = torch.get_num_threads()
    print(f"\npost-processing, batch {b}, {q} queries, {c} classes, ~400x500 targets, CPU, {threads} threads")
    print(f"{'task':<40} {'transformers s':>15} {'ours s':>8} {'ratio':>7}")

    cls, masks = synthetic_query_logits(b, q, c, (96, 96), seed=0)  # Mask2Former at 384 x 384: 96 x 96 masks
    out = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    m2f = Mask2FormerImageProcessor()
    _ratio(
        "panoptic, Mask2Former",
        lambda: m2f.post_process_panoptic_segmentation(
            out, threshold=0.8, label_ids_to_fuse=set(), target_sizes=targets
        ),
        lambda: [
            panoptic(cls[i], masks[i], (96.0, 96.0), t, RULES["mask2former"], params, is_thing, True)
            for i, t in enumerate(targets)
        ],
        rounds,
    )

    cls, masks = synthetic_query_logits(b, q, c, (160, 160), seed=1)  # EoMT-L 640: 160 x 160 masks
    out = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    eomt = EomtImageProcessor(size={"shortest_edge": 640, "longest_edge": 640}, do_pad=True)
    regions = [(h * 640 / max(h, w) / 4, w * 640 / max(h, w) / 4) for h, w in targets]
    _ratio(
        "panoptic, EoMT (padded 640 canvas)",
        lambda: eomt.post_process_panoptic_segmentation(out, target_sizes=targets, threshold=0.8),
        lambda: [
            panoptic(cls[i], masks[i], regions[i], t, RULES["eomt"], params, is_thing, True, (0.25, 0.25))
            for i, t in enumerate(targets)
        ],
        rounds,
    )

    cls, masks = synthetic_query_logits(b, q, c, (96, 96), seed=2)
    out_q = SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    _ratio(
        "semantic, Mask2Former",
        lambda: m2f.post_process_semantic_segmentation(out_q, target_sizes=targets),
        lambda: [semantic_from_queries(cls[i], masks[i], (96.0, 96.0), t) for i, t in enumerate(targets)],
        rounds,
    )

    # SegFormer at 640 x 640: 160 x 160 class logits, model-shaped (smooth regions), and white noise:
    # the worst case (a class border in every cell), which no real model's output has.
    segformer = SegformerImageProcessor()
    for name, logits in (
        ("semantic, SegFormer", synthetic_semantic_logits(b, c, (160, 160), seed=3)),
        ("semantic, SegFormer, white-noise logits", torch.randn(b, c, 160, 160)),
    ):
        _ratio(
            name,
            lambda lg=logits: segformer.post_process_semantic_segmentation(SimpleNamespace(logits=lg), targets),
            lambda lg=logits: [semantic_from_logits(lg[i], (160.0, 160.0), t) for i, t in enumerate(targets)],
            rounds,
        )


def bench_layouts(rounds: int = 3) -> None:
    from labeler.postprocess import RULES, PanopticParams, panoptic, semantic_from_logits, semantic_from_queries
    from labeler.tiny import synthetic_query_logits, synthetic_semantic_logits

    b, q, c = 16, 100, 150
    targets = [(375, 500), (500, 375), (400, 500), (333, 500)] * 4
    is_thing = torch.zeros(c, dtype=torch.bool)
    is_thing[:100] = True
    params = PanopticParams(0.8, 0.5, 0.8, 255)
    print(
        f"\npost-processing layouts on this CPU, batch {b}, {q} queries, {c} classes, {torch.get_num_threads()} threads"
    )
    print(f"{'task':<40} {'GPU layout s':>15} {'CPU layout s':>8} {'ratio':>7}")
    m2f = synthetic_query_logits(b, q, c, (96, 96), seed=0)
    eomt = synthetic_query_logits(b, q, c, (160, 160), seed=1)
    regions = [(h * 640 / max(h, w) / 4, w * 640 / max(h, w) / 4) for h, w in targets]
    logits = synthetic_semantic_logits(b, c, (160, 160), seed=3)

    def pan(outs, family, region, step, gpu):
        cls, masks = outs
        return [
            panoptic(cls[i], masks[i], region(i), t, RULES[family], params, is_thing, not gpu, step, gpu)
            for i, t in enumerate(targets)
        ]

    cases = {
        "panoptic, Mask2Former": lambda gpu: pan(m2f, "mask2former", lambda i: (96.0, 96.0), None, gpu),
        "panoptic, EoMT": lambda gpu: pan(eomt, "eomt", lambda i: regions[i], (0.25, 0.25), gpu),
        "semantic, Mask2Former": lambda gpu: [
            semantic_from_queries(m2f[0][i], m2f[1][i], (96.0, 96.0), t, gpu=gpu) for i, t in enumerate(targets)
        ],
        "semantic, SegFormer": lambda gpu: [
            semantic_from_logits(logits[i], (160.0, 160.0), t, gpu=gpu) for i, t in enumerate(targets)
        ],
    }
    for name, fn in cases.items():
        _ratio(name, lambda fn=fn: fn(True), lambda fn=fn: fn(False), rounds)


def _tiny_sam():
    from labeler.sam import load_sam
    from labeler.tiny import save_sam_tiny

    return load_sam("vit_tiny", str(save_sam_tiny(Path(tempfile.mkdtemp()) / "sam.pth")), device="cpu")


SAM_SETTINGS = {  # the tiny SAM's predicted IoUs lie in [-0.3, 0.2]; stability 0.5 keeps ~15% of masks
    "filter+nms": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.5, "box_nms_thresh": 0.7},
    "keep-all": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
}


def bench_sam(n: int) -> None:
    from labeler.sam import build_instances

    model = _tiny_sam()
    images = imagenet_sized(n)
    on_device = [torch.from_numpy(im) for im in images]
    print(f"\nautomatic masks, tiny SAM, CPU, {n} ImageNet-sized images, batch 8")
    print(f"{'grid':>5} {'setting':<12} {'stock ms/img':>13} {'ours ms/img':>12} {'ratio':>7} {'masks/img':>10}")
    for grid in (16, 32):
        for name, kw in SAM_SETTINGS.items():
            if grid == 32 and name == "keep-all":
                continue  # the stock generator run-length encodes ~3,000 masks per image: minutes
            stock = build_instances(model, SamConfig(sam_generator="stock", points_per_side=grid, **kw))
            ours = build_instances(model, SamConfig(points_per_side=grid, **kw))
            t_stock = _timed(lambda s=stock: s.run(images[:2]), 1) / 2
            t_ours = _timed(lambda o=ours: [o.run(images[i : i + 8], on_device[i : i + 8]) for i in range(0, n, 8)], 1)
            t_ours /= n
            kept = np.mean([int((r[:, 0] > 0).sum()) for _, r in ours.run(images, on_device)])
            ms = f"{t_stock * 1000:13.0f} {t_ours * 1000:12.0f}"
            print(f"{grid:5d} {name:<12} {ms} {t_stock / t_ours:6.1f}x {kept:10.1f}")


def _match(a: torch.Tensor, b: torch.Tensor, iou: float = 0.8) -> tuple[int, int]:
    """Instances of id map a that some instance of id map b overlaps with IoU >= iou: (matched, total).
    One joint histogram of (a, b) id pairs gives every intersection at once."""
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    inter = torch.bincount((a * nb + b).flatten(), minlength=na * nb).reshape(na, nb)[1:, 1:].double()
    area_a, area_b = torch.bincount(a.flatten(), minlength=na)[1:], torch.bincount(b.flatten(), minlength=nb)[1:]
    union = area_a[:, None] + area_b[None, :] - inter
    present = area_a > 0
    if not present.any():
        return 0, 0
    best = (inter / union.clamp(min=1)).max(1).values if nb > 1 else torch.zeros(na - 1, dtype=torch.float64)
    return int((best[present] >= iou).sum()), int(present.sum())


def _bench_sam(checkpoint: str, sam_type: str) -> tuple:
    """(model, settings): a real SAM with its own thresholds, or the tiny SAM with SAM_SETTINGS."""
    from labeler.sam import load_sam

    if checkpoint:
        return load_sam(sam_type, checkpoint, device="auto"), {"real": {}}
    return _tiny_sam(), SAM_SETTINGS


def _bench_images(n: int, photos: str) -> list[np.ndarray]:
    if not photos:
        return imagenet_sized(n)
    from shards.image import prepare_image

    paths = sorted(p for p in Path(photos).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    return [prepare_image(p.read_bytes()).rgb for p in paths]


def bench_grid(n: int, checkpoint: str, sam_type: str, photos: str) -> None:
    from labeler.sam import build_instances

    model, settings = _bench_sam(checkpoint, sam_type)
    kw = next(iter(settings.values()))
    images = _bench_images(n, photos)
    device = next(model.parameters()).device
    runs = {}
    for grid in (16, 32):
        gen = build_instances(model, SamConfig(points_per_side=grid, **kw))
        runs[grid] = []
        for i in range(0, len(images), 8):
            chunk = images[i : i + 8]
            runs[grid] += [m.long().cpu() for m, _ in gen.run(chunk, [torch.from_numpy(im).to(device) for im in chunk])]
    matched = total = 0
    for a, b in zip(runs[32], runs[16], strict=True):
        m, t = _match(a, b)
        matched, total = matched + m, total + t
    per = {g: np.mean([int((r.unique() > 0).sum()) for r in runs[g]]) for g in runs}
    print(f"\ngrid 16 vs 32 ({'SAM ' + sam_type if checkpoint else 'tiny SAM'}, {len(images)} images)")
    print(f"instances/img 32x32: {per[32]:.1f}, 16x16: {per[16]:.1f}; 32x32 instances recovered by 16x16 (IoU>=0.8): ")
    print(f"{matched}/{total} = {matched / max(total, 1):.1%}")


def bench_drift(n: int, checkpoint: str, sam_type: str, photos: str) -> None:
    """Masks the stock filters keep (full resolution) against those low-res filtering keeps."""
    from labeler.sam import build_instances

    model, settings = _bench_sam(checkpoint, sam_type)
    images = _bench_images(n, photos)
    device = next(model.parameters()).device
    on_device = [torch.from_numpy(im).to(device) for im in images]
    print(f"\nlow-res vs full-res filtering, {'SAM ' + sam_type if checkpoint else 'tiny SAM'}, {n} images, grid 16")
    print(
        f"{'setting':<12} {'masks full':>11} {'masks low':>10} {'matched':>8} {'id map same':>12} {'covered same':>13}"
    )
    for name, kw in settings.items():
        full = build_instances(model, SamConfig(points_per_side=16, sam_filter_resolution="full", **kw))
        low = build_instances(model, SamConfig(points_per_side=16, sam_filter_resolution="low", **kw))
        a = [m for i in range(0, n, 8) for m, _ in full.run(images[i : i + 8], on_device[i : i + 8])]
        b = [m for i in range(0, n, 8) for m, _ in low.run(images[i : i + 8], on_device[i : i + 8])]
        n_full = n_low = matched = 0
        same = cover = 0.0
        for ma, mb in zip(a, b, strict=True):
            ma, mb = ma.long().cpu(), mb.long().cpu()
            m, t = _match(ma, mb)  # full-res instances that a low-res one overlaps with IoU >= 0.8
            matched, n_full, n_low = matched + m, n_full + t, n_low + int((mb.unique() > 0).sum())
            same += float((ma == mb).float().mean())
            cover += float(((ma > 0) == (mb > 0)).float().mean())
        print(
            f"{name:<12} {n_full / n:11.1f} {n_low / n:10.1f} {matched / max(n_full, 1):8.1%} "
            f"{same / n:12.1%} {cover / n:13.1%}"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--only", default="shares,postprocess,sam,drift,grid")
    ap.add_argument("--sam-checkpoint", default="", help="grid: a real SAM checkpoint")
    ap.add_argument("--sam-type", default="vit_h")
    ap.add_argument("--photos", default="", help="grid: a folder of photos (default: built-in ImageNet-sized ones)")
    ap.add_argument("--threads", type=int, default=2, help="torch's CPU threads (this machine: 2 cores)")
    ap.add_argument("--rounds", type=int, default=3, help="postprocess: alternating timing rounds, best of")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.only.split(","))
    if "layouts" in parts:
        bench_layouts(args.rounds)
    if "shares" in parts:
        bench_shares(args.images)
    if "postprocess" in parts:
        bench_postprocess(args.rounds)
    if "sam" in parts:
        bench_sam(args.images)
    if "drift" in parts:
        bench_drift(args.images, args.sam_checkpoint, args.sam_type, args.photos)
    if "grid" in parts:
        bench_grid(args.images, args.sam_checkpoint, args.sam_type, args.photos)


if __name__ == "__main__":
    main()
