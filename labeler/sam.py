"""Segment Anything: class-agnostic instances from the automatic mask generator.

Checkpoints load in one place (`load_sam`), with `torch.load(weights_only=True)`; the
architectures come from SAM's own `sam_model_registry` plus `vit_tiny` (labeler.tiny) for tests.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .base import LabelerLoadError, resolve_device
from .config import SamConfig
from .overlap import resolve_overlaps


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
        first = str(e).strip().splitlines()[0]
        raise LabelerLoadError(f"cannot load SAM {model_type} from {checkpoint}: {first}") from None
    return model.to(resolve_device(device)).eval()


class SamInstances:
    """[H, W, 3] uint8 images -> non-overlapping instance maps via SamAutomaticMaskGenerator.

    The generator's masks overlap; `resolve_overlaps` turns them into one uint16 id map. Masks
    travel as pycocotools RLE (`output_mode="coco_rle"`, a few KB each instead of H*W bytes)
    and are decoded once, in one batch, for painting.
    """

    def __init__(self, model, cfg: SamConfig):
        from segment_anything import SamAutomaticMaskGenerator

        self.cfg = cfg
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

    def __call__(self, image: np.ndarray):
        masks, scores = self.masks(image)
        return resolve_overlaps(masks, scores, None, self.cfg.min_instance_area)
