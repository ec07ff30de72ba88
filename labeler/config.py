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
            "help": "labeler preset: panoptic | eomt | sam | grounded | sam3 | classical | tiny-random | "
            "tiny-random-panoptic | tiny-random-eomt | tiny-random-grounded | tiny-random-sam3 | empty "
            "(docs/LABELERS.md)"
        },
    )
    semantic_model: str = field(
        default="nvidia/segformer-b5-finetuned-ade-640-640",
        metadata={"help": "semantic model for the `sam` preset: Hugging Face id or local directory"},
    )
    panoptic_model: str = field(
        default="",
        metadata={
            "help": "panoptic model: Hugging Face id or local directory; empty: the preset's own "
            "(panoptic: facebook/mask2former-swin-large-ade-panoptic, eomt: tue-mps/ade20k_panoptic_eomt_large_640)"
        },
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when available)"})
    code_path: str = field(
        default="auto",
        metadata={
            "help": "how pre/post-processing is laid out: gpu = whole-tensor passes, no host syncs before the batch's "
            "one download (what CUDA runs; selectable on a CPU, where its launches and syncs can be counted: "
            "bench/bench_dispatch.py); cpu = cache-sized bands, host-side compaction, per-cell semantic decisions "
            "(fast on CPUs); auto = gpu on CUDA, cpu elsewhere. Same maps either way",
            "choices": ["auto", "gpu", "cpu"],
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "forward-pass precision: bf16 or fp16 autocast, fp32, or tf32 (fp32 storage, TF32 matmuls and "
            "convolutions on CUDA); auto = bf16 on CUDA (tensor cores: several times fp32's speed; bf16 against fp32 "
            "maps: docs/LABELERS.md), fp32 on CPUs (bf16 is slower there without AMX)",
            "choices": ["auto", "bf16", "fp16", "fp32", "tf32"],
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the models, once per canvas bucket: canvases are padded to a few fixed shapes "
            "(GPU runs with many images; docs/LABELERS.md)"
        },
    )
    pad_multiple: int = field(
        default=32,
        metadata={
            "help": "Hugging Face models: each image is padded to its resized size rounded up to this (unless the "
            "processor pads to a fixed size); images with the same padded size share a forward pass"
        },
    )
    fixed_cost_seconds: float = field(
        default=0.05,
        metadata={"help": "`fixed-cost` preset only: seconds per image on a simulated device (the GIL released)"},
    )
    fixed_cost_host_seconds: float = field(
        default=0.0,
        metadata={"help": "`fixed-cost` preset only: seconds per image of host work holding the GIL (benchmarks)"},
    )
    fixed_cost_fault: str = field(
        default="",
        metadata={
            "help": "`fixed-cost` preset only, fault injection: when this file exists, a labeling process removes it "
            "and fails as a GPU does after an illegal memory access (sticky); a number N in it delays the fault "
            "to that process's batch N+1"
        },
    )


