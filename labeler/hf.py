"""Hugging Face transformers backends: semantic (SegFormer, UperNet, Mask2Former, OneFormer, EoMT...)
and panoptic (Mask2Former, MaskFormer, OneFormer, EoMT) segmentation, loaded in one place
(`load_segmenter`).

Everything between the decoded image and the finished maps runs on the model's device, batched:
`HFPreprocessor` prepares each image as its processor would (canvases that depend on the image only),
one forward per canvas, and `postprocess` turns the outputs into maps and instance records.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards import format as fmt
from shards.manifest import LabelSpace

from .base import LabelerLoadError, resolve_device
from .hub import from_pretrained
from .timing import StageClock

UNIVERSAL = {"mask2former", "oneformer", "maskformer", "eomt"}  # mask classification: semantic/instance/panoptic


@dataclass
class Segmenter:
    processor: Any
    model: Any
    model_type: str
    source: str
    device: str

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}


def load_segmenter(source: str, device: str = "auto", compile: bool = False, backend: str = "inductor") -> Segmenter:
    """A Hugging Face id or a local directory -> processor + model in eval mode on `device`; `compile`:
    torch.compile'd for fixed shapes (precision.compile_model; run it with canvas buckets).

    Loaded by labeler/hub.py's rule: local directories directly; hub ids from the local cache first,
    else one download with short timeouts; a failure says how to pass a local path instead.
    """
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForSemanticSegmentation,
        AutoModelForUniversalSegmentation,
        AutoProcessor,
    )

    def _load(local_only: bool):
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        auto = AutoModelForUniversalSegmentation if config.model_type in UNIVERSAL else AutoModelForSemanticSegmentation
        model = auto.from_pretrained(source, local_files_only=local_only)
        # OneFormer's processor also tokenizes the task text its queries are conditioned on.
        proc_cls = AutoProcessor if config.model_type == "oneformer" else AutoImageProcessor
        processor = proc_cls.from_pretrained(source, local_files_only=local_only)
        return config, model, processor

    config, model, processor = from_pretrained(source, "segmentation model", _load)
    device = resolve_device(device)
    model = model.to(device).eval()
    if compile:
        from .precision import compile_model

        model = compile_model(model, backend)
    return Segmenter(processor, model, config.model_type, source, device)


def parse_ids(spec: str) -> set[int]:
    """'0-79,90' -> {0..79, 90}."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


class HFRunner:
    """Preprocessing and forward passes of one model, on its device: images -> (group, outputs) per
    canvas. `task` conditions OneFormer's queries ("semantic" or "panoptic"); `precision` the forward
    (default: `auto` for the device); `buckets` pads canvases to a few fixed shapes (for --compile)."""

    def __init__(
        self, seg: Segmenter, task: str, pad_multiple: int, clock: StageClock, precision=None, buckets: bool = False
    ):
        import torch

        from .precision import resolve_precision
        from .preprocess import HFPreprocessor

        self.seg, self.clock = seg, clock
        self.device = torch.device(seg.device)
        self.precision = precision or resolve_precision("auto", self.device)
        self.prep = HFPreprocessor(seg.processor, seg.model_type, pad_multiple, buckets)
        self.buckets = buckets
        forward = getattr(seg.model, "_orig_mod", seg.model).forward  # through torch.compile's wrapper
        self.takes_pixel_mask = "pixel_mask" in inspect.signature(forward).parameters
        self.task_inputs = None
        if seg.model_type == "oneformer":  # the task text, tokenized once by the model's own processor
            dummy = np.zeros((32, 32, 3), np.uint8)
            tokens = seg.processor(images=[dummy], task_inputs=[task], return_tensors="pt")["task_inputs"]
            self.task_inputs = tokens.to(self.device)

    def __call__(self, images):
        import torch

        with self.clock.stage("preprocess"):
            groups = self.prep(images)
        results = []
        for g in groups:
            kwargs: dict[str, Any] = {"pixel_values": g.pixel_values}
            if self.takes_pixel_mask:
                kwargs["pixel_mask"] = g.pixel_mask
            if self.task_inputs is not None:
                kwargs["task_inputs"] = self.task_inputs.expand(len(g.index), -1)
            if self.buckets:  # compiled: one graph per canvas bucket for every group size > 1
                from .precision import mark_batch_dynamic

                mark_batch_dynamic(*kwargs.values())
            with self.clock.stage("forward"), torch.inference_mode(), self.precision.autocast():
                results.append((g, self.seg.model(**kwargs)))
        return results


def _is_mask_classification(outputs) -> bool:
    return getattr(outputs, "class_queries_logits", None) is not None


