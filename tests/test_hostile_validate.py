"""Shards and dataset files that someone else wrote (issue classes 7-9): `c2f validate` is total
(every malformed input is a finding row, never a traceback), complete (it holds the directory to
its plan) and bounded; the reader and `c2f inspect` read through the same bounded path."""

import json
import shutil
import tracemalloc

import hostile
import numpy as np
import pytest
from test_validate import KEY0, SHARD0, findings, read_members, refresh_manifest, replace, run_validate, tamper

from c2f.cli import main
from shards.manifest import write_plan_inputs
from shards.pack import decode_png
from shards.reader import make_dataset
from shards.tar import read_samples


@pytest.fixture
def planned_ds(synthetic_ds):
    """The synthetic dataset with the plan files `c2f label` writes: plan.json and its inputs."""
    m = json.loads((synthetic_ds / "manifest.json").read_text())
    (synthetic_ds / "plan.json").write_text(json.dumps(m["plan"]))
    rows = []
    for shard in sorted(synthetic_ds.glob("*.tar")):
        for key, s in read_samples(str(shard)):
            rows.append((key, f"synthetic/{key}", int(s["cls"]), 1000, 0))
    write_plan_inputs(synthetic_ds, rows)
    return synthetic_ds


def codes(report):
    return sorted({f["code"] for f in report["findings"]})


# --- class 7: OK only when it is ---------------------------------------------------------------------


def test_planned_dataset_is_ok(planned_ds, capsys):
    code, report = run_validate(capsys, planned_ds)
    assert code == 0 and report["ok"], report["findings"]


