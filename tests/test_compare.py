"""`c2f compare A B`: perfect agreement with itself; with shifted or renamed copies, exactly the
numbers an independent computation gives."""

import json

import numpy as np
import pytest

from c2f.cli import main
from quality.table import read_csv
from shards import format as fmt
from shards.manifest import LabelerInfo, LabelSpace, ShardStats, read_manifest, write_dataset_files, write_stats
from shards.pack import decode_png, encode_png
from shards.tar import read_samples
from shards.writer import ShardWriter


def rewrite(src, dst, fn, label_space=None):
    """A copy of output `src` whose maps are `fn(sem, inst) -> (sem, inst)`: same plan, same keys."""
    dst.mkdir()
    manifest = read_manifest(src)
    stats = []
    for entry in manifest.shards:
        with ShardWriter(dst / entry.name) as w:
            for key, s in read_samples(str(src / entry.name)):
                sem, inst = fn(decode_png(s[fmt.SEM]), decode_png(s[fmt.INST]))
                w.write(key, {**s, fmt.SEM: encode_png(sem), fmt.INST: encode_png(inst)})
        st = ShardStats(entry.index, entry.name, entry.samples, w.info.samples, w.info.bytes, w.info.sha256)
        write_stats(dst, st)
        stats.append(st)
    write_dataset_files(dst, label_space or manifest.label_space, LabelerInfo("copy"), manifest.plan, stats)
    return dst


def shift(sem, inst, dx=9):
    """Every map moved dx pixels to the right; the left edge repeats the first column."""
    out = []
    for m in (sem, inst):
        s = np.empty_like(m)
        s[:, dx:] = m[:, :-dx]
        s[:, :dx] = m[:, :1]
        out.append(s)
    return tuple(out)


def maps(ds):
    manifest = read_manifest(ds)
    return {
        k: (decode_png(s[fmt.SEM]), decode_png(s[fmt.INST]))
        for e in manifest.shards
        for k, s in read_samples(str(ds / e.name))
    }


def reference(a, b, k, threshold=0.5):
    """Agreement of A against B computed the slow, obvious way (loops over classes and instance pairs)."""
    correct = total = 0
    tp, union = np.zeros(k), np.zeros(k)
    n_a = n_b = matched = 0
    iou_sum = 0.0
    per_image = {}
    for key in sorted(a):
        (sa, ia), (sb, ib) = a[key], b[key]
        valid = sb < k
        correct += int(((sa == sb) & valid).sum())
        total += int(valid.sum())
        img_tp, img_union = np.zeros(k), np.zeros(k)
        for c in range(k):
            pa, pb = (sa == c) & valid, (sb == c) & valid
            img_tp[c] = (pa & pb).sum()
            img_union[c] = (pa | pb).sum()
        tp += img_tp
        union += img_union
        ids_a, ids_b = set(np.unique(ia)) - {0}, set(np.unique(ib)) - {0}
        m, s = 0, 0.0
        for i in ids_a:
            for j in ids_b:
                inter = ((ia == i) & (ib == j)).sum()
                iou = inter / ((ia == i) | (ib == j)).sum()
                if iou > threshold:
                    m, s = m + 1, s + iou
        n_a, n_b, matched, iou_sum = n_a + len(ids_a), n_b + len(ids_b), matched + m, iou_sum + s
        used = img_union > 0
        per_image[key] = {
            "pixel_accuracy": ((sa == sb) & valid).sum() / valid.sum(),
            "miou": (img_tp[used] / img_union[used]).mean(),
            "instance_f1": 2 * m / (len(ids_a) + len(ids_b)),
            "matched": m,
        }
    used = union > 0
    return {
        "pixel_accuracy": correct / total,
        "miou": (tp[used] / union[used]).mean(),
        "matched_fraction": 2 * matched / (n_a + n_b),
        "mean_iou": iou_sum / matched,
        "pq": iou_sum / (0.5 * (n_a + n_b)),
        "matched": matched,
        "per_image": per_image,
    }


def run_compare(a, b, out, *extra):
    assert main(["compare", str(a), str(b), "--out", str(out), "--no-progress", *extra]) == 0
    return json.loads((out / "compare.json").read_text()), read_csv(out / "samples.csv")