class SemanticSegmenter:
    """Per-pixel class ids at each image's own size, from any semantic or mask-classification model."""

    def __init__(
        self,
        seg: Segmenter,
        pad_multiple: int = 32,
        clock: StageClock | None = None,
        gpu: bool | None = None,
        precision=None,
        buckets: bool = False,
    ):
        import torch

        self.seg = seg
        self.clock = clock or StageClock(seg.device)
        self.runner = HFRunner(seg, "semantic", pad_multiple, self.clock, precision, buckets)
        self.gpu = self.runner.device.type == "cuda" if gpu is None else gpu  # post-processing's layout
        self.num_classes = len(seg.id2label)
        self.dtype = torch.uint8 if fmt.semantic_dtype(self.num_classes) == "uint8" else torch.uint16

    def run(self, images) -> list:
        """images: [H, W, 3] uint8 tensors on the device -> class maps [H, W] (uint8/uint16) on the device."""
        import torch

        from .postprocess import semantic_from_logits, semantic_from_queries

        out: list = [None] * len(images)
        for g, o in self.runner(images):
            with self.clock.stage("postprocess"), torch.inference_mode():
                for j, i in enumerate(g.index):
                    p = g.placements[j]
                    if _is_mask_classification(o):
                        masks = o.masks_queries_logits[j]
                        hw = masks.shape[-2:]
                        cls = o.class_queries_logits[j]
                        m = semantic_from_queries(cls, masks, p.region(hw), p.size, p.step(hw), gpu=self.gpu)
                    else:
                        logits = o.logits[j]
                        hw = logits.shape[-2:]
                        m = semantic_from_logits(logits, p.region(hw), p.size, p.step(hw), gpu=self.gpu)
                    out[i] = m.to(self.dtype)
        return out

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Host arrays in and out (tests, tools); labelers use `run` inside one upload/download."""
        from .transfer import Download, upload

        return Download(self.run(upload(images, self.runner.device, self.gpu)), self.gpu).result()


class PanopticLabeler:
    """One forward pass of a panoptic model yields both maps.

    Each panoptic segment writes its class into the semantic map. Segments of "thing" classes
    also become instances (ids 1..N in query order, category = class id); "stuff" segments
    (sky, road, wall) exist only in the semantic map. Pixels that no segment claims are
    `ignore` in the semantic map and 0 in the instance map.
    """

    def __init__(
        self,
        seg: Segmenter,
        threshold: float,
        mask_threshold: float,
        overlap: float,
        thing_ids: str,
        pad_multiple: int = 32,
        compact: bool | None = None,
        clock: StageClock | None = None,
        gpu: bool | None = None,
        precision=None,
        buckets: bool = False,
    ):
        import torch

        from .postprocess import RULES, PanopticParams

        if seg.model_type not in RULES:
            raise LabelerLoadError(
                f"{seg.source!r} is a {seg.model_type} model; panoptic presets need a mask-classification model "
                f"({', '.join(sorted(RULES))})"
            )
        self.seg = seg
        self.clock = clock or StageClock(seg.device)
        self.runner = HFRunner(seg, "panoptic", pad_multiple, self.clock, precision, buckets)
        self.gpu = self.runner.device.type == "cuda" if gpu is None else gpu  # post-processing's layout
        self.num_classes = len(seg.id2label)
        self.sem_dtype = torch.uint8 if fmt.semantic_dtype(self.num_classes) == "uint8" else torch.uint16
        self.rule = RULES[seg.model_type]
        self.params = PanopticParams(threshold, mask_threshold, overlap, fmt.semantic_ignore(self.num_classes))
        self.things, self.thing_source = self._things(thing_ids)
        is_thing = torch.zeros(self.num_classes, dtype=torch.bool)
        is_thing[sorted(i for i in self.things if i < self.num_classes)] = True
        self.is_thing = is_thing.to(self.runner.device)
        # Dropping filtered queries needs their count on the host: free on a CPU (where pixels are the
        # cost), a stall on a GPU (where masking them out costs little).
        self.compact = not self.gpu if compact is None else compact

    def _things(self, spec: str) -> tuple[set[int], str]:
        """Thing ids and where they came from: the flag, the model's config, a known label space, or none."""
        from .label_spaces import known_things

        if spec != "auto":
            return parse_ids(spec), "--thing-ids"
        image_processor = getattr(self.seg.processor, "image_processor", self.seg.processor)
        meta = getattr(image_processor, "metadata", None) or {}
        if isinstance(meta, dict) and "thing_ids" in meta:  # OneFormer's processors carry their class info
            return {int(i) for i in meta["thing_ids"]}, "model config (class info)"
        known = known_things(self.seg.id2label)
        if known is not None:
            return known[0], f"{known[1]} (labeler/label_spaces.py)"
        return set(self.seg.id2label), "unknown label space: every class is a thing (pass --thing-ids)"

    def run(self, images) -> list:
        """images: [H, W, 3] uint8 tensors on the device -> per image (semantic [H, W] uint8/uint16,
        instance [H, W] uint16, records [K, 9] float64 with postprocess.RECORD_FIELDS), on the device."""
        import torch

        from .postprocess import panoptic

        out: list = [None] * len(images)
        for g, o in self.runner(images):
            with self.clock.stage("postprocess"), torch.inference_mode():
                for j, i in enumerate(g.index):
                    p = g.placements[j]
                    masks = o.masks_queries_logits[j]
                    hw = masks.shape[-2:]
                    sem, inst, records = panoptic(
                        o.class_queries_logits[j],
                        masks,
                        p.region(hw),
                        p.size,
                        self.rule,
                        self.params,
                        self.is_thing,
                        self.compact,
                        p.step(hw),
                        self.gpu,
                    )
                    out[i] = (sem.to(self.sem_dtype), inst.to(torch.uint16), records)
        return out

    def label_space(self) -> LabelSpace:
        names = {str(k): v for k, v in sorted(self.seg.id2label.items())}
        return LabelSpace(names, {k: v for k, v in names.items() if int(k) in self.things})
