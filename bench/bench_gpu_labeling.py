"""Labeling throughput per preset and batch size, end to end through the production labelers
(decoded image in, maps and records on the host out), with peak memory and host syncs. One table.

    .venv/bin/python bench/bench_gpu_labeling.py                        # CUDA: every preset, batches 8,16,32
    .venv/bin/python bench/bench_gpu_labeling.py --only eomt --batches 16 --precision fp32

Sized for a short GPU slot: each preset's model is built right before its rows and dropped after them
(`--only` builds only those asked for), initialised on the GPU, saved and loaded back through the
production loaders; the default sweep (4 presets x batches 8/16/32, 4 batches of the largest per row)
is estimated at ~3-5 minutes on one H100/H200 (docs/LABELERS.md lists the parts). `--budget-s` stops
before a preset that would start past the budget.

On CUDA the models are the presets' real architectures at random weights (no hub access is needed):
Mask2Former Swin-L (200 queries, ADE20K-150) with the hub processor's 384x384 squash and at short side
640, EoMT-L 640, SegFormer-B5 + SAM ViT-H. Preprocessing, precision (--precision, default bf16 on CUDA),
post-processing and transfers are exactly what a labeling job runs. Speed does not depend on the weights,
except that random heads keep a different number of masks than trained ones (reported). On a CPU the
same presets run with the tiny models (`--real` forces the real ones).
The text-prompted presets (`grounded`: Grounding DINO Swin-T/B + SAM-HQ ViT-H; `sam3`) get each
image's ImageNet class as its prompt, with tokenizers over the ImageNet lemmas' words (prompts of
realistic length); random heads score everything alike, so `--boxes` boxes per image go to SAM-HQ.

Columns: images/s, ms per image in each stage (device time on CUDA: preprocess, forward, postprocess;
host: records), peak device memory (CUDA) or peak RSS growth (CPU), kept instances per image, and the
host syncs CUDA reports in one batch under `torch.cuda.set_sync_debug_mode("warn")` (the batch's final
download waits on an event, which that mode does not report; each sync it reports is a stall).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labeler import imagenet_sized  # noqa: E402

from labeler.config import GroundedConfig, LabelerConfig, PanopticConfig, SamConfig, Settings  # noqa: E402
from labeler.registry import build_labeler  # noqa: E402
from labeler.tiny import save_hf  # noqa: E402
from labeler.tiny_grounded import build_box_sam, build_grounding_dino, build_sam3, imagenet_words  # noqa: E402


def _save(model, processor, directory: Path) -> str:
    return str(save_hf(model, processor, directory))


def _init(build, device: str):
    """build() with new tensors on `device`: random init of ~300M parameters takes seconds on a GPU,
    tens of seconds on a CPU (the weights are saved and loaded back through the production loader
    anyway). Falls back to the CPU if a constructor does not support it."""
    try:
        with torch.device(device):
            return build()
    except (RuntimeError, TypeError) as e:
        print(f"  (initialising on the CPU: {str(e).splitlines()[0]})", flush=True)
        return build()


def mask2former_swin_large(root: Path, device: str, size: dict) -> str:
    """Mask2Former Swin-L, 200 queries, 150 classes. The weights are built once and shared by the
    processor variants (a second directory links them)."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    weights = root / "m2f-swin-l"
    if not weights.exists():
        backbone = SwinConfig(
            embed_dim=192,
            depths=[2, 2, 18, 2],
            num_heads=[6, 12, 24, 48],
            window_size=12,
            image_size=384,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        cfg = Mask2FormerConfig(backbone_config=backbone, num_labels=150, num_queries=200)
        model = _init(lambda: Mask2FormerForUniversalSegmentation(cfg).eval(), device)
        _save(model, Mask2FormerImageProcessor(size=size), weights)
        del model
    name = "m2f-" + "-".join(str(v) for v in size.values())
    target = root / name
    if not target.exists():
        target.mkdir()
        for f in weights.iterdir():
            if f.name != "preprocessor_config.json":
                os.symlink(f, target / f.name)
        _save(None, Mask2FormerImageProcessor(size=size), target)
    return str(target)


def eomt_large_640(root: Path, device: str) -> str:
    from transformers import EomtConfig, EomtForUniversalSegmentation, EomtImageProcessor

    model = _init(lambda: EomtForUniversalSegmentation(EomtConfig(num_labels=150)).eval(), device)  # EoMT-L 640
    model.attn_mask_probs.zero_()  # released checkpoints infer without attention masks
    processor = EomtImageProcessor(size={"shortest_edge": 640, "longest_edge": 640}, do_pad=True)
    return _save(model, processor, root / "eomt-l-640")


def segformer_b5_640(root: Path, device: str) -> str:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    cfg = SegformerConfig(
        depths=[3, 6, 40, 3],
        hidden_sizes=[64, 128, 320, 512],
        decoder_hidden_size=768,
        num_attention_heads=[1, 2, 5, 8],
        num_labels=150,
    )
    model = _init(lambda: SegformerForSemanticSegmentation(cfg).eval(), device)
    processor = SegformerImageProcessor(size={"height": 640, "width": 640})
    return _save(model, processor, root / "segformer-b5-640")


def sam_checkpoint(root: Path, device: str, sam_type: str) -> str:
    from segment_anything import sam_model_registry

    path = root / f"sam_{sam_type}.pth"
    state = _init(lambda: sam_model_registry[sam_type]().state_dict(), device)
    torch.save({k: v.cpu() for k, v in state.items()}, path)
    return str(path)


def grounding_dino(root: Path, swin: str, device: str) -> str:
    """Grounding DINO Swin-T or Swin-B at random weights, its tokenizer over the ImageNet lemmas' words."""
    model, processor = _init(lambda: build_grounding_dino(f"swin-{swin.lower()}", words=imagenet_words()), device)
    return _save(model, processor, root / f"grounding-dino-swin-{swin}")


def sam_hq_vit_h(root: Path, device: str) -> str:
    if (root / "sam-hq-vit-h").is_dir():  # both Grounding DINO rows share it
        return str(root / "sam-hq-vit-h")
    return _save(*_init(lambda: build_box_sam("vit-h"), device), root / "sam-hq-vit-h")


def sam3_model(root: Path, device: str) -> str:
    """SAM 3 at random weights (transformers' default config is the released architecture)."""
    return _save(*_init(lambda: build_sam3(root / "sam3", "full", words=imagenet_words()), device), root / "sam3")


# Random heads are unsure of everything: thresholds at 0 keep the post-processing's work realistic.
PAN = PanopticConfig(panoptic_threshold=0.0, overlap_mask_area_threshold=0.0, thing_ids="0-99")


def real_presets(root: Path, args) -> dict:
    """key -> (title, build() -> Settings): each model is built only when its preset runs."""
    dev = args.device
    lab = {"device": dev, "precision": args.precision, "code_path": args.code_path, "compile": args.compile}
    sam = SamConfig(
        points_per_side=args.grid, sam_model_type=args.sam_type, pred_iou_thresh=0.0, stability_score_thresh=0.5
    )

    def m2f(size):
        path = mask2former_swin_large(root, dev, size)
        return Settings(LabelerConfig(preset="panoptic", panoptic_model=path, **lab), panoptic=PAN)

    def sam_settings():
        semantic = segformer_b5_640(root, dev)
        ckpt = sam_checkpoint(root, dev, args.sam_type)
        return Settings(
            LabelerConfig(preset="sam", semantic_model=semantic, **lab),
            sam=SamConfig(**{**sam.__dict__, "sam_checkpoint": ckpt}),
        )

    return {
        "m2f-384": ("panoptic: Mask2Former Swin-L, 384x384", lambda: m2f({"height": 384, "width": 384})),
        "m2f-640": (
            "panoptic: Mask2Former Swin-L, short side 640",
            lambda: m2f({"shortest_edge": 640, "longest_edge": 2560}),
        ),
        "eomt": (
            "eomt: EoMT-L 640",
            lambda: Settings(
                LabelerConfig(preset="eomt", panoptic_model=eomt_large_640(root, dev), **lab), panoptic=PAN
            ),
        ),
        "sam": (f"sam: SegFormer-B5 + SAM {args.sam_type}, {args.grid}x{args.grid}", sam_settings),
        **{
            f"grounded-{t.lower()}": (
                f"grounded: Grounding DINO Swin-{t} + SAM-HQ ViT-H, {args.boxes} boxes",
                lambda t=t: Settings(
                    LabelerConfig(preset="grounded", **lab),
                    grounded=GroundedConfig(
                        grounding_model=grounding_dino(root, t, dev),
                        box_sam_model=sam_hq_vit_h(root, dev),
                        box_threshold=0.0,
                        text_threshold=0.0,
                        max_detections=args.boxes,
                        box_nms=1.0,
                    ),
                ),
            )
            for t in ("T", "B")
        },
        "sam3": (
            "sam3: SAM 3",
            lambda: Settings(
                LabelerConfig(preset="sam3", **lab),
                grounded=GroundedConfig(
                    sam3_model=sam3_model(root, dev), sam3_threshold=0.0, max_detections=args.boxes
                ),
            ),
        ),
    }


def tiny_presets(args) -> dict:
    lab = {"device": args.device, "precision": args.precision, "code_path": args.code_path, "compile": args.compile}
    return {
        "m2f-384": (
            "panoptic (tiny Mask2Former)",
            lambda: Settings(LabelerConfig(preset="tiny-random-panoptic", **lab)),
        ),
        "eomt": ("eomt (tiny EoMT)", lambda: Settings(LabelerConfig(preset="tiny-random-eomt", **lab))),
        "sam": (
            f"sam (tiny SegFormer + tiny SAM, {args.grid}x{args.grid})",
            lambda: Settings(LabelerConfig(preset="tiny-random", **lab), sam=SamConfig(points_per_side=args.grid)),
        ),
        "grounded-t": (
            "grounded (tiny Grounding DINO + SAM-HQ)",
            lambda: Settings(LabelerConfig(preset="tiny-random-grounded", **lab)),
        ),
        "sam3": ("sam3 (tiny SAM 3)", lambda: Settings(LabelerConfig(preset="tiny-random-sam3", **lab))),
    }


def _peak_reset(cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB (Linux: KB)


def _peak(cuda: bool, base: float) -> str:
    if cuda:
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    return f"+{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base:.0f} MB RSS"


def count_syncs(labeler, images, contexts) -> tuple[int, Counter]:
    """Host syncs CUDA reports while one batch is labelled (`set_sync_debug_mode("warn")`), and where
    they come from (file:line of the Python call that made them)."""
    if not torch.cuda.is_available():
        return -1, Counter()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            labeler.label(images, contexts)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs), Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)


