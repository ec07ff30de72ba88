"""The text-prompted presets (`grounded`: Grounding DINO + SAM-HQ, `sam3`: SAM 3) on tiny random-init
models of the real architectures, with tokenizers built from small vocabularies, saved to a temp dir
and loaded back through the production loaders: the prompt reaches the model, batches equal single
images, nothing found is no error, the label space is one, and a job on samples/train validates and
reads back in inspect, report, compare and the trainer."""

import json
import time

import numpy as np
import pytest
import torch
from skimage import data as skdata

from c2f.cli import main
from labeler.base import ImageContext, LabelerLoadError
from labeler.grounded import DetectParams, GroundedLabeler, greedy_nms, load_box_sam, load_detector
from labeler.hf import SemanticSegmenter, load_segmenter
from labeler.imagenet_space import BACKGROUND, PROMPT_FIRST, STUFF_FIRST, imagenet_classes, imagenet_index
from labeler.prompts import NoPrompt, PromptsError, PromptTable, check_prompted_input
from labeler.sam3 import Sam3Labeler, Sam3Params, load_sam3
from labeler.tiny_grounded import save_ade_segformer_tiny, save_grounded_tiny
from shards.manifest import LabelerInfo

TENCH, ESPRESSO, TABBY = "n01440764", "n07920052", "n02123045"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-grounded")
    models = save_grounded_tiny(root, seed=0)
    models["stuff"] = save_ade_segformer_tiny(root / "segformer-ade20k")
    return {k: str(v) for k, v in models.items()}


@pytest.fixture(scope="module")
def loaded(tiny):
    return {
        "detector": load_detector(tiny["grounding-dino"], "cpu"),
        "sam": load_box_sam(tiny["sam-hq"], "cpu"),
        "sam3": load_sam3(tiny["sam3"], "cpu"),
    }


def grounded(loaded, box_threshold=0.0, stuff=None, prompts=None, max_detections=8):
    params = DetectParams(box_threshold, 0.0, max_detections, 0.8)
    table = prompts or PromptTable()
    return GroundedLabeler(
        loaded["detector"], loaded["sam"], table, params, 0.0, 16, LabelerInfo("test"), stuff, pad_multiple=32
    )


def sam3(loaded, threshold=0.0, stuff=None):
    table = PromptTable(first_phrase=True)
    return Sam3Labeler(loaded["sam3"], table, Sam3Params(threshold, 0.5, 8), 16, LabelerInfo("test"), stuff)


def photos():
    astro, coffee, chelsea = skdata.astronaut(), skdata.coffee(), skdata.chelsea()
    return [
        astro[::2, ::2],  # 256 x 256
        coffee[::2, ::2],  # 200 x 300, landscape
        np.ascontiguousarray(chelsea[:, :150]),  # 300 x 150, portrait
        astro[256:384, ::2],  # 128 x 256
        np.ascontiguousarray(chelsea[::3]),  # 100 x 451, thin
    ]


def ctx(synsets):
    return [ImageContext(f"k{i}", None, s) for i, s in enumerate(synsets)]


def test_tiny_models_load_through_the_production_loaders(tiny, loaded):
    from transformers import GroundingDinoForObjectDetection, Sam3Model, SamHQModel

    assert isinstance(loaded["detector"].model, GroundingDinoForObjectDetection)
    assert isinstance(loaded["sam"].model, SamHQModel) and isinstance(loaded["sam3"].model, Sam3Model)
    assert type(loaded["detector"].processor).__name__ == "GroundingDinoProcessor"
    assert type(loaded["sam3"].processor).__name__ == "Sam3Processor"
    with pytest.raises(LabelerLoadError, match="is a sam_hq model; expected grounding-dino or mm-grounding-dino"):
        load_detector(tiny["sam-hq"], "cpu")
    with pytest.raises(LabelerLoadError, match="no such directory"):
        load_box_sam(tiny["sam-hq"] + "-missing", "cpu")


def test_a_hub_id_without_network_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(LabelerLoadError) as e:
        load_sam3("c2f-test/no-such-model", "cpu")
    assert time.perf_counter() - t0 < 20
    msg = str(e.value)
    assert "\n" not in msg and "c2f-test/no-such-model" in msg and "huggingface-cli download" in msg


