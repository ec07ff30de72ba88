"""The output lease: one writer per OUTPUT, on any machine. A second job refuses in one line naming
the holder; a holder whose process is gone (this machine) or that stopped heartbeating for
`--lease-timeout` is taken over; of jobs taking over at once, one wins; a holder whose lease was
taken over learns it and stops. On a local directory, on the S3-compatible test server, and with
two drivers on one Ray cluster."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time

import psutil
import pytest
from conftest import REPO, ray_cluster
from test_object_storage import BUCKET, s3  # noqa: F401 - the moto server fixture

from c2f.cli import main
from shards import format as fmt
from shards.lease import Lease, LeaseHeld, OutputLease
from shards.store import Store

# A process that takes the lease of argv[1] with --lease-timeout argv[2] and holds it; if the lease
# is taken over it says so and exits 3.
HOLDER = """
import os, sys, time
from shards.lease import OutputLease
from shards.store import Store

def lost():
    print("LOST", lease.lost, flush=True)
    os._exit(3)

lease = OutputLease.acquire(Store(sys.argv[1]), float(sys.argv[2]), on_lost=lost)
print("HELD", flush=True)
time.sleep(600)
"""

# A process that tries to take the lease of argv[1] when told to go (a line on stdin), says whether
# it won, and holds a won lease until its stdin closes.
RACER = """
import sys
from shards.lease import LeaseHeld, OutputLease
from shards.store import Store

store = Store(sys.argv[1])
print("READY", flush=True)
sys.stdin.readline()
try:
    lease = OutputLease.acquire(store, 5.0, say=lambda line: None)
except LeaseHeld:
    print("REFUSED", flush=True)
else:
    print("WON", flush=True)
    sys.stdin.read()
    lease.release()
