"""Distribute the plan over Ray: labeling actors hold the models, shard tasks do everything else.

    shard task (CPU, `cpus_per_shard`)            labeling actor pool (`actors` x `gpus_per_actor`)
    read + decode batch k+1  ── images ──►  LabelActor.label(batch k)   (model loaded once per actor,
    pack + write batch k     ◄── labels ──                               `actor_batches` in flight)
    temp tar → rename → stats JSON

Each shard task goes to the least loaded live actor. At most `2 x actors + CPUs` shards are in
flight, so memory stays bounded whatever the dataset size. The actors and the pool that keeps
them alive are in `pipelines/pool.py`: a dead actor is restarted (or replaced) and its batches
rerun, for as long as failures stay under `max_actor_failures_per_hour`. A shard task that fails
is resubmitted up to `max_retries` times, then reported; one that failed because its actor was
lost for good is resubmitted to another without using a retry. A labeler that cannot be built (a
missing checkpoint, an unknown model id) stops the job at once: retrying cannot fix configuration.
A preset without a model (`IN_TASK_PRESETS`: `empty`) has no actor pool: each shard task labels
in its own process, and the actor flags do not apply.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from labeler.base import LabelerLoadError
from shards.errors import UsageError, first_line
from shards.manifest import LabelerRecord, ShardStats, read_labeler_record, write_labeler_record
from shards.store import Store

from . import metrics
from .plan import Plan
from .resources import Request, Waiter, check_possible, cluster_view, shortfall
from .worker import DecodeLimits, ShardJob

POLL_SECONDS = 1.0  # how often a waiting job looks at the cluster's free resources

# Presets without a model: each shard task builds its own labeler (there is nothing to load or to
# share), so no labeling actor is started, none holds a CPU, and no image or mask crosses processes.
IN_TASK_PRESETS = frozenset({"empty"})


class RayUnavailable(UsageError):
    """No Ray cluster at the address (none running, refused, wrong auth token)."""


@dataclass(frozen=True)
class PoolSettings:
    """How the job uses the cluster (`c2f label` flags); the only settings the distributor reads."""

    address: str = field(
        default="local", metadata={"help": "Ray address: 'local' starts one here, 'auto' joins a running cluster"}
    )
    batch_size: int = field(default=16, metadata={"help": "images per labeler call"})
    actors: int = field(
        default=0, metadata={"help": "labeling actors (each loads the models once); 0: one per GPU, or 1 without GPUs"}
    )
    gpus_per_actor: float = field(
        default=-1.0, metadata={"help": "GPUs per labeling actor; -1: 1 when the cluster has GPUs, else 0"}
    )
    cpus_per_actor: float = field(
        default=1.0, metadata={"help": "CPUs reserved per labeling actor (also its torch threads)"}
    )
    cpus_per_shard: float = field(
        default=0.5,
        metadata={
            "help": "CPUs per shard task (read, decode, pack, write); fractional so "
            "read tasks are not starved by actors on small nodes"
        },
    )
    actor_batches: int = field(
        default=3,
        metadata={
            "help": "batches a labeling actor works on at once: while the device runs one, the next is received "
            "and uploaded and the last finished on the host; 1: one at a time"
        },
    )
    max_actor_failures_per_hour: float = field(
        default=-1.0,
        metadata={
            "help": "labeling-actor deaths tolerated over any hour (each is restarted or replaced, its batches "
            "retried); more ends the job with exit 1; -1: 10 + 2 per actor"
        },
    )
    max_retries: int = field(
        default=3, metadata={"help": "times a failed shard is retried before the job reports it missing"}
    )
    wait_timeout: float | None = field(
        default=None,
        metadata={
            "help": "seconds to wait for a busy cluster to free what the labeling pool needs, or, once labeling, "
            "for any labeling actor to be placed again, then exit 1 (default: wait, printing what it waits for "
            "every minute)"
        },
    )


class RemoteLabeler:
    """The shard task's view of an actor: `submit` returns at once, `collect` waits."""

    needs_pixels = True  # model labelers run in actors; a labeler without a model runs in the task

    def __init__(self, actor):
        self.actor = actor

    def submit(self, images, contexts=None):
        return self.actor.label.remote(images, contexts)

    def collect(self, ref):
        import ray

        return ray.get(ref)

    def label(self, images, contexts=None):
        return self.collect(self.submit(images, contexts))


