"""Labeler backends on tiny random models of the real architectures, loaded through the production
loaders from a temp dir, on real photographs of several sizes and aspect ratios."""

import time

import numpy as np
import pytest
import torch
from skimage import data as skdata

from labeler.base import LabelerLoadError
from labeler.composite import OnePassPanoptic, label_each
from labeler.config import SamConfig
from labeler.hf import PanopticLabeler, SemanticSegmenter, load_segmenter
from labeler.overlap import records_to_instances, resolve_overlaps
from labeler.registry import build_labeler
from labeler.sam import StockSamInstances, build_instances, load_sam
from labeler.tiny import TINY_CLASSES, TINY_THINGS, write_tiny_models


def _photos():
    astro, coffee, chelsea = skdata.astronaut(), skdata.coffee(), skdata.chelsea()
    return [
        astro,  # 512x512
        coffee,  # 400x600
        chelsea[:, :97],  # 300x97, tall and thin
        np.ascontiguousarray(coffee[150:190]),  # 40x600, a strip
        np.stack([skdata.camera()] * 3, -1)[::3, ::2],  # 171x256 grayscale as RGB
    ]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    names = ("segformer", "mask2former", "oneformer", "sam")
    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"), seed=0, names=names)


def _check_labels(img, lab, num_classes, ignore=255):
    h, w = img.shape[:2]
    assert lab.semantic.shape == (h, w) and lab.semantic.dtype == np.uint8
    assert lab.instance.shape == (h, w) and lab.instance.dtype == np.uint16
    vals = np.unique(lab.semantic)
    assert ((vals < num_classes) | (vals == ignore)).all()
    ids = sorted(set(np.unique(lab.instance).tolist()) - {0})
    assert ids == [r.id for r in lab.instances] == list(range(1, len(ids) + 1))
    for r in lab.instances:
        m = lab.instance == r.id
        ys, xs = np.nonzero(m)
        assert r.area == m.sum() and r.bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_semantic_segformer_through_loader(tiny_models):
    seg = load_segmenter(str(tiny_models["segformer"]), device="cpu")
    assert seg.model_type == "segformer" and len(seg.id2label) == TINY_CLASSES
    sem = SemanticSegmenter(seg)
    photos = _photos()
    maps = sem(photos)
    for img, m in zip(photos, maps, strict=True):
        assert m.shape == img.shape[:2] and m.dtype == np.uint8 and m.max() < TINY_CLASSES
    assert len(np.unique(maps[0])) >= 3  # random but not trivial
    again = sem(photos[:1])[0]
    assert (again == maps[0]).all()  # deterministic for the same weights and input


def test_panoptic_mask2former_one_pass(tiny_models):
    seg = load_segmenter(str(tiny_models["mask2former"]), device="cpu")
    assert seg.model_type == "mask2former"
    pan = PanopticLabeler(seg, threshold=0.05, mask_threshold=0.5, overlap=0.3, thing_ids=TINY_THINGS)
    photos = _photos()
    labels = OnePassPanoptic(pan, {}).label(photos)
    things = set(range(6, 12))
    n_inst = 0
    for img, lab in zip(photos, labels, strict=True):
        _check_labels(img, lab, TINY_CLASSES)
        for r in lab.instances:  # instances are the thing segments: same class in both maps
            assert r.category in things
            assert set(np.unique(lab.semantic[lab.instance == r.id]).tolist()) == {r.category}
        stuff_px = np.isin(lab.semantic, list(set(range(6))))
        assert not (lab.instance[stuff_px] > 0).any()  # stuff never gets an instance id
        n_inst += len(lab.instances)
    assert n_inst > 0
    assert pan.label_space().instance == {str(i): f"random_{i}" for i in sorted(things)}


@pytest.mark.parametrize("generator", ["stock", "batched"])
def test_sam_instances_through_loader(tiny_models, generator):
    model = load_sam("vit_tiny", str(tiny_models["sam"]), device="cpu")
    cfg = SamConfig(
        sam_generator=generator,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        min_instance_area=32,
    )
    sam = build_instances(model, cfg)
    photos = [np.ascontiguousarray(p) for p in _photos()[1:3]]
    if generator == "stock":
        masks, scores = sam.masks(photos[0])
        assert isinstance(sam, StockSamInstances)
        assert masks.shape[1:] == photos[0].shape[:2] and len(scores) == masks.shape[0] > 1
    for img, (inst, records) in zip(photos, sam.run(photos, [torch.from_numpy(p) for p in photos]), strict=True):
        inst, records = inst.numpy(), records_to_instances(records.numpy(), agnostic=True)
        assert inst.shape == img.shape[:2] and inst.dtype == np.uint16
        assert len(records) >= 2 and all(r.area >= 32 and r.category is None for r in records)
        assert sorted(set(np.unique(inst).tolist()) - {0}) == [r.id for r in records]


