"""A full disk is an error, not damage: ENOSPC (or EDQUOT) while a shard or a dataset file is
written is `OutputFull`, one line naming the path and the free space; no partial file is left where
a reader would take it for a shard (temp names only, removed); a rerun after space is freed
completes with every input exactly once. Faults injected in the writer (output and staging space),
and a real job on a real full filesystem (a small tmpfs in a private mount namespace)."""

import builtins
import errno
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import pytest
from conftest import REPO
from test_object_storage import BUCKET, s3  # noqa: F401 - the moto server fixture

import shards.writer
from labeler.registry import build_labeler
from pipelines.plan import make_plan
from pipelines.worker import ShardJob, process_shard
from shards import format as fmt
from shards.store import Store
from shards.writer import OutputFull, ShardWriter, atomic_write_bytes


class Disk:
    """A disk with `free` bytes left: files that `shards.writer` opens for writing fail with `err`
    at the write that would pass that mark (its bytes up to the mark are written, as a real disk
    does)."""

    def __init__(self, free: int, err: int = errno.ENOSPC):
        self.free, self.err = free, err

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return _Filling(f, self) if any(c in mode for c in "wax") else f


class _Filling:
    def __init__(self, f, disk: Disk):
        self._f, self._disk = f, disk

    def write(self, b) -> int:
        if len(b) > self._disk.free:
            self._f.write(bytes(b[: self._disk.free]))
            self._disk.free = 0
            raise OSError(self._disk.err, os.strerror(self._disk.err))
        self._disk.free -= len(b)
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _members(key: str) -> dict[str, bytes]:
    return {fmt.JPG: os.urandom(3000), fmt.SEM: b"s", fmt.INST: b"i", fmt.META: json.dumps({"key": key}).encode()}


