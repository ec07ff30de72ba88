"""A pipelined labeling actor: while the device runs one batch, the host finishes another.

The `fixed-cost` labeler spends D ms per image on a simulated device (a wait that releases the GIL,
as a CUDA event wait does) and H ms per image on the host (spinning, holding the GIL, as Python
post-processing does). Through the real job, one batch at a time runs at 1/(H + D); with batches in
flight the rate approaches 1/max(H, D), and the job's per-stage timings show the overlap."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from test_pool_faults import exactly_once, tiny_tree

from c2f.cli import main as c2f_main
from labeler.config import LabelerConfig, Settings

H = D = 0.02  # seconds per image; batches of 2, so 40 ms of each per batch
SUMMARY = re.compile(
    r"labelers: device (?P<device>[\d.]+), host (?P<host>[\d.]+); actors busy [\d.]+ per image "
    r"\((?P<rate>[\d.]+) images/s while busy\), stages overlapped (?P<overlap>[\d.]+)x"
)


def _job(inp, out, batches: int, capsys) -> dict[str, float]:
    args = [str(inp), str(out), "--preset", "fixed-cost", "--fixed-cost-seconds", str(D)]
    args += ["--fixed-cost-host-seconds", str(H), "--batch-size", "2", "--samples-per-shard", "8", "--no-validate"]
    assert c2f_main(["label", *args, "--actor-batches", str(batches)]) == 0
    text = capsys.readouterr().out
    m = SUMMARY.search(text)
    assert m, text
    exactly_once(inp, out)
    return {k: float(v) for k, v in m.groupdict().items()}


def test_the_actor_overlaps_one_batch_on_the_host_with_the_next_on_the_device():
    """The actor's own code path, called from threads as Ray's threaded actor calls it."""
    from pipelines.pool import LabelActor

    settings = Settings(LabelerConfig(preset="fixed-cost", fixed_cost_seconds=D, fixed_cost_host_seconds=H))
    images = [np.zeros((8, 8, 3), np.uint8)] * 2

    def run(threads: int) -> tuple[float, float]:
        actor = LabelActor(settings, 1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            assert all(len(r) == 2 for r in pool.map(actor.label, [images] * 12))
        rate = 24 / (time.perf_counter() - t0)
        t = actor.timings()
        assert t["labeled"] == 24 and t["device_ms"] == pytest.approx(24 * 1000 * D)
        return rate, (t["device_ms"] + t["host_ms"]) / t["busy_ms"]

    pairs = []
    for _ in range(3):  # the best of three pairs: other load on the machine only slows a run
        (serial, serial_overlap), (piped, piped_overlap) = run(1), run(3)
        assert serial <= 1.05 / (H + D) and serial_overlap <= 1.1 and piped <= 1.05 / max(H, D)
        pairs.append((piped / serial, piped_overlap))
        if pairs[-1][0] >= 1.7 and piped_overlap >= 1.6:
            break
    ratio, overlap = max(pairs)
    assert ratio >= 1.7 and overlap >= 1.6, pairs


@pytest.mark.slow
def test_pipelined_actor_overlaps_host_and_device_time(tmp_path, capsys, monkeypatch):
    import ray

    inp = tmp_path / "in"
    tiny_tree(inp, 48)
    # One Ray for the jobs, as on a cluster, with the CPUs of a node that feeds its actor from
    # several shard tasks (they mostly wait for labels), and its workers at the machine's priority:
    # Ray starts them at nice 15, so on a shared machine any other load would starve the job.
    monkeypatch.setenv("RAY_worker_niceness", "0")
    ray.init(
        address="local",
        num_cpus=6,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    runs, fair = [], []
    try:
        # Timing on a shared machine: other load only slows a run, so the best of three pairs counts,
        # among the pairs whose serial run got the CPU it needs (its host spin took about H and its
        # rate came near 1/(H + D)); the pipelined run gets no such allowance.
        for attempt in range(3):
            serial = _job(inp, tmp_path / f"serial{attempt}", 1, capsys)
            pipelined = _job(inp, tmp_path / f"pipelined{attempt}", 3, capsys)
            runs.append((pipelined["rate"] / serial["rate"], serial, pipelined))
            if serial["host"] <= 1.25 * 1000 * H and serial["rate"] >= 0.8 / (H + D):
                fair.append(runs[-1])
                if runs[-1][0] >= 1.7 and pipelined["overlap"] >= 1.7:
                    break
    finally:
        ray.shutdown()
    for _, serial, pipelined in runs:
        assert serial["device"] == pytest.approx(1000 * D) and serial["host"] >= 1000 * H
        # One batch at a time: at best 1/(H + D), the stages one after the other.
        assert serial["rate"] <= 1.05 / (H + D) and serial["overlap"] <= 1.1
        assert pipelined["rate"] <= 1.05 / max(H, D)
    if not fair:
        pytest.skip(f"the machine is too busy to time this: serial runs {[r[1] for r in runs]}")
    # Three in flight with H = D: towards 1/max(H, D), twice the serial rate, the stages side by side.
    ratio, serial, pipelined = max(fair, key=lambda r: r[0])
    assert ratio >= 1.7 and pipelined["overlap"] >= 1.7, runs