def test_empty_directory_is_exit_1_with_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a shard")
    assert main(["validate", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out.strip()
    assert out == f"FAILED: no shards in {tmp_path} (no PREFIX-NNNNNN.tar, no manifest.json)"
    code, report = run_validate(capsys, tmp_path)
    assert code == 1 and codes(report) == ["no-shards"]


def test_interrupted_output_is_incomplete_and_names_the_missing_shards(planned_ds, capsys):
    (planned_ds / "manifest.json").unlink()  # the job was killed before it wrote the manifest
    (planned_ds / "syn-000002.tar").unlink()
    (planned_ds / "syn-000002.tar.stats.json").unlink()
    assert main(["validate", str(planned_ds), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "incomplete" in text and "did not finish (2 of 3 planned shards present)" in text
    code, report = run_validate(capsys, planned_ds)
    assert code == 1 and codes(report) == ["incomplete", "missing-shard"]
    assert findings(report, "missing-shard")[0]["shard"] == "syn-000002.tar"


def test_a_manifest_that_lists_no_shards_fails(planned_ds, capsys):
    m = json.loads((planned_ds / "manifest.json").read_text())
    m["shards"] = []
    (planned_ds / "manifest.json").write_text(json.dumps(m))
    code, report = run_validate(capsys, planned_ds)
    assert code == 1 and "no-shards" in codes(report)


def test_a_removed_sample_is_named_by_key(planned_ds, capsys):
    tamper(planned_ds, SHARD0, lambda ms: [(n, d) for n, d in ms if not n.startswith(KEY0)])
    refresh_manifest(planned_ds, SHARD0, samples=3)  # even when the manifest was updated to match
    code, report = run_validate(capsys, planned_ds)
    (f,) = findings(report, "missing-sample")
    assert code == 1 and (f["shard"], f["key"]) == (SHARD0, KEY0)
    assert f["message"] == f"planned input synthetic/{KEY0} is in neither this shard nor quarantine"


def test_a_key_in_a_shard_and_in_quarantine_is_a_duplicate(planned_ds, capsys):
    q = {"shard": SHARD0, "key": KEY0, "source": "x", "stage": "decode", "reason": "r"}
    (planned_ds / "quarantine.jsonl").write_text(json.dumps(q) + "\n")
    code, report = run_validate(capsys, planned_ds)
    assert code == 1 and any(f["key"] == KEY0 for f in findings(report, "duplicate-key"))


def test_plan_inputs_edited_by_hand_are_read_as_before(planned_ds, capsys):
    """A listing as `c2f label` writes it is indexed and read a shard at a time; one with CRLF
    line ends or blank lines is read whole, as it always was, with the same result."""
    path = planned_ds / "plan.inputs.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    for edited in (b"".join(line.replace(b"\n", b"\r\n") for line in lines), b"\n".join(lines) + b"\n"):
        path.write_bytes(edited)
        code, report = run_validate(capsys, planned_ds)
        assert code == 0 and report["ok"], report["findings"]
    path.write_bytes(b"".join(lines[1:]))
    code, report = run_validate(capsys, planned_ds)
    (f,) = findings(report, "plan")
    assert code == 1 and f["message"] == f"{len(lines) - 1} inputs listed, the plan has {len(lines)}"
    path.write_bytes(b"".join(lines[:2]) + b'["k", 1]\n' + b"".join(lines[3:]))
    code, report = run_validate(capsys, planned_ds)
    (f,) = findings(report, "plan")
    assert (
        f["message"]
        == "unreadable plan.inputs.jsonl: plan.inputs.jsonl line 3: expected [key, source, class, size, mtime_ns]"
    )


def test_keys_across_shards_are_checked_alike_when_their_hashes_collide(monkeypatch):
    """The cross-shard check finds each key's first shard with 64-bit hashes; it reports exactly
    what a dictionary of every key reports, also when different keys share a hash."""
    from shards import validate as v

    rng = np.random.default_rng(0)
    reports, keys = [], []
    for i in range(40):
        ks = [f"k{int(x)}" for x in rng.integers(0, 300, size=int(rng.integers(0, 20)))]
        name = f"s-{i % 30:06d}.tar"  # some shards share a name (two directories checked at once)
        reports.append(v.ShardReport(name, findings=[v.Finding(name, None, "x", str(i))]))
        keys.append(ks if i % 7 else "\0".join(ks))
    quarantined = {f"k{i}": "s-000003.tar" for i in range(0, 300, 13)}
    want = v._across_shards_by_dict(reports, keys, quarantined)
    assert sum(f.code == "duplicate-key" for f in want) > 20
    assert v._across_shards(reports, keys, quarantined) == want
    monkeypatch.setattr(v, "_key_hash", lambda k: len(k))  # nearly every key shares its hash
    assert v._across_shards(reports, keys, quarantined) == want


def test_the_cross_shard_check_costs_bytes_per_key_not_a_dictionary():
    """200 shards of 1,000 keys (traced): the hashes cost under 60 bytes per key at their peak,
    where a dictionary of every key cost ~115 (and the keys themselves, kept as lists, ~80 more)."""
    from shards import validate as v

    reports = [v.ShardReport(f"c2f-{i:06d}.tar") for i in range(200)]
    keys = ["\0".join(f"n{1440764 + j % 1000:08d}_{i * 1000 + j}" for j in range(1000)) for i in range(200)]
    keys[7] += "\0n01440764_3000"  # one key in two shards
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        found = v._across_shards(reports, keys, {})
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert [(f.shard, f.key, f.message) for f in found] == [
        ("c2f-000007.tar", "n01440764_3000", "key also in c2f-000003.tar")
    ]
    assert peak / 200_000 < 60


# --- class 8: hostile metadata -------------------------------------------------------------------------


def sample_json(ds, key=KEY0):
    return json.loads(dict(read_members(ds / SHARD0))[f"{key}.json"])


@pytest.mark.parametrize(
    "payload, detail",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'{"key": "scene_00000000", "instances": [{"id": 1e999}]}', "non-finite number 1e999"),
        (b"NaN", "non-finite number NaN"),
        (b"\xff\xfe not utf-8", "does not parse"),
        (b"1" * 5000, "does not parse"),  # an integer of 5000 digits
    ],
    ids=["deep", "1e999", "nan", "bytes", "bigint"],
)
def test_malformed_json_is_a_finding(synthetic_ds, capsys, payload, detail):
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.json", payload))
    code, report = run_validate(capsys, synthetic_ds, "--workers", "2")  # in a worker process too
    (f,) = findings(report, "bad-json")
    assert code == 1 and f["key"] == KEY0 and detail in f["message"]


@pytest.mark.parametrize(
    "edit, detail",
    [
        (lambda m: m.update(instances={"id": 1}), ".json.instances: expected a list, got dict"),
        (lambda m: m.update({"class": "cat"}), ".json.class: expected an object, got str"),
        (lambda m: m.update(width="224"), ".json.width: expected an integer, got '224'"),
        (lambda m: m["instances"][0].update(bbox=[0, 0, True, 1]), "bbox[2]: expected an integer, got True"),
        (lambda m: m.pop("height"), "missing 'height'"),
    ],
    ids=["instances-dict", "class-str", "width-str", "bbox-bool", "no-height"],
)
def test_wrong_json_types_are_findings(synthetic_ds, capsys, edit, detail):
    meta = sample_json(synthetic_ds)
    edit(meta)
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.json", json.dumps(meta).encode()))
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "bad-json")
    assert code == 1 and detail in f["message"]


@pytest.mark.parametrize(
    "cls, detail",
    [
        (b"10", ".cls 10 outside the class list (0..9)"),
        (b"-1", "is not a class index"),
        (b"3e2", "is not a class index"),
    ],
)
def test_cls_outside_the_class_list(synthetic_ds, capsys, cls, detail):
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.cls", cls))
    code, report = run_validate(capsys, synthetic_ds)
    assert code == 1 and detail in findings(report, "bad-cls")[0]["message"]


def test_cls_that_disagrees_with_the_plan(planned_ds, capsys):
    meta = sample_json(planned_ds)
    other = (meta["class"]["index"] + 1) % 10
    meta["class"]["index"] = other
    new_cls, new_json = replace(f"{KEY0}.cls", str(other).encode()), replace(f"{KEY0}.json", json.dumps(meta).encode())
    tamper(planned_ds, SHARD0, lambda ms: new_json(new_cls(ms)))
    code, report = run_validate(capsys, planned_ds)
    assert code == 1 and findings(report, "bad-cls")[0]["message"].startswith(f".cls {other}, the plan gives class")


@pytest.mark.parametrize(
    "name, code_, detail",
    [
        (f"{KEY0}.__key__", "unexpected-member", ".__key__ is not a member of the format"),
        (f"{KEY0}.txt", "unexpected-member", ".txt is not a member of the format"),
        ("dir/scene_x.jpg", "bad-key", "key holds a '/'"),
        ("scene x.jpg", "bad-key", "characters outside [A-Za-z0-9_-]"),
        ("sc\xe8ne.jpg", "bad-key", "characters outside [A-Za-z0-9_-]"),
        ("../../evil.jpg", "unsafe-member-name", "path contains '..'"),
    ],
    ids=["__key__", "txt", "slash", "space", "latin1", "dotdot"],
)
def test_extra_members_and_keys_breaking_the_rules(synthetic_ds, capsys, name, code_, detail):
    tamper(synthetic_ds, SHARD0, lambda ms: ms[:5] + [(name, b"x")] + ms[5:])
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, code_)
    assert code == 1 and detail in f["message"]


