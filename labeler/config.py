"""Labeler settings: one dataclass per backend, each field a CLI flag (c2f.flags reads their metadata)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LabelerConfig:
    preset: str = field(
        default="panoptic",
        metadata={
            "help": "labeler preset: panoptic | sam | classical | tiny-random | tiny-random-panoptic | empty "
            "(docs/LABELERS.md)"
        },
    )
    semantic_model: str = field(
        default="nvidia/segformer-b5-finetuned-ade-640-640",
        metadata={"help": "semantic model for the `sam` preset: Hugging Face id or local directory"},
    )
    panoptic_model: str = field(
        default="facebook/mask2former-swin-large-ade-panoptic",
        metadata={"help": "panoptic model for the `panoptic` preset: Hugging Face id or local directory"},
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the models (GPU runs with many images)"})
    fixed_cost_seconds: float = field(
        default=0.05, metadata={"help": "`fixed-cost` preset only: seconds spent per image"}
    )


@dataclass
class SamConfig:
    """SamAutomaticMaskGenerator settings. The defaults are SAM's own, tuned for ViT-H."""

    sam_checkpoint: str = field(default="", metadata={"help": "SAM checkpoint (.pth state dict) for the `sam` preset"})
    sam_model_type: str = field(
        default="vit_h", metadata={"help": "SAM architecture: vit_h, vit_l, vit_b (must match the checkpoint)"}
    )
    points_per_side: int = field(
        default=32, metadata={"help": "SAM: point grid is points_per_side^2 prompts per image"}
    )
    points_per_batch: int = field(default=64, metadata={"help": "SAM: prompts per decoder batch (GPU memory vs speed)"})
    pred_iou_thresh: float = field(default=0.88, metadata={"help": "SAM: drop masks whose predicted IoU is below this"})
    stability_score_thresh: float = field(
        default=0.95, metadata={"help": "SAM: drop masks whose stability score is below this"}
    )
    box_nms_thresh: float = field(
        default=0.7, metadata={"help": "SAM: box IoU above which duplicate masks are suppressed"}
    )
    crop_n_layers: int = field(
        default=0, metadata={"help": "SAM: extra layers of image crops (more small objects, slower)"}
    )
    min_mask_region_area: int = field(
        default=0, metadata={"help": "SAM: remove holes/islands smaller than this (needs OpenCV)"}
    )
    min_instance_area: int = field(
        default=64, metadata={"help": "instances with fewer visible pixels after overlap resolution are dropped"}
    )


@dataclass
class PanopticConfig:
    panoptic_threshold: float = field(default=0.8, metadata={"help": "panoptic: minimum segment score"})
    mask_threshold: float = field(default=0.5, metadata={"help": "panoptic: mask probability threshold"})
    overlap_mask_area_threshold: float = field(
        default=0.8, metadata={"help": "panoptic: drop segments mostly hidden by others"}
    )
    thing_ids: str = field(
        default="auto",
        metadata={
            "help": "panoptic: class ids that are objects (instances), e.g. '0-79,90'; 'auto' reads the model "
            "config's thing list where it has one, else every class is a thing"
        },
    )


@dataclass
class Settings:
    """Everything a preset may read; picklable, so Ray ships it to each worker."""

    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