def _shard_task(job: ShardJob, actor, settings=None) -> ShardStats:
    """One shard, labeled by `actor`, or with no actor (`IN_TASK_PRESETS`) by a labeler built
    here from `settings`."""
    from .worker import process_shard

    if actor is None:
        from labeler.registry import build_labeler

        return process_shard(job, build_labeler(settings))
    return process_shard(job, RemoteLabeler(actor))


@dataclass
class RunResult:
    labeler_info: LabelerRecord | None = None  # None: no shard ran and the output has no labeler.json
    errors: list[str] = field(default_factory=list)
    images: int = 0  # inputs of the shards this run finished
    pool_gpus: float = 0.0  # GPUs held by the labeling pool
    actor_failures: int = 0  # labeling-actor deaths this run survived
    finished: list[tuple[float, int, float]] = field(default_factory=list)  # (end time, inputs, seconds)
    timings: dict[str, float] = field(default_factory=dict)  # ms per stage, summed over those shards
    # Inside the actors' current processes: ms per labeler stage, `busy` (ms with a batch in the
    # actor, summed over actors), `in_actor` (ms of batches in the actor, summed over batches) and
    # `labeled` (images); stages that overlap add up to more than `busy`.
    labeler_timings: dict[str, float] = field(default_factory=dict)

    @property
    def shards(self) -> int:
        """Shards this run finished."""
        return len(self.finished)

    def add(self, stats: ShardStats) -> None:
        self.images += stats.planned
        self.finished.append((time.monotonic(), stats.planned, stats.seconds))
        for k, v in stats.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v

    def steady_rate(self) -> float:
        """Inputs per second after the first shard finished (start-up excluded); with one shard,
        that shard's own rate."""
        if not self.finished:
            return 0.0
        if len(self.finished) == 1:
            _, n, seconds = self.finished[0]
            return n / max(1e-9, seconds)
        t0, t1 = self.finished[0][0], self.finished[-1][0]
        return sum(n for _, n, _ in self.finished[1:]) / max(1e-9, t1 - t0)

    def summary(self) -> str | None:
        """Where this run's time went, per image: shard tasks' stages, then the labelers' own."""
        if not self.images:
            return None

        def per_image(timings: dict[str, float], n: float) -> str:
            return ", ".join(f"{k} {v / n:.1f}" for k, v in timings.items())

        line = f"time per image (ms): shard tasks: {per_image(self.timings, self.images)}"
        stages = {k: v for k, v in self.labeler_timings.items() if k not in ("busy", "labeled", "in_actor")}
        labeled = self.labeler_timings.get("labeled") or self.images
        if stages:
            line += f"; labelers: {per_image(stages, labeled)}"
        if busy := self.labeler_timings.get("busy"):
            line += (
                f"; actors busy {busy / labeled:.1f} per image ({1000 * labeled / busy:.1f} images/s while busy)"
                + (f", stages overlapped {sum(stages.values()) / busy:.2f}x" if stages else "")
                + f", {self.labeler_timings.get('in_actor', 0.0) / busy:.1f} batches in flight"
            )
        return line


def _reachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at an explicit `host:port` GCS address, or None. `ray.init` itself
    retries an address where nothing listens for many minutes."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return None  # 'auto', or a ray:// client address: Ray resolves and reports these itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        return f"nothing answers at {host}:{port} ({e.strerror or type(e).__name__})"