def test_hostile_manifest_and_quarantine_are_findings(planned_ds, capsys):
    (planned_ds / "quarantine.jsonl").write_text('{"shard": 1e999}\n' + "[" * 8000 + "\n")
    code, report = run_validate(capsys, planned_ds)
    lines = [f["message"] for f in findings(report, "manifest")]
    assert code == 1 and len(lines) == 2 and "line 1" in lines[0] and "nests too deeply" in lines[1]
    (planned_ds / "manifest.json").write_text('{"label_space": ' * 20_000)
    code, report = run_validate(capsys, planned_ds)
    assert code == 1 and "unreadable manifest.json" in findings(report, "manifest")[0]["message"]


# --- class 9: bounded reads --------------------------------------------------------------------------


def test_sparse_members_claiming_gigabytes_cost_nothing(synthetic_ds, capsys, tmp_path):
    good = read_members(synthetic_ds / SHARD0)
    hostile.write_tar(
        synthetic_ds / SHARD0,
        good,
        raw_tail=hostile.gnu_sparse_header("scene_00000009.jpg", realsize=8 << 30),
        extra=[hostile.pax_sparse_member("scene_00000010.jpg", realsize=16 << 30)],
    )
    refresh_manifest(synthetic_ds, SHARD0)
    tracemalloc.start()
    code, report = run_validate(capsys, synthetic_ds)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    bad = findings(report, "bad-member")
    assert code == 1 and len(bad) == 2 and all("sparse member" in f["message"] for f in bad)
    assert sorted(f["key"] for f in bad) == ["scene_00000009", "scene_00000010"]
    assert peak < 64 << 20
    with pytest.raises(Exception, match="sparse member"):
        list(make_dataset(str(synthetic_ds / SHARD0), shuffle=0))  # the reader refuses, naming it


