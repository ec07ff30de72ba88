"""`c2f filter`: the condition language (parsed, never eval'd), exact selection, and subset files
that the reader, wids and `c2f pretrain --subset` read without any shard being rewritten."""

import json

import numpy as np
import pytest

from c2f.cli import main
from quality.table import read_csv
from quality.where import ExprError, parse, select
from shards.subset import load_subset


@pytest.fixture
def reported(synthetic_ds):
    assert main(["report", str(synthetic_ds), "--no-progress", "--worst", "0"]) == 0
    return synthetic_ds


COLS = {
    "coverage": np.array([0.2, 0.6, 0.9, np.nan]),
    "instances": np.array([0.0, 1.0, 3.0, 2.0]),
    "score": np.array([np.nan, 0.5, 0.9, 0.7]),
    "key": np.array(["a", "b", "c", "d"]),
    "shard": np.array(["s0", "s0", "s1", "s1"]),
}


@pytest.mark.parametrize(
    "where, expected",
    [
        ("coverage > 0.5", [0, 1, 1, 0]),  # NaN compares false
        ("coverage > 0.5 and instances >= 1", [0, 1, 1, 0]),
        ("coverage < 0.5 or instances >= 2 and score > 0.8", [1, 0, 1, 0]),  # and binds tighter than or
        ("(coverage < 0.5 or instances >= 2) and score > 0.8", [0, 0, 1, 0]),
        ("not (score >= 0)", [1, 0, 0, 0]),  # the undefined ones
        ("0.5 < coverage <= 0.9", [0, 1, 1, 0]),  # chained
        ("instances * 2 - 1 >= 3", [0, 0, 1, 1]),
        ("-score < -0.6", [0, 0, 1, 1]),
        ("shard == 's1' and key != \"d\"", [0, 0, 1, 0]),
        ("instances / 0 > 1", [0, 1, 1, 1]),  # inf; 0/0 is NaN
        ("not not instances == 0", [1, 0, 0, 0]),
        ("1e-1 < .7", [1, 1, 1, 1]),
    ],
)
def test_condition_language(where, expected):
    assert select(where, COLS).tolist() == [bool(x) for x in expected]


@pytest.mark.parametrize(
    "where, message",
    [
        ("", "empty"),
        ("coverage >", "expected a number"),
        ("(coverage > 1", "expected ')'"),
        ("coverage > 1 instances", "expected 'and', 'or' or the end"),
        ("coverage + 1", "must be a condition"),
        ("coverage and instances > 1", "combine conditions"),
        ("key > 'a'", "text compares only"),
        ("key == 1", "compares text with a number"),
        ("bogus > 1", "no measure 'bogus'"),
        ("coverage > 0.5; import os", "unexpected ';'"),
        ("__import__('os').system('touch /tmp/x')", "unexpected '.'"),
        ("coverage.__class__", "unexpected '.'"),
        ("[x for x in ()]", "unexpected '['"),
    ],
)
def test_bad_conditions_are_one_line_usage_errors(where, message):
    with pytest.raises(ExprError, match="--where") as e:
        select(where, COLS)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_parser_builds_no_code():
    assert parse("a > 1 and not b") == ("and", ("cmp", [("name", "a"), ("num", 1.0)], [">"]), ("not", ("name", "b")))


def test_filter_selects_exactly_the_matching_samples(reported, tmp_path, capsys):
    where = "coverage > 0.5 and instances >= 4 and score < 0.8"
    out = tmp_path / "keep.json"
    assert main(["filter", str(reported), "--where", where, "--out", str(out)]) == 0
    rows = read_csv(reported / "report" / "samples.csv")
    want = rows["key"][(rows["coverage"] > 0.5) & (rows["instances"] >= 4) & (rows["score"] < 0.8)].tolist()
    assert 0 < len(want) < 12  # a real selection
    d = json.loads(out.read_text())
    got = [k for keys in d["c2f_subset"]["keys"].values() for k in keys]
    assert got == want and d["c2f_subset"]["selected"] == len(want) and d["c2f_subset"]["where"] == where
    assert f"{len(want)} of 12 samples" in capsys.readouterr().out
    # A key list holds the same keys.
    txt = tmp_path / "keep.txt"
    assert main(["filter", str(reported), "--where", where, "--out", str(txt)]) == 0
    assert txt.read_text().split() == want
    assert load_subset(txt).keys == load_subset(out).keys == frozenset(want)


