"""Things and stuff: presets know which classes are countable objects, and stuff never becomes an
instance. Mask2Former and EoMT configs do not list their things; ADE20K-150's panoptic split (100
things, 50 stuff) and COCO panoptic's (80 things, 53 stuff) are written down in labeler/label_spaces.py
and recognised by class names."""

import numpy as np
import pytest
import torch
from skimage import data as skdata

from labeler.config import LabelerConfig, PanopticConfig, Settings
from labeler.hf import PanopticLabeler, load_segmenter
from labeler.label_spaces import ADE20K_150_PANOPTIC, COCO_133_PANOPTIC, known_things
from labeler.postprocess import RULES, PanopticParams, panoptic
from labeler.registry import build_labeler
from labeler.tiny import build_eomt_tiny, build_mask2former_tiny, save_hf, synthetic_query_logits

HF_ADE_NAMES = [row[3] for row in ADE20K_150_PANOPTIC]  # as transformers' ADE20K checkpoints name them
ADE_THINGS = {row[0] for row in ADE20K_150_PANOPTIC if row[1]}


def test_ade20k_split_is_the_published_one():
    assert len(ADE20K_150_PANOPTIC) == 150 and [r[0] for r in ADE20K_150_PANOPTIC] == list(range(150))
    assert len(ADE_THINGS) == 100
    names = {row[3].strip(): bool(row[1]) for row in ADE20K_150_PANOPTIC}
    assert names["person"] and names["car"] and names["chair"]  # things
    assert not names["sky"] and not names["wall"] and not names["road"] and not names["grass"]  # stuff


def test_label_space_recognised_by_names_only():
    assert known_things(dict(enumerate(HF_ADE_NAMES))) == (ADE_THINGS, "ade20k-150-panoptic")
    detectron_names = dict(enumerate(row[2] for row in ADE20K_150_PANOPTIC))  # "road, route", "window "
    assert known_things(detectron_names)[0] == ADE_THINGS
    assert known_things({i: f"class_{i}" for i in range(150)}) is None  # 150 classes of another dataset
    assert known_things(dict(enumerate(HF_ADE_NAMES[:149]))) is None
    shuffled = dict(enumerate(HF_ADE_NAMES[1:] + HF_ADE_NAMES[:1]))  # same names, other ids
    assert known_things(shuffled) is None


HF_COCO_NAMES = [row[3] for row in COCO_133_PANOPTIC]  # as transformers' COCO-panoptic checkpoints name them


def test_coco_split_is_the_published_one():
    assert [r[0] for r in COCO_133_PANOPTIC] == list(range(133))
    things = {row[0] for row in COCO_133_PANOPTIC if row[1]}
    assert things == set(range(80))  # the 80 detection classes first, then 53 stuff
    names = {row[3]: bool(row[1]) for row in COCO_133_PANOPTIC}
    assert names["person"] and names["toothbrush"] and names["dining table"]
    assert not names["sky-other-merged"] and not names["road"] and not names["wall-other-merged"]
    assert not names["banner"] and not names["rug-merged"]


def test_coco_recognised_by_names_only():
    assert known_things(dict(enumerate(HF_COCO_NAMES))) == (set(range(80)), "coco-133-panoptic")
    underscored = {i: n.replace("-", "_").title() for i, n in enumerate(HF_COCO_NAMES)}  # other spellings
    assert known_things(underscored)[1] == "coco-133-panoptic"
    assert known_things(dict(enumerate(HF_COCO_NAMES[80:] + HF_COCO_NAMES[:80]))) is None  # stuff first
    assert known_things({i: f"class_{i}" for i in range(133)}) is None


def test_coco_checkpoint_gets_its_split_through_the_loader(tmp_path):
    """A COCO-panoptic Mask2Former (tiny, 133 classes named as the hub's) without --thing-ids: 80 things,
    not all 133 classes."""
    path = save_hf(*build_mask2former_tiny(num_labels=133, names=HF_COCO_NAMES), tmp_path / "m2f-coco")
    pan = PanopticLabeler(load_segmenter(str(path), device="cpu"), 0.05, 0.5, 0.3, "auto")
    assert pan.things == set(range(80)) and "coco-133-panoptic" in pan.thing_source
    assert pan.label_space().thing_ids == set(range(80))


@pytest.fixture(scope="module")
def ade_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    return {
        "eomt": save_hf(*build_eomt_tiny(num_labels=150, names=HF_ADE_NAMES), root / "eomt"),
        "mask2former": save_hf(*build_mask2former_tiny(num_labels=150, names=HF_ADE_NAMES), root / "m2f"),
    }


@pytest.mark.parametrize("name", ["eomt", "mask2former"])
def test_auto_things_from_the_label_space(ade_models, name):
    pan = PanopticLabeler(load_segmenter(str(ade_models[name]), device="cpu"), 0.05, 0.5, 0.3, "auto")
    assert pan.things == ADE_THINGS and "ade20k-150-panoptic" in pan.thing_source
    assert set(pan.label_space().instance) == {str(i) for i in ADE_THINGS}
    explicit = PanopticLabeler(load_segmenter(str(ade_models[name]), device="cpu"), 0.05, 0.5, 0.3, "0-9")
    assert explicit.things == set(range(10)) and explicit.thing_source == "--thing-ids"


def test_stuff_never_becomes_an_instance(ade_models):
    """Through the production preset (`eomt` with a local checkpoint) on photos, and on model-shaped
    logits with many stuff and thing segments per image."""
    settings = Settings(
        LabelerConfig(preset="eomt", panoptic_model=str(ade_models["eomt"]), device="cpu"),
        panoptic=PanopticConfig(panoptic_threshold=0.0, overlap_mask_area_threshold=0.0),
    )
    labeler = build_labeler(settings)
    assert labeler.describe().models[0].type == "eomt"
    assert "ade20k-150-panoptic" in labeler.describe().models[0].things
    stuff = np.array(sorted(set(range(150)) - ADE_THINGS))
    photos = [skdata.coffee(), skdata.astronaut(), skdata.chelsea()]
    for lab in labeler.label(photos):
        assert not lab.instance[np.isin(lab.semantic, stuff)].any()
        assert all(r.category in ADE_THINGS for r in lab.instances)

    is_thing = torch.zeros(150, dtype=torch.bool)
    is_thing[sorted(ADE_THINGS)] = True
    cls, masks = synthetic_query_logits(6, 100, 150, (96, 96), seed=5)
    seen_stuff = seen_things = 0
    for i in range(6):
        sem, inst, records = panoptic(
            cls[i],
            masks[i],
            (96.0, 96.0),
            (300, 400),
            RULES["eomt"],
            PanopticParams(0.8, 0.5, 0.8, 255),
            is_thing,
            True,
        )
        stuff_px = torch.from_numpy(np.isin(sem.numpy(), stuff))
        assert not (inst[stuff_px] > 0).any()
        valid = records[records[:, 0] > 0]
        categories = valid[:, 2].long()
        assert ((valid[:, 1] > 0) == is_thing[categories]).all()  # an instance id exactly for things
        seen_stuff += int((~is_thing[categories]).sum())
        seen_things += int(is_thing[categories].sum())
    assert seen_stuff >= 6 and seen_things >= 6
