"""Labeler settings: one dataclass per backend, each field a CLI flag (pipelines.flags)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.flags import opt


@dataclass
class LabelerConfig:
    preset: str = opt(
        "panoptic",
        help="labeler preset: panoptic | sam | tiny-random | tiny-random-panoptic | empty (docs/LABELERS.md)",
    )
    semantic_model: str = opt(
        "nvidia/segformer-b5-finetuned-ade-640-640",
        help="semantic model for the `sam` preset: Hugging Face id or local directory",
    )
    panoptic_model: str = opt(
        "facebook/mask2former-swin-large-ade-panoptic",
        help="panoptic model for the `panoptic` preset: Hugging Face id or local directory",
    )
    device: str = opt("auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    compile: bool = opt(False, help="torch.compile the models (GPU runs with many images)")
    fixed_cost_seconds: float = opt(0.05, help="`fixed-cost` preset only: seconds spent per image")


@dataclass
class SamConfig:
    """SamAutomaticMaskGenerator settings. The defaults are SAM's own, tuned for ViT-H."""

    sam_checkpoint: str = opt("", help="SAM checkpoint (.pth state dict) for the `sam` preset")
    sam_model_type: str = opt("vit_h", help="SAM architecture: vit_h, vit_l, vit_b (must match the checkpoint)")
    points_per_side: int = opt(32, help="SAM: point grid is points_per_side^2 prompts per image")
    points_per_batch: int = opt(64, help="SAM: prompts per decoder batch (GPU memory vs speed)")
    pred_iou_thresh: float = opt(0.88, help="SAM: drop masks whose predicted IoU is below this")
    stability_score_thresh: float = opt(0.95, help="SAM: drop masks whose stability score is below this")
    box_nms_thresh: float = opt(0.7, help="SAM: box IoU above which duplicate masks are suppressed")
    crop_n_layers: int = opt(0, help="SAM: extra layers of image crops (more small objects, slower)")
    min_mask_region_area: int = opt(0, help="SAM: remove holes/islands smaller than this (needs OpenCV)")
    min_instance_area: int = opt(64, help="instances with fewer visible pixels after overlap resolution are dropped")


@dataclass
class PanopticConfig:
    panoptic_threshold: float = opt(0.8, help="panoptic: minimum segment score")
    mask_threshold: float = opt(0.5, help="panoptic: mask probability threshold")
    overlap_mask_area_threshold: float = opt(0.8, help="panoptic: drop segments mostly hidden by others")
    thing_ids: str = opt(
        "auto",
        help="panoptic: class ids that are objects (instances), e.g. '0-79,90'; 'auto' reads the model "
        "config's thing list where it has one, else every class is a thing",
    )