@pytest.mark.parametrize(
    "flags, why",
    [
        (["--preset", "grounded", "--grounding-model", "/no/such/dir"], "--grounding-model '/no/such/dir': no such"),
        (["--preset", "sam3", "--sam3-model", "c2f-test/no-such-model"], "cannot load --sam3-model"),
        (["--preset", "tiny-random-sam3", "--prompts", "/no/such/prompts.json"], "--prompts /no/such/prompts.json"),
    ],
)
def test_the_job_refuses_a_bad_model_or_prompts_before_starting(sample_tree, tmp_path, capsys, monkeypatch, flags, why):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    assert main(["label", str(sample_tree), str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - t0 < 30  # before any Ray cluster


def test_the_prompt_reaches_the_model(loaded):
    """Changing the image's class changes the text tokens fed to the model, and they are the
    tokenizer's own encoding of the class's lemmas."""
    fed = {}

    def hook(name):
        def grab(module, args, kwargs):
            fed[name] = kwargs["input_ids"].clone()

        return grab

    handles = [
        loaded["detector"].model.register_forward_pre_hook(hook("dino"), with_kwargs=True),
        loaded["sam3"].model.register_forward_pre_hook(hook("sam3"), with_kwargs=True),
    ]
    try:
        image = [photos()[0]]
        seen = {}
        for syn in (TENCH, ESPRESSO):
            out = grounded(loaded).label(image, ctx([syn]))[0]
            out3 = sam3(loaded).label(image, ctx([syn]))[0]
            seen[syn] = (fed["dino"], fed["sam3"], out.prompt, out3.prompt)
    finally:
        for h in handles:
            h.remove()
    assert seen[TENCH][2] == "tench. Tinca tinca." and seen[ESPRESSO][2] == "espresso."
    assert seen[TENCH][3] == "tench" and seen[ESPRESSO][3] == "espresso"
    tok = loaded["detector"].processor.tokenizer
    assert seen[TENCH][0][0].tolist() == tok("tench. Tinca tinca.")["input_ids"]
    assert seen[ESPRESSO][0][0].tolist() == tok("espresso.")["input_ids"]
    assert seen[TENCH][1].tolist() != seen[ESPRESSO][1].tolist()
    tok3 = loaded["sam3"].processor.tokenizer
    assert seen[ESPRESSO][1][0].tolist() == tok3("espresso", padding="max_length", max_length=32)["input_ids"]


@pytest.mark.parametrize("which", ["grounded", "sam3"])
def test_a_batch_of_mixed_sizes_and_prompts_equals_one_image_at_a_time(loaded, which):
    lab = grounded(loaded) if which == "grounded" else sam3(loaded)
    images = photos()
    # (Random masks can tie in area to a pixel, and then the last bits of a batched matmul decide which
    # is painted first; these images have no such near-tie. Trained masks rarely do.)
    # Two images share a canvas (same size) with prompts of different lengths: their text rows are padded.
    images.append(np.ascontiguousarray(images[1][::-1]))
    contexts = ctx([TENCH, ESPRESSO, TABBY, ESPRESSO, TENCH, "n04069434"])
    batched = lab.label(images, contexts)
    found = 0
    for image, c, b in zip(images, contexts, batched, strict=True):
        (alone,) = lab.label([image], [c])
        assert not isinstance(b, Exception), b
        assert b.semantic.shape == image.shape[:2] and b.semantic.dtype == np.uint16
        assert (b.semantic == alone.semantic).mean() >= 0.9999 and (b.instance == alone.instance).mean() >= 0.9999
        assert [(i.id, i.phrase, i.area) for i in b.instances] == [(i.id, i.phrase, i.area) for i in alone.instances]
        assert b.prompt == alone.prompt
        cls = imagenet_index()[c.synset]
        assert set(np.unique(b.semantic[b.instance > 0])) <= {cls}
        assert set(np.unique(b.semantic[b.instance == 0])) <= {BACKGROUND}
        assert all(i.category == cls for i in b.instances)
        found += bool(b.instances)
    assert found >= 4  # at threshold 0 the random models find something almost everywhere


@pytest.mark.parametrize("preset", ["tiny-random-grounded", "tiny-random-sam3"])
def test_precision_reaches_the_forward_passes(preset):
    """--precision bf16 runs the text-prompted presets' models in bf16 autocast, as it does every preset's."""
    from labeler.config import LabelerConfig, Settings
    from labeler.registry import build_labeler

    lab = build_labeler(Settings(LabelerConfig(preset=preset, device="cpu", precision="bf16")))
    models = [lab.detector.model, lab.box_sam.model] if preset.endswith("grounded") else [lab.sam3.model]
    dtypes: list[set] = [set() for _ in models]  # per model: the dtypes its linear layers computed in
    hooks = [
        layer.register_forward_hook(lambda m, i, o, seen=seen: seen.add(o.dtype))
        for model, seen in zip(models, dtypes, strict=True)
        for layer in model.modules()
        if isinstance(layer, torch.nn.Linear)
    ]
    try:
        (out,) = lab.label([photos()[0]], ctx([TENCH]))
    finally:
        for h in hooks:
            h.remove()
    assert not isinstance(out, Exception), out
    assert dtypes == [{torch.bfloat16}] * len(models), dtypes


def test_plain_sam_is_the_box_model_option(loaded, tiny):
    sam = load_box_sam(tiny["sam"], "cpu")
    assert type(sam.model).__name__ == "SamModel"
    lab = GroundedLabeler(
        loaded["detector"], sam, PromptTable(), DetectParams(0.0, 0.0, 8, 0.8), 0.0, 16, LabelerInfo("t")
    )
    images = photos()[:3]
    batched = lab.label(images, ctx([TENCH, ESPRESSO, TABBY]))
    for image, c, b in zip(images, ctx([TENCH, ESPRESSO, TABBY]), batched, strict=True):
        (alone,) = lab.label([image], [c])
        assert (b.instance == alone.instance).all() and b.instances and b.instances[0].mask_score is not None


def test_records_carry_box_score_phrase_and_mask_score(loaded):
    (out,) = grounded(loaded).label([photos()[0]], ctx([TENCH]))
    assert out.instances
    for inst in out.instances:
        assert inst.phrase in ("tench", "Tinca tinca") and 0 <= inst.box_score <= 1
        assert inst.mask_score is not None and inst.score == inst.box_score
        assert inst.area == int((out.instance == inst.id).sum())
    js = out.instances[0].to_json()
    assert {"phrase", "box_score", "mask_score"} <= set(js)


@pytest.mark.parametrize("which", ["grounded", "sam3"])
def test_nothing_found_is_an_empty_instance_map_and_background(loaded, tiny, which):
    lab = grounded(loaded, box_threshold=1.0) if which == "grounded" else sam3(loaded, threshold=1.0)
    images = photos()[:2]
    for out in lab.label(images, ctx([TENCH, ESPRESSO])):
        assert not isinstance(out, Exception) and out.prompt
        assert out.instances == [] and not out.instance.any() and (out.semantic == BACKGROUND).all()
    # With a stuff model the pixels outside objects take its stuff classes, or background for its things.
    stuff = SemanticSegmenter(load_segmenter(tiny["stuff"], "cpu"), 32)
    lab = grounded(loaded, box_threshold=1.0, stuff=stuff) if which == "grounded" else sam3(loaded, 1.0, stuff)
    (out,) = lab.label(images[:1], ctx([TENCH]))
    ids = set(np.unique(out.semantic).tolist())
    assert ids <= {BACKGROUND, *range(STUFF_FIRST, PROMPT_FIRST)} and len(ids) > 1


def test_greedy_nms_matches_torchvision():
    import torchvision

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 12, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(3, 12, 2, generator=g) * 40], -1)
    valid = torch.rand(3, 12, generator=g) > 0.2
    keep = greedy_nms(boxes, valid, 0.5)
    for b in range(3):
        idx = valid[b].nonzero()[:, 0]
        scores = torch.linspace(1, 0, 12)[idx]  # the slots are in score order
        ref = idx[torchvision.ops.nms(boxes[b, idx], scores, 0.5)]
        assert sorted(keep[b].nonzero()[:, 0].tolist()) == sorted(ref.tolist())


