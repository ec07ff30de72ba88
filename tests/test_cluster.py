"""On a shared cluster: what no node can hold is refused at once, a busy cluster is waited for
with a message and `--wait-timeout`, and the suite's results do not depend on other clusters."""

import subprocess
import sys
import time

import pytest
from conftest import REPO, ray_cluster

from c2f.cli import main

pytestmark = pytest.mark.slow

# A preset with a labeling actor, but no model to load (`empty` has no actors at all).
ACTOR_PRESET = ["--preset", "fixed-cost", "--fixed-cost-seconds", "0"]


def test_request_no_node_can_hold_exits_2_within_seconds(sample_tree, tmp_path, capsys):
    with ray_cluster(num_cpus=1) as cluster:
        for flag, value in [("--cpus-per-actor", "2"), ("--gpus-per-actor", "1"), ("--cpus-per-shard", "1.5")]:
            t0 = time.monotonic()
            args = [str(sample_tree), str(tmp_path / "o"), *ACTOR_PRESET, "--address", cluster.address]
            code = main(["label", *args, flag, value])
            err = capsys.readouterr().err
            assert code == 2, err
            assert f"error: {flag} {value}: no node of the cluster has {value}" in err and f"lower {flag}" in err
            assert time.monotonic() - t0 < 60
            assert "Traceback" not in err


def test_busy_cluster_says_what_it_waits_for_and_wait_timeout_ends_it(sample_tree, tmp_path, capsys):
    import ray

    with ray_cluster(num_cpus=2, num_gpus=1) as cluster:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:

            class Hog:  # another job's actor, holding the only GPU
                def ping(self):
                    return 1

            hog = ray.remote(num_cpus=0, num_gpus=1)(Hog).remote()
            ray.get(hog.ping.remote())
            # The cluster's free-resource view trails the placement by up to a second or so: the
            # job must see the GPU taken, or it would start its actor and wait for the GPU instead.
            deadline = time.monotonic() + 30
            while ray.available_resources().get("GPU", 0) > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            args = [str(sample_tree), str(tmp_path / "o"), *ACTOR_PRESET, "--address", cluster.address]
            t0 = time.monotonic()
            code = main(["label", *args, "--gpus-per-actor", "1", "--wait-timeout", "3"])
            out, err = capsys.readouterr()
            assert code == 1, err
            assert 3 <= time.monotonic() - t0 < 60
            assert "waiting (0s) for 1 labeling actor(s) of 1 CPU, 1 GPU" in out
            assert "need 1.5 CPU, 1 GPU free; other jobs hold the rest; cluster free now: 2 CPU, 0 GPU" in out
            assert "error: gave up after --wait-timeout 3s waiting for" in err and "Traceback" not in err

            ray.kill(hog)  # the GPU is free again: the same job runs
            time.sleep(1)
            assert main(["label", *args, "--gpus-per-actor", "1", "--wait-timeout", "60"]) == 0
        finally:
            ray.shutdown()


def test_suite_gives_the_same_result_with_another_cluster_running():
    # A developer's `ray start --head` (or a labeling job) on the same machine: the tests that use
    # `--address local` and an explicit address still pass, and do not join it.
    with ray_cluster(num_cpus=1):
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_label_local.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert r.returncode == 0, r.stdout[-3000:]