def run(title: str, build, batches: list[int], n: int, cuda: bool) -> list[str]:
    t0 = time.perf_counter()
    labeler = build_labeler(build())  # random weights saved, then loaded through the production loader
    print(f"  ({title}: built and loaded in {time.perf_counter() - t0:.0f} s)", flush=True)
    from labeler.base import ImageContext
    from labeler.imagenet_space import imagenet_classes

    images = imagenet_sized(n)
    # Each image's ImageNet class (its prompt, for the text-prompted presets; the others ignore it).
    ctx = [ImageContext(f"b{i}", None, imagenet_classes()[(97 * i) % 1000].synset) for i in range(n)]
    rows = []
    for batch in batches:
        warm = labeler.label(images[:batch], ctx[:batch])  # warm-up: kernels, autotuning, allocator
        assert not any(isinstance(x, Exception) for x in warm), warm
        base = _peak_reset(cuda)
        before = labeler.timings()
        kept = 0
        t0 = time.perf_counter()
        pending = None
        for i in range(0, n, batch):  # two batches in flight, as the labeling job keeps them
            handle = labeler.submit(images[i : i + batch], ctx[i : i + batch])
            if pending is not None:
                kept += sum(len(x.instances) for x in labeler.collect(pending))
            pending = handle
        kept += sum(len(x.instances) for x in labeler.collect(pending))
        seconds = time.perf_counter() - t0
        after = labeler.timings()
        syncs, sites = count_syncs(labeler, images[:batch], ctx[:batch])
        per = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / n for k in after if k.endswith("_ms")}
        stages = " ".join(f"{per.get(s + '_ms', 0.0):7.1f}" for s in ("preprocess", "forward", "postprocess", "host"))
        sync_text = "-" if syncs < 0 else str(syncs)
        rows.append(
            f"{title:<46} {batch:5d} {n / seconds:8.2f} {stages} {_peak(cuda, base):>14} {kept / n:8.1f} {sync_text:>6}"
        )
        print(rows[-1], flush=True)
        if sites:
            print("        syncs from: " + ", ".join(f"{k} x{v}" for k, v in sites.most_common(6)), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", default="")
    ap.add_argument("--images", type=int, default=0, help="images per batch size (default: 4 batches of the largest)")
    ap.add_argument("--real", action="store_true", help="real architectures on a CPU too (slow)")
    ap.add_argument("--sam-type", default="vit_h")
    ap.add_argument("--grid", type=int, default=16, help="SAM points per side")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated preset keys: m2f-384, m2f-640, eomt, sam, grounded-t, grounded-b, sam3",
    )
    ap.add_argument("--boxes", type=int, default=4, help="grounded/sam3 with random heads: instances per image")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32", "tf32"])
    ap.add_argument("--code-path", default="auto", choices=["auto", "gpu", "cpu"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the models (canvas buckets)")
    ap.add_argument("--budget-s", type=float, default=0.0, help="skip presets that would start past this (0: none)")
    args = ap.parse_args()
    start = time.perf_counter()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    args.device = "cpu" if device == "auto" else device
    cuda = args.device.startswith("cuda")
    real = cuda or args.real
    batches = [int(b) for b in (args.batches or ("8,16,32" if cuda else "1,4,8")).split(",")]
    n = args.images or 4 * max(batches)
    if not cuda:
        torch.set_num_threads(2)
    what = f"{torch.cuda.get_device_name()} " if cuda else "CPU "
    print(f"device: {what}({args.device}), torch {torch.__version__}, {n} images per row, precision {args.precision}")
    header = f"{'preset':<46} {'batch':>5} {'img/s':>8} {'pre ms':>7} {'fwd ms':>7} {'post ms':>7} {'host ms':>7}"
    print(f"{header} {'peak memory':>14} {'inst/img':>8} {'syncs':>6}")
    root = Path(tempfile.mkdtemp(prefix="c2f-bench-"))
    try:
        presets = real_presets(root, args) if real else tiny_presets(args)
        wanted = [k.strip() for k in args.only.split(",") if k.strip()] or list(presets)
        unknown = [k for k in wanted if k not in presets]
        if unknown:
            raise SystemExit(f"unknown preset {unknown[0]!r}; choose from {', '.join(presets)}")
        for key in wanted:
            if args.budget_s and time.perf_counter() - start > args.budget_s:
                print(f"  (skipped {key}: past the {args.budget_s:.0f} s budget)")
                continue
            title, build = presets[key]
            run(title, build, batches, n, cuda)
            if cuda:
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
