"""What the job asks of the cluster against what the cluster has: refuse the impossible at once,
say what a busy cluster makes the job wait for, and give up after `--wait-timeout`.

Ray itself only logs "cannot be scheduled" warnings on the workers, and the job keeps worker logs
off the driver's console, so without this a request that cannot be met is a silent hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shards.errors import C2FError, UsageError

REPORT_EVERY = 60.0  # seconds between "still waiting" lines


class ClusterBusy(C2FError):
    """The cluster did not free what the job needs within `--wait-timeout` (exit 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Request:
    """The resources of the labeling pool and of one shard task."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    cpus_per_shard: float

    def describe_actor(self) -> str:
        gpu = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return f"{self.cpus_per_actor:g} CPU{gpu}"


@dataclass(frozen=True)
class ClusterView:
    nodes: list[dict[str, float]]  # total resources of each alive node
    free: dict[str, float]  # available now, cluster-wide

    @property
    def total(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for node in self.nodes:
            for k, v in node.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def largest(self, resource: str) -> float:
        return max((n.get(resource, 0.0) for n in self.nodes), default=0.0)


def cluster_view() -> ClusterView:
    import ray

    nodes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    return ClusterView(nodes, dict(ray.available_resources()))


def describe(resources: dict[str, float]) -> str:
    cpu, gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    return f"{cpu:g} CPU, {gpu:g} GPU"


def check_possible(req: Request, view: ClusterView, static: bool = False) -> None:
    """Refuse a request that no node of the cluster can ever hold, naming the flag to change.
    `static`: the cluster cannot grow (the job's own local one), so a pool larger than all of it
    is refused too."""
    checks = [
        ("CPU", req.cpus_per_actor, "--cpus-per-actor"),
        ("GPU", req.gpus_per_actor, "--gpus-per-actor"),
        ("CPU", req.cpus_per_shard, "--cpus-per-shard"),
    ]
    for resource, want, flag in checks:
        have = view.largest(resource)
        if want > have:
            hint = " (0 labels on CPUs)" if resource == "GPU" else ""
            raise UsageError(
                f"{flag} {want:g}: no node of the cluster has {want:g} {resource} (the largest has {have:g}); "
                f"lower {flag}{hint}"
            )
    if static and (reason := _too_large(req, view)):
        raise UsageError(reason)


def _needs(req: Request) -> tuple[float, float]:
    """(CPU, GPU) for the whole pool and one shard task."""
    return req.actors * req.cpus_per_actor + req.cpus_per_shard, req.actors * req.gpus_per_actor


def _too_large(req: Request, view: ClusterView) -> str | None:
    need_cpu, need_gpu = _needs(req)
    total = view.total
    if need_cpu > total.get("CPU", 0.0) or need_gpu > total.get("GPU", 0.0):
        return (
            f"{req.actors} labeling actor(s) of {req.describe_actor()} and one shard task of "
            f"{req.cpus_per_shard:g} CPU need {need_cpu:g} CPU, {need_gpu:g} GPU; the whole cluster has "
            f"{describe(total)}: lower --actors, --cpus-per-actor, --gpus-per-actor or --cpus-per-shard"
        )
    return None


def shortfall(req: Request, view: ClusterView) -> str | None:
    """Why the pool cannot start now, or None when the free resources hold it."""
    need_cpu, need_gpu = _needs(req)
    if reason := _too_large(req, view):
        return reason + " (or wait for nodes to join)"
    if need_cpu > view.free.get("CPU", 0.0) or need_gpu > view.free.get("GPU", 0.0):
        return (
            f"{req.actors} labeling actor(s) of {req.describe_actor()} and shard tasks of {req.cpus_per_shard:g} CPU "
            f"need {need_cpu:g} CPU, {need_gpu:g} GPU free; other jobs hold the rest"
        )
    return None


class Waiter:
    """Prints what the job waits for (at once, then every `REPORT_EVERY` seconds, with the
    cluster's free resources) and raises `ClusterBusy` after `timeout` seconds (None: wait)."""

    def __init__(self, timeout: float | None, say: Callable[[str], None] = print):
        self.timeout, self.say = timeout, say
        self.t0 = time.monotonic()
        self.last: float | None = None

    def tick(self, what: str, view: ClusterView) -> None:
        now = time.monotonic()
        waited = now - self.t0
        if self.timeout is not None and waited >= self.timeout:
            raise ClusterBusy(f"gave up after --wait-timeout {self.timeout:g}s waiting for {what}")
        if self.last is None or now - self.last >= REPORT_EVERY:
            self.last = now
            self.say(f"waiting ({waited:.0f}s) for {what}; cluster free now: {describe(view.free)}")

    def remaining(self, cap: float) -> float:
        if self.timeout is None:
            return cap
        return max(0.0, min(cap, self.timeout - (time.monotonic() - self.t0)))