def test_prompts_file_keys_classes_and_one_for_all(tmp_path):
    table_file = tmp_path / "prompts.json"
    entries = {"img_7": "a red kite.", TENCH: "tench. fish.", "n99999999": "odd thing", "*": "dog"}
    table_file.write_text(json.dumps(entries))
    table = PromptTable.load(str(table_file))
    assert table.resolve(ImageContext("img_7", None, TENCH)).text == "a red kite."
    p = table.resolve(ImageContext("img_7", None, TENCH))
    assert p.class_id == imagenet_index()[TENCH]  # an ImageNet image keeps its class, whatever its prompt
    assert table.resolve(ImageContext("x", None, TENCH)).text == "tench. fish."
    odd = table.resolve(ImageContext("x", None, "n99999999"))
    dog = table.resolve(ImageContext("flat", None, None))
    assert (odd.text, dog.text) == ("odd thing.", "dog.")
    # Every prompt that can label an image without an ImageNet class is a class, in sorted order.
    assert table.class_names() == ["a red kite", "dog", "odd thing"]
    assert (dog.class_id, odd.class_id) == (PROMPT_FIRST + 1, PROMPT_FIRST + 2)
    assert table.resolve(ImageContext("y", None, ESPRESSO)).text == "dog."  # '*' is every image without an entry
    assert PromptTable(entries).entries and PromptTable({TENCH: "fish"}).resolve(
        ImageContext("y", None, ESPRESSO)
    ).text == (
        "espresso."  # without '*': the ImageNet lemmas
    )
    assert "sha256" in table.describe
    plain = tmp_path / "one.txt"
    plain.write_text("a photo of a bird.\n")
    one = PromptTable.load(str(plain), first_phrase=True)
    assert one.resolve(ImageContext("q")).text == "a photo of a bird" and one.any
    with pytest.raises(NoPrompt, match="no prompt"):
        PromptTable().resolve(ImageContext("q", None, None))
    with pytest.raises(PromptsError, match="the input has no class folders"):
        check_prompted_input(PromptTable(), has_classes=False)
    (tmp_path / "bad.json").write_text('{"a": 3}')
    with pytest.raises(PromptsError, match="string values"):
        PromptTable.load(str(tmp_path / "bad.json"))