def test_sam_loader_errors(tiny_models, tmp_path):
    with pytest.raises(LabelerLoadError, match="not found: pass --sam-checkpoint"):
        load_sam("vit_b", str(tmp_path / "nope.pth"))
    with pytest.raises(LabelerLoadError, match="unknown SAM model type"):
        load_sam("vit_x", str(tiny_models["sam"]))
    with pytest.raises(LabelerLoadError, match="cannot load SAM vit_b"):  # wrong architecture for the weights
        load_sam("vit_b", str(tiny_models["sam"]))
    (tmp_path / "evil.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LabelerLoadError, match="cannot load SAM"):
        load_sam("vit_tiny", str(tmp_path / "evil.pth"))


def test_missing_hub_model_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(LabelerLoadError) as e:
        load_segmenter("c2f-test/no-such-model", device="cpu")
    assert time.perf_counter() - t0 < 20
    msg = str(e.value)
    assert "c2f-test/no-such-model" in msg and "local directory" in msg and "huggingface-cli download" in msg


def test_tiny_random_preset_is_non_trivial_and_marked_random():
    lab = build_labeler("tiny-random")
    assert lab.describe().random_labels is True
    assert lab.describe().models[0].id == "tiny-random:segformer"
    assert lab.label_space().instance == "class-agnostic"
    photos = _photos()[:2]
    for img, out in zip(photos, lab.label(photos), strict=True):
        _check_labels(img, out, TINY_CLASSES)
        assert len(np.unique(out.semantic)) >= 3 and len(out.instances) >= 3


def test_label_each_isolates_failures():
    def fn(images):
        if any(im.shape[0] == 1 for im in images):
            raise RuntimeError("bad image")
        return [im.shape for im in images]

    out = label_each(fn, [np.zeros((4, 4, 3)), np.zeros((1, 4, 3)), np.zeros((5, 4, 3))])
    assert out[0] == (4, 4, 3) and isinstance(out[1], RuntimeError) and out[2] == (5, 4, 3)


# --- overlap resolution: the documented rule, checked exactly ---------------------------------


def _masks(h, w, *boxes):
    m = np.zeros((len(boxes), h, w), bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        m[i, y0:y1, x0:x1] = True
    return m


def test_overlap_small_on_top_of_large():
    table = (0, 10, 0, 10)  # 100 px
    cup = (2, 5, 2, 5)  # 9 px, lies on the table
    inst, recs = resolve_overlaps(_masks(10, 10, cup, table), [0.9, 0.5])
    want = np.ones((10, 10), np.uint16)
    want[2:5, 2:5] = 2
    assert (inst == want).all()  # largest painted first, gets id 1; the cup stays visible on top
    assert [(r.id, r.area, r.bbox, r.score) for r in recs] == [(1, 91, [0, 0, 10, 10], 0.5), (2, 9, [2, 2, 3, 3], 0.9)]


def test_overlap_tie_goes_to_higher_score_then_earlier():
    a, b = (0, 4, 0, 4), (2, 6, 2, 6)  # equal areas, overlapping at [2:4, 2:4]
    inst, recs = resolve_overlaps(_masks(6, 6, a, b), [0.3, 0.8])
    # b has the higher score: painted first (id 1); a is painted after it and takes the overlap
    assert inst[3, 3] == 2 and recs[1].score == 0.3 and recs[0].area == 12 and recs[1].area == 16
    inst, _ = resolve_overlaps(_masks(6, 6, a, b), [0.5, 0.5])
    assert inst[3, 3] == 2 and inst[0, 0] == 1  # tie: a (earlier) first, b on top


def test_overlap_drops_small_remainders_and_repaints():
    big, mid, tiny = (0, 10, 0, 10), (0, 10, 0, 5), (0, 1, 0, 1)
    inst, recs = resolve_overlaps(_masks(10, 10, big, mid, tiny), [0.5, 0.5, 0.9], min_area=2)
    assert [r.area for r in recs] == [50, 50]  # the 1-px mask is dropped ...
    assert inst[0, 0] == 2  # ... and its pixel goes back to the mask beneath it
    inst, recs = resolve_overlaps(_masks(4, 4), [], min_area=2)
    assert recs == [] and not inst.any()


def test_oneformer_through_loader_semantic_and_panoptic(tiny_models):
    """OneFormer needs its task text tokenized (`task_inputs`); its processor also says which
    classes are things, which the panoptic backend reads with `thing_ids=auto`."""
    seg = load_segmenter(str(tiny_models["oneformer"]), device="cpu")
    assert seg.model_type == "oneformer" and type(seg.processor).__name__ == "OneFormerProcessor"
    photos = _photos()[:3]
    for img, m in zip(photos, SemanticSegmenter(seg)(photos), strict=True):
        assert m.shape == img.shape[:2] and m.dtype == np.uint8 and m.max() < TINY_CLASSES
    pan = PanopticLabeler(seg, threshold=0.05, mask_threshold=0.5, overlap=0.3, thing_ids="auto")
    assert pan.things == set(range(6, 12))
    for img, lab in zip(photos, OnePassPanoptic(pan, {}).label(photos), strict=True):
        _check_labels(img, lab, TINY_CLASSES)
        assert all(r.category in pan.things for r in lab.instances)