@dataclass
class SamConfig:
    """Automatic mask generation. Thresholds are SAM's own defaults, tuned for ViT-H; the grid is sized
    for ImageNet-sized images (docs/LABELERS.md)."""

    sam_checkpoint: str = field(default="", metadata={"help": "SAM checkpoint (.pth state dict) for the `sam` preset"})
    sam_model_type: str = field(
        default="vit_h", metadata={"help": "SAM architecture: vit_h, vit_l, vit_b (must match the checkpoint)"}
    )
    sam_generator: str = field(
        default="batched",
        metadata={
            "help": "batched: whole batches on the device, filtering on low-res logits, no RLE "
            "(labeler/sam_batched.py); stock: segment_anything's SamAutomaticMaskGenerator one image at a time",
            "choices": ["batched", "stock"],
        },
    )
    sam_filter_resolution: str = field(
        default="low",
        metadata={
            "help": "batched generator: apply the IoU/stability filters and box NMS to the 256x256 low-res logits "
            "(low) or, like the stock generator, to every mask upsampled to the image (full)",
            "choices": ["low", "full"],
        },
    )
    points_per_side: int = field(
        default=16,
        metadata={
            "help": "SAM: point grid of points_per_side^2 prompts per image; 16 spaces points ~30 px apart on an "
            "ImageNet image (SAM's own default, 32, was set for 1500 px SA-1B photos)"
        },
    )
    points_per_batch: int = field(
        default=256,
        metadata={"help": "SAM: prompts per mask-decoder pass (batched generator: across the batch's images)"},
    )
    sam_encoder_batch: int = field(
        default=8, metadata={"help": "SAM: images per image-encoder pass (GPU memory: ~1 GB each for ViT-H in bf16)"}
    )
    pred_iou_thresh: float = field(default=0.88, metadata={"help": "SAM: drop masks whose predicted IoU is below this"})
    stability_score_thresh: float = field(
        default=0.95, metadata={"help": "SAM: drop masks whose stability score is below this"}
    )
    box_nms_thresh: float = field(
        default=0.7, metadata={"help": "SAM: box IoU above which duplicate masks are suppressed"}
    )
    crop_n_layers: int = field(
        default=0, metadata={"help": "SAM (stock generator): extra layers of image crops (more small objects, slower)"}
    )
    min_mask_region_area: int = field(
        default=0, metadata={"help": "SAM (stock generator): remove holes/islands smaller than this (needs OpenCV)"}
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
            "help": "panoptic: class ids that are objects (instances), e.g. '0-79,90'; 'auto': the model config's "
            "thing list, else the known split of its label space (ADE20K-150: 100 things; COCO panoptic: 80), "
            "else every class"
        },
    )


@dataclass
class GroundedConfig:
    """The text-prompted presets, `grounded` and `sam3` (docs/LABELERS.md). Defaults: Grounding DINO's
    own inference thresholds (box 0.35, text 0.25), SAM's mask logit 0, SAM 3's score 0.5."""

    prompts: str = field(
        default="",
        metadata={
            "help": "grounded/sam3: a JSON file {key or class folder or '*': prompt} or a text file (one prompt for "
            "all images); images without an entry are prompted with their ImageNet-1K class's lemmas"
        },
    )
    grounding_model: str = field(
        default="IDEA-Research/grounding-dino-base",
        metadata={"help": "grounded: Grounding DINO or MM-Grounding-DINO, Hugging Face id or local directory"},
    )
    box_sam_model: str = field(
        default="syscv-community/sam-hq-vit-huge",
        metadata={"help": "grounded: the box-prompted mask model, SAM-HQ or SAM (e.g. facebook/sam-vit-huge)"},
    )
    sam3_model: str = field(default="facebook/sam3", metadata={"help": "sam3: the SAM 3 model, id or directory"})
    stuff_model: str = field(
        default="",
        metadata={
            "help": "grounded/sam3: an ADE20K-150 semantic model (e.g. nvidia/segformer-b5-finetuned-ade-640-640) "
            "whose stuff classes fill the pixels outside the image's objects; empty: background there"
        },
    )
    box_threshold: float = field(default=0.35, metadata={"help": "grounded: minimum box score (Grounding DINO)"})
    text_threshold: float = field(
        default=0.25, metadata={"help": "grounded: minimum score of the prompt phrase a box matched"}
    )
    box_nms: float = field(
        default=0.8, metadata={"help": "grounded: box IoU above which a lower-scoring box of the prompt is dropped"}
    )
    max_detections: int = field(default=32, metadata={"help": "grounded/sam3: most instances kept per image"})
    mask_logit_threshold: float = field(
        default=0.0, metadata={"help": "grounded: SAM mask logit that counts as inside (SAM's own: 0)"}
    )
    hq_token_only: bool = field(
        default=False, metadata={"help": "grounded with SAM-HQ: masks from the HQ token alone (HQ-SAM's option)"}
    )
    sam3_threshold: float = field(default=0.5, metadata={"help": "sam3: minimum instance score (query x presence)"})
    sam3_mask_threshold: float = field(default=0.5, metadata={"help": "sam3: mask probability that counts as inside"})


@dataclass
class Settings:
    """Everything a preset may read; picklable, so Ray ships it to each worker."""

    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    panoptic: PanopticConfig = field(default_factory=PanopticConfig)
    grounded: GroundedConfig = field(default_factory=GroundedConfig)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
