"""Distribute shard work units over Ray (core tasks), with bounded in-flight work and retries.

Each task processes one whole shard (pipelines.worker.process_shard) and returns its stats;
a task that raises or whose worker dies is resubmitted up to `max_retries` times, then
reported. At most `2 x cluster CPUs` shards are in flight, so memory stays bounded whatever
the dataset size. The labeler is built once per worker process and reused across shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

_LABELERS: dict[str, Any] = {}  # per worker process: preset -> labeler (models load once)


def _labeler(preset: str):
    if preset not in _LABELERS:
        from labeler.registry import build_labeler

        _LABELERS[preset] = build_labeler(preset)
    return _LABELERS[preset]


def _shard_task(index: int, shard: str, items, root: str, out_dir: str, preset: str, batch_size: int):
    from .worker import process_shard

    return process_shard(index, shard, items, root, out_dir, _labeler(preset), batch_size)


@dataclass
class RunResult:
    label_space: dict[str, Any]
    labeler: dict[str, Any]
    errors: list[str] = field(default_factory=list)


def init_ray(address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address == "local":
        # A private single-node cluster on loopback: nothing listens on the machine's network address.
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def run_shards(plan, todo: list[int], out_dir: str, cfg) -> RunResult:
    import ray

    labeler = _labeler(cfg.preset)  # the driver's copy gives the manifest its label space and settings
    result = RunResult(labeler.label_space(), labeler.describe())
    if not todo:
        return result
    started = not ray.is_initialized()
    init_ray(cfg.address)
    try:
        _run(plan, todo, out_dir, cfg, result)
    finally:
        if started:
            ray.shutdown()  # the job owns the local cluster (or connection) it started
    return result


def _run(plan, todo: list[int], out_dir: str, cfg, result: RunResult) -> None:
    import ray
    from tqdm import tqdm

    task = ray.remote(num_cpus=1, max_retries=2)(_shard_task)
    max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    attempts = {i: 0 for i in todo}
    queue = list(todo)
    running: dict[Any, int] = {}
    bar = tqdm(total=sum(len(plan.shard_items(i)) for i in todo), unit="img", desc="label", smoothing=0.05)
    while queue or running:
        while queue and len(running) < max_in_flight:
            i = queue.pop(0)
            attempts[i] += 1
            ref = task.remote(
                i, plan.shard_name(i), plan.shard_items(i), plan.root, out_dir, cfg.preset, cfg.batch_size
            )
            running[ref] = i
        ready, _ = ray.wait(list(running), num_returns=1)
        i = running.pop(ready[0])
        try:
            stats = ray.get(ready[0])
            bar.update(stats["planned"])
        except Exception as e:  # noqa: BLE001 - a failed unit of work is retried, then reported
            cause = getattr(e, "cause", None) or e  # RayTaskError wraps the task's own exception
            msg = f"{plan.shard_name(i)} attempt {attempts[i]}: {type(cause).__name__}: {cause}"[:500]
            result.errors.append(msg)
            if attempts[i] <= cfg.max_retries:
                queue.append(i)
    bar.close()
