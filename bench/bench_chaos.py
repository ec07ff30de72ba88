"""Chaos on a local multi-node Ray cluster: a labeling job runs while shard-task workers, labeling
actors and whole non-head nodes are killed at random (and, with `--kill-driver`, the driver itself,
which is then started again at once, as a user or a job scheduler would). A run that ends non-zero
is rerun without chaos, up to `--reruns` times, as a user would. At the end every input must be in
exactly one shard or in the quarantine, with its bytes, and `c2f validate` must pass.

The cluster is Ray's own multi-node test harness (`ray.cluster_utils.Cluster`): a head and
`--nodes` worker nodes on 127.0.0.1, each with its own raylet and object store, in a temp dir of
its own; a removed node is replaced by a fresh one so the job keeps somewhere to run. The job is
`c2f label --preset fixed-cost` (no model, `--seconds` per image in the labeling actors), joined to
the cluster with `--address`. Extra `c2f label` flags go after `--`.

What it prints: every kill (time, kind, pid or node), every run (exit code, time, its last error
line), the checks, and PASS or FAIL (exit 0 or 1).

    .venv/bin/python bench/bench_chaos.py [--images 240] [--nodes 2] [--seconds 0.1] [--every 3]
        [--kill-driver] [--seed 0] [--reruns 3] [-- c2f label flags]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_inputs(root: Path, n: int, seed: int) -> int:
    """`n` small photos in ImageNet layout, plus two broken files (the quarantine must hold them)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ROOT / "samples/train").glob("*/*.JPEG"))]
    for i in range(n):
        syn = f"n0{5000000 + i % 4:07d}"
        (root / syn).mkdir(parents=True, exist_ok=True)
        im = src[i % len(src)]
        h, w = im.shape[:2]
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        buf = io.BytesIO()
        Image.fromarray(im[y : y + h // 2, x : x + w // 2]).resize((96, 72)).save(buf, "JPEG", quality=85)
        (root / syn / f"{syn}_{i:05d}.JPEG").write_bytes(buf.getvalue())
    bad = root / "n05000000"
    (bad / "n05000000_bad_empty.JPEG").write_bytes(b"")
    (bad / "n05000000_bad_text.JPEG").write_bytes(b"<html>not found</html>")
    return n + 2


class Chaos:
    """The cluster, the job's driver, and a thread that kills things in it at random."""

    def __init__(self, args, inp: Path, planned: int, out: Path, temp: str):
        from ray.cluster_utils import Cluster

        self.args, self.inp, self.out, self.planned = args, inp, out, planned
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.kills: list[tuple[float, str, str]] = []
        self.runs: list[tuple[int, float, str]] = []
        self.node_args = {
            "num_cpus": args.cpus_per_node,
            "node_ip_address": "127.0.0.1",
            "object_store_memory": 80 << 20,
            "include_dashboard": False,
            "temp_dir": temp,
        }
        self.cluster = Cluster(initialize_head=True, head_node_args={**self.node_args, "num_cpus": 1})
        self.names = {id(self.cluster.head_node): "head"}  # live nodes -> "node N", N in the order they joined
        self.joined = 0
        for _ in range(args.nodes):
            self.add_node()
        self.driver: subprocess.Popen | None = None
        self.log = out.parent / "driver.log"

    def say(self, line: str) -> None:
        print(f"{time.monotonic() - self.t0:7.1f}s  {line}", flush=True)

    # --- the job -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        a = self.args
        cmd = [sys.executable, "-m", "c2f", "label", str(self.inp), str(self.out), "--address", self.cluster.address]
        cmd += ["--preset", "fixed-cost", "--fixed-cost-seconds", str(a.seconds)]
        cmd += ["--samples-per-shard", str(a.samples_per_shard), "--batch-size", str(a.batch_size)]
        cmd += ["--actors", str(a.actors), "--cpus-per-actor", "0.5", "--no-validate", *a.job_flags]
        return cmd

    def start_driver(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
        with open(self.log, "a") as log:
            log.write(f"\n=== run {len(self.runs) + 1}\n")
        self.driver = subprocess.Popen(
            self.command(), env=env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.started = time.monotonic()

    def wait_driver(self) -> int:
        try:
            code = self.driver.wait(self.args.run_timeout)
            error = self.last_error()
        except subprocess.TimeoutExpired:
            self.driver.kill()
            code, error = self.driver.wait(), f"killed by the bench after --run-timeout {self.args.run_timeout:g}s"
        self.runs.append((code, time.monotonic() - self.started, error))
        return code

    def last_error(self) -> str:
        """What the last run's log says of its start (resumed shards, a lease taken over) and its end."""
        lines = self.log.read_text(errors="replace").splitlines()
        last_run = len(lines) - 1 - lines[::-1].index(next(x for x in reversed(lines) if x.startswith("=== run")))
        said = []
        for line in lines[last_run:]:
            if line.startswith("plan:"):
                said.append(line.split("; ", 1)[-1])  # "N already done, M to do"
            elif line.startswith("taking over the lease"):
                said.append("lease taken over: " + line.rsplit(": ", 1)[-1])
        errors = [x for x in lines[last_run:] if x.startswith("error:")]
        return "; ".join(said + ([errors[-1][:160]] if errors else []))

    # --- the victims ---------------------------------------------------------------------------

    def add_node(self):
        node = self.cluster.add_node(**self.node_args)
        self.joined += 1
        self.names[id(node)] = f"node {self.joined}"
        return node

    def _workers(self, title: str) -> list[tuple[psutil.Process, str]]:
        """Ray worker processes of this cluster whose title starts with `title`, with their node."""
        found = []
        for node in [self.cluster.head_node, *self.cluster.worker_nodes]:
            name = self.names[id(node)]
            for info in node.all_processes.get("raylet", []):
                with contextlib.suppress(psutil.Error):
                    for p in psutil.Process(info.process.pid).children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            if " ".join(p.cmdline()).startswith(title):
                                found.append((p, name))
        return found

    def kill_one(self) -> None:
        kinds = ["task", "actor", "node"]
        weights = [self.args.task_weight, self.args.actor_weight, self.args.node_weight]
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "node":
            if not self.cluster.worker_nodes:
                return
            node = self.rng.choice(sorted(self.cluster.worker_nodes, key=lambda n: self.names[id(n)]))
            where = self.names.pop(id(node))
            self.cluster.remove_node(node, allow_graceful=False)
            self.kills.append((time.monotonic() - self.t0, "node", where))
            self.say(f"kill node   {where} (its raylet, object store, workers and actors)")
            new = self.add_node()
            self.say(f"add node    {self.names[id(new)]}")
            return
        title = "ray::_shard_task" if kind == "task" else "ray::LabelActor"
        victims = self._workers(title)
        if not victims:
            return
        p, where = self.rng.choice(victims)
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
            self.kills.append((time.monotonic() - self.t0, kind, f"pid {p.pid} on {where}"))
            self.say(f"kill {kind:<6} pid {p.pid} on {where} ({title})")

    def run(self) -> int:
        """Start the job and kill things at random until it ends (on this thread: Ray starts and
        stops nodes only from the main thread); the exit code of the last driver."""
        self.start_driver()
        shards = -(-self.planned // self.args.samples_per_shard)
        # The driver dies once a fifth to a half of the shards are done: mid-job, not during start-up.
        driver_at = round(self.rng.uniform(0.2, 0.5) * shards) if self.args.kill_driver else None
        next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.args.every
        while (code := self.driver.poll()) is None:
            time.sleep(0.2)
            if time.monotonic() - self.started > self.args.run_timeout:
                self.driver.kill()
            if time.monotonic() < next_kill:
                continue
            next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.args.every
            if driver_at is not None and len(list(self.out.glob("*.stats.json"))) >= driver_at:
                driver_at = None
                self.kill_driver()
                continue
            try:
                self.kill_one()
            except Exception as e:  # noqa: BLE001 - a victim that vanished first; the chaos goes on
                self.say(f"(kill failed: {type(e).__name__}: {e})")
        self.runs.append((code, time.monotonic() - self.started, self.last_error()))
        return code

    def kill_driver(self) -> None:
        pid = self.driver.pid
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        self.driver.wait()
        self.runs.append((-9, time.monotonic() - self.started, f"{self.last_error()}; killed by the bench"))
        self.kills.append((time.monotonic() - self.t0, "driver", f"pid {pid}"))
        self.say(f"kill driver pid {pid}; the same command again")
        self.start_driver()

    def shutdown(self) -> None:
        if self.driver is not None and self.driver.poll() is None:
            self.driver.kill()
        with contextlib.suppress(Exception):
            self.cluster.shutdown()


def check(inp: Path, out: Path, samples_per_shard: int) -> tuple[bool, list[str]]:
    """Every planned input in exactly one shard (with its bytes) or once in the quarantine."""
    from pipelines.plan import make_plan

    plan = make_plan(inp, samples_per_shard)
    by_key = {it.key: it for it in plan.items}
    seen: dict[str, int] = {}
    wrong_bytes = 0
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for ti in tf:
                key, ext = ti.name.split(".", 1)
                if ext == "jpg":
                    seen[key] = seen.get(key, 0) + 1
                    if tf.extractfile(ti).read() != (inp / by_key[key].source).read_bytes():
                        wrong_bytes += 1
    quarantine = out / "quarantine.jsonl"
    quarantined = [json.loads(x)["key"] for x in quarantine.read_text().splitlines()] if quarantine.exists() else []
    for k in quarantined:
        seen[k] = seen.get(k, 0) + 1
    missing = sorted(set(by_key) - set(seen))
    twice = sorted(k for k, n in seen.items() if n > 1)
    temps = [p.name for p in out.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]
    lines = [
        f"exactly once: {len(seen) - len(quarantined)} in shards, {len(quarantined)} in quarantine, "
        f"{len(missing)} missing, {len(twice)} more than once, {wrong_bytes} with other bytes "
        f"(of {len(by_key)} planned); temp files left: {len(temps)}"
    ]
    ok = not missing and not twice and not wrong_bytes and len(seen) == len(by_key)
    return ok, lines


def main() -> int:
    argv = sys.argv[1:]
    job_flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--nodes", type=int, default=2, help="worker nodes beside the head")
    ap.add_argument("--cpus-per-node", type=int, default=2)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.1, help="labeling seconds per image")
    ap.add_argument("--samples-per-shard", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--every", type=float, default=3.0, help="mean seconds between kills")
    ap.add_argument("--task-weight", type=float, default=2.0)
    ap.add_argument("--actor-weight", type=float, default=1.0)
    ap.add_argument("--node-weight", type=float, default=1.0)
    ap.add_argument("--kill-driver", action="store_true", help="also kill the driver once, then start it again")
    ap.add_argument("--reruns", type=int, default=3, help="reruns (without chaos) of a job that ended non-zero")
    ap.add_argument("--run-timeout", type=float, default=600, help="seconds before a run is killed as hung")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    args.job_flags = job_flags

    work = Path(tempfile.mkdtemp(prefix="c2f-chaos-"))
    temp = tempfile.mkdtemp(prefix="c2fchaos", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    inp, out = work / "in", work / "out"
    planned = make_inputs(inp, args.images, args.seed)
    t0 = time.monotonic()
    chaos = Chaos(args, inp, planned, out, temp)
    print(
        f"chaos: head (1 CPU) + {args.nodes} nodes x {args.cpus_per_node} CPU on 127.0.0.1 "
        f"({time.monotonic() - t0:.1f}s to start); {planned} inputs, {args.actors} actors, "
        f"fixed-cost {args.seconds}s/image, a kill every "
        f"~{args.every}s (task:actor:node {args.task_weight:g}:{args.actor_weight:g}:{args.node_weight:g})"
        + (", the driver once" if args.kill_driver else ""),
        flush=True,
    )
    print("job: " + " ".join(chaos.command()[1:]).replace(str(work), "$WORK"), flush=True)
    try:
        code = chaos.run()
        for _ in range(args.reruns):
            if code == 0:
                break
            chaos.say(f"run exited {code}: the same command again, without chaos")
            chaos.start_driver()
            code = chaos.wait_driver()
        for i, (c, secs, err) in enumerate(chaos.runs, 1):
            print(f"run {i}: exit {c} after {secs:.1f}s" + (f"  ({err})" if err else ""))
        kinds = [k for _, k, _ in chaos.kills]
        print(
            "kills: "
            + ", ".join(f"{kinds.count(k)} {k}{'s' if kinds.count(k) != 1 else ''}" for k in ("task", "actor", "node"))
            + (f", {kinds.count('driver')} driver" if "driver" in kinds else "")
        )
        ok, lines = check(inp, out, args.samples_per_shard)
        for line in lines:
            print(line)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        val = subprocess.run(
            [sys.executable, "-m", "c2f", "validate", str(out), "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        print(f"c2f validate: exit {val.returncode}: {(val.stdout.strip().splitlines() or [''])[-1][:200]}")
        passed = ok and code == 0 and val.returncode == 0
        if not passed:
            print(
                "driver log (last lines):\n  " + "\n  ".join(chaos.log.read_text(errors="replace").splitlines()[-30:])
            )
        print(f"{'PASS' if passed else 'FAIL'} in {time.monotonic() - t0:.0f}s")
        return 0 if passed else 1
    finally:
        chaos.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
