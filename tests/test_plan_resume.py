"""Resuming after inputs changed (issue class 6), through the real job on a local Ray: an input
edited in place redoes its shard and is named; an input added or removed makes another plan,
refused with the inputs named."""

import json
import tarfile

import hostile

from c2f.cli import main
from pipelines.plan import make_plan


def label(args, capsys):
    code = main(["label", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_edited_input_redoes_its_shard_and_a_new_input_is_named(tmp_path, capsys):
    root = tmp_path / "in"
    for c in ("n01440764", "n01443537"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{c}_{i}.JPEG").write_bytes(hostile.jpeg(seed=i))
    out = tmp_path / "out"
    args = [str(root), str(out), "--samples-per-shard", "4", "--preset", "empty"]
    code, text, _ = label(args, capsys)
    assert code == 0 and "0 already done, 2 to do" in text
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}

    plan = make_plan(root, 4)
    (hit,) = [i for i in range(plan.num_shards) if "n01443537_2" in {it.key for it in plan.shard_items(i)}]
    hit_name, other_name = plan.shard_name(hit), plan.shard_name(1 - hit)
    edited = root / "n01443537" / "n01443537_2.JPEG"
    old_size = edited.stat().st_size
    edited.write_bytes(hostile.jpeg(seed=77, quality=40))
    code, text, _ = label(args, capsys)
    assert code == 0 and "OK:" in text
    assert (
        f"changed since {hit_name} was made, so it is redone: "
        f"n01443537/n01443537_2.JPEG (size {old_size} -> {edited.stat().st_size} bytes)" in text
    )
    assert "1 already done, 1 to do" in text
    assert (out / other_name).read_bytes() == before[other_name]  # untouched
    with tarfile.open(out / hit_name) as tf:
        assert tf.extractfile("n01443537_2.jpg").read() == edited.read_bytes()
    stats = json.loads((out / f"{hit_name}.stats.json").read_text())
    assert stats["inputs"]["n01443537_2"] == [edited.stat().st_size, edited.stat().st_mtime_ns]

    code, text, _ = label(args, capsys)  # nothing changed since: nothing to do
    assert code == 0 and "2 already done, 0 to do" in text and "changed since" not in text

    (root / "n01440764" / "n01440764_9.JPEG").write_bytes(hostile.jpeg(seed=9))
    code, _, err = label(args, capsys)
    assert code == 2
    assert "differs in: listing_sha256; 1 input(s) added: n01440764/n01440764_9.JPEG)" in err
    assert "Traceback" not in err


def test_settings_written_before_a_setting_existed_resume_and_other_settings_are_refused(tmp_path):
    """A settings file from an older version lacks groups and settings added since: they count as their
    defaults (what the older version did), so its output resumes; a setting that differs is refused."""
    import pytest

    from labeler.config import Settings
    from pipelines.plan import PlanError, check_or_write_settings
    from shards import format as fmt
    from shards.store import Store

    out = Store(tmp_path)
    now, defaults = Settings().to_json(), Settings().to_json()
    old = json.loads(json.dumps(now))
    missing_group = sorted(old)[-1]
    del old[missing_group]
    del old["labeler"][sorted(old["labeler"])[0]]
    out.write_json(fmt.LABELER_SETTINGS, old)
    check_or_write_settings(out, now, overwrite=False, defaults=defaults)  # resumes
    assert out.read_json(fmt.LABELER_SETTINGS) == old  # and keeps the file as it was

    other = json.loads(json.dumps(now))
    other["labeler"]["device"] = "cuda:7"
    with pytest.raises(PlanError, match="labeler.device"):
        check_or_write_settings(out, other, overwrite=False, defaults=defaults)
