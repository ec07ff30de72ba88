"""`c2f label --estimate N`: a timed sample projects the whole run and leaves OUTPUT alone."""

import re

from c2f.cli import main
from pipelines.distributor import RunResult
from pipelines.estimate import Estimate, sample_plan
from pipelines.plan import make_plan


def test_sample_plan_spreads_over_the_input(sample_tree):
    plan = make_plan(sample_tree, 2)
    sub = sample_plan(plan, 3, shard_size=1)
    assert len(sub.items) == 3 and sub.num_shards == 3
    assert len({it.synset for it in sub.items}) == 3  # spread, not the first three of one class
    assert sample_plan(plan, 100, 4).items == plan.items


def test_steady_rate_excludes_start_up():
    r = RunResult()
    r.finished = [(10.0, 8, 9.0), (12.0, 8, 2.0), (14.0, 8, 2.0)]  # the first shard paid the start-up
    r.images = 24
    assert r.steady_rate() == 16 / 4.0
    e = Estimate(images=1_281_167, shards=1282, sampled=200, images_per_s=40.0, gpus=1.0, bytes_per_sample=150e3)
    assert abs(e.hours - 1_281_167 / 40 / 3600) < 1e-9
    assert "8.9 GPU-hours on 1 GPU(s)" in e.format() and "1282 shards, 192.2 GB" in e.format()


def test_estimate_runs_the_pool_on_a_sample_and_writes_nothing(sample_tree, tmp_path, capsys):
    out = tmp_path / "never"
    args = ["label", str(sample_tree), str(out), "--preset", "fixed-cost", "--samples-per-shard", "2"]
    assert main([*args, "--fixed-cost-seconds", "0.05", "--batch-size", "1", "--estimate", "5"]) == 0
    text = capsys.readouterr().out
    m = re.search(r"estimate from 5 images: ([\d.]+) images/s -> 7 images in [\d.]+ h \(no GPUs\); 4 shards", text)
    assert m and 0 < float(m.group(1)) <= 20.5  # at most 1 / 0.05 s per image, with one actor
    assert not out.exists()
