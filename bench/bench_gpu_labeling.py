"""Labeling throughput per preset and batch size, end to end through the production labelers
(decoded image in, maps and records on the host out), with peak memory. One table.

    .venv/bin/python bench/bench_gpu_labeling.py                     # CUDA if present, else CPU
    .venv/bin/python bench/bench_gpu_labeling.py --batches 8,16,32 --images 96 --sam-type vit_h

On CUDA the models are the presets' real architectures at random weights (no hub access is needed):
Mask2Former Swin-L (200 queries, ADE20K-150), EoMT-L 640, SegFormer-B5 + SAM ViT-H/B. They are
saved to a temp dir and loaded back through the production loaders, so preprocessing, bf16 autocast,
post-processing and transfers are exactly what a labeling job runs. Speed does not depend on the
weights, except that random heads keep a different number of masks than trained ones (reported).
On a CPU the same presets run with the tiny models (`--real` forces the real ones).
The text-prompted presets (`grounded`: Grounding DINO Swin-T/B + SAM-HQ ViT-H; `sam3`) get each
image's ImageNet class as its prompt, with tokenizers over the ImageNet lemmas' words (prompts of
realistic length); random heads score everything alike, so `--boxes` boxes per image go to SAM-HQ.

Images are ImageNet-sized photos (375x500, 500x375, 333x500, 400x400, ...). Columns: images/s,
ms per image in each stage (device time on CUDA: preprocess, forward, postprocess; host: records),
peak device memory (CUDA) or peak RSS growth (CPU), and kept instances per image.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_labeler import imagenet_sized  # noqa: E402

from labeler.config import GroundedConfig, LabelerConfig, PanopticConfig, SamConfig, Settings  # noqa: E402
from labeler.registry import build_labeler  # noqa: E402


def _save(model, processor, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def mask2former_swin_large(root: Path, size: dict) -> str:
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(
        embed_dim=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        image_size=384,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(backbone_config=backbone, num_labels=150, num_queries=200)
    name = "m2f-" + "-".join(str(v) for v in size.values())
    return _save(Mask2FormerForUniversalSegmentation(cfg).eval(), Mask2FormerImageProcessor(size=size), root / name)


def eomt_large_640(root: Path) -> str:
    from transformers import EomtConfig, EomtForUniversalSegmentation, EomtImageProcessor

    model = EomtForUniversalSegmentation(EomtConfig(num_labels=150)).eval()  # the defaults are EoMT-L 640
    model.attn_mask_probs.zero_()  # released checkpoints infer without attention masks
    processor = EomtImageProcessor(size={"shortest_edge": 640, "longest_edge": 640}, do_pad=True)
    return _save(model, processor, root / "eomt-l-640")


def segformer_b5_640(root: Path) -> str:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    cfg = SegformerConfig(
        depths=[3, 6, 40, 3],
        hidden_sizes=[64, 128, 320, 512],
        decoder_hidden_size=768,
        num_attention_heads=[1, 2, 5, 8],
        num_labels=150,
    )
    processor = SegformerImageProcessor(size={"height": 640, "width": 640})
    return _save(SegformerForSemanticSegmentation(cfg).eval(), processor, root / "segformer-b5-640")


def sam_checkpoint(root: Path, sam_type: str) -> str:
    from segment_anything import sam_model_registry

    path = root / f"sam_{sam_type}.pth"
    torch.save(sam_model_registry[sam_type]().state_dict(), path)
    return str(path)


def _lemma_words() -> list[str]:
    from labeler.imagenet_space import imagenet_classes

    return sorted({w for c in imagenet_classes() for p in c.phrases for w in p.lower().split()})


def grounding_dino(root: Path, swin: str) -> str:
    """Grounding DINO at random weights: Swin-T (transformers' default config) or Swin-B (384, window 12)."""
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    from labeler.tiny_grounded import bert_vocab

    backbone = {
        "T": None,
        "B": SwinConfig(
            embed_dim=128,
            depths=[2, 2, 18, 2],
            num_heads=[4, 8, 16, 32],
            window_size=12,
            image_size=384,
            out_indices=[2, 3, 4],
        ),
    }[swin]
    model = GroundingDinoForObjectDetection(GroundingDinoConfig(backbone_config=backbone)).eval()
    processor = GroundingDinoProcessor(GroundingDinoImageProcessor(), BertTokenizer(vocab=bert_vocab(_lemma_words())))
    return _save(model, processor, root / f"grounding-dino-swin-{swin}")


def sam_hq_vit_h(root: Path) -> str:
    from transformers import SamHQConfig, SamHQMaskDecoderConfig, SamHQModel, SamHQVisionConfig, SamImageProcessor

    vision = SamHQVisionConfig(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        global_attn_indexes=[7, 15, 23, 31],
        mlp_dim=5120,
    )
    cfg = SamHQConfig(vision_config=vision, mask_decoder_config=SamHQMaskDecoderConfig(vit_dim=1280))
    return _save(SamHQModel(cfg).eval(), SamImageProcessor(), root / "sam-hq-vit-h")


def sam3_model(root: Path) -> str:
    """SAM 3 at random weights (transformers' default config is the released architecture)."""
    import json as _json

    from transformers import CLIPTokenizer, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    from labeler.tiny_grounded import clip_vocab

    d = root / "sam3"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(_json.dumps(clip_vocab(_lemma_words())))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    return _save(Sam3Model(Sam3Config()).eval(), Sam3Processor(Sam3ImageProcessor(), tokenizer), d)


def presets(real: bool, device: str, sam_type: str, grid: int, boxes: int = 4) -> dict[str, Settings]:
    """name -> Settings of a production preset (real architectures) or its tiny counterpart."""
    lab = {"device": device}
    # Random heads are unsure of everything: thresholds at 0 keep the post-processing's work realistic.
    pan = PanopticConfig(panoptic_threshold=0.0, overlap_mask_area_threshold=0.0, thing_ids="0-99")
    sam = SamConfig(points_per_side=grid, sam_model_type=sam_type, pred_iou_thresh=0.0, stability_score_thresh=0.5)
    if not real:
        return {
            "panoptic (tiny Mask2Former)": Settings(LabelerConfig(preset="tiny-random-panoptic", **lab)),
            "eomt (tiny EoMT)": Settings(LabelerConfig(preset="tiny-random-eomt", **lab)),
            f"sam (tiny SegFormer + tiny SAM, {grid}x{grid})": Settings(
                LabelerConfig(preset="tiny-random", **lab), sam=SamConfig(points_per_side=grid)
            ),
            "grounded (tiny Grounding DINO + SAM-HQ)": Settings(LabelerConfig(preset="tiny-random-grounded", **lab)),
            "sam3 (tiny SAM 3)": Settings(LabelerConfig(preset="tiny-random-sam3", **lab)),
        }
    root = Path(tempfile.mkdtemp(prefix="c2f-bench-"))
    print(f"building random-weight models in {root} ...", flush=True)
    m2f_384 = mask2former_swin_large(root, {"height": 384, "width": 384})
    m2f_640 = mask2former_swin_large(root, {"shortest_edge": 640, "longest_edge": 2560})
    eomt = eomt_large_640(root)
    return {
        "panoptic: Mask2Former Swin-L, 384x384": Settings(
            LabelerConfig(preset="panoptic", panoptic_model=m2f_384, **lab), panoptic=pan
        ),
        "panoptic: Mask2Former Swin-L, short side 640": Settings(
            LabelerConfig(preset="panoptic", panoptic_model=m2f_640, **lab), panoptic=pan
        ),
        "eomt: EoMT-L 640": Settings(LabelerConfig(preset="eomt", panoptic_model=eomt, **lab), panoptic=pan),
        f"sam: SegFormer-B5 + SAM {sam_type}, {grid}x{grid}": Settings(
            LabelerConfig(preset="sam", semantic_model=segformer_b5_640(root), **lab),
            sam=SamConfig(**{**sam.__dict__, "sam_checkpoint": sam_checkpoint(root, sam_type)}),
        ),
        **{
            f"grounded: Grounding DINO Swin-{t} + SAM-HQ ViT-H, {boxes} boxes": Settings(
                LabelerConfig(preset="grounded", **lab),
                grounded=GroundedConfig(
                    grounding_model=grounding_dino(root, t),
                    box_sam_model=sam_hq,
                    box_threshold=0.0,
                    text_threshold=0.0,
                    max_detections=boxes,
                    box_nms=1.0,
                ),
            )
            for t, sam_hq in (("T", sam_hq_vit_h(root)), ("B", str(root / "sam-hq-vit-h")))
        },
        "sam3: SAM 3": Settings(
            LabelerConfig(preset="sam3", **lab),
            grounded=GroundedConfig(sam3_model=sam3_model(root), sam3_threshold=0.0, max_detections=boxes),
        ),
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


def run(name: str, settings: Settings, batches: list[int], n: int, cuda: bool) -> list[str]:
    from labeler.base import ImageContext
    from labeler.imagenet_space import imagenet_classes

    labeler = build_labeler(settings)
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
        per = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / n for k in after if k.endswith("_ms")}
        stages = " ".join(f"{per.get(s + '_ms', 0.0):7.1f}" for s in ("preprocess", "forward", "postprocess", "host"))
        rows.append(f"{name:<46} {batch:5d} {n / seconds:8.2f} {stages} {_peak(cuda, base):>14} {kept / n:8.1f}")
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", default="")
    ap.add_argument("--images", type=int, default=0, help="images per batch size (default: 4 batches of the largest)")
    ap.add_argument("--real", action="store_true", help="real architectures on a CPU too (slow)")
    ap.add_argument("--sam-type", default="vit_h")
    ap.add_argument("--grid", type=int, default=16, help="SAM points per side")
    ap.add_argument("--only", default="", help="substring of the preset names to run")
    ap.add_argument("--boxes", type=int, default=4, help="grounded/sam3 with random heads: instances per image")
    args = ap.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    cuda = device.startswith("cuda")
    real = cuda or args.real
    batches = [int(b) for b in (args.batches or ("1,8,16,32" if cuda else "1,4,8")).split(",")]
    n = args.images or 4 * max(batches)
    if not cuda:
        torch.set_num_threads(2)
    what = f"{torch.cuda.get_device_name()} " if cuda else "CPU "
    print(f"device: {what}({device}), torch {torch.__version__}, {n} images per row")
    header = f"{'preset':<46} {'batch':>5} {'img/s':>8} {'pre ms':>7} {'fwd ms':>7} {'post ms':>7} {'host ms':>7}"
    print(f"{header} {'peak memory':>14} {'inst/img':>8}")
    for name, settings in presets(real, device, args.sam_type, args.grid, args.boxes).items():
        if args.only and args.only not in name:
            continue
        run(name, settings, batches, n, cuda)
        if cuda:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
