"""Jobs with the tiny text-prompted presets on samples/train (real Ray, real tars): they validate,
count found / not found, and read back in `c2f inspect`, `report`, `compare` (against an output of
the same plan in ADE20K's classes) and the trainer; a flat folder is labeled from a --prompts file."""

import json
import shutil

import numpy as np
import pytest
from conftest import REPO
from test_compare import rewrite, shift

from c2f.cli import main
from labeler.imagenet_space import BACKGROUND, PROMPT_FIRST, imagenet_index
from shards import format as fmt
from shards.manifest import read_done, read_manifest
from shards.pack import decode_png
from shards.tar import read_samples


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's jobs (each job joins it instead of starting its own)."""
    import ray

    from pipelines.distributor import init_ray

    init_ray("local")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def outputs(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("grounded-jobs")
    out = {}
    for preset in ("tiny-random-grounded", "tiny-random-sam3"):
        out[preset] = root / preset
        args = [
            "label",
            str(REPO / "samples" / "train"),
            str(out[preset]),
            "--preset",
            preset,
            "--samples-per-shard",
            "4",
        ]
        assert main([*args, "--batch-size", "4"]) == 0  # and validates
    return out


def samples(out):
    m = read_manifest(out)
    for e in m.shards:
        for key, s in read_samples(str(out / e.name)):
            yield key, json.loads(s[fmt.META]), decode_png(s[fmt.SEM]), decode_png(s[fmt.INST])


@pytest.mark.parametrize("preset", ["tiny-random-grounded", "tiny-random-sam3"])
def test_a_job_writes_class_aware_maps_and_counts_what_the_prompt_found(outputs, preset):
    out = outputs[preset]
    m = read_manifest(out)
    space = m.label_space
    assert space.grounded and space.num_classes == PROMPT_FIRST and space.ignore == 65535
    assert space.semantic["0"] == "tench" and space.semantic[str(BACKGROUND)] == "background"
    assert space.synsets["967"] == "n07920052" and space.prompts["967"].startswith("espresso")
    assert m.labeler.random_labels and "ImageNet-1K synset lemmas" in m.labeler.prompt_source
    found = not_found = 0
    for _, meta, sem, inst in samples(out):
        cls = imagenet_index()[meta["class"]["synset"]]
        assert sem.dtype == np.uint16 and meta["prompt"]
        if meta["instances"]:
            found += 1
            assert set(np.unique(sem[inst > 0])) == {cls} and all(i["category"] == cls for i in meta["instances"])
            assert all(i["phrase"] for i in meta["instances"])
        else:
            not_found += 1
            assert not inst.any() and (sem == BACKGROUND).all()
        assert set(np.unique(sem[inst == 0])) <= {BACKGROUND}
    assert found and not_found  # the tiny presets' thresholds split samples/train
    stats = read_done(out).values()
    assert sum(s.grounded.found for s in stats) == found and sum(s.grounded.not_found for s in stats) == not_found


def test_inspect_and_report_show_imagenet_classes_and_the_found_rate(outputs, tmp_path, capsys):
    out = outputs["tiny-random-grounded"]
    assert main(["inspect", str(out), "--out", str(tmp_path / "grid.png")]) == 0
    text = capsys.readouterr().out
    assert "espresso" in text and "text prompts: found their object in" in text
    assert main(["report", str(out), "--out", str(tmp_path / "report"), "--no-progress", "--workers", "1"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    g = report["grounded"]
    assert g["found"] + g["not_found"] == 7
    by_synset = {c["synset"]: c for c in report["image_classes"]}
    assert by_synset["n07920052"]["name"] == "espresso" and 0 <= by_synset["n07920052"]["found_share"] <= 1
    assert sum(c["found_share"] * c["images"] for c in report["image_classes"]) == pytest.approx(g["found"])
    assert "prompt found" in (tmp_path / "report" / "report.html").read_text()


def ade20k_copy(src, dst):
    """An output of the same plan in ADE20K-150's panoptic classes, as a panoptic preset writes it:
    A's instances moved 9 px right as "person" (12) instances, on "wall" (0) and "sky" (2)."""
    from labeler.label_spaces import ADE20K_150_PANOPTIC
    from shards.manifest import LabelSpace

    names = {str(i): name for i, _, _, name in ADE20K_150_PANOPTIC}
    things = {str(i): name for i, thing, _, name in ADE20K_150_PANOPTIC if thing}

    def to_ade(sem, inst):
        _, moved = shift(sem, inst)
        return np.where(moved > 0, 12, np.where(sem == BACKGROUND, 0, 2)).astype(np.uint8), moved

    return rewrite(src, dst, to_ade, LabelSpace(names, things))


def test_compare_grounded_with_a_panoptic_output_on_the_image_class(outputs, tmp_path, capsys):
    a = outputs["tiny-random-grounded"]
    b = ade20k_copy(a, tmp_path / "panoptic")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c"), "--no-progress", "--workers", "1"]) == 0
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    ic = result["image_class"]
    assert ic["grounded"] == "a" and ic["by_class"]
    # The same numbers, computed the obvious way from the two outputs' maps.
    pan = {k: (sem, inst) for k, _, sem, inst in samples(b)}
    ious, inside = [], []
    for key, meta, sem, _ in samples(a):
        c = sem == imagenet_index()[meta["class"]["synset"]]
        if not c.any():
            continue
        psem, pinst = pan[key]
        best = np.bincount(psem[c]).argmax()
        ious.append((c & (psem == best)).sum() / (c | (psem == best)).sum())
        inside.append((pinst[c] > 0).mean())
    assert ic["class_iou"]["defined"] == len(ious) > 0
    assert ic["class_iou"]["mean"] == pytest.approx(np.mean(ious)) and ic["class_in_instances"][
        "mean"
    ] == pytest.approx(np.mean(inside))
    assert "image class (A grounded)" in capsys.readouterr().out


def test_the_trainer_reads_the_grounded_label_space(outputs, tmp_path):
    from c2fmae.data import read_spec

    out = outputs["tiny-random-sam3"]
    spec = read_spec(str(out / "c2f-000000.tar"))
    assert (spec.num_classes, spec.ignore_index) == (PROMPT_FIRST, 65535)
    args = [str(out), "--output", str(tmp_path / "train"), "--steps", "2", "--batch-size", "4", "--no-augment"]
    micro = ["--model", "c2fmae_vit_micro", "--workers", "0", "--vis-every", "0", "--log-every", "1000"]
    assert main(["pretrain", *args, *micro]) == 0
    assert len((tmp_path / "train" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_flat_folder_is_labeled_from_a_prompts_file(sample_tree, tmp_path):
    """No classes: each image's prompt comes from --prompts (by key, else '*'), and its objects get
    the prompt's own class. The shard task runs here with a labeler built in this process."""
    from labeler.config import GroundedConfig, LabelerConfig, Settings
    from labeler.presets_grounded import check_job
    from labeler.prompts import PromptsError
    from labeler.registry import build_labeler
    from pipelines.plan import make_plan
    from pipelines.worker import ShardJob, process_shard

    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(sample_tree.glob("*/*.JPEG"))[:3]:
        shutil.copy(p, flat / p.name)
    plan = make_plan(flat, 10)
    assert not plan.imagenet
    keys = [it.key for it in plan.items]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({keys[0]: "a slide. tissue.", "*": "a photo"}))
    settings = Settings(LabelerConfig("tiny-random-sam3", device="cpu"), grounded=GroundedConfig(str(prompts)))
    with pytest.raises(PromptsError, match="no class folders"):
        check_job(Settings(LabelerConfig("tiny-random-sam3")), has_classes=False)
    check_job(settings, has_classes=False)
    labeler = build_labeler(settings)
    names = labeler.label_space().semantic
    assert (names["1051"], names["1052"]) == ("a photo", "a slide. tissue")
    out = tmp_path / "out"
    out.mkdir()
    stats = process_shard(ShardJob(0, plan.shard_name(0), plan.shard_items(0), str(flat), str(out)), labeler)
    assert stats.samples == 3 and not stats.quarantined
    assert stats.grounded.found + stats.grounded.not_found == 3
    for key, s in read_samples(str(out / stats.shard)):
        meta, sem = json.loads(s[fmt.META]), decode_png(s[fmt.SEM])
        want = ("a slide", PROMPT_FIRST + 1) if key == keys[0] else ("a photo", PROMPT_FIRST)
        assert meta["prompt"] == want[0]  # sam3 reads the first phrase
        assert set(np.unique(sem)) <= {BACKGROUND, want[1]}
