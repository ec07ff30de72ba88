"""The plan held as columns and streamed from plan.inputs.jsonl: the same plan as the list of
`Item`s it replaced (order, shard contents, hash, file bytes), a plan written by that code is
accepted and read back shard by shard, inputs edited since the plan keep their new stamps, a
damaged listing file is written again, and the driver's memory stays within a per-input budget."""

import hashlib
import json
import os
import re
import tracemalloc

import numpy as np
import pytest

from pipelines.listing import Files, Listing
from pipelines.plan import PlanError, check_or_write_plan, make_plan, plan_from_listing
from shards import format as fmt
from shards.manifest import (
    DoneShards,
    LabelerInfo,
    LabelSpace,
    Quarantined,
    ShardStats,
    iter_done,
    plan_input_line,
    read_plan_inputs,
    write_dataset_files,
    write_stats,
)
from shards.store import Store


def reference_plan(rows, n, seed=0):
    """The planner as it was before the columns (a list of items sorted by key, cut in the seeded
    order): (shards as lists of (key, source, class, size, mtime), listing hash)."""
    fits = [r.count("/") == 1 and re.fullmatch(r"n\d{8}", r.split("/")[0]) is not None for r, _, _ in rows]
    imagenet = 2 * sum(fits) > len(rows)
    kept = [row for row, ok in zip(rows, fits, strict=True) if ok or not imagenet]
    classes = sorted({r.split("/", 1)[0] for r, _, _ in kept}) if imagenet else []
    items = sorted(
        (
            (fmt.sample_key(r, imagenet), r, classes.index(r.split("/", 1)[0]) if imagenet else None, size, mtime)
            for r, size, mtime in kept
        ),
        key=lambda it: it[0],
    )
    order = sorted(
        range(len(items)),
        key=lambda i: hashlib.blake2b(f"{seed}:{items[i][0]}".encode(), digest_size=8).digest(),
    )
    shards = [[items[i] for i in sorted(order[k : k + n])] for k in range(0, len(items), n)]
    h = hashlib.sha256()
    for key, source, ci, _, _ in items:
        h.update(f"{key}\t{source}\t{ci}\n".encode("utf-8", "surrogateescape"))
    return shards, h.hexdigest()


