"""The text-prompted presets (registered in labeler/registry.py) and the checks a job makes before it
starts them. Every one labels each image's own class (its prompt) on its objects, and background,
or with --stuff-model ADE20K's stuff classes, elsewhere.

| preset                 | instances                                                       |
|------------------------|-----------------------------------------------------------------|
| `grounded`             | Grounding DINO boxes from the prompt -> box-prompted SAM-HQ     |
| `sam3`                 | SAM 3 with the prompt's first phrase                            |
| `tiny-random-grounded` | tiny random Grounding DINO + SAM-HQ (tests, CI, trying it out)  |
| `tiny-random-sam3`     | tiny random SAM 3                                               |
"""

from __future__ import annotations

import dataclasses

from shards.manifest import LabelerInfo, ModelInfo

from .base import Labeler
from .config import Settings
from .tiny import RANDOM, tiny_dir

PROMPTED_PRESETS = frozenset({"grounded", "sam3", "tiny-random-grounded", "tiny-random-sam3"})


def _stuff(s: Settings, source: str, clock):
    """The optional ADE20K semantic model whose stuff classes fill the background."""
    if not source:
        return None, []
    from .hf import SemanticSegmenter, load_segmenter
    from .precision import run_options

    seg = load_segmenter(source, s.labeler.device, s.labeler.compile)
    semantic = SemanticSegmenter(seg, s.labeler.pad_multiple, clock, **run_options(s.labeler, seg.device))
    return semantic, [ModelInfo("stuff", source, seg.model_type)]


def build_grounded(s: Settings, names: dict[str, str] | None = None, random: bool = False) -> Labeler:
    """`grounded`: Grounding DINO + box-prompted SAM-HQ (or SAM); `names` replace the model ids in the
    description (the tiny presets' temp dirs)."""
    from .grounded import DetectParams, GroundedLabeler, load_box_sam, load_detector
    from .precision import resolve_precision
    from .prompts import PromptTable
    from .timing import StageClock

    g, lab = s.grounded, s.labeler
    names = names or {}
    prompts = PromptTable.load(g.prompts)
    detector = load_detector(g.grounding_model, lab.device, lab.compile)
    box_sam = load_box_sam(g.box_sam_model, lab.device, lab.compile)
    clock = StageClock(detector.device)  # every model's stages, summed
    stuff, stuff_info = _stuff(s, g.stuff_model, clock)
    models = [
        ModelInfo("detector", names.get("detector", g.grounding_model), detector.model_type),
        ModelInfo("instance", names.get("instance", g.box_sam_model), box_sam.model_type),
        *[dataclasses.replace(m, id=names.get("stuff", m.id)) for m in stuff_info],
    ]
    describe = LabelerInfo(
        lab.preset, models, s.to_json(), prompt_source=prompts.describe, **(RANDOM if random else {})
    )
    params = DetectParams(g.box_threshold, g.text_threshold, g.max_detections, g.box_nms)
    return GroundedLabeler(
        detector,
        box_sam,
        prompts,
        params,
        g.mask_logit_threshold,
        s.sam.min_instance_area,
        describe,
        stuff,
        lab.pad_multiple,
        s.sam.sam_encoder_batch,
        g.hq_token_only,
        clock,
        resolve_precision(lab.precision, detector.device),
    )


def build_sam3(s: Settings, names: dict[str, str] | None = None, random: bool = False) -> Labeler:
    from .precision import resolve_precision
    from .prompts import PromptTable
    from .sam3 import Sam3Labeler, Sam3Params, load_sam3
    from .timing import StageClock

    g, lab = s.grounded, s.labeler
    names = names or {}
    prompts = PromptTable.load(g.prompts, first_phrase=True)
    model = load_sam3(g.sam3_model, lab.device, lab.compile)
    clock = StageClock(model.device)
    stuff, stuff_info = _stuff(s, g.stuff_model, clock)
    models = [
        ModelInfo("instance", names.get("instance", g.sam3_model), model.model_type),
        *[dataclasses.replace(m, id=names.get("stuff", m.id)) for m in stuff_info],
    ]
    describe = LabelerInfo(
        lab.preset, models, s.to_json(), prompt_source=prompts.describe, **(RANDOM if random else {})
    )
    params = Sam3Params(g.sam3_threshold, g.sam3_mask_threshold, g.max_detections)
    precision = resolve_precision(lab.precision, model.device)
    return Sam3Labeler(model, prompts, params, s.sam.min_instance_area, describe, stuff, clock, precision)


