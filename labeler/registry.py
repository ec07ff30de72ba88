"""Presets by name -> a `Labeler`. Builders import their heavy dependencies themselves.

| preset        | semantic map                 | instance map                          |
|---------------|------------------------------|---------------------------------------|
| `empty`       | all ignore                   | none                                  |
| `sam`         | `--semantic-model` (ADE20K)  | SAM automatic masks, class-agnostic   |
| `panoptic`    | one panoptic model, one pass (`--panoptic-model`, Mask2Former Swin-L): stuff + things |
| `eomt`        | as `panoptic` with EoMT-L 640 (one ViT, no pixel decoder): faster at similar PQ      |
| `tiny-random` | tiny random SegFormer        | tiny random SAM (tests, demo, CI)     |
| `tiny-random-panoptic` | tiny random Mask2Former, one pass                            |
| `tiny-random-eomt`     | tiny random EoMT, one pass                                   |
| `fixed-cost`  | brightness bands, no model   | 4x4 grid; device and host seconds per image (benchmarks, faults) |
| `classical`   | 20 colour x texture classes  | Felzenszwalb-Huttenlocher regions of object size; weight-free |
| `grounded`, `sam3`, `tiny-random-grounded`, `tiny-random-sam3`: each image's class as a text prompt     |
|               | (labeler/presets_grounded.py): image class on its instances | Grounding DINO + SAM-HQ / SAM 3 |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from shards.manifest import LabelerInfo, ModelInfo

from .base import Labeler, LabelerLoadError
from .config import LabelerConfig, Settings
from .presets_grounded import PRESETS as GROUNDED_PRESETS
from .tiny import RANDOM, tiny_dir


def _empty(s: Settings) -> Labeler:
    from .empty import EmptyLabeler

    return EmptyLabeler()


def _fixed_cost(s: Settings) -> Labeler:
    from .fixed_cost import FixedCostLabeler

    return FixedCostLabeler(s.labeler.fixed_cost_seconds, s.labeler.fixed_cost_host_seconds, s.labeler.fixed_cost_fault)


def _classical(s: Settings) -> Labeler:
    from .classical import ClassicalLabeler

    return ClassicalLabeler()


def _sam(
    s: Settings,
    semantic_model: str | None = None,
    sam_type: str | None = None,
    sam_ckpt: str | None = None,
    random: bool = False,
    names: tuple[str, str] | None = None,
) -> Labeler:
    from .composite import SemanticPlusInstances
    from .hf import SemanticSegmenter, load_segmenter
    from .precision import run_options
    from .sam import build_instances, load_sam
    from .timing import StageClock

    semantic_model = semantic_model or s.labeler.semantic_model
    sam_type, sam_ckpt = sam_type or s.sam.sam_model_type, sam_ckpt or s.sam.sam_checkpoint
    seg = load_segmenter(semantic_model, s.labeler.device, s.labeler.compile)
    clock = StageClock(seg.device)  # both models' stages, summed
    run = run_options(s.labeler, seg.device)
    model = load_sam(sam_type, sam_ckpt, s.labeler.device)
    instances = build_instances(model, s.sam, clock, run["gpu"], run["precision"], s.labeler.compile)
    describe = LabelerInfo(
        s.labeler.preset,
        [
            ModelInfo("semantic", names[0] if names else semantic_model, seg.model_type),
            ModelInfo("instance", names[1] if names else sam_ckpt, f"sam_{sam_type}"),
        ],
        s.to_json(),
        **(RANDOM if random else {}),
    )
    semantic = SemanticSegmenter(seg, s.labeler.pad_multiple, clock, **run)
    return SemanticPlusInstances(semantic, instances, describe, clock)


# The model each panoptic preset loads when --panoptic-model is not given.
PANOPTIC_MODELS = {
    "panoptic": "facebook/mask2former-swin-large-ade-panoptic",
    "eomt": "tue-mps/ade20k_panoptic_eomt_large_640",
}


def _panoptic(s: Settings, model: str | None = None, random: bool = False, name: str | None = None) -> Labeler:
    from .composite import OnePassPanoptic
    from .hf import PanopticLabeler, load_segmenter
    from .precision import run_options

    model = model or s.labeler.panoptic_model or PANOPTIC_MODELS.get(s.labeler.preset, PANOPTIC_MODELS["panoptic"])
    seg = load_segmenter(model, s.labeler.device, s.labeler.compile)
    p = s.panoptic
    pan = PanopticLabeler(
        seg,
        p.panoptic_threshold,
        p.mask_threshold,
        p.overlap_mask_area_threshold,
        p.thing_ids,
        s.labeler.pad_multiple,
        **run_options(s.labeler, seg.device),
    )
    describe = LabelerInfo(
        s.labeler.preset,
        [ModelInfo("panoptic", name or model, seg.model_type, things=pan.thing_source)],
        s.to_json(),
        **(RANDOM if random else {}),
    )
    return OnePassPanoptic(pan, describe)


def _tiny_random(s: Settings) -> Labeler:
    from .tiny import build_segformer_tiny, save_hf, save_sam_tiny

    d = tiny_dir()
    seg_dir = save_hf(*build_segformer_tiny(seed=0), d / "segformer")
    ckpt = save_sam_tiny(d / "sam_vit_tiny.pth", seed=0)
    # Random SAM masks are whole-image blobs: keep every prompt's masks (no IoU, stability or box-NMS
    # filtering) so the overlap resolution has several instances to work with.
    s = dataclasses.replace(
        s,
        sam=dataclasses.replace(
            s.sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
        ),
    )
    return _sam(s, str(seg_dir), "vit_tiny", str(ckpt), True, ("tiny-random:segformer", "tiny-random:sam_vit_tiny"))


def _tiny_one_pass(s: Settings, name: str) -> Labeler:
    """A tiny random one-pass panoptic model (`mask2former` or `eomt`), saved and loaded back
    through the production loader; thresholds low enough that random logits yield segments."""
    from . import tiny

    builder = {"mask2former": tiny.build_mask2former_tiny, "eomt": tiny.build_eomt_tiny}[name]
    model = tiny.save_hf(*builder(seed=0), tiny_dir() / name)
    s = dataclasses.replace(
        s,
        panoptic=dataclasses.replace(
            s.panoptic, panoptic_threshold=0.05, overlap_mask_area_threshold=0.3, thing_ids=tiny.TINY_THINGS
        ),
    )
    return _panoptic(s, str(model), True, f"tiny-random:{name}")


def _tiny_random_panoptic(s: Settings) -> Labeler:
    return _tiny_one_pass(s, "mask2former")


def _tiny_random_eomt(s: Settings) -> Labeler:
    return _tiny_one_pass(s, "eomt")


PRESETS: dict[str, Callable[[Settings], Labeler]] = {
    "empty": _empty,
    "fixed-cost": _fixed_cost,
    "classical": _classical,
    "sam": _sam,
    "panoptic": _panoptic,
    "eomt": _panoptic,
    "tiny-random": _tiny_random,
    "tiny-random-panoptic": _tiny_random_panoptic,
    "tiny-random-eomt": _tiny_random_eomt,
}
PRESETS.update(GROUNDED_PRESETS)  # grounded, sam3 and their tiny presets (labeler/presets_grounded.py)


def build_labeler(settings: Settings | str) -> Labeler:
    if isinstance(settings, str):
        settings = Settings(LabelerConfig(preset=settings))
    preset = settings.labeler.preset
    try:
        builder = PRESETS[preset]
    except KeyError:
        raise LabelerLoadError(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}") from None
    return builder(settings)