def listing_rows(count, seed=0):
    """ImageNet-style names with keys of every length, some sharing their first 40 bytes."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        wnid = f"n{1440764 + 7 * int(rng.integers(0, 13)):08d}"
        stem = f"{wnid}_{i}" if i % 5 else f"{wnid}_{'x' * 40}_{i}"  # long keys tie on 32+ bytes
        if i % 97 == 0:
            stem += "_caf\udce9"  # a name that is not UTF-8 (PEP 383)
        rows.append((f"{wnid}/{stem}.JPEG", int(rng.integers(1, 10**6)), int(rng.integers(0, 2**62))))
    return rows


@pytest.mark.parametrize("n", [1, 7, 64])
def test_the_plan_is_the_one_the_item_lists_made(n):
    rows = listing_rows(600)
    plan = plan_from_listing(Listing("/data", rows), n, "c2f")
    shards, sha = reference_plan(rows, n)
    assert plan.num_shards == len(shards) and plan.listing_sha256 == sha
    for i, want in enumerate(shards):
        got = plan.shard_items(i)
        assert [(it.key, it.source, it.class_index, it.size, it.mtime_ns) for it in got] == want
        assert all(it.synset == it.source.split("/")[0] for it in got)
    assert [it.key for it in plan.items] == sorted(it[0] for s in shards for it in s)


def test_a_plan_written_before_the_columns_is_read_back_shard_by_shard(tmp_path):
    rows = listing_rows(300)
    root = tmp_path / "in"
    for rel, _, _ in rows:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (len(rel) % 7))
    plan = make_plan(root, 16)
    listed = {it.source: (it.size, it.mtime_ns) for it in plan.items}
    stamped = [(r, *listed[r]) for r, _, _ in rows]
    shards, sha = reference_plan(stamped, 16)
    out = tmp_path / "out"
    out.mkdir()
    # What the earlier code wrote: plan.json and the inputs as `json.dumps` lines, in shard order.
    old_lines = b"".join((json.dumps(list(it)) + "\n").encode() for s in shards for it in s)
    (out / fmt.PLAN_INPUTS).write_bytes(old_lines)
    (out / fmt.PLAN).write_text(json.dumps(plan.header().to_json()))
    assert plan.listing_sha256 == sha

    again = make_plan(root, 16)
    assert check_or_write_plan(Store(out), again, overwrite=False) is None  # accepted, not rewritten
    assert (out / fmt.PLAN_INPUTS).read_bytes() == old_lines
    again.drop_inputs()
    with pytest.raises(RuntimeError, match="dropped"):
        len(list(again.items))
    for i, want in enumerate(shards):
        assert [(it.key, it.source, it.class_index, it.size, it.mtime_ns) for it in again.shard_items(i)] == want

    # A new plan's file is the same bytes the earlier code wrote.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    check_or_write_plan(Store(fresh), make_plan(root, 16), overwrite=False)
    assert (fresh / fmt.PLAN_INPUTS).read_bytes() == old_lines


def test_inputs_edited_since_the_plan_reach_their_shard_task_as_listed_now(tmp_path):
    root = tmp_path / "in"
    for c in ("n01440764", "n01443537"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            (root / c / f"{c}_{i}.JPEG").write_bytes(b"abc")
    out = Store(tmp_path / "out")
    out.makedirs()
    check_or_write_plan(out, make_plan(root, 3), overwrite=False)
    before = (tmp_path / "out" / fmt.PLAN_INPUTS).read_bytes()
    edited = root / "n01443537" / "n01443537_3.JPEG"
    edited.write_bytes(b"a longer file")
    os.utime(edited, ns=(1, 123456789))
    plan = make_plan(root, 3)
    assert check_or_write_plan(out, plan, overwrite=False) is None
    assert (tmp_path / "out" / fmt.PLAN_INPUTS).read_bytes() == before  # sizes and times as listed then
    from_listing = [plan.shard_items(i) for i in range(plan.num_shards)]
    plan._file, kept = None, plan._file
    assert [plan.shard_items(i) for i in range(plan.num_shards)] == from_listing
    plan._file = kept
    plan.drop_inputs()
    streamed = [plan.shard_items(i) for i in range(plan.num_shards)]
    assert streamed == from_listing
    (item,) = [it for s in streamed for it in s if it.key == "n01443537_3"]
    assert (item.size, item.mtime_ns) == (13, 123456789)


def test_a_damaged_listing_file_is_written_again_from_the_listing(tmp_path):
    root = tmp_path / "in"
    (root / "n01440764").mkdir(parents=True)
    for i in range(7):
        (root / "n01440764" / f"n01440764_{i}.JPEG").write_bytes(b"abc")
    out = Store(tmp_path / "out")
    out.makedirs()
    check_or_write_plan(out, make_plan(root, 3), overwrite=False)
    path = tmp_path / "out" / fmt.PLAN_INPUTS
    good = path.read_bytes()
    lines = good.splitlines(keepends=True)
    for damaged in (b"".join([lines[1], lines[0], *lines[2:]]), b"".join(lines[:-1]), good + lines[0], b"[1,"):
        path.write_bytes(damaged)
        plan = make_plan(root, 3)
        note = check_or_write_plan(out, plan, overwrite=False)
        assert note and "did not hold this plan's inputs; written again" in note
        assert path.read_bytes() == good
    path.unlink()  # none at all: written, as with a plan made before the file existed
    assert check_or_write_plan(out, make_plan(root, 3), overwrite=False) is None and path.read_bytes() == good


def test_a_changed_listing_is_named_from_the_file(tmp_path):
    root = tmp_path / "in"
    (root / "n01440764").mkdir(parents=True)
    for i in range(9):
        (root / "n01440764" / f"n01440764_{i}.JPEG").write_bytes(b"abc")
    out = Store(tmp_path / "out")
    out.makedirs()
    check_or_write_plan(out, make_plan(root, 4), overwrite=False)
    for i in range(6):
        (root / "n01440764" / f"n01440764_{i}.JPEG").unlink()
    (root / "n01440764" / "n01440764_z.JPEG").write_bytes(b"abc")
    with pytest.raises(PlanError) as e:
        check_or_write_plan(out, make_plan(root, 4), overwrite=False)
    assert (
        "1 input(s) added: n01440764/n01440764_z.JPEG; 6 input(s) removed: n01440764/n01440764_0.JPEG, "
        "n01440764/n01440764_1.JPEG, n01440764/n01440764_2.JPEG, n01440764/n01440764_3.JPEG, "
        "n01440764/n01440764_4.JPEG, … (1 more)" in str(e.value)
    )


def test_a_file_list_is_read_a_line_at_a_time_as_it_was_read_whole(tmp_path):
    from pipelines.listing import read_list

    root = tmp_path / "data"
    for rel in ("n01440764/a.JPEG", "n01440764/b.JPEG", "n01443537/c.JPEG"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"abc")
    lst = tmp_path / "lists" / "inputs.txt"
    lst.parent.mkdir()
    lines = ["# ImageNet-style list", "", f"  {root}/n01440764/a.JPEG  ", "../data/n01440764/b.JPEG"]
    lines += [f"{root}/n01443537/c.JPEG", f"{root}/n01443537/gone.JPEG"]
    lst.write_bytes("\r\n".join(lines).encode())
    got = read_list(lst)
    assert got.root == str(root)
    assert [rel for rel, _, _ in got.files] == ["n01440764/a.JPEG", "n01440764/b.JPEG", "n01443537/c.JPEG"]
    assert [(s.source, s.reason) for s in got.skipped] == [
        ("n01443537/gone.JPEG", "listed but cannot stat: No such file or directory")
    ]
    lst.write_text("# nothing\n\n")
    assert len(read_list(lst).files) == 0 and read_list(lst).root == str(lst.parent)


def test_plan_lines_are_json_dumps_byte_for_byte():
    for key in ("n01440764_1", "a__b-c"):
        for source in ("n/x.JPEG", 'q"uote.jpg', "back\\slash.jpg", "tab\t.jpg", "caf\udce9.jpg", "é.jpg", "\x7f.jpg"):
            for ci in (None, 0, 999):
                row = [key, source, ci, 110_000, -1]
                assert plan_input_line(*row) == (json.dumps(row) + "\n").encode()


def test_dataset_files_from_streamed_stats_are_those_from_a_list(tmp_path):
    a, b = tmp_path / "list", tmp_path / "stream"
    stats = []
    for i in range(5):
        q = [Quarantined(fmt.shard_name("c2f", i), f"k{i}_{j}", f"s{i}/{j}.jpg", "decode", "bad") for j in range(i)]
        stats.append(ShardStats(i, fmt.shard_name("c2f", i), 4, 0, 0, "", quarantined=q, inputs={"k": [1, 2]}))
    for out in (a, b):
        out.mkdir()
        for s in stats:
            write_stats(out, s)
    header = plan_from_listing(Listing("/d", [(f"x/{i}.jpg", 1, 1) for i in range(20)]), 4, "c2f").header()
    unplanned = [Quarantined("", "odd", "odd.jpg", "plan", "FIFO")]
    space, info = LabelSpace({"0": "thing"}), LabelerInfo("test")
    want = write_dataset_files(a, space, info, header, list(reversed(stats)), None, unplanned)
    done = DoneShards()
    got = write_dataset_files(b, space, info, header, done.track(iter_done(b)), None, unplanned)
    assert got == want and len(done) == 5 and done.missing(7) == [5, 6] and 3 in done and 5 not in done
    for name in (fmt.QUARANTINE, fmt.MANIFEST, fmt.wids_index_name("c2f")):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert len((b / fmt.QUARANTINE).read_text().splitlines()) == 1 + 0 + 1 + 2 + 3 + 4


# --- the driver's memory ---------------------------------------------------------------------------

N = 200_000
PLANNING_BYTES_PER_INPUT = 200  # peak while listing and planning (measured 163; the list of Items: 625)
HELD_BYTES_PER_INPUT = 1  # kept while labeling: an offset per shard, nothing per input (the Items: 303)


def test_the_driver_holds_bytes_per_input_while_planning_and_nothing_per_input_while_labeling(tmp_path):
    """Traced with tracemalloc (Python objects and numpy buffers alike) at 200k inputs: listing and
    planning stay under a per-input budget at their peak; once the plan is bound to its
    plan.inputs.jsonl and its columns dropped, dispatching shards (their inputs read from the file)
    and counting done shards leave nothing behind per input."""
    names = [f"n{1440764 + 7 * (i % 1000):08d}/n{1440764 + 7 * (i % 1000):08d}_{i}.JPEG" for i in range(N)]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        files = Files()
        for name in names:
            files.append((name, 110_000, 1_600_000_000_000_000_000))
        plan = plan_from_listing(Listing("/data/train", files), 1000, "c2f")
        del files
        _ = plan._order, plan.listing_sha256  # the seeded order and the hash: the rest of planning
        planning = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    check_or_write_plan(Store(tmp_path), plan, overwrite=False)  # writes a line per input (not traced: slow)
    plan.drop_inputs()
    DoneShards([0]).missing(2), plan.shard_items(0)  # once untraced: first calls import and cache modules
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        done = DoneShards()
        for i in range(0, plan.num_shards, 10):  # what the driver does per shard while labeling
            items = plan.shard_items(i)
            done.add(i)
        del items
        todo = done.missing(plan.num_shards)
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    print(f"planning peak {planning / N:.0f} B/input, kept while labeling {kept} B")
    assert planning / N < PLANNING_BYTES_PER_INPUT
    assert plan._inputs is None and not plan._restamped and len(plan._file.starts) == plan.num_shards + 1
    assert kept / N < HELD_BYTES_PER_INPUT and len(todo) == 180
    shard = plan.shard_items(plan.num_shards - 1)
    rows = read_plan_inputs((tmp_path / fmt.PLAN_INPUTS).read_bytes())
    assert [r.key for r in rows[-1000:]] == [it.key for it in shard]
