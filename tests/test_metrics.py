"""The labeling job in Ray's metrics: a job on a real cluster, one of its labeling actors killed
mid-run, and the cluster's Prometheus endpoint (what Ray's dashboard and Grafana read) scraped
until it shows the job's counters and histograms, tagged with its output, equal to what the job
wrote."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import ray_cluster

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
# Ray exports every 10 s by default; the test's cluster and driver every half second.
FAST_EXPORT = {"RAY_metrics_report_interval_ms": "500"}

_LINE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str, output: str) -> dict[tuple, float]:
    """{(metric, sorted (label, value) pairs but the output's): value} of the c2f metrics of `output`,
    summed over the processes that reported them."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    found: dict[tuple, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or not m[1].startswith("ray_c2f_"):
            continue
        labels = dict(_LABEL.findall(m[2]))
        if labels.get("output") != output:
            continue
        mine = tuple(sorted((k, v) for k, v in labels.items() if k in ("stage", "cause", "le")))
        found[(m[1], mine)] = found.get((m[1], mine), 0.0) + float(m[3])
    return found


def test_job_metrics_reach_the_clusters_prometheus_endpoint(sample_tree, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(sample_tree, inp)
    (inp / "n02123045" / "n02123045_empty.JPEG").write_bytes(b"")
    env = {**os.environ, **FAST_EXPORT, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TQDM_DISABLE": "1"}
    with ray_cluster(num_cpus=2, env=env) as c:
        args = [str(inp), str(out), "--preset", "fixed-cost", "--fixed-cost-seconds", "0.3"]
        args += ["--samples-per-shard", "1", "--batch-size", "1", "--address", c.address]
        job = subprocess.Popen(
            [sys.executable, "-m", "c2f", "label", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.time() + 240
            while len(list(out.glob("*.stats.json"))) < 2 and time.time() < deadline and job.poll() is None:
                time.sleep(0.2)
            actor = next(
                p
                for p in psutil.process_iter(["cmdline"])
                if "ray::LabelActor" in " ".join(p.info["cmdline"] or []) and c.owns(p)
            )
            actor.send_signal(signal.SIGKILL)  # Ray restarts it; the new one counts the restart
            during = {}
            while time.time() < deadline and not any(k[0].startswith("ray_c2f_shards_done") for k in during):
                during = scrape(c.metrics, str(out))
                time.sleep(0.5)
            log = job.communicate(timeout=300)[0].decode()
            assert job.returncode == 0, log[-3000:]

            manifest = json.loads((out / "manifest.json").read_text())
            quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
            shards = manifest["plan"]["num_shards"]

            def want(found):
                def v(name, **labels):
                    return found.get((name, tuple(sorted(labels.items()))), 0.0)

                return {
                    "labeled": v("ray_c2f_images_labeled_total"),
                    "quarantined": v("ray_c2f_images_quarantined_total", stage=quarantine[0]["stage"]),
                    "shards": v("ray_c2f_shards_done_total"),
                    "read timings": v("ray_c2f_stage_ms_count", stage="read"),
                    "restarts": v("ray_c2f_actor_replacements_total", cause="restarted"),
                    "batches": v("ray_c2f_label_batch_ms_count"),
                    "batch ms": v("ray_c2f_label_batch_ms_sum"),
                }

            expected = {
                "labeled": manifest["totals"]["samples"],
                "quarantined": 1,
                "shards": shards,
                "read timings": shards,
                "restarts": 1,
            }
            got = {}
            while time.time() < deadline:  # right after the job: its last reports arrive
                got = want(scrape(c.metrics, str(out)))
                if all(got[k] == v for k, v in expected.items()):
                    break
                time.sleep(0.5)
            assert {k: got.get(k) for k in expected} == expected, got
            # One image per batch, each labeled in 0.3 s; the killed actor's last batches died with it,
            # before it could report them.
            assert manifest["totals"]["samples"] / 2 <= got["batches"] <= manifest["totals"]["samples"] + 2, got
            assert got["batch ms"] / got["batches"] >= 300, got
        finally:
            if job.poll() is None:
                job.kill()
