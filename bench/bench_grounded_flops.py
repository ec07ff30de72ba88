"""FLOPs per ImageNet-sized image of the text-prompted presets' real architectures, counted with
`torch.utils.flop_counter.FlopCounterMode` on the exact forward calls the labelers make (at random
weights: FLOPs do not depend on them). The basis of the cost table in docs/LABELERS.md.

    .venv/bin/python bench/bench_grounded_flops.py                 # all (minutes on a CPU)
    .venv/bin/python bench/bench_grounded_flops.py --only sam3

Counted: matrix products, convolutions and attention. Not counted: Grounding DINO's multi-scale
deformable attention sampling (`grid_sample`, memory-bound) and element-wise work, which cost time
out of proportion to their FLOPs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from labeler.imagenet_space import imagenet_classes
from labeler.preprocess import HFPreprocessor
from labeler.tiny_grounded import build_box_sam, build_grounding_dino, build_sam3, imagenet_words

SIZE = (375, 500)  # ImageNet's most common size


def count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def image() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8))


def grounding_dino(swin: str) -> float:
    model, processor = build_grounding_dino(f"swin-{swin.lower()}", words=imagenet_words())
    (g,) = HFPreprocessor(processor.image_processor, "grounding-dino", 32)([image()])
    text = ". ".join(imagenet_classes()[0].phrases) + "."
    ids = torch.tensor([processor.tokenizer(text)["input_ids"]])
    print(f"  Grounding DINO Swin-{swin}: input {tuple(g.pixel_values.shape[-2:])}, {ids.shape[1]} tokens", flush=True)
    return count(lambda: model(pixel_values=g.pixel_values, pixel_mask=g.pixel_mask, input_ids=ids))


def sam_hq_vit_h(boxes: int) -> tuple[float, float]:
    """(image encoder, mask decoder for `boxes` boxes) of SAM-HQ ViT-H."""
    model, processor = build_box_sam("vit-h")
    (g,) = HFPreprocessor(processor, "sam_hq", 32)([image()])
    out = {}
    encoder = count(lambda: out.setdefault("e", model.get_image_embeddings(g.pixel_values)))
    emb, inter = out["e"]
    box = torch.tensor([[[100.0, 100.0, 600.0, 500.0]]]).expand(boxes, 1, 4)
    decoder = count(
        lambda: model(
            image_embeddings=emb.expand(boxes, -1, -1, -1),
            intermediate_embeddings=[x.expand(boxes, -1, -1, -1) for x in inter],
            input_boxes=box,
            multimask_output=False,
        )
    )
    return encoder, decoder


def sam3() -> float:
    with tempfile.TemporaryDirectory() as d:  # the tokenizer's files (the prompt here is CLIP's own ids)
        model, processor = build_sam3(Path(d), "full")
    (g,) = HFPreprocessor(processor.image_processor, "sam3", 1)([image()])
    ids = torch.zeros(1, 32, dtype=torch.long)
    ids[0, :4] = torch.tensor([49406, 320, 321, 49407])
    attn = (ids != 0).long()
    return count(lambda: model(pixel_values=g.pixel_values, input_ids=ids, attention_mask=attn))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="grounding-dino-T | grounding-dino-B | sam-hq | sam3")
    ap.add_argument("--boxes", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    if args.only in ("", "grounding-dino-T"):
        rows.append(("Grounding DINO Swin-T, short side 800", grounding_dino("T")))
    if args.only in ("", "grounding-dino-B"):
        rows.append(("Grounding DINO Swin-B, short side 800", grounding_dino("B")))
    if args.only in ("", "sam-hq"):
        enc, dec = sam_hq_vit_h(args.boxes)
        rows += [("SAM-HQ ViT-H image encoder, 1024", enc), (f"SAM-HQ mask decoder, {args.boxes} boxes", dec)]
    if args.only in ("", "sam3"):
        rows.append(("SAM 3, 1008 (vision + text + DETR + masks)", sam3()))
    print(f"\nGFLOPs per {SIZE[0]}x{SIZE[1]} image (matmul, conv, attention; torch FlopCounterMode)")
    for name, gflops in rows:
        print(f"  {name:<48} {gflops:9.1f}")


if __name__ == "__main__":
    main()
