"""Segment Anything: class-agnostic instances from automatic mask generation.

Checkpoints load in one place (`load_sam`), with `torch.load(weights_only=True)`; the
architectures come from SAM's own `sam_model_registry` plus `vit_tiny` (labeler.tiny) for tests.
Two generators: `BatchedSamInstances` (labeler/sam_batched.py, the default) and `StockSamInstances`
below, segment_anything's `SamAutomaticMaskGenerator` one image at a time, kept for comparison.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from shards.errors import first_line

from .base import LabelerLoadError, resolve_device
from .config import SamConfig
from .timing import StageClock


def sam_builders() -> dict[str, Any]:
    from segment_anything import sam_model_registry

    from .tiny import build_sam_tiny

    return {**sam_model_registry, "vit_tiny": build_sam_tiny}


def load_sam(model_type: str, checkpoint: str, device: str = "auto"):
    import torch

    builders = sam_builders()
    if model_type not in builders:
        raise LabelerLoadError(f"unknown SAM model type {model_type!r}; choose from {', '.join(sorted(builders))}")
    if not checkpoint or not os.path.isfile(checkpoint):
        raise LabelerLoadError(
            f"SAM checkpoint {checkpoint!r} not found: pass --sam-checkpoint PATH to a {model_type} .pth file "
            "(the official sam_vit_h_4b8939.pth and friends are plain state dicts)"
        )
    model = builders[model_type]()  # the architecture, randomly initialised
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - not a checkpoint, unsafe pickle, wrong architecture
        raise LabelerLoadError(f"cannot load SAM {model_type} from {checkpoint}: {first_line(e)}") from None
    return model.to(resolve_device(device)).eval()


def build_instances(
    model, cfg: SamConfig, clock: StageClock | None = None, gpu: bool | None = None, precision=None, compile=False
):
    """The generator `cfg.sam_generator` names; `gpu`, `precision`, `compile`: the batched generator's
    layout (default: by device), forward precision and compiled image encoder."""
    if cfg.sam_generator == "batched":
        from .sam_batched import BatchedSamInstances

        return BatchedSamInstances(model, cfg, clock, gpu, precision, compile)
    if cfg.sam_generator == "stock":
        return StockSamInstances(model, cfg, clock)
    raise LabelerLoadError(f"unknown --sam-generator {cfg.sam_generator!r}; choose batched or stock")


class StockSamInstances:
    """[H, W, 3] uint8 images -> non-overlapping instance maps via SamAutomaticMaskGenerator.

    The generator's masks overlap; `overlap.paint_largest_first` turns them into one id map. Masks
    travel as pycocotools RLE (`output_mode="coco_rle"`) and are decoded once per image for painting.
    """

    def __init__(self, model, cfg: SamConfig, clock: StageClock | None = None):
        from segment_anything import SamAutomaticMaskGenerator

        self.cfg = cfg
        self.clock = clock or StageClock(str(next(model.parameters()).device))
        self.generator = SamAutomaticMaskGenerator(
            model,
            points_per_side=cfg.points_per_side,
            points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh,
            box_nms_thresh=cfg.box_nms_thresh,
            crop_n_layers=cfg.crop_n_layers,
            min_mask_region_area=cfg.min_mask_region_area,
            output_mode="coco_rle",
        )

    def masks(self, image: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Raw generator output: masks [N, H, W] bool, predicted-IoU scores."""
        import torch
        from pycocotools import mask as mask_utils

        if not image.flags.writeable:  # SAM wraps it with torch.from_numpy, which wants a writable array
            image = image.copy()
        with torch.inference_mode():
            anns = self.generator.generate(image)
        if not anns:
            return np.zeros((0, *image.shape[:2]), bool), []
        rles = [a["segmentation"] for a in anns]
        masks = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)  # [H, W, N] Fortran -> [N, H, W]
        return masks, [float(a["predicted_iou"]) for a in anns]

    def run(self, host_images: list[np.ndarray], dev_images=None) -> list:
        """-> per image (instance [H, W] uint16, records [K, 9] float64 with overlap.PAINT_FIELDS), on the CPU."""
        import torch

        from .overlap import paint_largest_first

        out = []
        for image in host_images:
            with self.clock.stage("forward"):  # the generator's model calls and its own post-processing
                masks, scores = self.masks(image)
            with self.clock.stage("postprocess"):
                t = torch.from_numpy(masks)
                inst, records = paint_largest_first(
                    lambda s, t=t: t[s],
                    len(scores),
                    image.shape[:2],
                    torch.tensor(scores, dtype=torch.float64),
                    self.cfg.min_instance_area,
                )
            out.append((inst.to(torch.uint16), records))
        return out
