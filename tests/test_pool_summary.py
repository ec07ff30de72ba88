"""The final line of a job tells this run from the runs before it: how many inputs it labeled, how
many were already done (resumed), and its own rate."""

import re
import shutil

import pytest

from c2f.cli import main as c2f_main
from pipelines.plan import make_plan
from shards import format as fmt

DONE = re.compile(
    r"done: (?P<total>\d+) images in (?P<shards>\d+) shards, 0 quarantined \(.*\); "
    r"this run labeled (?P<run>\d+) inputs \((?P<run_shards>\d+) shards\) in (?P<secs>[\d.]+)s, "
    r"(?P<rate>[\d.]+) images/s; (?P<resumed>\d+) were done before it \(resumed\)"
)


def test_a_resumed_run_reports_what_it_labeled_and_its_own_rate(sample_tree, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["label", str(sample_tree), str(out), "--samples-per-shard", "2", "--preset", "empty", "--no-validate"]
    assert c2f_main(args) == 0
    first = DONE.search(capsys.readouterr().out)
    assert first and first["total"] == first["run"] == "7" and first["resumed"] == "0"

    plan = make_plan(sample_tree, 2)
    lost = [1, 3]  # shards of 2 inputs each: 4 inputs to redo, 3 kept
    for i in lost:
        (out / plan.shard_name(i)).unlink()
    assert c2f_main(args) == 0
    m = DONE.search(capsys.readouterr().out)
    assert m, "no final line"
    redone = sum(len(plan.shard_items(i)) for i in lost)
    assert (int(m["total"]), int(m["shards"])) == (7, 4)
    assert (int(m["run"]), int(m["run_shards"]), int(m["resumed"])) == (redone, 2, 7 - redone)
    assert float(m["rate"]) == pytest.approx(redone / float(m["secs"]), rel=0.05, abs=0.15)  # both rounded

    # A stats file copied under another name (by hand, a sync tool) is its shard once more: counted once.
    stats = out / fmt.stats_name(plan.shard_name(0))
    shutil.copy(stats, stats.with_name("copy-" + stats.name))
    assert c2f_main(args) == 0  # nothing left to do: nothing labeled, everything resumed
    m = DONE.search(capsys.readouterr().out)
    assert (int(m["run"]), int(m["run_shards"]), int(m["resumed"]), float(m["rate"])) == (0, 0, 7, 0.0)