def test_mask_that_inflates_past_its_header_is_refused(synthetic_ds, capsys):
    bomb = hostile.mask_png_inflating(224, 160, 256 << 20)  # declares 35 KB, inflates to 256 MB
    assert len(bomb) < 300_000
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.sem.png", bomb))
    tracemalloc.start()
    code, report = run_validate(capsys, synthetic_ds)
    with pytest.raises(ValueError, match="inflates past the"):
        decode_png(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    (f,) = findings(report, "bad-png")
    assert code == 1 and f["key"] == KEY0 and "inflates past the 36000 bytes its IHDR declares" in f["message"]
    assert peak < 64 << 20
    with pytest.raises(Exception, match=rf"{SHARD0} key {KEY0}: ValueError: PNG data inflates past"):
        list(make_dataset(str(synthetic_ds), shuffle=0))


@pytest.mark.parametrize(
    "member, data, detail",
    [
        (f"{KEY0}.jpg", hostile.jpeg_declaring(8000, 8000), "JPEG declares 8000x8000 = 64.0 MP"),
        (f"{KEY0}.inst.png", hostile.png_declaring(60000, 60000, "I;16"), "PNG declares 60000x60000 = 3600.0 MP"),
    ],
    ids=["jpeg", "png"],
)
def test_images_declaring_huge_sizes_are_refused_before_decoding(synthetic_ds, capsys, tmp_path, member, data, detail):
    tamper(synthetic_ds, SHARD0, replace(member, data))
    code, report = run_validate(capsys, synthetic_ds)
    assert code == 1 and any(detail in f["message"] for f in report["findings"])
    with pytest.raises(Exception, match=rf"key {KEY0}: .*{detail}"):
        list(make_dataset(str(synthetic_ds), shuffle=0))
    assert main(["inspect", str(synthetic_ds), "--out", str(tmp_path / "g.png"), "--samples", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {SHARD0} {KEY0}: unreadable sample") and detail in err


def test_reader_refuses_unsafe_names_and_drops_foreign_members(synthetic_ds):
    members = read_members(synthetic_ds / SHARD0)
    hostile.write_tar(synthetic_ds / SHARD0, members + [(f"{KEY0}.__key__", b"someone_else")])
    keys = [s["__key__"] for s in make_dataset(str(synthetic_ds / SHARD0), shuffle=0)]
    assert keys[0] == KEY0 and len(keys) == 4  # `.__key__` did not rename the sample
    hostile.write_tar(synthetic_ds / SHARD0, [("../evil.jpg", b"x")] + members)
    with pytest.raises(Exception, match=rf"{SHARD0} key \?: unsafe-member-name: member '../evil.jpg'"):
        list(make_dataset(str(synthetic_ds / SHARD0), shuffle=0))
    import webdataset as wds

    got = list(make_dataset(str(synthetic_ds / SHARD0), shuffle=0, handler=wds.ignore_and_continue))
    assert len(got) == 4  # or skip it and go on


def test_inspect_reads_the_same_bounded_way(synthetic_ds, tmp_path, capsys):
    shutil.copy(synthetic_ds / SHARD0, tmp_path / "x-000000.tar")
    members = read_members(tmp_path / "x-000000.tar")
    bomb = hostile.mask_png_inflating(224, 160, 64 << 20)
    hostile.write_tar(tmp_path / "x-000000.tar", [(n, bomb if n == f"{KEY0}.sem.png" else d) for n, d in members])
    assert main(["inspect", str(tmp_path), "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: x-000000.tar scene_00000000: unreadable sample") and "inflates past" in err
    assert len(err.strip().splitlines()) == 1


def test_run_start_scan_equals_np_unique():
    """The run-based id scan equals np.unique on any map (noise included)."""
    from shards.validate import present_ids

    rng = np.random.default_rng(0)
    for a in [rng.integers(0, 5, (37, 41)), rng.integers(0, 65535, (9, 7)), np.zeros((3, 3))]:
        assert np.array_equal(present_ids(a.astype(np.uint16)), np.unique(a.astype(np.uint16)))


def test_dct_scaled_jpeg_check_fails_exactly_when_a_full_decode_fails():
    """The validator checks JPEGs with 1/8 DCT scaling (every coefficient entropy-decoded, only the
    DC term transformed): on truncated, corrupted and cut JPEGs it must agree with a full decode."""
    from shards.image import BadImage, check_scaled, load_image, open_image

    def fails(data, scaled):
        try:
            im = open_image(data, ("JPEG",), 10**8)
            if scaled:
                check_scaled(im)
            else:
                load_image(im)
            return False
        except BadImage:
            return True

    bases = [
        hostile.jpeg(96, 128, seed=1, quality=90),
        hostile.encode(hostile.photo(96, 128), "JPEG", progressive=True),
    ]
    failed = 0
    for d in hostile.damaged_copies(bases, 300, seed=0):
        full = fails(d, False)
        assert fails(d, True) == full
        failed += full
    assert 100 < failed < 300  # the cases exercised both outcomes
