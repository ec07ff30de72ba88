"""Planning an untrusted tree (issue classes 4-6): regular files only, symlinks followed but never
in a loop, hidden entries ignored, the ImageNet layout decided by majority, non-UTF-8 names kept,
and a plan that changed named, input by input."""

import os

import hostile
import pytest

from pipelines.plan import PlanError, changed_inputs, check_or_write_plan, make_plan
from pipelines.worker import read_input
from shards.manifest import ShardStats, load_json, read_plan_inputs
from shards.store import Store


def tree(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def imagenet(root, classes=("n01440764", "n01443537"), per_class=3):
    return tree(root, {f"{c}/{c}_{i}.JPEG": hostile.jpeg(seed=i) for c in classes for i in range(per_class)})


def skipped(plan):
    return {s.source: s.reason for s in plan.skipped}


# --- class 4: only regular files are planned ------------------------------------------------------


def test_fifos_devices_and_broken_links_are_refused_with_a_reason(tmp_path):
    root = imagenet(tmp_path / "in")
    os.mkfifo(root / "n01440764" / "n01440764_fifo.JPEG")
    (root / "n01440764" / "n01440764_zero.JPEG").symlink_to("/dev/zero")
    (root / "n01443537" / "n01443537_dangling.JPEG").symlink_to(root / "nowhere.JPEG")
    os.mkfifo(root / "n01443537" / "notes.fifo")  # no image suffix: never looked at
    plan = make_plan(root, 4)
    assert len(plan.items) == 6 and plan.imagenet
    assert skipped(plan) == {
        "n01440764/n01440764_fifo.JPEG": "not a regular file (FIFO)",
        "n01440764/n01440764_zero.JPEG": "not a regular file (character device)",
        "n01443537/n01443537_dangling.JPEG": "broken symlink",
    }
    assert plan.ignored == {"files without an image suffix": 1}
    q = {r.source: r for r in plan.unplanned()}
    assert q["n01440764/n01440764_fifo.JPEG"].stage == "plan" and q["n01440764/n01440764_fifo.JPEG"].shard == ""
    assert plan.header().skipped == 3


# --- class 5: layout, symlinks, hidden entries, names ------------------------------------------------


def test_one_stray_file_a_jpeg_named_folder_and_notebooks_do_not_switch_the_layout(tmp_path):
    root = imagenet(tmp_path / "in")
    tree(
        root,
        {
            "stray.jpg": hostile.jpeg(),  # at the root
            "n01440764/extra.JPEG/inner.JPEG": hostile.jpeg(),  # a folder whose name ends in .JPEG
            ".ipynb_checkpoints/n01440764_1-checkpoint.JPEG": hostile.jpeg(),
            "n01443537/.DS_Store": b"\0",
            "n01443537/._n01443537_0.JPEG": b"\0",  # macOS resource fork
        },
    )
    plan = make_plan(root, 4)
    assert plan.imagenet and plan.classes == ["n01440764", "n01443537"]
    assert all(it.class_index is not None for it in plan.items) and len(plan.items) == 6
    why = "outside the ImageNet layout <wnid>/<file> that 6 of 8 inputs follow"
    assert skipped(plan) == {"n01440764/extra.JPEG/inner.JPEG": why, "stray.jpg": why}
    assert plan.ignored == {"hidden entries": 3}
    assert any("2 outside the ImageNet layout" in line for line in plan.summary())


def test_a_plain_folder_collection_stays_plain(tmp_path):
    root = tree(tmp_path / "in", {"cats/a.jpg": hostile.jpeg(), "dogs/b.png": hostile.jpeg(), "n01440764/c.jpg": b""})
    plan = make_plan(root, 4)
    assert not plan.imagenet and plan.classes == [] and not plan.skipped
    assert [it.key for it in plan.items] == ["cats__a", "dogs__b", "n01440764__c"]


def test_symlinked_class_folder_is_followed_and_loops_are_refused(tmp_path):
    elsewhere = imagenet(tmp_path / "elsewhere", classes=("n09999999",))
    root = imagenet(tmp_path / "in")
    (root / "n09999999").symlink_to(elsewhere / "n09999999")
    (root / "n01440764" / "loop").symlink_to(root)  # back to the root
    (root / "n01443537" / "self").symlink_to(root / "n01443537")  # back to its own folder
    (root / "n01443537" / "again").symlink_to(root / "n01440764")  # a folder reached twice
    plan = make_plan(root, 4)
    assert plan.classes == ["n01440764", "n01443537", "n09999999"] and len(plan.items) == 9
    assert {it.source for it in plan.items if it.synset == "n09999999"} == {
        f"n09999999/n09999999_{i}.JPEG" for i in range(3)
    }
    assert skipped(plan) == {
        "n01440764/loop": "symlink loop: leads back to 'the input root'",
        "n01443537/self": "symlink loop: leads back to 'n01443537'",
    }
    assert plan.ignored == {"folders reached twice through symlinks (listed once)": 1}


def test_file_names_that_are_not_utf8_are_kept_and_read(tmp_path):
    root = imagenet(tmp_path / "in")
    raw = os.fsencode(root / "n01440764") + b"/n01440764_caf\xe9.JPEG"  # Latin-1 on a UTF-8 system
    with open(raw, "wb") as f:
        f.write(hostile.jpeg(seed=9))
    plan = make_plan(root, 4)
    (item,) = [it for it in plan.items if it.key == "n01440764_caf_"]
    assert item.source == "n01440764/n01440764_caf\udce9.JPEG" and item.class_index == 0
    assert os.fsencode(item.source) == b"n01440764/n01440764_caf\xe9.JPEG"  # PEP 383: the bytes come back
    assert read_input(plan.root, item.source)[0] == hostile.jpeg(seed=9)
    assert len(plan.listing_sha256) == 64


def test_two_inputs_with_one_key_are_named(tmp_path):
    root = tree(tmp_path / "in", {"a b.jpg": b"", "a_b.jpg": b""})
    with pytest.raises(PlanError, match="same sample key 'a_b': a b.jpg and a_b.jpg"):
        make_plan(root, 4)


# --- class 6: inputs edited in place; plans that changed ------------------------------------------------


def stats_as_read(plan, i):
    """The stats a shard task writes: each input's stamp as read."""
    return ShardStats(
        i,
        plan.shard_name(i),
        len(plan.shard_items(i)),
        0,
        0,
        "",
        inputs={it.key: read_input(plan.root, it.source)[1] for it in plan.shard_items(i)},
    )


def test_inputs_edited_in_place_are_named_and_their_shard_redone(tmp_path):
    root = imagenet(tmp_path / "in")
    plan = make_plan(root, 4)
    done = {i: stats_as_read(plan, i) for i in range(plan.num_shards)}
    assert changed_inputs(make_plan(root, 4), done) == {}
    (root / "n01443537" / "n01443537_2.JPEG").write_bytes(hostile.jpeg(seed=42, quality=50))  # other size
    p = root / "n01440764" / "n01440764_1.JPEG"
    data = p.read_bytes()
    p.write_bytes(data[::-1][::-1])  # same bytes, new mtime
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    shard_of = {it.key: i for i in range(plan.num_shards) for it in plan.shard_items(i)}
    a, b = shard_of["n01440764_1"], shard_of["n01443537_2"]
    before, now = done[b].inputs["n01443537_2"][0], (root / "n01443537/n01443537_2.JPEG").stat().st_size
    want: dict[int, list[str]] = {}
    want.setdefault(a, []).append("n01440764/n01440764_1.JPEG (modified)")
    want.setdefault(b, []).append(f"n01443537/n01443537_2.JPEG (size {before} -> {now} bytes)")
    changed = changed_inputs(make_plan(root, 4), done)
    assert {i: sorted(v) for i, v in changed.items()} == {i: sorted(v) for i, v in want.items()}
    old = ShardStats(0, "x", 4, 4, 1, "")  # stats from before inputs were recorded: trusted
    assert changed_inputs(make_plan(root, 4), {0: old}) == {}


def test_another_plan_in_the_output_names_what_was_added_and_removed(tmp_path):
    root = imagenet(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    plan = make_plan(root, 4)
    check_or_write_plan(Store(out), plan, overwrite=False)
    rows = read_plan_inputs((out / "plan.inputs.jsonl").read_bytes())
    in_shard_order = [it for i in range(plan.num_shards) for it in plan.shard_items(i)]
    assert [r.source for r in rows] == [it.source for it in in_shard_order]  # shard i = lines i*n ..
    assert rows[0].size == in_shard_order[0].size and rows[0].class_index == in_shard_order[0].class_index
    assert load_json((out / "plan.json").read_bytes())["listing_sha256"] == plan.listing_sha256
    (root / "n01440764" / "n01440764_7.JPEG").write_bytes(hostile.jpeg())
    (root / "n01443537" / "n01443537_0.JPEG").unlink()
    with pytest.raises(PlanError) as e:
        check_or_write_plan(Store(out), make_plan(root, 4), overwrite=False)
    assert (
        "(differs in: listing_sha256; 1 input(s) added: n01440764/n01440764_7.JPEG; "
        "1 input(s) removed: n01443537/n01443537_0.JPEG)" in str(e.value)
    )
    (out / "plan.json").write_bytes(b'{"listing_sha256": ' * 5000)
    with pytest.raises(PlanError, match="plan.json is unreadable"):
        check_or_write_plan(Store(out), make_plan(root, 4), overwrite=False)
