"""The labeling job on a local Ray with the `empty` preset: accounting, resume, plan checks."""

import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from conftest import free_port
from PIL import Image

from c2f.cli import main as c2f_main
from pipelines.plan import PlanError, make_plan
from shards.pack import decode_png


def label_main(args):
    return c2f_main(["label", *args])


@pytest.fixture
def gauntlet(sample_tree, tmp_path):
    """The bundled samples plus one of every kind of bad input, in an ImageNet-style tree."""
    root = tmp_path / "in"
    shutil.copytree(sample_tree, root)
    bad = root / "n09999999"
    bad.mkdir()
    photo = np.asarray(Image.open(next(sample_tree.glob("*/*.JPEG"))).convert("RGB"))
    good_jpeg = (next(sample_tree.glob("n02123045/*.JPEG"))).read_bytes()

    def save(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, **kw)
        (bad / name).write_bytes(buf.getvalue())

    (bad / "n09999999_zero.JPEG").write_bytes(b"")
    (bad / "n09999999_truncated.JPEG").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (bad / "n09999999_garbage.JPEG").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    save("n09999999_cmyk.JPEG", Image.fromarray(photo).convert("CMYK"), format="JPEG")
    save("n09999999_gray.JPEG", Image.fromarray(photo).convert("L"), format="JPEG")
    save("n09999999_png.JPEG", Image.fromarray(photo), format="PNG")
    save("n09999999_rgba.JPEG", Image.fromarray(photo).convert("RGBA"), format="PNG")
    (bad / "n09999999_huge.JPEG").write_bytes(_huge_png(40000, 40000))
    return root


def _huge_png(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h pixels (a decompression bomb), a few hundred bytes long."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _tar_members(out):
    members = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for ti in tf:
                members[ti.name] = tf.extractfile(ti).read()
    return members


def test_label_gauntlet_resume_and_plan_checks(gauntlet, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(gauntlet), str(out), "--samples-per-shard", "3", "--preset", "empty"]
    assert label_main(args) == 0
    text = capsys.readouterr().out
    assert "OK:" in text and "11 images in 5 shards, 4 quarantined" in text

    plan = make_plan(gauntlet, 3)
    members = _tar_members(out)
    keys = {n.split(".", 1)[0] for n in members}
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    qkeys = {q["key"] for q in quarantine}
    # every input exactly once: in a shard or in the quarantine, never both
    assert keys | qkeys == {it.key for it in plan.items} and not keys & qkeys
    assert len(keys) + len(quarantine) == len(plan.items) == 15
    reasons = {q["key"]: q["reason"] for q in quarantine}
    assert reasons["n09999999_zero"].startswith("empty file")
    assert reasons["n09999999_truncated"].startswith("decode failed")
    assert reasons["n09999999_garbage"].startswith(("not a decodable image", "decode failed"))
    assert reasons["n09999999_huge"].startswith("too large (decompression-bomb guard)")
    # good JPEGs byte-identical, grayscale kept, converted inputs marked
    for it in plan.items:
        if it.key in keys and it.synset != "n09999999":
            assert members[f"{it.key}.jpg"] == (gauntlet / it.source).read_bytes()
    metas = {k: json.loads(members[f"{k}.json"]) for k in keys}
    assert not metas["n09999999_gray"]["reencoded"]
    assert metas["n09999999_cmyk"]["reencode_reason"] == "mode CMYK"
    assert metas["n09999999_png"]["reencode_reason"] == "format PNG"
    assert metas["n09999999_rgba"]["reencode_reason"] == "format PNG, mode RGBA"

    # every shard's table, read as one: a row per input, packed at its place in the tar or quarantined
    # with the quarantine's stage and reason, and the stages it went through timed
    import duckdb

    rows = duckdb.sql(
        f"SELECT key, source, shard, index, status, stage, reason, width, cls, read_ms, decode_ms, write_ms "
        f"FROM '{out}/*.parquet' ORDER BY key"
    ).fetchall()
    assert len(list(out.glob("*.parquet"))) == 5 and [r[0] for r in rows] == sorted(it.key for it in plan.items)
    by_key = {r[0]: r for r in rows}
    positions = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for i, k in enumerate(dict.fromkeys(ti.name.split(".", 1)[0] for ti in tf)):
                positions[k] = (shard.name, i)
    for it in plan.items:
        key, source, shard, index, status, stage, reason, width, cls, read_ms, decode_ms, write_ms = by_key[it.key]
        assert source == it.source and cls == it.synset and read_ms is not None
        if it.key in keys:
            assert (status, (shard, index)) == ("packed", positions[it.key]) and width == metas[it.key]["width"]
            assert decode_ms is not None and write_ms is not None and stage is None
        else:
            q = next(q for q in quarantine if q["key"] == it.key)
            assert (status, stage, reason, shard, index) == ("quarantined", q["stage"], q["reason"], q["shard"], None)

    # a rerun resumes: nothing to do, shards untouched
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert label_main(args) == 0
    assert "0 to do" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}

    # a lost shard is redone, byte-identical
    lost = sorted(out.glob("*.tar"))[1]
    data = lost.read_bytes()
    lost.unlink()
    assert label_main(args) == 0
    assert "1 to do" in capsys.readouterr().out and lost.read_bytes() == data
    # and so is a shard whose table was lost (its stats name the table's size)
    table = out / lost.name.replace(".tar", ".parquet")
    table.unlink()
    assert label_main(args) == 0
    assert "1 to do" in capsys.readouterr().out and table.exists() and lost.read_bytes() == data

    # another plan in the same output directory is refused with a clear message and exit 2
    assert label_main([*args[:2], "--samples-per-shard", "5", "--preset", "empty"]) == 2
    assert "differs in: samples_per_shard" in capsys.readouterr().err
    # and so are other labeler settings: one dataset, one labeler
    assert label_main([*args, "--min-instance-area", "5"]) == 2
    assert "other labeler settings (differs in: sam.min_instance_area)" in capsys.readouterr().err
    assert label_main([*args[:2], "--samples-per-shard", "5", "--preset", "fixed-cost", "--overwrite"]) == 0
    assert len(list(out.glob("*.tar"))) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labeler"]["preset"] == "fixed-cost" and manifest["label_space"]["semantic"]["0"] == "dark"


