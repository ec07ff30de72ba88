"""The manifest's contracts: the labeler's description and label space as typed values that
round-trip through JSON (keeping what a newer version wrote), and the one reader of manifest.json."""

import json

import pytest

from labeler.registry import build_labeler
from shards.errors import UsageError
from shards.manifest import (
    LabelerInfo,
    LabelSpace,
    ManifestError,
    ManifestMissing,
    ModelInfo,
    read_manifest,
)


@pytest.mark.parametrize("preset", ["empty", "fixed-cost", "classical"])
def test_every_description_round_trips_through_json(preset):
    labeler = build_labeler(preset)
    info, space = labeler.describe(), labeler.label_space()
    assert isinstance(info, LabelerInfo) and isinstance(space, LabelSpace)
    assert LabelerInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert LabelSpace.from_json(json.loads(json.dumps(space.to_json()))) == space


def test_unset_fields_are_absent_so_the_files_keep_their_shape():
    assert LabelerInfo("empty", empty_labels=True).to_json() == {"preset": "empty", "models": [], "empty_labels": True}
    assert LabelSpace({"0": "sky"}).to_json() == {"semantic": {"0": "sky"}, "instance": "class-agnostic"}
    model = ModelInfo("panoptic", "facebook/m2f", "mask2former", things="--thing-ids")
    assert model.to_json() == {"role": "panoptic", "id": "facebook/m2f", "type": "mask2former", "things": "--thing-ids"}


def test_keys_of_a_newer_version_are_kept_and_written_back():
    newer = {
        "preset": "grounded",
        "models": [{"role": "semantic", "id": "x/y", "type": "clip", "revision": "abc"}],
        "random_labels": True,
        "prompts_version": 2,
    }
    info = LabelerInfo.from_json(newer)
    assert info.random_labels and info.models[0].type == "clip"
    assert info.extra == {"prompts_version": 2} and info.models[0].extra == {"revision": "abc"}
    assert info.to_json() == newer
    space = {"semantic": {"0": "tench", "1": "sky"}, "instance": {"0": "tench"}, "captions": {"0": ["a tench"]}}
    assert LabelSpace.from_json(space).to_json() == space
    assert LabelSpace.from_json(space).thing_ids == frozenset({0})


@pytest.mark.parametrize(
    "space, why",
    [
        ({"semantic": {"0": "sky"}, "instance": 5}, "LabelSpace.instance: expected dict or str, got int"),
        ({"semantic": {"0": 3}}, "LabelSpace.semantic.0: expected str"),
        ({"semantic": {"zero": "sky"}}, "LabelSpace.semantic: 'zero' is not a class id"),
        ({"instance": "class-agnostic"}, "LabelSpace: missing 'semantic'"),
    ],
)
def test_a_label_space_of_the_wrong_shape_is_refused_naming_the_field(space, why):
    with pytest.raises(ValueError, match=why):
        LabelSpace.from_json(space)


def test_label_space_answers_what_readers_ask():
    space = LabelSpace({"1": "car", "0": "road", "2": "sky"}, {"1": "car"})
    assert space.semantic_names == {0: "road", 1: "car", 2: "sky"}
    assert (space.num_classes, space.ignore, space.thing_ids) == (3, 255, frozenset({1}))
    assert LabelSpace({"0": "road"}).thing_ids is None


def test_the_manifest_reads_back_as_written(synthetic_ds):
    text = (synthetic_ds / "manifest.json").read_text()
    m = read_manifest(synthetic_ds)
    assert m.label_space.num_classes == 6 and m.labeler.preset == "synthetic"
    assert m.to_json() == json.loads(text)
    assert read_manifest(f"file://{synthetic_ds}") == m


def test_the_manifest_behind_a_url(synthetic_ds):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/manifest-ds/manifest.json", (synthetic_ds / "manifest.json").read_bytes())
    try:
        assert read_manifest("memory://manifest-ds") == read_manifest(synthetic_ds)
        with pytest.raises(ManifestMissing):
            read_manifest("memory://no-such-output")
    finally:
        fs.rm("/manifest-ds", recursive=True)


def test_a_broken_manifest_is_a_usage_error_naming_the_file_and_field(synthetic_ds, tmp_path):
    with pytest.raises(ManifestMissing, match="no manifest.json in"):
        read_manifest(tmp_path)
    path = synthetic_ds / "manifest.json"
    m = json.loads(path.read_text())
    del m["plan"]["classes"]
    path.write_text(json.dumps(m))
    with pytest.raises(ManifestError) as e:
        read_manifest(synthetic_ds)
    assert isinstance(e.value, UsageError) and e.value.exit_code == 2
    assert str(path) in str(e.value) and "Manifest.plan: missing 'classes'" in str(e.value)
    path.write_text('{"label_space": ' * 20_000)
    with pytest.raises(ManifestError, match="nests too deeply"):
        read_manifest(synthetic_ds)


def test_the_trainer_reads_the_manifest_the_same_way(synthetic_ds):
    from c2fmae.data import read_spec

    spec = read_spec(str(synthetic_ds / "syn-{000000..000002}.tar"))
    m = read_manifest(synthetic_ds)
    assert (spec.num_classes, spec.ignore_index, spec.num_samples) == (6, 255, m.totals.samples)
    raw = json.loads((synthetic_ds / "manifest.json").read_text())
    del raw["plan"]
    (synthetic_ds / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="Manifest: missing 'plan'"):
        read_spec(str(synthetic_ds))
    (synthetic_ds / "manifest.json").unlink()
    with pytest.raises(ManifestMissing, match="pretraining needs the label spaces"):
        read_spec(str(synthetic_ds / "syn-000000.tar"))