def test_reader_and_wids_read_exactly_the_subset(reported, tmp_path):
    from shards.reader import make_dataset

    out = tmp_path / "sub" / "keep.json"
    out.parent.mkdir()
    assert main(["filter", str(reported), "--where", "instances <= 3", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    want = sorted(k for keys in d["c2f_subset"]["keys"].values() for k in keys)
    assert 0 < len(want) < 12
    keys = sorted(s["__key__"] for s in make_dataset(str(reported), shuffle=0, subset=str(out)))
    assert keys == want
    # Only the shards that hold a selected sample are listed (and read).
    assert load_subset(out).restrict([str(reported / n) for n in ("syn-000000.tar", "syn-000001.tar")]) == [
        str(reported / n) for n in ("syn-000000.tar", "syn-000001.tar") if n in d["c2f_subset"]["keys"]
    ]
    # wids: the file is a dataset description; `indices` address the selected samples in it.
    import torch
    import wids

    ds = wids.ShardListDataset(str(out), cache_dir=str(tmp_path / "cache"), transformations=[])
    got = sorted(torch.utils.data.Subset(ds, d["c2f_subset"]["indices"])[i]["__key__"] for i in range(len(want)))
    assert got == want


def test_pretrain_trains_on_a_subset(reported, tmp_path, capsys):
    from shards.reader import make_dataset

    run = tmp_path / "run"
    args = ["--steps", "2", "--batch-size", "2", "--model", "c2fmae_vit_micro", "--workers", "0", "--vis-every", "0"]
    for name in ("keep.json", "keep.txt"):
        assert (
            main(["filter", str(reported), "--where", "shard == 'syn-000001.tar'", "--out", str(tmp_path / name)]) == 0
        )
    assert main(["pretrain", str(reported), "--output", str(run), "--subset", str(tmp_path / "keep.json"), *args]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # A plain key list names no shards: fine for one pass, refused for a repeating stream (it could spin forever).
    assert len(list(make_dataset(str(reported), shuffle=0, subset=str(tmp_path / "keep.txt")))) == 4
    assert main(["pretrain", str(reported), "--output", str(run), "--subset", str(tmp_path / "keep.txt"), *args]) == 2
    assert "plain key list" in capsys.readouterr().err
    assert main(["filter", str(reported), "--where", "instances > 99", "--out", str(tmp_path / "none.json")]) == 0
    assert main(["pretrain", str(reported), "--output", str(run), "--subset", str(tmp_path / "none.json"), *args]) == 2
    assert "selects no sample" in capsys.readouterr().err


def test_stale_or_missing_report(synthetic_ds, tmp_path, capsys):
    assert main(["filter", str(synthetic_ds), "--where", "coverage > 0", "--out", str(tmp_path / "k.json")]) == 2
    assert "c2f report" in capsys.readouterr().err
    assert main(["report", str(synthetic_ds), "--no-progress", "--worst", "0"]) == 0
    m = json.loads((synthetic_ds / "manifest.json").read_text())
    m["shards"][0]["sha256"] = "0" * 64  # relabeled since
    (synthetic_ds / "manifest.json").write_text(json.dumps(m))
    assert main(["filter", str(synthetic_ds), "--where", "coverage > 0", "--out", str(tmp_path / "k.json")]) == 2
    assert "run `c2f report` again" in capsys.readouterr().err
    assert main(["filter", str(synthetic_ds), "--where", "coverage > 0", "--out", str(tmp_path / "k.csv")]) == 2
    assert "name it .json" in capsys.readouterr().err
