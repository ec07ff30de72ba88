"""`c2f validate`: one deliberately damaged dataset per finding, each asserting code, message and exit."""

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from c2f.cli import main
from shards.pack import decode_png, encode_png

SHARD0 = "syn-000000.tar"
SHARD1 = "syn-000001.tar"
KEY0 = "scene_00000000"


def run_validate(capsys, *args):
    code = main(["validate", *map(str, args), "--json", "--workers", "1"])
    report = json.loads(capsys.readouterr().out)
    return code, report


def findings(report, code):
    return [f for f in report["findings"] if f["code"] == code]


def read_members(path):
    with tarfile.open(path) as tf:
        return [(ti.name, tf.extractfile(ti).read()) for ti in tf]


def write_members(path, members):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def refresh_manifest(ds, shard, samples=None):
    """Make the manifest agree with a tampered shard's bytes (so only the damage itself shows)."""
    m = json.loads((ds / "manifest.json").read_text())
    data = (ds / shard).read_bytes()
    for s in m["shards"]:
        if s["name"] == shard:
            s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            if samples is not None:
                s["samples"] = samples
    (ds / "manifest.json").write_text(json.dumps(m))


def tamper(ds, shard, fn, refresh=True):
    members = fn(read_members(ds / shard))
    write_members(ds / shard, members)
    if refresh:
        refresh_manifest(ds, shard)


def replace(name, new):
    return lambda ms: [(n, new if n == name else d) for n, d in ms]


def test_clean_dataset_passes(synthetic_ds, capsys):
    code, report = run_validate(capsys, synthetic_ds)
    assert code == 0 and report["ok"] and report["samples"] == 12 and report["shards"] == 3
    assert report["manifest_checked"]


def test_table_output_and_exit_zero(synthetic_ds, capsys):
    assert main(["validate", str(synthetic_ds), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("OK: 3 shards, 12 samples")


def test_truncated_tar(synthetic_ds, capsys):
    data = (synthetic_ds / SHARD0).read_bytes()
    (synthetic_ds / SHARD0).write_bytes(data[: len(data) // 2 + 100])
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "truncated")
    assert code == 1 and f["shard"] == SHARD0 and "truncated" in f["message"]


def test_not_a_tar(synthetic_ds, capsys):
    (synthetic_ds / SHARD0).write_bytes(b"<html>403 Forbidden</html>" * 40)
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "not-a-tar")
    assert code == 1 and f["shard"] == SHARD0 and "not a tar archive" in f["message"]


def test_empty_shard(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, lambda ms: [])
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "empty-shard")
    assert code == 1 and f["shard"] == SHARD0 and f["message"] == "shard holds no samples"


def test_missing_member(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, lambda ms: [(n, d) for n, d in ms if n != f"{KEY0}.inst.png"])
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "missing-member")
    assert code == 1 and (f["shard"], f["key"], f["message"]) == (SHARD0, KEY0, "missing .inst.png")


def test_undecodable_jpeg(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.jpg", b"\xff\xd8\xff" + b"\0" * 100))
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "bad-jpeg")
    assert code == 1 and f["key"] == KEY0 and f["message"].startswith(".jpg does not decode")


def test_undecodable_png(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.sem.png", b"\x89PNG\r\n\x1a\n garbage"))
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "bad-png")
    assert code == 1 and f["key"] == KEY0 and f["message"].startswith(".sem.png does not decode")


def test_rgb_png_as_mask_rejected(synthetic_ds, capsys):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 160)).save(buf, "PNG")
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.sem.png", buf.getvalue()))
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "bad-png")
    assert code == 1 and "single-channel" in f["message"]


def test_mask_size_differs(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.sem.png", encode_png(np.zeros((10, 20), np.uint8))))
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "mask-size")
    assert code == 1 and f["key"] == KEY0 and f["message"] == ".sem.png is 20x10, image is 224x160"