@pytest.mark.parametrize(
    "err, words", [(errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded")]
)
def test_a_shard_that_fills_the_disk_is_output_full_and_leaves_nothing(tmp_path, monkeypatch, err, words):
    monkeypatch.setattr(shards.writer, "open", Disk(5000, err).open, raising=False)
    path = tmp_path / "c2f-000003.tar"
    with pytest.raises(OutputFull) as e:
        with ShardWriter(path) as w:
            for k in "abc":
                w.write(k, _members(k))
    msg = str(e.value)
    assert msg.startswith(f"{words} writing {path} (") and " free of " in msg and "\n" not in msg
    assert "free space there and rerun" in msg
    assert os.listdir(tmp_path) == []  # the temp file is gone; no tar
    assert OutputFull.stops_job and e.value.exit_code == 2


def test_a_disk_that_fills_at_the_end_of_the_shard_leaves_nothing(tmp_path, monkeypatch):
    # The last samples fit, the end-of-archive blocks do not.
    with ShardWriter(tmp_path / "x-000000.tar") as probe:
        probe.write("a", _members("a"))
    size = probe.info.bytes
    (tmp_path / "x-000000.tar").unlink()
    monkeypatch.setattr(shards.writer, "open", Disk(size - 100).open, raising=False)
    with pytest.raises(OutputFull, match=r"x-000000\.tar"):
        with ShardWriter(tmp_path / "x-000000.tar") as w:
            w.write("a", _members("a"))
    assert os.listdir(tmp_path) == []


def test_a_full_disk_at_fsync_or_at_open_leaves_nothing(tmp_path, monkeypatch):
    # Network filesystems and delayed allocation report a full disk when the data is flushed.
    real_fsync = os.fsync

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    w = ShardWriter(tmp_path / "x-000001.tar")
    w.write("a", _members("a"))
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputFull):
        w.close()
    with pytest.raises(OutputFull, match="stats.json"):
        atomic_write_bytes(tmp_path / "x-000001.tar.stats.json", b"{}")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert os.listdir(tmp_path) == []

    def no_inode(path, mode="r", *args, **kwargs):  # no inode left: open itself fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.writer, "open", no_inode, raising=False)
    with pytest.raises(OutputFull, match=r"x-000002\.tar"):
        ShardWriter(tmp_path / "x-000002.tar")
    assert os.listdir(tmp_path) == []


def test_other_write_errors_keep_their_type(tmp_path, monkeypatch):
    monkeypatch.setattr(shards.writer, "open", Disk(100, errno.EIO).open, raising=False)
    with pytest.raises(OSError) as e:
        with ShardWriter(tmp_path / "x-000000.tar") as w:
            w.write("a", _members("a"))
    assert e.value.errno == errno.EIO and not isinstance(e.value, OutputFull)
    assert os.listdir(tmp_path) == []


def _job(tmp_path, out_dir: str) -> ShardJob:
    plan = make_plan(REPO / "samples/train", 4)
    return ShardJob(0, plan.shard_name(0), plan.shard_items(0), plan.root, out_dir, batch_size=2)


def _keys(tar_path) -> list[str]:
    with tarfile.open(tar_path) as tf:
        return [m.name.split(".")[0] for m in tf if m.name.endswith(".jpg")]


def test_process_shard_on_a_full_output_then_again_with_space(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    job = _job(tmp_path, str(out))
    labeler = build_labeler("empty")
    monkeypatch.setattr(shards.writer, "open", Disk(20_000).open, raising=False)
    with pytest.raises(OutputFull, match=f"writing {out}/{job.shard} "):
        process_shard(job, labeler)
    assert os.listdir(out) == []

    monkeypatch.setattr(shards.writer, "open", Disk(10**9).open, raising=False)  # space freed
    stats = process_shard(job, labeler)
    assert stats.samples == len(job.items) == 4
    assert _keys(out / job.shard) == [it.key for it in job.items]
    assert sorted(os.listdir(out)) == sorted([job.shard, fmt.table_name(job.shard), fmt.stats_name(job.shard)])


def test_process_shard_on_a_full_staging_space_publishes_nothing(s3, tmp_path, monkeypatch):  # noqa: F811
    import fsspec.config
    import s3fs

    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3["AWS_ENDPOINT_URL"]})
    s3fs.S3FileSystem.clear_instance_cache()
    staging_root = tmp_path / "node-tmp"
    staging_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging_root))
    store = Store(f"s3://{BUCKET}/staged")
    job = _job(tmp_path, str(store))
    labeler = build_labeler("empty")
    monkeypatch.setattr(shards.writer, "open", Disk(20_000).open, raising=False)
    with pytest.raises(OutputFull) as e:
        process_shard(job, labeler)
    assert f"writing {staging_root}/c2f-staging-" in str(e.value) and str(e.value).count(" free of ") == 1
    assert os.listdir(staging_root) == []  # the staging directory is removed
    assert store.list() == {}  # nothing reached the bucket

    monkeypatch.setattr(shards.writer, "open", Disk(10**9).open, raising=False)
    stats = process_shard(job, labeler)
    assert stats.samples == 4
    assert sorted(store.list()) == sorted([job.shard, fmt.table_name(job.shard), fmt.stats_name(job.shard)])
    local = tmp_path / job.shard
    local.write_bytes(store.read_bytes(job.shard))
    assert _keys(local) == [it.key for it in job.items]
    assert os.listdir(staging_root) == []
    s3fs.S3FileSystem.clear_instance_cache()


# --- a real job on a real full filesystem ---------------------------------------------------------


