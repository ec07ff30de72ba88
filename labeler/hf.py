"""Hugging Face transformers backends: semantic (SegFormer, UperNet, Mask2Former, OneFormer…)
and panoptic (Mask2Former, OneFormer) segmentation, loaded in one place (`load_segmenter`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from shards import format as fmt
from shards.pack import Labels

from .base import LabelerLoadError, resolve_device
from .overlap import instance_records

UNIVERSAL = {"mask2former", "oneformer", "maskformer"}  # one model, semantic/instance/panoptic heads


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


def load_segmenter(source: str, device: str = "auto", compile: bool = False) -> Segmenter:
    """A Hugging Face id or a local directory -> processor + model in eval mode on `device`.

    Local directories load directly. Hub ids load from the local cache first; if absent, one
    download is tried (with short timeouts) and a failure says how to pass a local path instead.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForSemanticSegmentation,
        AutoModelForUniversalSegmentation,
        AutoProcessor,
    )

    local = os.path.isdir(source)
    if not local and os.path.exists(source):
        raise LabelerLoadError(f"{source!r} is a file; pass the model's directory (config.json + weights)")

    def _load(local_only: bool):
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
        auto = AutoModelForUniversalSegmentation if config.model_type in UNIVERSAL else AutoModelForSemanticSegmentation
        model = auto.from_pretrained(source, local_files_only=local_only)
        # OneFormer's processor also tokenizes the task text its queries are conditioned on.
        proc_cls = AutoProcessor if config.model_type == "oneformer" else AutoImageProcessor
        processor = proc_cls.from_pretrained(source, local_files_only=local_only)
        return config, model, processor

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file and per worker is noise in job logs
    try:
        try:
            config, model, processor = _load(local_only=True)
        except OSError:
            if local or os.environ.get("HF_HUB_OFFLINE") == "1":
                raise
            os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
            os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
            config, model, processor = _load(local_only=False)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabelerLoadError(
            f"cannot load segmentation model {source!r}: {first}\n"
            "  Pass a local directory (the output of `save_pretrained`, or a snapshot made with "
            f"`huggingface-cli download {source} --local-dir DIR` on a machine with network access), "
            "or pre-fill the Hugging Face cache (HF_HOME) on every worker."
        ) from None
    device = resolve_device(device)
    model = model.to(device).eval()
    if compile:
        model = torch.compile(model)
    return Segmenter(processor, model, config.model_type, source, device)


def _forward(seg: Segmenter, images: list[np.ndarray], task: str):
    import torch

    kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
    if seg.model_type == "oneformer":
        kwargs["task_inputs"] = [task] * len(images)  # OneFormer conditions its queries on the task
    inputs = seg.processor(**kwargs).to(seg.device)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=seg.device.startswith("cuda")):
        return seg.model(**inputs)


def parse_ids(spec: str) -> set[int]:
    """'0-79,90' -> {0..79, 90}."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


class SemanticSegmenter:
    """Per-pixel class ids from any model with `post_process_semantic_segmentation`."""

    def __init__(self, seg: Segmenter):
        self.seg = seg
        self.num_classes = len(seg.id2label)
        self.dtype = np.uint8 if fmt.semantic_dtype(self.num_classes) == "uint8" else np.uint16

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        out = _forward(self.seg, images, "semantic")
        maps = self.seg.processor.post_process_semantic_segmentation(out, target_sizes=[im.shape[:2] for im in images])
        return [m.cpu().numpy().astype(self.dtype) for m in maps]


class PanopticLabeler:
    """One forward pass of a panoptic model yields both maps.

    Each panoptic segment writes its class into the semantic map. Segments of "thing" classes
    also become instances (ids 1..N in segment order, category = class id); "stuff" segments
    (sky, road, wall) exist only in the semantic map. Pixels that no segment claims are
    `ignore` in the semantic map and 0 in the instance map.
    """

    def __init__(self, seg: Segmenter, threshold: float, mask_threshold: float, overlap: float, thing_ids: str):
        self.seg = seg
        self.sem = SemanticSegmenter(seg)
        self.threshold, self.mask_threshold, self.overlap = threshold, mask_threshold, overlap
        self.things = self._things(thing_ids)

    def _things(self, spec: str) -> set[int]:
        if spec != "auto":
            return parse_ids(spec)
        image_processor = getattr(self.seg.processor, "image_processor", self.seg.processor)
        meta = getattr(image_processor, "metadata", None) or {}
        if isinstance(meta, dict) and "thing_ids" in meta:  # OneFormer's processors carry their class info
            return {int(i) for i in meta["thing_ids"]}
        return set(self.seg.id2label)

    def label(self, images: list[np.ndarray]) -> list[Labels]:
        out = _forward(self.seg, images, "panoptic")
        results = self.seg.processor.post_process_panoptic_segmentation(
            out,
            threshold=self.threshold,
            mask_threshold=self.mask_threshold,
            overlap_mask_area_threshold=self.overlap,
            label_ids_to_fuse=set(),
            target_sizes=[im.shape[:2] for im in images],
        )
        ignore = fmt.semantic_ignore(self.sem.num_classes)
        labels = []
        for res in results:
            segmap = res["segmentation"].cpu().numpy().astype(np.int64)  # 0 or -1: no segment
            info = res["segments_info"]
            sem_lut = np.full(max([s["id"] for s in info], default=0) + 2, ignore, np.int64)
            inst_lut = np.zeros_like(sem_lut)
            cats, scores = [], []
            for s in info:
                sem_lut[s["id"]] = s["label_id"]
                if s["label_id"] in self.things:
                    cats.append(int(s["label_id"]))
                    scores.append(float(s["score"]))
                    inst_lut[s["id"]] = len(cats)
            segmap = np.where(segmap < 0, len(sem_lut) - 1, segmap)  # -1 -> the ignore slot
            semantic = sem_lut[segmap].astype(self.sem.dtype)
            inst = inst_lut[segmap].astype(np.uint16)
            records = instance_records(inst, cats, scores)
            kept = [r for r in records if r.area > 0]
            if len(kept) != len(records):  # a segment can vanish at the target size: renumber
                remap = np.zeros(len(records) + 1, np.uint16)
                for new, r in enumerate(kept, start=1):
                    remap[r.id] = new
                inst = remap[inst]
                records = instance_records(inst, [r.category for r in kept], [r.score for r in kept])
            labels.append(Labels(semantic, inst, records))
        return labels

    def label_space(self) -> dict[str, Any]:
        names = {str(k): v for k, v in sorted(self.seg.id2label.items())}
        return {"semantic": names, "instance": {k: v for k, v in names.items() if int(k) in self.things}}
