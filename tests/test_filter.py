"""`c2f filter`: SQL conditions evaluated by DuckDB with no access to files, exact selection over the
report's table or the shards' own, and subset files that the reader, wids and `c2f pretrain --subset`
read without any shard being rewritten."""

import json
import shutil

import pyarrow as pa
import pytest

from c2f.cli import main
from quality.query import ConditionError, select
from shards.subset import load_subset

TABLE = pa.table(
    {
        "key": ["n07920052_coffee", "n01440764_1", "n01440764_2", "n01440764_3", "n01440764_4"],
        "shard": ["s0", "s0", "s1", "s1", "s1"],
        "index": [0, 1, 0, 1, None],
        "status": ["packed", "packed", "packed", "packed", "quarantined"],
        "cls": ["n07920052", "n01440764", "n01440764", "n01440764", "n01440764"],
        "instances": [5, 4, 1, 7, None],
        "coverage": [0.95, 0.5, None, 0.2, None],
        "score": [0.9, None, 0.7, 0.3, None],
    }
)


@pytest.mark.parametrize(
    "where, keys",
    [
        ("cls = 'n01440764' AND instances > 3", ["n01440764_1", "n01440764_3"]),  # the quarantined one never
        ("coverage BETWEEN 0.2 AND 0.9", ["n01440764_1", "n01440764_3"]),  # NULL is not between anything
        ("key LIKE '%coffee%'", ["n07920052_coffee"]),
        ("score IS NULL", ["n01440764_1"]),  # an undefined measure
        ("coverage > 0.5 OR score < 0.5", ["n07920052_coffee", "n01440764_3"]),
        ("NOT (coverage > 0.5)", ["n01440764_1", "n01440764_3"]),  # NOT NULL is NULL: not selected
        ("shard = 's1' AND instances * 2 - 1 >= 3", ["n01440764_3"]),
        (
            "cls IN ('n07920052', 'n09999999') OR regexp_matches(key, '_[12]$')",
            [
                "n07920052_coffee",
                "n01440764_1",
                "n01440764_2",
            ],
        ),
        ("instances / 0 > 1", ["n07920052_coffee", "n01440764_1", "n01440764_2", "n01440764_3"]),  # inf
        (
            "current_setting('enable_external_access') = false",
            [
                "n07920052_coffee",
                "n01440764_1",
                "n01440764_2",
                "n01440764_3",
            ],
        ),  # the condition runs with no file access
    ],
)
def test_sql_conditions(where, keys):
    picked, total = select(where, TABLE)
    assert picked.column("key").to_pylist() == keys and total == 4
    assert picked.column_names == ["key", "shard", "index"]


@pytest.mark.parametrize(
    "where, message",
    [
        ("", "--where is empty"),
        ("coverage >", "Parser Error"),
        ("read_csv('/etc/passwd') IS NOT NULL", "is a table function"),
        ("EXISTS (SELECT * FROM read_text('/etc/passwd'))", "a subquery is not allowed"),
        ("key IN (SELECT key FROM samples)", "a subquery is not allowed"),
        ("(SELECT count(*) FROM range(1000000000000)) > 0", "a subquery is not allowed"),
        ("COPY (SELECT 1) TO '/tmp/c2f-owned.csv'", "Parser Error"),
        ("1=1; DROP TABLE samples", "more than one statement"),
        ("1=1); COPY samples TO '/tmp/c2f-owned.csv'; SELECT (1", "Parser Error"),
        ("1=1) UNION SELECT key, shard, index FROM samples WHERE (1=1", "Parser Error"),
        ("coverage, instances", "single expression"),
        ("instances + 1", "must be a condition"),
        ("NULL", "must be a condition"),
        ("bogus > 1", 'Referenced column "bogus" not found'),
        ("key > 1", "Cannot compare values of type VARCHAR"),
        ("st_area(key) > 1", "spatial extension"),  # never installed nor loaded
    ],
)
def test_refused_conditions_are_one_line_usage_errors(where, message, tmp_path):
    with pytest.raises(ConditionError, match="--where") as e:
        select(where, TABLE)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "c2f-owned.csv").exists()


@pytest.fixture
def reported(synthetic_ds):
    assert main(["report", str(synthetic_ds), "--no-progress", "--worst", "0"]) == 0
    return synthetic_ds