def test_imagenet_classes_and_prompts():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0].synset == TENCH and classes[0].phrases == ("tench", "Tinca tinca")
    names = [c.name for c in classes]
    assert len(set(names)) == 1000  # "crane" twice: the synset tells them apart
    rv = classes[imagenet_index()["n04065272"]]
    assert rv.phrases == ("recreational vehicle", "RV")  # "R.V." would split the prompt


def test_the_estimate_says_how_often_the_prompt_found_its_object():
    from pipelines.estimate import Estimate

    e = Estimate(images=1000, shards=1, sampled=20, images_per_s=10.0, gpus=1.0, bytes_per_sample=1e5, found=(15, 5))
    assert e.format().endswith("the prompt found its object in 15 of 20 sampled images")


def test_the_production_presets_load_local_model_directories(tiny, sample_tree, tmp_path, capsys):
    """`grounded` and `sam3` (not their tiny versions) with local directories: the path a user's
    downloaded checkpoints take; a directory of the wrong kind is refused before the job starts."""
    from labeler.config import GroundedConfig, LabelerConfig, Settings
    from labeler.registry import build_labeler

    g = GroundedConfig(grounding_model=tiny["grounding-dino"], box_sam_model=tiny["sam-hq"], sam3_model=tiny["sam3"])
    for preset in ("grounded", "sam3"):
        lab = build_labeler(Settings(LabelerConfig(preset, device="cpu"), grounded=g))
        info = lab.describe()
        assert info.preset == preset and not info.random_labels and info.models[0].id in tiny.values()
        (out,) = lab.label([photos()[1]], ctx([ESPRESSO]))
        assert out.prompt.startswith("espresso") and lab.label_space().grounded
    args = ["label", str(sample_tree), str(tmp_path / "o"), "--preset", "grounded"]
    assert main([*args, "--grounding-model", tiny["sam-hq"], "--box-sam-model", tiny["sam-hq"]]) == 2
    assert "is a sam_hq model; expected grounding-dino or mm-grounding-dino" in capsys.readouterr().err