def test_an_output_agrees_perfectly_with_itself(synthetic_ds, tmp_path):
    result, rows = run_compare(synthetic_ds, synthetic_ds, tmp_path / "c")
    assert result["samples"] == 12 and result["semantic"]["matching"] == "ids"
    sem, ins = result["semantic"], result["instances"]
    assert sem["pixel_accuracy"] == 1.0 and sem["miou"] == 1.0
    assert ins["matched_fraction"] == 1.0 and ins["mean_iou"] == 1.0 and ins["pq"] == 1.0
    assert ins["matched"] == ins["in_a"] == ins["in_b"] > 0
    assert (rows["pixel_accuracy"] == 1).all() and (rows["instance_f1"] == 1).all()
    assert (tmp_path / "c" / "compare.html").exists()


def test_a_shifted_copy_drops_by_exactly_the_expected_amount(synthetic_ds, tmp_path, capsys):
    shifted = rewrite(synthetic_ds, tmp_path / "shifted", shift)
    result, rows = run_compare(synthetic_ds, shifted, tmp_path / "c")
    expected = reference(maps(synthetic_ds), maps(shifted), k=6)
    sem, ins = result["semantic"], result["instances"]
    assert sem["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-12)
    assert sem["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    for name in ("matched_fraction", "mean_iou", "pq", "matched"):
        assert ins[name] == pytest.approx(expected[name], abs=1e-12), name
    assert 0.8 < sem["pixel_accuracy"] < 0.99 and sem["miou"] < sem["pixel_accuracy"]  # a real, partial drop
    assert 0 < ins["matched_fraction"] < 1 and 0.5 < ins["mean_iou"] < 1
    for j, key in enumerate(rows["key"]):
        for name, value in expected["per_image"][key].items():
            assert rows[name][j] == pytest.approx(value, rel=1e-5), (key, name)
    # The most-disagreeing images are drawn, the worst first.
    worst = result["worst"]["pixel_accuracy"]
    assert worst[0]["value"] == min(v["pixel_accuracy"] for v in expected["per_image"].values())
    assert (tmp_path / "c" / "img" / "worst_pixel_accuracy.jpg").exists()
    assert "pixel accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("rule", ["names", "hungarian"])
def test_class_matching_between_different_label_spaces(synthetic_ds, tmp_path, rule):
    perm = np.array([3, 5, 0, 1, 4, 2])  # A class c is B class perm[c]
    names = ["sky", "grass", "road", "disc", "box", "triangle"]
    b_names = {str(perm[c]): (names[c].upper() if rule == "names" else f"cluster {c}") for c in range(6)}
    lut = np.append(perm, np.arange(6, 256)).astype(np.uint8)
    permuted = rewrite(synthetic_ds, tmp_path / "perm", lambda s, i: (lut[s], i), LabelSpace(b_names))
    result, _ = run_compare(synthetic_ds, permuted, tmp_path / "c")
    assert result["semantic"]["matching"] == rule  # auto picks it
    assert result["semantic"]["pixel_accuracy"] == 1.0 and result["semantic"]["miou"] == 1.0
    assert sorted((a, b) for a, b, _, _ in result["semantic"]["pairs"]) == [(c, int(perm[c])) for c in range(6)]
    # Forcing ids on the permuted space is allowed (same size) and measures the mismatch.
    forced, _ = run_compare(synthetic_ds, permuted, tmp_path / "ids", "--matching", "ids")
    assert forced["semantic"]["pixel_accuracy"] < 0.5


def test_outputs_of_different_plans_are_refused(synthetic_ds, tmp_path, capsys):
    from shards.synthetic import write_synthetic_dataset

    other = tmp_path / "other"
    write_synthetic_dataset(other, 8, 4, seed=1)
    m = json.loads((other / "manifest.json").read_text())
    m["plan"]["listing_sha256"] = "different"
    (other / "manifest.json").write_text(json.dumps(m))
    assert main(["compare", str(synthetic_ds), str(other), "--out", str(tmp_path / "c")]) == 2
    assert "different inputs" in capsys.readouterr().err
    assert main(["compare", str(synthetic_ds), str(synthetic_ds), "--iou", "0.3"]) == 2