def set_pixel(name, value):
    """Tamper step: one pixel of a map member set to `value`."""

    def edit(ms):
        out = []
        for n, d in ms:
            if n == name:
                arr = decode_png(d).copy()
                arr[0, 0] = value
                d = encode_png(arr)
            out.append((n, d))
        return out

    return edit


def test_class_out_of_range(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, set_pixel(f"{KEY0}.sem.png", 77))
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "class-out-of-range")
    assert code == 1 and f["key"] == KEY0 and f["message"].startswith("class ids [77] outside the label space (0..5")


def test_instance_ids_do_not_match_json(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, set_pixel(f"{KEY0}.inst.png", 999))
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "instance-mismatch")
    assert code == 1 and f["key"] == KEY0 and "999" in f["message"]


def test_duplicate_key_within_shard(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, lambda ms: ms + [(n, d) for n, d in ms if n.startswith(KEY0)])
    code, report = run_validate(capsys, synthetic_ds)
    dup = findings(report, "duplicate-key")
    assert code == 1 and dup[0]["key"] == KEY0 and "appears twice in this shard" in dup[0]["message"]


def test_duplicate_key_across_shards(synthetic_ds, capsys):
    stolen = [(n, d) for n, d in read_members(synthetic_ds / SHARD0) if n.startswith(KEY0)]
    tamper(synthetic_ds, SHARD1, lambda ms: stolen + ms)
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "duplicate-key")
    assert code == 1 and (f["shard"], f["key"]) == (SHARD1, KEY0) and f["message"] == f"key also in {SHARD0}"


def test_sha256_differs_from_manifest(synthetic_ds, capsys):
    members = read_members(synthetic_ds / SHARD0)
    size = (synthetic_ds / SHARD0).stat().st_size
    meta = json.loads(members[3][1])
    meta["source"] = meta["source"].upper()  # same length: only the checksum can tell
    members[3] = (members[3][0], json.dumps(meta, sort_keys=True).encode())
    write_members(synthetic_ds / SHARD0, members)
    assert (synthetic_ds / SHARD0).stat().st_size == size
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "checksum")
    assert (
        code == 1 and f["shard"] == SHARD0 and "sha256" in f["message"] and "differs from the manifest" in f["message"]
    )


def test_bytes_differ_from_manifest(synthetic_ds, capsys):
    with open(synthetic_ds / SHARD0, "ab") as f:
        f.write(b"\0" * 10240)
    code, report = run_validate(capsys, synthetic_ds)
    msgs = [f["message"] for f in findings(report, "checksum")]
    assert code == 1 and any(m.startswith("size ") and "manifest says" in m for m in msgs)


def test_sample_count_differs_from_manifest_and_plan(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, lambda ms: [(n, d) for n, d in ms if not n.startswith(KEY0)])
    code, report = run_validate(capsys, synthetic_ds)
    (count,) = findings(report, "count")
    assert code == 1 and count["message"] == "3 samples, manifest says 4"
    refresh_manifest(synthetic_ds, SHARD0, samples=3)  # the manifest agrees now, the plan does not
    code, report = run_validate(capsys, synthetic_ds)
    (plan,) = findings(report, "plan")
    assert code == 1 and plan["message"] == "plan has 4 inputs, found 3 samples + 0 quarantined"
    assert not findings(report, "count")


@pytest.mark.parametrize("name", ["/abs/evil.jpg", "../evil.jpg"])
def test_unsafe_member_names(synthetic_ds, capsys, name):
    tamper(synthetic_ds, SHARD0, lambda ms: ms + [(name, b"x")])
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "unsafe-member-name")
    assert code == 1 and name in f["message"]


def test_missing_and_unlisted_shards(synthetic_ds, capsys):
    (synthetic_ds / SHARD1).rename(synthetic_ds / "syn-000009.tar")
    code, report = run_validate(capsys, synthetic_ds)
    assert code == 1
    assert findings(report, "missing-shard")[0]["shard"] == SHARD1
    assert findings(report, "unlisted-shard")[0]["shard"] == "syn-000009.tar"