def init_ray(address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address != "local" and (why := _reachable(address)):
        raise RayUnavailable(f"cannot start or join Ray at --address {address!r}: {why}")
    try:
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
    except Exception as e:  # noqa: BLE001 - no cluster there, refused, wrong auth token
        first = first_line(e)
        hint = ""
        if address != "local" and os.environ.get("RAY_AUTH_MODE") != "token":
            hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token here: docs/RUNNING.md)"
        raise RayUnavailable(f"cannot start or join Ray at --address {address!r}: {first}{hint}") from None


def _pool_shape(cfg: PoolSettings) -> tuple[int, float]:
    """(actors, gpus per actor) from the config and the cluster's resources."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    per = cfg.gpus_per_actor if cfg.gpus_per_actor >= 0 else (1.0 if gpus else 0.0)
    n = cfg.actors or (max(1, int(gpus // per)) if per else 1)
    return n, per


def wait_for_resources(req: Request, timeout: float | None, static: bool) -> None:
    """Return once the cluster's free resources hold the pool and one shard task; refuse at once
    what no node can hold; say what the job waits for meanwhile (docs/RUNNING.md)."""
    view = cluster_view()
    check_possible(req, view, static)
    waiter = Waiter(timeout, say=lambda line: print(line, flush=True))
    while (reason := shortfall(req, view)) is not None:
        waiter.tick(reason, view)
        time.sleep(waiter.remaining(POLL_SECONDS))
        view = cluster_view()


def start_pool(cfg: PoolSettings, settings, output: str = ""):
    """Create the actor pool and wait until every actor has its labeler (or one failed to build it);
    returns (pool, labeler record). A preset of `IN_TASK_PRESETS` gets no pool: its labeler is built
    here only to describe it. `output` tags the actors' metrics."""

    from .pool import ActorPool, labeler_info, new_actor

    if settings.labeler.preset in IN_TASK_PRESETS:
        from labeler.registry import build_labeler

        wait_for_resources(Request(0, 0.0, 0.0, cfg.cpus_per_shard), cfg.wait_timeout, static=cfg.address == "local")
        return None, labeler_info(build_labeler(settings))
    n, gpus = _pool_shape(cfg)
    req = Request(n, cfg.cpus_per_actor, gpus, cfg.cpus_per_shard)
    wait_for_resources(req, cfg.wait_timeout, static=cfg.address == "local")
    # Unlimited restarts and retries: a dead actor comes back and reruns its batches; the pool
    # bounds how often (failures per hour) instead of a count over the whole job.
    options = {"num_cpus": cfg.cpus_per_actor, "num_gpus": gpus, "max_restarts": -1, "max_task_retries": -1}
    threads = int(max(1, cfg.cpus_per_actor))
    budget = cfg.max_actor_failures_per_hour
    pool = ActorPool(
        lambda name: new_actor(name, cfg.actor_batches, (settings, threads, output), **options),
        n,
        budget if budget >= 0 else 10 + 2 * n,
        cfg.wait_timeout,
    )
    try:
        return pool, pool.start()
    except BaseException:
        pool.shutdown()
        raise


def check_settings(cfg: PoolSettings) -> None:
    if cfg.actor_batches < 1:
        raise UsageError(f"--actor-batches must be >= 1, got {cfg.actor_batches}")
    if cfg.max_actor_failures_per_hour < 0 and cfg.max_actor_failures_per_hour != -1:
        raise UsageError(
            f"--max-actor-failures-per-hour must be >= 0 (or -1: automatic), got {cfg.max_actor_failures_per_hour:g}"
        )


