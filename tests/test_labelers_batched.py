"""Batched equals single: an image's maps do not depend on the batch it is labeled in.

transformers pads a batch to its largest image and does not crop the padding before resizing
(transformers #39382), so with an aspect-preserving processor a landscape image's maps change when a
portrait one shares its batch. Our labelers give each image a canvas of its own and crop it before
resizing. Models here are tiny random ones saved to disk and loaded through the production loaders,
with aspect-preserving processors; batches mix landscape, portrait, square and odd sizes.

Maps must agree on >= 99.99% of pixels rather than bit for bit: CPU matmul kernels may block a batch
of 3 differently from a batch of 1, which moves logits in the last bits and can flip a pixel that
sits exactly on a tie (observed: one pixel in 180,000 with the square SegFormer).
"""

import numpy as np
import pytest
import torch
from skimage import data as skdata

from labeler.composite import OnePassPanoptic, SemanticPlusInstances
from labeler.config import SamConfig
from labeler.hf import PanopticLabeler, SemanticSegmenter, load_segmenter
from labeler.preprocess import HFPreprocessor
from labeler.sam import build_instances, load_sam
from labeler.timing import StageClock
from labeler.tiny import TINY_THINGS, write_tiny_models


def _mixed():
    coffee = skdata.coffee()  # 400 x 600
    return [
        coffee,  # landscape
        np.ascontiguousarray(coffee.transpose(1, 0, 2)[:, :250]),  # portrait 600 x 250
        skdata.astronaut()[::2, ::2],  # square 256 x 256
        np.ascontiguousarray(skdata.chelsea()[:, :97]),  # tall and thin 300 x 97
    ]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    names = ("segformer", "segformer_aspect", "mask2former_aspect", "oneformer", "eomt", "sam")
    return write_tiny_models(tmp_path_factory.mktemp("tiny-batched"), seed=0, names=names)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float((a == b).mean()) >= 0.9999


@pytest.mark.parametrize("name", ["segformer_aspect", "mask2former_aspect", "oneformer", "eomt"])
def test_preprocessing_is_the_processors_own(tiny_models, name):
    """Each image is prepared exactly as `processor(images=[image])` prepares it alone (same pixels),
    inside a canvas that depends on the image only."""
    seg = load_segmenter(str(tiny_models[name]), device="cpu")
    prep = HFPreprocessor(seg.processor, seg.model_type, pad_multiple=32)
    images = _mixed()
    groups = prep([torch.from_numpy(im) for im in images])
    assert sorted(i for g in groups for i in g.index) == list(range(len(images)))
    kwargs = {"task_inputs": ["panoptic"]} if seg.model_type == "oneformer" else {}
    for g in groups:
        for j, i in enumerate(g.index):
            alone = seg.processor(images=[images[i]], return_tensors="pt", **kwargs)["pixel_values"][0]
            p = g.placements[j]
            h, w = p.resized
            if seg.model_type == "eomt":  # EoMT's processor pads to its fixed canvas itself
                assert tuple(alone.shape[-2:]) == p.canvas
                assert torch.equal(g.pixel_values[j], alone)
            else:
                assert tuple(alone.shape[-2:]) == (h, w)
                assert torch.equal(g.pixel_values[j, :, :h, :w], alone)
                assert (g.pixel_values[j, :, h:, :] == 0).all() and (g.pixel_values[j, :, :, w:] == 0).all()
            assert p.canvas == prep([torch.from_numpy(images[i])])[0].placements[0].canvas
    if seg.model_type != "eomt":  # aspect kept: orientations get different canvases
        assert len(groups) >= 2


@pytest.mark.parametrize("name", ["segformer_aspect", "mask2former_aspect", "oneformer", "eomt", "segformer"])
def test_semantic_batched_equals_single(tiny_models, name):
    sem = SemanticSegmenter(load_segmenter(str(tiny_models[name]), device="cpu"))
    images = _mixed()
    batched = sem(images)
    for image, m in zip(images, batched, strict=True):
        assert m.shape == image.shape[:2] and m.dtype == np.uint8
        assert _same(m, sem([image])[0])
    assert len(np.unique(np.concatenate([m.ravel() for m in batched]))) >= 2


@pytest.mark.parametrize("name", ["mask2former_aspect", "oneformer", "eomt"])
def test_panoptic_batched_equals_single(tiny_models, name):
    seg = load_segmenter(str(tiny_models[name]), device="cpu")
    labeler = OnePassPanoptic(PanopticLabeler(seg, 0.05, 0.5, 0.3, TINY_THINGS), {})
    images = _mixed()
    batched = labeler.label(images)
    for image, lab in zip(images, batched, strict=True):
        alone = labeler.label([image])[0]
        assert _same(lab.semantic, alone.semantic) and _same(lab.instance, alone.instance)
        if (lab.instance == alone.instance).all():
            assert [r.to_json() for r in lab.instances] == [r.to_json() for r in alone.instances]
    t = labeler.timings()
    assert t["images"] == 2 * len(images) and t["forward_ms"] > 0 and t["postprocess_ms"] > 0


def test_transformers_batching_is_not_batch_invariant(tiny_models):
    """The bug this module exists for, reproduced: transformers' own path changes a landscape image's
    map when a portrait image shares its batch (so the test above is not vacuous)."""
    seg = load_segmenter(str(tiny_models["mask2former_aspect"]), device="cpu")
    images = _mixed()[:2]

    def hf(batch):
        inputs = seg.processor(images=batch, return_tensors="pt")
        with torch.inference_mode():
            out = seg.model(**inputs)
        sizes = [im.shape[:2] for im in batch]
        return seg.processor.post_process_semantic_segmentation(out, sizes, return_segmentation_scores=True)[0]

    alone, together = hf(images[:1]), hf(images)
    # The landscape image's class scores are stretched over the portrait's padding: far apart, not noise.
    assert (alone.segmentation_scores - together.segmentation_scores).abs().max() > 0.05
    assert (alone.segmentation != together.segmentation).any()
    ours = SemanticSegmenter(seg)
    assert _same(ours(images)[0], ours(images[:1])[0])


def test_sam_batched_equals_single(tiny_models):
    """Low-res filtering (the default); full-resolution filtering equals the stock generator, which
    works image by image (tests/test_labelers_sam.py)."""
    clock = StageClock("cpu")
    sam = load_sam("vit_tiny", str(tiny_models["sam"]), device="cpu")
    cfg = SamConfig(
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.3,
        box_nms_thresh=0.9,
        min_instance_area=16,
    )
    semantic = SemanticSegmenter(load_segmenter(str(tiny_models["segformer_aspect"]), device="cpu"), clock=clock)
    labeler = SemanticPlusInstances(semantic, build_instances(sam, cfg, clock), {}, clock)
    images = _mixed()
    batched = labeler.label(images)
    n_instances = 0
    for image, lab in zip(images, batched, strict=True):
        alone = labeler.label([image])[0]
        assert _same(lab.semantic, alone.semantic) and _same(lab.instance, alone.instance)
        assert lab.instance.shape == image.shape[:2] and lab.instance.dtype == np.uint16
        n_instances += len(lab.instances)
        assert all(r.category is None and r.area >= 16 for r in lab.instances)
    assert n_instances >= len(images)
    assert set(labeler.timings()) >= {"images", "preprocess_ms", "forward_ms", "postprocess_ms", "host_ms"}
