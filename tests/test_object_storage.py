"""OUTPUT on object storage: a labeling job writes to an S3-compatible server (moto's standalone
server, started by the test; a real HTTP endpoint, not a mocked client), is killed mid-run, resumes,
and every input ends in exactly one shard or in the quarantine."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import psutil
import pytest
from conftest import REPO, free_port

pytestmark = pytest.mark.slow
BUCKET = "c2f-test"


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",  # botocore, in every process of the job
        "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",  # s3fs reads fsspec's env config at import
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        server.stop()


def _fs(env):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="test", secret="test", skip_instance_cache=True)


def _inputs(root, n):
    from PIL import Image

    src = sorted((REPO / "samples/train").glob("*/*.JPEG"))
    for i in range(n):
        syn = f"n0{2000000 + i % 2:07d}"
        (root / syn).mkdir(parents=True, exist_ok=True)
        Image.open(src[i % len(src)]).convert("RGB").resize((96, 64)).save(root / syn / f"{syn}_{i:03d}.JPEG")
    (root / "n02000000" / "n02000000_bad.JPEG").write_bytes(b"not a jpeg")


def test_label_to_s3_resumes_after_a_killed_driver(s3, tmp_path):
    inp = tmp_path / "in"
    _inputs(inp, 24)
    out = f"s3://{BUCKET}/run1"
    cmd = [sys.executable, "-m", "c2f", "label", str(inp), out, "--preset", "fixed-cost", "--samples-per-shard", "2"]
    cmd += ["--fixed-cost-seconds", "0.3", "--batch-size", "1"]
    env = {**os.environ, **s3, "TQDM_DISABLE": "1"}
    fs = _fs(s3)

    def done():
        try:
            return [p for p in fs.ls(f"{BUCKET}/run1", refresh=True) if p.endswith(".stats.json")]
        except FileNotFoundError:
            return []

    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while len(done()) < 2 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.3)
        assert driver.poll() is None, driver.stdout.read()
        # The job's driver and its local Ray die mid-run, all at once, as when their node dies: a
        # Ray worker left running would finish its shard after `partial` is counted.
        tree = [driver, *psutil.Process(driver.pid).children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs([p for p in tree if p is not driver], timeout=30)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    partial = len(done())
    assert 2 <= partial < 13

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"{partial} already done" in r.stdout and "OK:" in r.stdout

    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/run1", refresh=True)}
    assert {"manifest.json", "plan.json", "quarantine.jsonl", "c2f.wids.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temp objects: shards are staged locally
    keys: list[str] = []
    for name in sorted(n for n in names if n.endswith(".tar")):
        local = tmp_path / name
        fs.get_file(f"{BUCKET}/run1/{name}", str(local))
        with tarfile.open(local) as tf:
            keys += [m.name.split(".")[0] for m in tf if m.name.endswith(".jpg")]
    quarantined = [json.loads(line)["key"] for line in fs.cat_file(f"{BUCKET}/run1/quarantine.jsonl").splitlines()]
    assert quarantined == ["n02000000_bad"]
    assert len(keys) == len(set(keys)) == 24 and not set(keys) & set(quarantined)
    manifest = json.loads(fs.cat_file(f"{BUCKET}/run1/manifest.json"))
    assert manifest["totals"]["samples"] == 24 and manifest["totals"]["quarantined"] == 1
    # every shard's table is in the bucket beside its tar, and (validated above) agrees with it
    assert manifest["sample_tables"] and {n.replace(".tar", ".parquet") for n in names if n.endswith(".tar")} <= names
