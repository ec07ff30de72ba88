"""A pool that heals: on a local cluster, the labeling actor is killed more often than the old
lifetime limit of three restarts allowed; a job whose failures exceed the hourly budget ends with
exit 1 and a rerun resumes; the job that survives every kill labels every input exactly once."""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import REPO, ray_cluster
from test_pool_faults import exactly_once, tiny_tree

from c2f.cli import main as c2f_main
from pipelines.pool import HOUR, FailureBudget

pytestmark = pytest.mark.slow


def test_failure_budget_is_a_rate_over_the_last_hour():
    budget = FailureBudget(2)
    assert budget.add(0.0) == 1 and budget.add(10.0) == 2 and not budget.exceeded()
    assert budget.add(20.0) == 3 and budget.exceeded()
    # an hour later the old failures no longer count: a long job may fail many times in all
    assert budget.add(10.0 + HOUR) == 2 and not budget.exceeded()
    assert budget.add(3 * HOUR) == 1


def _actors(cluster) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if "ray::LabelActor" in " ".join(p.info["cmdline"] or []) and cluster.owns(p):
            out.append(p)
    return out


class Driver:
    """A `c2f label` subprocess whose output lines are collected as they come."""

    def __init__(self, cluster, inp, out, *flags):
        env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        cmd = [sys.executable, "-m", "c2f", "label", str(inp), str(out), "--address", cluster.address]
        cmd += ["--preset", "fixed-cost", "--fixed-cost-seconds", "0.05", "--batch-size", "2"]
        cmd += ["--samples-per-shard", "4", *flags]
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True),
            threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def finish(self, timeout: float) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=30)
        return code, "".join(self.lines), "".join(self.err)

    def kill_actor_repeatedly(self, cluster, out, kills: int) -> int:
        """SIGKILL the labeling actor `kills` times: first once a shard is done, then each time once
        the driver has seen it come back and a shard has finished since (so the pool really labeled in
        between); returns the kills made."""
        made, killed = 0, set()
        done_at_back = None  # shards done when the driver said the actor was back
        deadline = time.monotonic() + 240
        while made < kills and self.proc.poll() is None and time.monotonic() < deadline:
            done = len(list(out.glob("*.stats.json")))
            backs = sum("is back after" in line for line in self.lines)
            if backs == made and done_at_back is None:
                done_at_back = done
            if done_at_back is not None and done > done_at_back and (made == 0 or backs == made):
                for actor in _actors(cluster):
                    if actor.pid not in killed:
                        killed.add(actor.pid)
                        actor.send_signal(signal.SIGKILL)
                        made += 1
                        done_at_back = None
                        break
            time.sleep(0.1)
        return made


def test_pool_survives_more_actor_deaths_than_the_old_limit(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    tiny_tree(inp, 64)
    with ray_cluster(num_cpus=2) as cluster:
        # A budget of one failure per hour: the second death ends the job, exit 1, shards kept.
        job = Driver(cluster, inp, out, "--max-actor-failures-per-hour", "1", "--no-validate")
        assert job.kill_actor_repeatedly(cluster, out, 2) == 2
        code, stdout, stderr = job.finish(timeout=240)
        assert code == 1, stdout + stderr
        assert "labeling actors failed 2 times in the last hour, more than --max-actor-failures-per-hour 1" in stderr
        assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
        kept = len(list(out.glob("*.stats.json")))
        assert 0 < kept < 16

        # The same command with the default budget: five deaths in one job (the old limit was three).
        job = Driver(cluster, inp, out)
        assert job.kill_actor_repeatedly(cluster, out, 5) == 5, "the job finished before five kills"
        code, stdout, stderr = job.finish(timeout=300)
        assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert stdout.count("labeling actor 0 (pid") >= 5 and stdout.count("is back after") >= 5, stdout
    assert "SYSTEM_ERROR" in stdout  # the cause Ray recorded for the killed process
    assert "labeling-actor failure(s) survived" in stdout and "OK:" in stdout
    done_before = sum(1 for line in stdout.splitlines() if "were done before it (resumed)" in line)
    assert done_before == 1 and f"{kept * 4} were done before it (resumed)" in stdout
    seen, quarantined = exactly_once(inp, out)
    assert len(seen) == 64 and quarantined == []
    assert c2f_main(["validate", str(out), "--no-progress"]) == 0


def test_an_unplaceable_pool_ends_after_wait_timeout_and_a_dead_actor_is_replaced(tmp_path):
    import ray

    inp, out = tmp_path / "in", tmp_path / "out"
    tiny_tree(inp, 48)
    with ray_cluster(num_cpus=2, num_gpus=1) as cluster:
        job = Driver(cluster, inp, out, "--gpus-per-actor", "1", "--wait-timeout", "5", "--no-validate")
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:

            class Hog:  # another job's actor, queued for the GPU the labeling actor holds
                def ping(self):
                    return 1

            _wait_for_shards(out, 1)
            hog = ray.remote(num_cpus=0, num_gpus=1)(Hog).remote()
            (actor,) = _actors(cluster)
            actor.send_signal(signal.SIGKILL)  # its GPU goes to the hog, queued first
            assert ray.get(hog.ping.remote(), timeout=60) == 1
            code, stdout, stderr = job.finish(timeout=120)
            assert code == 1, stdout + stderr
            assert "gave up after --wait-timeout 5s: no labeling actor could be placed again" in stderr
            assert "Traceback" not in stderr
            ray.kill(hog)

            # The rerun: its actor is killed for good (`ray kill`: Ray will not restart it), and a
            # new actor takes its place.
            done = len(list(out.glob("*.stats.json")))
            job = Driver(cluster, inp, out, "--gpus-per-actor", "1", "--wait-timeout", "60")
            _wait_for_shards(out, done + 1)
            (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "labeler-" in a["name"]]
            ray.kill(ray.get_actor(name, namespace="c2f"))
            code, stdout, stderr = job.finish(timeout=180)
            assert code == 0, stdout + stderr
            assert "cannot be restarted (" in stdout and "a new actor takes its place" in stdout
            assert "labeling-actor failure(s) survived" in stdout
        finally:
            ray.shutdown()
    seen, quarantined = exactly_once(inp, out)
    assert len(seen) == 48 and quarantined == []


def _wait_for_shards(out, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.glob("*.stats.json"))) < n:
        assert time.monotonic() < deadline, f"fewer than {n} shards done after {timeout}s"
        time.sleep(0.1)