def _unshare() -> list[str] | None:
    """A command prefix that runs in a private mount namespace where tmpfs can be mounted, or None."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return None
    for prefix in (["unshare", "-m"], ["unshare", "-r", "-m"]):
        probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"
        r = subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, timeout=60)
        if r.returncode == 0:
            return prefix
    return None


# Runs inside the namespace: a job into a tmpfs too small for it, the tmpfs grown (space freed),
# the same job again, validate; what happened goes to argv[3] (outside the tmpfs).
SCENARIO = """
import json, os, subprocess, sys
inp, out, report = sys.argv[1:4]
os.makedirs(out)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=72k", "tmpfs", out], check=True)
label = [sys.executable, "-m", "c2f", "label", inp, out, "--preset", "empty", "--samples-per-shard", "4"]
first = subprocess.run(label, capture_output=True, text=True)
after_first = {n: os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)}
subprocess.run(["mount", "-o", "remount,size=16m", out], check=True)
second = subprocess.run(label, capture_output=True, text=True)
val = subprocess.run([sys.executable, "-m", "c2f", "validate", out, "--no-progress"], capture_output=True, text=True)
files = {}
for n in os.listdir(out):
    with open(os.path.join(out, n), "rb") as f:
        files[n] = f.read().hex() if n.endswith((".tar", ".json", ".jsonl")) else ""
json.dump({
    "first": [first.returncode, first.stdout, first.stderr], "after_first": after_first,
    "second": [second.returncode, second.stdout, second.stderr], "validate": [val.returncode, val.stdout],
    "files": files,
}, open(report, "w"))
"""


@pytest.fixture(scope="module")
def full_filesystem_run(tmp_path_factory):
    """The scenario above, run once: (report, output path, work dir)."""
    from PIL import Image

    prefix = _unshare()
    if prefix is None:
        pytest.skip("needs a private mount namespace with tmpfs (unshare -m, or unshare -r -m)")
    tmp_path = tmp_path_factory.mktemp("full")
    inp = tmp_path / "in"
    src = sorted((REPO / "samples/train").glob("*/*.JPEG"))
    for i in range(40):
        syn = f"n0{4000000 + i % 2:07d}"
        (inp / syn).mkdir(parents=True, exist_ok=True)
        Image.open(src[i % len(src)]).convert("RGB").resize((80, 60)).save(inp / syn / f"{syn}_{i:03d}.JPEG")
    out, report = tmp_path / "out", tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    cmd = [*prefix, sys.executable, "-c", SCENARIO, str(inp), str(out), str(report)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(report.read_text()), out, tmp_path


@pytest.mark.slow
def test_a_job_on_a_full_filesystem_fails_without_damage_then_a_rerun_completes_exactly_once(full_filesystem_run):
    rep, out, tmp_path = full_filesystem_run
    code, stdout, stderr = rep["first"]
    assert code != 0, stdout[-2000:]
    assert f"no space left on device writing {out}/" in stderr and " free of " in stderr, stderr[-2000:]
    assert "free space there and rerun" in stderr and "Traceback" not in stderr
    # What the full disk left: shards with their done-marker and recorded size, nothing half-written.
    left = rep["after_first"]
    assert not [n for n in left if fmt.is_temp_name(n)], left
    for name, size in left.items():
        if name.endswith(".tar"):
            stats = json.loads(bytes.fromhex(rep["files"][fmt.stats_name(name)]))
            assert stats["bytes"] == size, name
    assert len([n for n in left if n.endswith(".tar")]) < 10  # the disk filled before the end

    code, stdout, stderr = rep["second"]
    assert code == 0, stdout[-2000:] + stderr[-2000:]
    assert "OK:" in stdout
    assert rep["validate"][0] == 0, rep["validate"][1][-2000:]
    keys = []
    for name, data in rep["files"].items():
        if name.endswith(".tar"):
            (tmp_path / name).write_bytes(bytes.fromhex(data))
            keys += _keys(tmp_path / name)
    assert len(keys) == len(set(keys)) == 40
    assert not [n for n in rep["files"] if fmt.is_temp_name(n) or n == fmt.LEASE]


@pytest.mark.slow
def test_a_job_on_a_full_filesystem_stops_at_the_first_full_shard(full_filesystem_run):
    rep, out, _ = full_filesystem_run
    code, stdout, stderr = rep["first"]
    assert code == 2, stderr[-2000:]
    assert stderr.startswith(f"error: no space left on device writing {out}/") and stderr.count("\n") == 1, stderr