def _subset_keys(path):
    d = json.loads(path.read_text())
    return [k for keys in d["c2f_subset"]["keys"].values() for k in keys], d


def test_filter_selects_exactly_the_matching_samples(reported, tmp_path, capsys):
    import pandas as pd

    where = "coverage > 0.5 AND instances >= 4 AND score < 0.8 AND purity = 1"  # purity: a report measure
    out = tmp_path / "keep.json"
    assert main(["filter", str(reported), "--where", where, "--out", str(out)]) == 0
    rows = pd.read_parquet(reported / "report" / "samples.parquet")
    want = rows["key"][(rows["coverage"] > 0.5) & (rows["instances"] >= 4) & (rows["score"] < 0.8)].tolist()
    assert 0 < len(want) < 12  # a real selection
    got, d = _subset_keys(out)
    assert got == want and d["c2f_subset"]["selected"] == len(want) and d["c2f_subset"]["where"] == where
    assert f"{len(want)} of 12 samples" in capsys.readouterr().out
    # A key list holds the same keys.
    txt = tmp_path / "keep.txt"
    assert main(["filter", str(reported), "--where", where, "--out", str(txt)]) == 0
    assert txt.read_text().split() == want
    assert load_subset(txt).keys == load_subset(out).keys == frozenset(want)


def test_without_a_report_the_shards_tables_answer(synthetic_ds, tmp_path, capsys):
    import pandas as pd

    rows = pd.concat(pd.read_parquet(p) for p in sorted(synthetic_ds.glob("*.parquet")))
    for where, want in [
        ("cls = '4' AND instances > 3", rows["key"][(rows["cls"] == "4") & (rows["instances"] > 3)]),
        ("score BETWEEN 0.65 AND 0.8", rows["key"][(rows["score"] >= 0.65) & (rows["score"] <= 0.8)]),
        ("key LIKE '%0000001_'", rows["key"][rows["key"].str.match(r"scene_0000001\d$")]),
    ]:
        out = tmp_path / "keep.json"
        assert main(["filter", str(synthetic_ds), "--where", where, "--out", str(out)]) == 0
        assert 0 < len(want) < 12 and _subset_keys(out)[0] == want.tolist(), where
        assert "(the shards' tables)" in capsys.readouterr().out
    assert main(["filter", str(synthetic_ds), "--where", "purity > 0.5", "--out", str(out)]) == 2
    assert 'Referenced column "purity" not found' in capsys.readouterr().err  # a measure of the report only


def test_a_refused_condition_is_one_line_and_exit_2(synthetic_ds, tmp_path, capsys):
    for where in ["read_csv('/etc/passwd') IS NOT NULL", "1=1; COPY (SELECT 1) TO 'x.csv'"]:
        assert main(["filter", str(synthetic_ds), "--where", where, "--out", str(tmp_path / "k.json")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --where: ") and err.count("\n") == 1, err
    assert not (tmp_path / "k.json").exists()


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
            main(["filter", str(reported), "--where", "shard = 'syn-000001.tar'", "--out", str(tmp_path / name)]) == 0
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


def test_stale_report_or_no_table_at_all(synthetic_ds, tmp_path, capsys):
    assert main(["report", str(synthetic_ds), "--no-progress", "--worst", "0"]) == 0
    m = json.loads((synthetic_ds / "manifest.json").read_text())
    m["shards"][0]["sha256"] = "0" * 64  # relabeled since
    (synthetic_ds / "manifest.json").write_text(json.dumps(m))
    assert main(["filter", str(synthetic_ds), "--where", "coverage > 0", "--out", str(tmp_path / "k.json")]) == 2
    assert "run `c2f report` again" in capsys.readouterr().err
    assert main(["filter", str(synthetic_ds), "--where", "coverage > 0", "--out", str(tmp_path / "k.csv")]) == 2
    assert "name it .json" in capsys.readouterr().err
    # An output made before per-sample tables, without a report: nothing to filter on yet.
    shutil.rmtree(synthetic_ds / "report")
    for p in synthetic_ds.glob("*.parquet"):
        p.unlink()
    assert main(["filter", str(synthetic_ds), "--where", "coverage > 0", "--out", str(tmp_path / "k.json")]) == 2
    assert "no per-sample tables" in capsys.readouterr().err