def test_shard_urls_without_manifest(synthetic_ds, capsys):
    code, report = run_validate(capsys, synthetic_ds / SHARD0, "file://" + str(synthetic_ds / SHARD1))
    assert code == 0 and report["samples"] == 8 and not report["manifest_checked"]


def test_sample_mode_decodes_a_subset(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD0, replace(f"{KEY0}.jpg", b"junk"))
    code, report = run_validate(capsys, synthetic_ds, "--sample", "0")
    assert code == 0  # structure and checksums fine; nothing decoded
    code, report = run_validate(capsys, synthetic_ds, "--sample", "4")
    assert code == 1 and findings(report, "bad-jpeg")


def test_parallel_workers_agree(synthetic_ds, capsys):
    tamper(synthetic_ds, SHARD1, replace("scene_00000005.jpg", b"junk"))
    assert main(["validate", str(synthetic_ds), "--json", "--workers", "2"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(f["shard"], f["key"]) for f in findings(report, "bad-jpeg")] == [(SHARD1, "scene_00000005")]


@pytest.mark.parametrize("argv", [["validate"], ["validate", "x", "--workers", "0"], ["validate", "x", "--bogus"]])
def test_usage_errors_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2


def test_nonexistent_path_is_a_finding(tmp_path, capsys):
    code, report = run_validate(capsys, tmp_path / "nope.tar")
    assert code == 1 and findings(report, "missing-shard")


def test_validate_does_not_import_torch(synthetic_ds):
    code = (
        "import sys; from c2f.cli import main; rc = main(['validate', sys.argv[1], '--no-progress']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(synthetic_ds)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_remote_directory_through_fsspec(synthetic_ds, capsys):
    """A dataset behind an fsspec URL (memory:// here, s3:// or gs:// in production): listing,
    manifest, quarantine and checksums all go through fsspec."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in synthetic_ds.iterdir():
        fs.pipe(f"/remote-ds/{p.name}", p.read_bytes())
    try:
        code, report = run_validate(capsys, "memory://remote-ds")
        assert code == 0 and report["manifest_checked"] and report["samples"] == 12
        data = fs.cat("/remote-ds/syn-000001.tar")
        fs.pipe("/remote-ds/syn-000001.tar", data[:-3000])
        code, report = run_validate(capsys, "memory://remote-ds")
        assert code == 1 and findings(report, "checksum")
    finally:
        fs.rm("/remote-ds", recursive=True)


def edit_table(ds, shard, fn):
    """Rewrite a shard's Parquet table through pyarrow after `fn(columns)` changed its columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ds / shard.replace(".tar", ".parquet")
    cols = pq.read_table(path).to_pydict()
    fn(cols)
    pq.write_table(pa.table(cols), path)


@pytest.mark.parametrize(
    "damage, key, message",
    [
        (lambda c: c["width"].__setitem__(1, 999), "scene_00000001", "says width 999 (the sample: 224)"),
        (lambda c: c["coverage"].__setitem__(0, 0.5), KEY0, "says coverage 0.5 (.sem.png: 1.0)"),
        (lambda c: c["instances"].__setitem__(2, 0), "scene_00000002", "says instances 0"),
        (lambda c: c["cls"].__setitem__(0, "n01440764"), KEY0, "says cls 'n01440764'"),
        (lambda c: c["index"].__setitem__(3, 0), "scene_00000003", "1 row(s) give another position in the tar"),
        (lambda c: [v.pop(0) for v in c.values()], KEY0, "lacks 1 key(s) of the tar"),
        (lambda c: c["key"].__setitem__(0, "scene_x"), "scene_x", "packs 1 key(s) the tar lacks"),
        (lambda c: c["status"].__setitem__(0, "lost"), None, "status 'lost' is neither packed nor quarantined"),
        (lambda c: c.pop("score"), None, "has no column 'score'"),
        (lambda c: c.__setitem__("width", ["wide"] * 4), None, "column 'width' is string, not int64"),
    ],
)
def test_a_table_that_disagrees_with_its_tar(synthetic_ds, capsys, damage, key, message):
    edit_table(synthetic_ds, SHARD0, damage)
    code, report = run_validate(capsys, synthetic_ds)
    found = [(f["shard"], f["key"]) for f in findings(report, "bad-table") if message in f["message"]]
    assert code == 1 and found == [(SHARD0, key)], report["findings"]
    assert {x["code"] for x in report["findings"]} == {"bad-table"} and len(report["findings"]) <= 2


def test_a_missing_unreadable_or_stray_table(synthetic_ds, capsys):
    (synthetic_ds / "syn-000001.parquet").unlink()
    (synthetic_ds / "syn-000002.parquet").write_bytes(b"PAR1 not really")
    (synthetic_ds / "syn-000007.parquet").write_bytes((synthetic_ds / "syn-000000.parquet").read_bytes())
    code, report = run_validate(capsys, synthetic_ds)
    assert code == 1
    assert [(f["shard"], f["code"]) for f in report["findings"]] == [
        ("syn-000007.parquet", "unlisted-table"),
        (SHARD1, "missing-table"),
        ("syn-000002.tar", "bad-table"),
    ]
    assert "is not a Parquet file" in report["findings"][2]["message"]
    # An output made before tables existed (its manifest does not promise them) has none to check.
    m = json.loads((synthetic_ds / "manifest.json").read_text())
    del m["sample_tables"]
    (synthetic_ds / "manifest.json").write_text(json.dumps(m))
    for p in synthetic_ds.glob("*.parquet"):
        p.unlink()
    assert run_validate(capsys, synthetic_ds)[0] == 0


def test_tables_read_as_one_by_the_fields_tools(synthetic_ds):
    """duckdb and pandas read `*.parquet` of an output as one table: every sample once, with its facts."""
    import duckdb
    import pandas as pd

    con = duckdb.connect()
    n, shards, packed = con.sql(
        f"SELECT count(*), count(DISTINCT shard), count(*) FILTER (status = 'packed') FROM '{synthetic_ds}/*.parquet'"
    ).fetchall()[0]
    assert (n, shards, packed) == (12, 3, 12)
    df = pd.concat(pd.read_parquet(p) for p in sorted(synthetic_ds.glob("*.parquet")))
    assert df["key"].tolist() == [f"scene_{j:08d}" for j in range(12)] and (df["width"] == 224).all()
    assert df["index"].tolist() == [0, 1, 2, 3] * 3 and df["coverage"].eq(1.0).all()


def test_a_table_that_would_unpack_to_gigabytes_is_refused_unread(synthetic_ds, capsys):
    """A few KB of Parquet can declare a million rows, or one text value repeated into gigabytes:
    both are refused from what the file declares, before the text is expanded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = synthetic_ds / SHARD0.replace(".tar", ".parquet")
    cols = pq.read_table(path).to_pydict()
    pq.write_table(pa.table({k: v * 300_000 for k, v in cols.items()}), path, compression="zstd")  # 1.2M rows
    assert path.stat().st_size < 2_000_000
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "bad-table")
    assert code == 1 and "declares 1200000 rows, more than 1000000" in f["message"]
    cols["source"] = ["x" * (100 << 20)] * 4  # 400 MB of text in a dictionary of one value
    pq.write_table(pa.table(cols), path, compression="zstd")
    assert path.stat().st_size < 1_000_000
    code, report = run_validate(capsys, synthetic_ds)
    (f,) = findings(report, "bad-table")
    assert code == 1 and "bytes of text, more than 268435456" in f["message"]
