"""`c2f report`: every measure equals its known value on scenes whose maps are exact."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from c2f.cli import main
from shards import format as fmt
from shards.image import prepare_image
from shards.manifest import LabelerInfo, LabelSpace, PlanHeader, ShardStats, write_dataset_files, write_stats
from shards.pack import Instance, Labels, pack_sample
from shards.synthetic import encode_jpeg, make_scene
from shards.writer import ShardWriter


def read_samples(report_dir):
    """The report's per-input table (samples.parquet), by column; nulls as NaN in number columns."""
    import pandas as pd

    return pd.read_parquet(report_dir / "samples.parquet")


def replay_scenes(n: int, seed: int = 0):
    """The scenes `write_synthetic_dataset(…, seed)` drew, in key order (same generator, same calls)."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, 160, 224) for _ in range(n)]


def entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_measures_of_synthetic_scenes_equal_their_known_values(synthetic_ds, capsys):
    assert main(["report", str(synthetic_ds), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"report: {synthetic_ds / 'report' / 'report.html'}" in out
    rows = read_samples(synthetic_ds / "report")
    scenes = replay_scenes(12)
    assert rows["key"].tolist() == [f"scene_{j:08d}" for j in range(12)]
    class_pixels = np.zeros(6, np.int64)
    for j, (_, sem, inst, records) in enumerate(scenes):
        pixels = sem.size
        areas = np.array([r.area for r in records])
        counts = np.bincount(sem.ravel(), minlength=6)
        class_pixels += counts
        expect = {
            "coverage": 1.0,  # drawn maps label every pixel
            "classes": len(np.unique(sem)),
            "entropy": entropy(counts),
            "instances": len(records),
            "instance_coverage": (inst > 0).mean(),
            "instance_area": np.median(areas) / pixels,
            "largest_instance": areas.max() / pixels,
            "score": np.mean([round(r.score, 4) for r in records]),  # the JSON keeps 4 decimals
            "purity": 1.0,  # every object is painted in its own class
            "thing_fraction": 1.0,  # ... which its record names
            "width": 224,
            "height": 160,
            "index": j % 4,
            "cls_index": max(records, key=lambda r: r.area).category,
        }
        for name, value in expect.items():
            assert rows[name][j] == pytest.approx(value, rel=1e-5, abs=1e-9), (j, name)
    report = json.loads((synthetic_ds / "report" / "report.json").read_text())
    used = {c["id"]: c["pixels"] for c in report["label_space"]["classes"]}
    assert [used[c] for c in range(6)] == class_pixels.tolist()
    assert report["label_space"]["never_predicted"] == [] and report["label_space"]["unlabelled_pixel_share"] == 0
    assert report["instances"]["total"] == sum(len(s[3]) for s in scenes)
    assert sum(report["instances"]["purity"]["counts"][-1:]) == report["instances"]["total"]  # all in the last bin
    # Image class -> semantic classes: the class of each scene's largest object leads its class's pixels or not,
    # but the shares are exactly the pixel counts of the scenes with that class.
    for row in report["image_classes"]:
        members = [s for s in scenes if max(s[3], key=lambda r: r.area).category == row["index"]]
        counts = sum(np.bincount(s[1].ravel(), minlength=6) for s in members)
        assert row["images"] == len(members)
        top = row["top"][0]
        assert top["id"] == int(np.argmax(counts)) and top["share"] == pytest.approx(counts.max() / counts.sum())


def write_handmade(out, label_space):
    """Two 10x20 images whose measures are worked out by hand in the test below."""
    out.mkdir()
    h, w = 10, 20
    sem = np.zeros((h, w), np.uint8)
    sem[:, 10:] = 1
    sem[:2] = 255  # two rows of ignore: coverage 160 / 200
    inst = np.zeros((h, w), np.uint16)
    inst[4:8, 6:14] = 1  # 32 px: 16 in class 0, 16 in class 1 -> purity 0.5
    inst[0:5, 0:4] = 2  # 20 px: 8 ignore, 12 in class 0 -> purity 0.6
    records = [Instance(1, 1, 0.5, 32, [6, 4, 8, 4]), Instance(2, None, 0.9, 20, [0, 0, 4, 5])]
    empty = Labels(np.full((h, w), 2, np.uint8), np.zeros((h, w), np.uint16), [])
    image = prepare_image(encode_jpeg(np.full((h, w, 3), 128, np.uint8)))
    with ShardWriter(out / fmt.shard_name("hm", 0)) as wr:
        wr.write("a", pack_sample("a", image, Labels(sem, inst, records), "a.jpg", 0, "n0"))
        wr.write("b", pack_sample("b", image, empty, "b.jpg", 0, "n0"))
    stats = ShardStats(0, wr.info.name, 2, 2, wr.info.bytes, wr.info.sha256)
    write_stats(out, stats)
    plan = PlanHeader("x", True, ["n0"], 2, "hm", 2, 1, "", [2])
    write_dataset_files(out, label_space, LabelerInfo("handmade"), plan, [stats])


def test_measures_worked_out_by_hand(tmp_path, capsys):
    names = {"0": "road", "1": "car", "2": "sky"}
    ds = tmp_path / "hm"
    write_handmade(ds, LabelSpace(names, {"1": "car"}))  # the manifest names the things
    assert main(["report", str(ds), "--no-progress", "--worst", "1"]) == 0
    rows = read_samples(ds / "report")
    a, b = ({k: v[i] for k, v in rows.items()} for i in (0, 1))
    assert a["coverage"] == pytest.approx(0.8)
    assert a["entropy"] == pytest.approx(1.0) and a["classes"] == 2  # 80 px road, 80 px car
    assert a["instances"] == 2 and a["instance_coverage"] == pytest.approx(52 / 200)
    assert a["instance_area"] == pytest.approx(26 / 200) and a["largest_instance"] == pytest.approx(32 / 200)
    assert a["score"] == pytest.approx(0.7)
    assert a["purity"] == pytest.approx((16 + 12) / 52)
    assert a["thing_fraction"] == pytest.approx(16 / 52)  # car pixels inside instances
    assert b["coverage"] == 1.0 and b["entropy"] == 0.0 and b["instances"] == 0
    assert all(math.isnan(b[k]) for k in ("score", "purity", "thing_fraction", "instance_area"))
    report = json.loads((ds / "report" / "report.json").read_text())
    purity = report["instances"]["purity"]
    assert purity["counts"][10] == 1 and purity["counts"][12] == 1  # 0.5 and 0.6, per instance
    assert report["things"]["ids"] == [1]
    assert report["worst"]["instances"] == [{"key": "b", "shard": "hm-000000.tar", "value": 0.0}]
    assert report["worst"]["coverage"][0]["key"] == "a"
    assert report["measures"]["score"]["undefined"] == 1
    assert report["image_classes"][0]["synset"] == "n0"
    assert report["image_classes"][0]["top"][0] == {"id": 2, "name": "sky", "share": pytest.approx(200 / 360)}
    # --things overrides the manifest; without a thing list, each image's instance categories stand in.
    assert main(["report", str(ds), "--no-progress", "--things", "0"]) == 0
    assert read_samples(ds / "report")["thing_fraction"][0] == pytest.approx((16 + 12) / 52)
    assert main(["report", str(ds), "--no-progress", "--things", "0-x"]) == 2
    capsys.readouterr()


def test_the_table_extends_the_shard_tables(tmp_path):
    """samples.parquet: every row of the shards' tables (a quarantined input too) with the measures of
    its sample; without a table (an output made before them), a row per sample from its JSON."""
    import pandas as pd

    from shards.samples import InputRef, Packed, shard_rows, table_bytes

    ds = tmp_path / "hm"
    write_handmade(ds, LabelSpace({"0": "road", "1": "car", "2": "sky"}))
    assert main(["report", str(ds), "--no-progress", "--worst", "0"]) == 0
    old = read_samples(ds / "report")
    assert old["key"].tolist() == ["a", "b"] and old["source"].tolist() == ["a.jpg", "b.jpg"]
    assert old["cls"].tolist() == ["n0", "n0"] and old["status"].tolist() == ["packed"] * 2
    assert old["read_ms"].isna().all() and not (ds / "report" / "samples.csv").exists()

    inputs = [InputRef(k, f"{k}.jpg", "n0", 0, 100) for k in "abc"]
    packed = {"a": Packed(0, 20, 10, 2, 0.8, 0.7), "b": Packed(1, 20, 10, 0, 1.0, None)}
    times = {"a": {"read": 1.5, "decode": 2.0}, "c": {"read": 0.5}}
    rows = shard_rows("hm-000000.tar", inputs, packed, {"c": ("decode", "decode failed: truncated")}, times)
    (ds / "hm-000000.parquet").write_bytes(table_bytes(rows))
    assert main(["report", str(ds), "--no-progress", "--worst", "0", "--csv"]) == 0
    t = read_samples(ds / "report")
    assert t["key"].tolist() == ["a", "b", "c"] and t["status"].tolist() == ["packed", "packed", "quarantined"]
    assert t["read_ms"].tolist()[0] == 1.5 and t["stage"][2] == "decode" and t["reason"][2].startswith("decode")
    assert t["purity"][0] == pytest.approx(28 / 52) and t["coverage"][0] == pytest.approx(0.8)
    assert t[["coverage", "instances", "purity", "width", "index"]].iloc[2].isna().all()  # quarantined: no measures
    assert json.loads((ds / "report" / "report.json").read_text())["samples"] == 2  # the measures are of samples
    assert t["cls"].tolist() == ["n0"] * 3 and t["cls_index"].tolist() == [0] * 3
    csv = pd.read_csv(ds / "report" / "samples.csv")
    assert csv["key"].tolist() == ["a", "b", "c"] and csv["purity"][0] == pytest.approx(28 / 52)
    assert list(csv.columns) == list(t.columns)


def test_markup_in_names_is_escaped_in_report_and_compare(tmp_path):
    """Names a page shows come from folders, files and manifests that anyone may write: an output
    folder, a class folder (the synset), a class name and a file in a shard with markup in them
    are text on both pages, never markup (the templates autoescape)."""
    import html
    import io
    import tarfile

    mark = '<img src=x onerror=alert("c2f")>'  # a name a folder or a file can have (no slash)
    ds = tmp_path / f"out{mark}"
    write_handmade(ds, LabelSpace({"0": "road<script>alert(1)</script>", "1": "car", "2": "sky"}, {"1": "car"}))
    m = json.loads((ds / "manifest.json").read_text())
    m["plan"]["classes"] = [f"n0{mark}"]  # a class folder
    (ds / "manifest.json").write_text(json.dumps(m))
    with tarfile.open(ds / fmt.shard_name("hm", 0), "a") as tf:  # a file of the shard named with markup
        ti = tarfile.TarInfo(f"b.{mark}.txt")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))
    assert main(["report", str(ds), "--no-progress", "--worst", "1"]) == 1  # the stray file is a problem
    out = tmp_path / "c"
    assert main(["compare", str(ds), str(ds), "--out", str(out), "--no-progress", "--matching", "hungarian"]) == 1
    escaped = html.escape(mark).replace("&quot;", "&#34;")
    report, compare = (ds / "report" / "report.html").read_text(), (out / "compare.html").read_text()
    for text in (report, compare):
        assert "<img src=x" not in text and "<script" not in text
        assert text.count(f"out{escaped}") >= 2  # title and text: the output folder
        assert f"b.{escaped}.txt" in text  # the file's name, in the problem it is
        assert "road&lt;script&gt;alert(1)&lt;/script&gt;" in text  # the class name (the matching table in compare)
    assert f"n0{escaped}" in report  # the class folder, in the image classes table


def test_page_is_self_contained(synthetic_ds):
    assert main(["report", str(synthetic_ds), "--no-progress", "--out", str(synthetic_ds / "r")]) == 0
    page = (synthetic_ds / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "data:image/jpeg;base64," in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for section in ("Per-image measures", "Label space usage", "Image classes", "Worst images", "purity"):
        assert section in page
    assert (synthetic_ds / "r" / "img" / "measures.png").exists()


def test_damaged_shard_is_a_listed_problem(synthetic_ds, capsys):
    shard = synthetic_ds / "syn-000001.tar"
    shard.write_bytes(shard.read_bytes()[:20000])
    assert main(["report", str(synthetic_ds), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "problem(s)" in out and "c2f validate" in out
    report = json.loads((synthetic_ds / "report" / "report.json").read_text())
    assert report["problem_count"] >= 1 and any("truncated" in p["message"] for p in report["problems"])
    assert report["samples"] >= 8  # the other shards are measured


def test_not_an_output(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_quality_tools_do_not_import_torch(synthetic_ds, tmp_path):
    code = (
        "import sys; from c2f.cli import main; d, t = sys.argv[1], sys.argv[2];"
        "rc = main(['report', d, '--no-progress', '--workers', '1'])"
        " or main(['compare', d, d, '--out', t + '/c', '--no-progress', '--workers', '1'])"
        " or main(['filter', d, '--where', 'coverage > 0.5', '--out', t + '/k.json']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(synthetic_ds), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_output_behind_an_fsspec_url(synthetic_ds, tmp_path, capsys):
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in synthetic_ds.iterdir():
        fs.pipe(f"/report-ds/{p.name}", p.read_bytes())
    try:
        assert main(["report", "memory://report-ds", "--no-progress"]) == 2  # where would the report go?
        assert "--out" in capsys.readouterr().err
        out = tmp_path / "r"
        assert main(["report", "memory://report-ds", "--out", str(out), "--workers", "1", "--no-progress"]) == 0
        assert json.loads((out / "report.json").read_text())["samples"] == 12
    finally:
        fs.rm("/report-ds", recursive=True)


def test_an_installed_c2f_finds_its_page_templates(tmp_path):
    """The templates ship as package data: a wheel built from this tree holds them, and the pages
    render from an unpacked copy of it, away from the source tree."""
    import shutil
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    for pkg in ("c2f", "labeler", "pipelines", "quality", "shards", "c2fmae"):
        shutil.copytree(repo / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w"]
    r = subprocess.run([*cmd, str(tmp_path / "wheel")], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("c2f-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert sorted(p.name for p in (site / "quality" / "templates").iterdir()) == sorted(
        p.name for p in (repo / "quality" / "templates").iterdir()
    )
    code = (
        f"import quality.render as r; assert r.__file__.startswith({str(site)!r}), r.__file__;"
        "print(r.page('base.html', title='<t>'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    assert r.returncode == 0 and "<title>&lt;t&gt;</title>" in r.stdout, r.stderr


def test_extend_keeps_the_tables_facts_and_adds_the_measures():
    """quality.table.extend: the measures (and the sample's place) from the report's pass, the rest
    of the row as the shard task wrote it (an image without a class stays without one)."""
    from quality.measures import COLUMNS, as_arrays
    from quality.table import REPORT_COLUMNS, extend
    from shards.samples import InputRef, Packed, shard_rows

    rows = shard_rows("s.tar", [InputRef("a", "x/a.png", None, None, 9)], {"a": Packed(0, 4, 2, 1, 0.5, 0.9)}, {}, {})
    measured = {c: [] for c in COLUMNS}
    values = {"key": "a", "shard": "s.tar", "index": 0, "cls_index": -1, "width": 4, "height": 2, "source": "x/a.png"}
    for c in COLUMNS:
        measured[c].append(values.get(c, 0.25 if c not in ("classes", "instances") else 1))
    measured["score"][0] = math.nan
    t = extend("s.tar", rows, as_arrays(measured), ["n0"]).to_pylist()[0]
    assert list(t) == REPORT_COLUMNS
    assert t["cls"] is None and t["cls_index"] is None and t["input_bytes"] == 9 and t["source"] == "x/a.png"
    assert t["coverage"] == 0.25 and t["purity"] == 0.25 and t["score"] is None  # measured: NaN is null