def run_shards(
    plan: Plan, todo: list[int], out: Store, cfg: PoolSettings, settings, limits: DecodeLimits | None = None
) -> RunResult:
    import ray

    check_settings(cfg)
    result = RunResult(labeler_info=read_labeler_record(out))
    if not todo:
        return result
    started = not ray.is_initialized()
    init_ray(cfg.address)
    metrics.bind(out.root)
    pool = None
    try:
        pool, info = start_pool(cfg, settings, out.root)
        # The labeler that labels this run's shards describes the dataset (settings are pinned per
        # output directory, so this only differs from a stored labeler.json after --overwrite).
        result.labeler_info = info
        result.pool_gpus = len(pool.slots) * _pool_shape(cfg)[1] if pool else 0.0
        write_labeler_record(out, info)
        _run(plan, todo, out.root, cfg, pool, result, limits, settings)
    finally:
        if pool is not None and not started:
            pool.shutdown()  # a Ray this job joined keeps running: free what the pool holds
        if started:
            ray.shutdown()  # the job owns the local cluster (or connection) it started
    return result


def _run(
    plan: Plan,
    todo: list[int],
    out_dir: str,
    cfg: PoolSettings,
    pool,
    result: RunResult,
    limits: DecodeLimits | None = None,
    settings=None,
) -> None:
    """Run the shards of `todo`, each labeled by the least loaded actor of `pool`, or with no pool
    by labelers the shard tasks build from `settings`."""
    import ray
    from tqdm import tqdm

    task = ray.remote(num_cpus=cfg.cpus_per_shard, max_retries=2)(_shard_task)
    actors = len(pool.slots) if pool else 0
    max_in_flight = 2 * actors + int(ray.cluster_resources().get("CPU", 1))
    attempts = {i: 0 for i in todo}
    queue = list(todo)
    running: dict[Any, tuple[int, Any]] = {}  # shard task -> (shard, its pool slot)
    bar = tqdm(total=sum(plan.shard_size(i) for i in todo), unit="img", desc="label", smoothing=0.05)
    try:
        while queue or running:
            while queue and len(running) < max_in_flight:
                i = queue.pop(0)
                attempts[i] += 1
                slot = pool.pick() if pool else None
                job = ShardJob(
                    i,
                    plan.shard_name(i),
                    plan.shard_items(i),
                    plan.root,
                    out_dir,
                    cfg.batch_size,
                    limits or DecodeLimits(),
                )
                ref = task.remote(job, slot.actor if slot else None, None if slot else settings)
                running[ref] = (i, slot)
            watched = pool.refs() if pool else []
            ready, _ = ray.wait([*running, *watched], num_returns=1, timeout=POLL_SECONDS if pool else None)
            if pool:
                for ref in ready:
                    if pool.owns(ref):
                        pool.handle(ref)
                pool.check()
            ready = [ref for ref in ready if ref in running]
            if not ready:
                continue
            i, slot = running.pop(ready[0])
            if slot is not None:
                slot.shards -= 1
            try:
                stats = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - a failed unit of work is retried, then reported
                cause = getattr(e, "cause", None) or e  # RayTaskError wraps the task's own exception
                if isinstance(cause, LabelerLoadError) or getattr(cause, "stops_job", False):
                    # A restarted actor cannot build its labeler, the output is full: no retry can help.
                    raise cause from None
                if isinstance(cause, ray.exceptions.RayActorError):
                    attempts[i] -= 1  # its actor was lost for good (the pool replaces it): not the shard's failure
                    queue.append(i)
                    continue
                msg = f"{plan.shard_name(i)} attempt {attempts[i]}: {type(cause).__name__}: {cause}"[:500]
                result.errors.append(msg)
                metrics.shard_failed(type(cause).__name__)
                if attempts[i] <= cfg.max_retries:
                    queue.append(i)
                continue
            bar.update(stats.planned)
            result.add(stats)
            metrics.shard_done(stats)
    finally:
        bar.close()
        if pool:
            result.actor_failures = pool.failures
    if pool:
        for timings in pool.timings():
            for k, v in timings.items():
                if k.endswith("_ms") or k == "labeled":  # cumulative ms per labeler stage (labeler.timing)
                    stage = k.removesuffix("_ms")
                    result.labeler_timings[stage] = result.labeler_timings.get(stage, 0.0) + v