"""


def _env(extra=None):
    return {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", **(extra or {})}


def _start_holder(url: str, timeout: float, env=None) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(timeout)], env=_env(env), stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "HELD"
    return p


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(30)


def _record(store: Store) -> Lease | None:
    data = store.read_bytes(fmt.LEASE)
    return None if data is None else Lease.from_json(json.loads(data))


def _stale_copy(store: Store, age: float, machine: str = "another-machine") -> Lease:
    """The lease of a holder on another machine whose last heartbeat was `age` seconds ago."""
    now = time.time()
    rec = Lease("f" * 32, "node-7", 4242, now - age - 60, now - age, 0.5, "raysubmit_abc", machine, 0)
    store.write_bytes(fmt.LEASE, (json.dumps(rec.to_json()) + "\n").encode())
    return rec


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """An empty output: a local directory, or a prefix of a bucket on the S3 test server."""
    if request.param == "local":
        (tmp_path / "out").mkdir()
        yield Store(tmp_path / "out"), {}
    else:
        import fsspec.config
        import s3fs

        env = request.getfixturevalue("s3")
        # This process's s3fs took its endpoint from the environment at import (an earlier test's
        # server, perhaps): point it at this test's.
        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": env["AWS_ENDPOINT_URL"]})
        s3fs.S3FileSystem.clear_instance_cache()
        yield Store(f"s3://{BUCKET}/{tmp_path.name}"), env
        s3fs.S3FileSystem.clear_instance_cache()


def test_second_job_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over_at_once(store, capsys):
    out, env = store
    holder = _start_holder(out.url(""), 600, env)
    try:
        rec = _record(out)
        assert rec.pid == holder.pid and rec.host == socket.gethostname() and rec.interval == 30
        # A real `c2f label` on the same OUTPUT: one line naming the holder, exit 2, before any listing.
        code = main(["label", str(REPO / "samples/train"), str(out), "--preset", "empty"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"is being written by another `c2f label` (host {socket.gethostname()}, pid {holder.pid}," in err
        assert "--lease-timeout 600s is taken over" in err
        assert out.read_bytes(fmt.PLAN) is None
        with pytest.raises(LeaseHeld):
            OutputLease.acquire(out, 600)
    finally:
        _kill(holder)
    # The holder's process is gone (SIGKILL: no release): on its machine the lease is taken at once.
    said = []
    t0 = time.monotonic()
    lease = OutputLease.acquire(out, 600, say=said.append)
    assert time.monotonic() - t0 < 10
    assert len(said) == 1 and f"pid {holder.pid}" in said[0] and said[0].endswith("its process is gone")
    assert _record(out).token == lease.record.token
    lease.release()
    assert out.read_bytes(fmt.LEASE) is None


def test_a_silent_holder_on_another_machine_is_taken_over_after_the_timeout(store):
    out, _ = store
    _stale_copy(out, age=30)
    with pytest.raises(LeaseHeld, match=r"host node-7, pid 4242, Ray job raysubmit_abc, .*last heartbeat 3\ds ago"):
        OutputLease.acquire(out, 60)
    said = []
    lease = OutputLease.acquire(out, 20, say=said.append)  # a shorter timeout: 30s is past it
    assert said == [said[0]] and "from host node-7, pid 4242" in said[0]
    assert re.search(r"no heartbeat for 3\ds \(--lease-timeout 20s\)$", said[0]), said[0]
    lease.release()
    # The holder's own heartbeat interval bounds the timeout from below: a holder beating every
    # 30s is not taken over after 10s of silence, whatever the taker's --lease-timeout.
    rec = _stale_copy(out, age=10)
    out.write_bytes(fmt.LEASE, (json.dumps({**rec.to_json(), "interval": 30.0}) + "\n").encode())
    with pytest.raises(LeaseHeld):
        OutputLease.acquire(out, 2)


def test_the_heartbeat_renews_the_lease_and_learns_when_another_job_took_it(store):
    out, _ = store
    lost = []
    lease = OutputLease.acquire(out, 2.0, on_lost=lambda: lost.append(1))  # a heartbeat every 0.2s
    first = _record(out).heartbeat
    time.sleep(1.0)
    assert _record(out).heartbeat > first and lease.failures == 0
    other = _stale_copy(out, age=0)  # as a job that took the lease over would write it
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        if out.local and _record(out).token != other.token:
            # A filesystem heartbeat checks, then renames: one that read its own lease just before the
            # takeover writes over it once (docs/RUNNING.md); the next one sees the taker's.
            other = _stale_copy(out, age=0)
        time.sleep(0.05)
    assert lost == [1] and "taken over by host node-7, pid 4242" in lease.lost
    lease.release()  # not ours any more: left in place
    assert _record(out).token == other.token


def test_a_job_confirms_its_lease_before_writing_the_dataset_files(store):
    """A job paused past the timeout and woken may finish its shards before its heartbeat runs
    again: `confirm` (what `c2f label` asks before the dataset files) finds the takeover now."""
    out, _ = store
    lease = OutputLease.acquire(out, 600)  # a heartbeat every 30 s: none runs during this test
    assert lease.confirm() is None and _record(out).token == lease.record.token
    other = _stale_copy(out, age=0)  # as a job that took the lease over would write it
    assert "taken over by host node-7, pid 4242" in (lease.confirm() or "")
    assert lease.confirm() == lease.lost  # stays lost; the taker's lease is left alone
    lease.release()
    assert _record(out).token == other.token


def test_of_jobs_taking_over_a_dead_lease_at_once_one_wins(store):
    out, env = store
    _stale_copy(out, age=100)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(out)],
            env=_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    for p in racers:
        assert p.stdout.readline().strip() == "READY"
    for p in racers:  # all at once
        p.stdin.write("go\n")
        p.stdin.flush()
    said = sorted(p.stdout.readline().strip() for p in racers)
    assert said == ["REFUSED"] * 4 + ["WON"], said
    for p in racers:
        p.communicate(timeout=60)  # closes stdin: the winner releases the lease
    assert out.read_bytes(fmt.LEASE) is None


def test_create_and_swap_are_conditional(store):
    out, _ = store
    assert out.exact_conditional
    v1 = out.create("x", b"one")
    assert v1 and out.create("x", b"two") is None and out.read_bytes("x") == b"one"
    v2 = out.swap("x", b"three", v1)
    assert v2 and v2 != v1 and out.read_bytes("x") == b"three"
    assert out.swap("x", b"four", v1) is None and out.read_bytes("x") == b"three"  # v1 is gone
    assert out.read_versioned("x") == (b"three", v2)
    out.remove("x")
    assert out.swap("x", b"five", v2) is None and out.read_bytes("x") is None
    if out.local:
        assert sorted(os.listdir(out.root)) == []  # no temp or aside files left


# --- two drivers on one Ray cluster --------------------------------------------------------------


def _inputs(root, n):
    from PIL import Image

    src = sorted((REPO / "samples/train").glob("*/*.JPEG"))
    for i in range(n):
        syn = f"n0{3000000 + i % 2:07d}"
        (root / syn).mkdir(parents=True, exist_ok=True)
        Image.open(src[i % len(src)]).convert("RGB").resize((64, 48)).save(root / syn / f"{syn}_{i:03d}.JPEG")


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := pred():
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _exactly_once(out, n):
    keys = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            keys += [m.name.split(".")[0] for m in tf if m.name.endswith(".jpg")]
    assert len(keys) == len(set(keys)) == n
    assert not list(out.glob(".*.tmp-*")) and not (out / fmt.LEASE).exists()
    assert main(["validate", str(out), "--no-progress"]) == 0


@pytest.mark.slow
def test_two_drivers_on_one_cluster(tmp_path):
    inp = tmp_path / "in"
    _inputs(inp, 24)
    with ray_cluster(num_cpus=4) as cluster:  # room for two jobs' actors at once
        env = _env()

        def label(out, *extra, wait=False):
            cmd = [sys.executable, "-m", "c2f", "label", str(inp), str(out), "--address", cluster.address]
            cmd += ["--preset", "fixed-cost", "--fixed-cost-seconds", "0.25", "--samples-per-shard", "2"]
            cmd += ["--batch-size", "1", *extra]
            if wait:
                return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def done(out):
            return len(list(out.glob("*.stats.json")))

        # 1. A second driver on the same OUTPUT is refused at once, naming the first.
        out = tmp_path / "out1"
        first = label(out)
        try:
            _wait(lambda: done(out) >= 1, 240, "the first driver's first shard")
            r = label(out, wait=True)
            assert r.returncode == 2, r.stderr
            assert f"(host {socket.gethostname()}, pid {first.pid}," in r.stderr and "Traceback" not in r.stderr
            assert r.stderr.count("\n") == 1
            # 2. The first driver is killed (no release): a new driver takes over at once and finishes.
            assert first.poll() is None, "the first driver finished before it could be killed"
            tree = [first, *psutil.Process(first.pid).children(recursive=True)]
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGKILL)
            first.wait(30)
        finally:
            if first.poll() is None:
                first.kill()
        r = label(out, wait=True)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert f"pid {first.pid}" in r.stdout and "its process is gone" in r.stdout
        _exactly_once(out, 24)

        # 3. A driver that hangs (SIGSTOP: alive, silent) is taken over once its heartbeat is older
        # than --lease-timeout; when it wakes, its heartbeat finds the lease taken and it stops.
        out = tmp_path / "out2"
        hung = label(out, "--lease-timeout", "3")
        try:
            _wait(lambda: done(out) >= 1, 240, "the hung driver's first shard")
            hung.send_signal(signal.SIGSTOP)
            time.sleep(1)
            r = label(out, "--lease-timeout", "3", wait=True)
            assert r.returncode == 2 and f"pid {hung.pid}" in r.stderr  # not yet: it beat a moment ago
            time.sleep(3)
            taker = label(out, "--lease-timeout", "3")
            _wait(lambda: (_record(Store(out)) or hung).pid == taker.pid, 60, "the takeover")
            hung.send_signal(signal.SIGCONT)
            _, err = hung.communicate(timeout=120)
            assert hung.returncode == 2, err
            assert f"the lease of {out} was taken over by host {socket.gethostname()}, pid {taker.pid}" in err
            assert "this job stopped" in err and "Traceback" not in err
            stdout, stderr = taker.communicate(timeout=600)
            assert taker.returncode == 0, stdout[-3000:] + stderr[-3000:]
            assert f"pid {hung.pid}" in stdout and "no heartbeat for" in stdout
        finally:
            for p in (hung, locals().get("taker")):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
        _exactly_once(out, 24)