def test_empty_preset_labels_in_the_shard_tasks_without_an_actor(sample_tree, tmp_path, capsys):
    # An actor of 64 CPUs would be refused on this machine (exit 2): `empty` starts none.
    out = tmp_path / "out"
    assert label_main([str(sample_tree), str(out), "--preset", "empty", "--cpus-per-actor", "64"]) == 0
    assert "OK:" in capsys.readouterr().out
    members = _tar_members(out)
    sems = [decode_png(data) for name, data in members.items() if name.endswith(".sem.png")]
    insts = [decode_png(data) for name, data in members.items() if name.endswith(".inst.png")]
    assert len(sems) == len(insts) == 7
    assert all((m == 255).all() for m in sems) and all((m == 0).all() for m in insts)


def test_the_driver_never_imports_torch(sample_tree, tmp_path):
    """The driver plans, dispatches and writes the manifest; the models load in the actors. torch in
    the driver is ~400 MB of RSS the whole job pays for nothing (the hostile e2e test's 3 GB bound)."""
    import subprocess
    import sys

    code = (
        "import sys; from c2f.cli import main; rc = main(['label', *sys.argv[1:]]);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    args = [str(sample_tree), str(tmp_path / "out"), "--preset", "empty"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_unloadable_model_stops_the_job_with_exit_2(sample_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # Ray workers inherit it
    code = label_main(
        [str(sample_tree), str(tmp_path / "o"), "--preset", "panoptic", "--panoptic-model", "c2f-test/no-such-model"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot load segmentation model 'c2f-test/no-such-model'" in err and "Traceback" not in err


def test_bad_flags_and_inputs_exit_2(tmp_path, capsys):
    assert label_main([str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "is not a directory, a URL, or a .txt file list" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert label_main([str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    assert label_main([str(tmp_path), str(tmp_path / "o"), "--preset", "nope"]) == 2
    with pytest.raises(SystemExit) as e:
        label_main(["--samples-per-shard", "x"])
    assert e.value.code == 2


def test_plan_is_deterministic_and_keys_unique(tmp_path):
    for rel in ["a/x.jpg", "b/x.jpg", "b/y.png", "c.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    p = make_plan(tmp_path, 2)
    assert [it.key for it in p.items] == ["a__x", "b__x", "b__y", "c"] and not p.imagenet
    assert p.num_shards == 2 and p.listing_sha256 == make_plan(tmp_path, 2).listing_sha256
    (tmp_path / "a" / "x.png").write_bytes(b"")
    with pytest.raises(PlanError, match="same sample key 'a__x'"):
        make_plan(tmp_path, 2)


def test_file_list_and_url_inputs_plan_the_same(sample_tree, tmp_path):
    direct = make_plan(sample_tree, 3)
    lst = tmp_path / "inputs.txt"
    paths = sorted(str(p) for p in sample_tree.glob("*/*.JPEG"))
    lst.write_text("# ImageNet-style list\n" + "\n".join(paths[:3] + [os.path.relpath(p, tmp_path) for p in paths[3:]]))
    from_list = make_plan(lst, 3)
    from_url = make_plan("file://" + str(sample_tree), 3)
    assert from_list.listing_sha256 == direct.listing_sha256 == from_url.listing_sha256
    assert from_list.imagenet and from_list.classes == direct.classes


def test_cluster_launcher_entry_script_runs_the_job(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run(
        [sys.executable, str(REPO / "c2f/submit_label.py"), str(tmp_path / "missing"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "is not a directory, a URL, or a .txt file list" in r.stderr


def test_no_ray_cluster_at_the_address_is_a_clear_error(sample_tree, tmp_path, capsys):
    # An explicit address where nothing listens (`auto` would rightly join any cluster on the machine).
    address = f"127.0.0.1:{free_port()}"
    code = label_main([str(sample_tree), str(tmp_path / "o"), "--preset", "empty", "--address", address])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot start or join Ray at --address '{address}'" in err and "Traceback" not in err


def test_images_smaller_than_a_dct_block_are_labeled_and_validated(sample_tree, tmp_path, capsys):
    """JPEG checks decode at 1/8 scale: an image under 8 pixels a side must not become 0 x 0."""
    root = tmp_path / "in"
    shutil.copytree(sample_tree, root)
    photo = np.asarray(Image.open(next(sample_tree.glob("*/*.JPEG"))).convert("RGB"))
    for name, (h, w) in {"n02123045_tiny": (3, 5), "n02123045_line": (1, 40)}.items():
        Image.fromarray(np.ascontiguousarray(photo[:h, :w])).save(root / "n02123045" / f"{name}.JPEG", quality=90)
    out = tmp_path / "out"
    assert label_main([str(root), str(out), "--samples-per-shard", "4", "--preset", "empty"]) == 0
    text = capsys.readouterr().out
    assert "OK:" in text and "0 quarantined" in text, text
    assert c2f_main(["validate", str(out)]) == 0
    members = _tar_members(out)
    assert json.loads(members["n02123045_tiny.json"])["width"] == 5
