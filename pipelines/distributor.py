"""Distribute shard work units over Ray (core tasks), with bounded in-flight work and retries.

Each task processes one whole shard (pipelines.worker.process_shard) and returns its stats and
the labeler's description; a task that raises or whose worker dies is resubmitted up to
`max_retries` times, then reported. At most `2 x cluster CPUs` shards are in flight, so memory
stays bounded whatever the dataset size. The labeler is built once per worker process and
reused by every shard that process runs. A labeler that cannot even be built (a missing
checkpoint, an unknown model id) stops the job at once: retrying cannot fix configuration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

_LABELERS: dict[str, Any] = {}  # per worker process: settings -> labeler (models load once)


class LabelerSetupError(Exception):
    """The labeler could not be built; the message is the loader's explanation."""


def _labeler(settings):
    key = repr(settings)
    if key not in _LABELERS:
        from labeler.registry import build_labeler

        _LABELERS.clear()  # one labeler per process: models are large
        _LABELERS[key] = build_labeler(settings)
    return _LABELERS[key]


def labeler_info(labeler) -> dict[str, Any]:
    return {"label_space": labeler.label_space(), "labeler": labeler.describe()}


def _shard_task(index: int, shard: str, items, root: str, out_dir: str, settings, batch_size: int):
    from labeler.hf import LabelerLoadError

    from .worker import process_shard

    try:
        labeler = _labeler(settings)
    except (LabelerLoadError, ValueError) as e:
        return {"setup_error": str(e)}
    stats = process_shard(index, shard, items, root, out_dir, labeler, batch_size)
    return {"stats": stats, "info": labeler_info(labeler)}


@dataclass
class RunResult:
    labeler_info: dict[str, Any] = field(default_factory=dict)
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


def run_shards(plan, todo: list[int], out_dir: str, cfg, settings) -> RunResult:
    import ray

    from shards.writer import atomic_write_json

    info_path = os.path.join(out_dir, "labeler.json")
    result = RunResult()
    if os.path.exists(info_path):
        import json

        with open(info_path) as f:
            result.labeler_info = json.load(f)
    if not todo:
        return result
    started = not ray.is_initialized()
    init_ray(cfg.address)
    try:
        _run(plan, todo, out_dir, cfg, settings, result)
    finally:
        if started:
            ray.shutdown()  # the job owns the local cluster (or connection) it started
    if result.labeler_info and not os.path.exists(info_path):
        atomic_write_json(info_path, result.labeler_info)
    return result


def _run(plan, todo: list[int], out_dir: str, cfg, settings, result: RunResult) -> None:
    import ray
    from tqdm import tqdm

    task = ray.remote(num_cpus=1, max_retries=2)(_shard_task)
    max_in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    attempts = {i: 0 for i in todo}
    queue = list(todo)
    running: dict[Any, int] = {}
    bar = tqdm(total=sum(len(plan.shard_items(i)) for i in todo), unit="img", desc="label", smoothing=0.05)
    try:
        while queue or running:
            while queue and len(running) < max_in_flight:
                i = queue.pop(0)
                attempts[i] += 1
                ref = task.remote(
                    i, plan.shard_name(i), plan.shard_items(i), plan.root, out_dir, settings, cfg.batch_size
                )
                running[ref] = i
            ready, _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - a failed unit of work is retried, then reported
                cause = getattr(e, "cause", None) or e  # RayTaskError wraps the task's own exception
                msg = f"{plan.shard_name(i)} attempt {attempts[i]}: {type(cause).__name__}: {cause}"[:500]
                result.errors.append(msg)
                if attempts[i] <= cfg.max_retries:
                    queue.append(i)
                continue
            if "setup_error" in out:
                for ref in running:
                    ray.cancel(ref, force=True)
                raise LabelerSetupError(out["setup_error"])
            result.labeler_info = result.labeler_info or out["info"]
            bar.update(out["stats"]["planned"])
    finally:
        bar.close()