# Thresholds of the tiny presets: the random models score boxes ~0.75-0.9 and SAM 3 instances
# ~0.28-0.36, so these split samples/train into images that find their prompt's object and images
# that do not; the tiny models' masks are blobs of any size, so the minimum area is low.
TINY_GROUNDED = {"box_threshold": 0.84, "text_threshold": 0.25}
TINY_SAM3 = {"sam3_threshold": 0.345}


def _tiny(s: Settings, which: str) -> Labeler:
    """A tiny random model set, saved to a temp dir per worker and loaded back through the production
    loaders (no stuff model unless --stuff-model names one: a random 150-class one costs more than
    the rest together, and its stuff would carry no meaning either)."""
    from .tiny_grounded import save_grounded_tiny

    root = tiny_dir()
    g = s.grounded
    if which == "grounded":
        models = save_grounded_tiny(root, seed=0, names=("grounding-dino", "sam-hq"))
        g = dataclasses.replace(
            g, grounding_model=str(models["grounding-dino"]), box_sam_model=str(models["sam-hq"]), **TINY_GROUNDED
        )
        names = {"detector": "tiny-random:grounding-dino", "instance": "tiny-random:sam-hq"}
        return build_grounded(_small_areas(dataclasses.replace(s, grounded=g)), names, random=True)
    models = save_grounded_tiny(root, seed=0, names=("sam3",))
    g = dataclasses.replace(g, sam3_model=str(models["sam3"]), **TINY_SAM3)
    return build_sam3(_small_areas(dataclasses.replace(s, grounded=g)), {"instance": "tiny-random:sam3"}, random=True)


def _small_areas(s: Settings) -> Settings:
    return dataclasses.replace(s, sam=dataclasses.replace(s.sam, min_instance_area=16))


def tiny_random_grounded(s: Settings) -> Labeler:
    return _tiny(s, "grounded")


def tiny_random_sam3(s: Settings) -> Labeler:
    return _tiny(s, "sam3")


PRESETS = {
    "grounded": build_grounded,
    "sam3": build_sam3,
    "tiny-random-grounded": tiny_random_grounded,
    "tiny-random-sam3": tiny_random_sam3,
}


# The model types each source must have, by preset (checked on the driver, loaded in the actors).
SOURCES = {
    "grounded": (("grounding_model", "--grounding-model"), ("box_sam_model", "--box-sam-model")),
    "sam3": (("sam3_model", "--sam3-model"),),
}


def check_job(s: Settings, has_classes: bool) -> None:
    """What a job checks on the driver before it starts a cluster, for a text-prompted preset: the
    --prompts file parses, the input has classes or the file gives prompts, and every model's config
    loads (a local directory, the cache, or one download) and is of the right kind. Each failure is
    one line and exit 2, in seconds rather than after the labeling actors started."""
    preset, g = s.labeler.preset, s.grounded
    if preset not in PROMPTED_PRESETS:
        return  # before the imports: they bring torch, which a driver of any other preset never loads
    from .grounded import BOX_SAMS, DETECTORS
    from .hub import model_type, require_type
    from .prompts import PromptTable, check_prompted_input
    from .sam3 import SAM3_TYPES

    check_prompted_input(PromptTable.load(g.prompts), has_classes)
    kinds = {"--grounding-model": DETECTORS, "--box-sam-model": BOX_SAMS, "--sam3-model": SAM3_TYPES}
    for attr, what in SOURCES.get(preset, ()):
        source = getattr(g, attr)
        require_type(source, what, model_type(source, what), kinds[what])
    if g.stuff_model:
        model_type(g.stuff_model, "--stuff-model")
