"""End to end on a real Ray cluster: `ray start --head`, `ray job submit`, SIGKILL a labeling
actor mid-run (Ray must restart it), SIGKILL the job's driver mid-run, rerun the same command,
and prove that every input is in exactly one shard or once in the quarantine, with its bytes."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import ray_cluster
from PIL import Image

from c2f.cli import main as c2f_main
from pipelines.plan import make_plan

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def cluster():
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this environment's
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "TQDM_DISABLE": "1",
    }
    with ray_cluster(num_cpus=2, dashboard=True, env=env) as c:
        yield env, c


def _inputs(root: Path, n_good: int) -> None:
    """n_good small photos in ImageNet layout, plus bad inputs of each kind."""
    rng = np.random.default_rng(0)
    src = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((REPO / "samples/train").glob("*/*.JPEG"))]
    for i in range(n_good):
        syn = f"n0{1000000 + i % 3:07d}"
        (root / syn).mkdir(parents=True, exist_ok=True)
        im = src[i % len(src)]
        h, w = im.shape[:2]
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        buf = io.BytesIO()
        Image.fromarray(im[y : y + h // 2, x : x + w // 2]).save(buf, "JPEG", quality=85)
        (root / syn / f"{syn}_{i:04d}.JPEG").write_bytes(buf.getvalue())
    bad = root / "n01000000"
    (bad / "n01000000_bad_empty.JPEG").write_bytes(b"")
    (bad / "n01000000_bad_trunc.JPEG").write_bytes((bad / "n01000000_0000.JPEG").read_bytes()[:400])
    buf = io.BytesIO()
    Image.fromarray(src[0][:64, :64]).convert("CMYK").save(buf, "JPEG")
    (bad / "n01000000_bad_cmyk.JPEG").write_bytes(buf.getvalue())


def _submit(env, address, args, wait: bool):
    cmd = [BIN / "ray", "job", "submit", "--address", address, "--working-dir", str(REPO)]
    cmd += [] if wait else ["--no-wait"]
    cmd += ["--", "python", "-m", "c2f", "label", *args, "--address", "auto"]
    deadline = time.time() + 120
    while True:  # the job agent registers a little after `ray start` returns (longer on a loaded machine)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in r.stderr or time.time() > deadline:
            return r
        time.sleep(2)


def _wait_for(pred, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = pred()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _procs(cluster, needle: str):
    """This cluster's processes whose command line holds `needle` (other clusters may be running)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if needle in cmd and cluster.owns(p):
            out.append(p)
    return out


def test_job_survives_actor_and_driver_kills(cluster, tmp_path):
    env, c = cluster
    address = c.dashboard
    inp, out = tmp_path / "in", tmp_path / "out"
    _inputs(inp, 60)
    args = [
        str(inp),
        str(out),
        "--preset",
        "fixed-cost",
        "--fixed-cost-seconds",
        "0.1",
        "--samples-per-shard",
        "3",
        "--batch-size",
        "2",
    ]

    r = _submit(env, address, args, wait=False)
    assert r.returncode == 0, r.stderr
    done = lambda: len(list(out.glob("*.stats.json")))  # noqa: E731
    _wait_for(lambda: done() >= 3, 180, "three shards")
    (actor,) = _wait_for(lambda: _procs(c, "ray::LabelActor"), 30, "the labeling actor")
    actor.send_signal(signal.SIGKILL)  # Ray restarts it; its in-flight calls are retried
    killed_at = done()
    _wait_for(lambda: done() >= killed_at + 3, 180, "progress after the actor was killed")
    (driver,) = _wait_for(lambda: [p for p in _procs(c, "-m c2f label") if "python" in p.name()], 30, "the driver")
    driver.send_signal(signal.SIGKILL)
    partial = done()
    assert partial < 21, "the job finished before the driver could be killed"

    r = _submit(env, address, args, wait=True)  # the same command again
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "already done" in r.stdout and "OK:" in r.stdout

    plan = make_plan(inp, 3)
    seen: dict[str, int] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                if ext == "jpg":
                    seen[key] = seen.get(key, 0) + 1
                    src = next(it for it in plan.items if it.key == key)
                    data = tf.extractfile(ti).read()
                    if "cmyk" not in key:
                        assert data == (inp / src.source).read_bytes(), key
    quarantined = [json.loads(line)["key"] for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(quarantined) == ["n01000000_bad_empty", "n01000000_bad_trunc"]
    assert all(n == 1 for n in seen.values())
    assert sorted(seen) + sorted(quarantined) != [] and set(seen) | set(quarantined) == {it.key for it in plan.items}
    assert len(seen) + len(quarantined) == len(plan.items) == 63
    assert not list(out.glob(".*.tmp-*"))
    assert c2f_main(["validate", str(out), "--no-progress"]) == 0
