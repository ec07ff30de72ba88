"""`c2f label … --estimate N`: label N images spread over the input, on this cluster, with these
settings, into a temporary directory; project the whole run from the measured rate.

The rate is the steady state: images of the shards that finished after the first one, over the
time since the first one finished, so start-up (Ray, model loading, compilation) is not counted.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from labeler.config import Settings
from shards.manifest import read_done
from shards.store import Store

from .distributor import PoolSettings, run_shards
from .plan import Plan
from .worker import DecodeLimits


@dataclass(frozen=True)
class Estimate:
    images: int  # inputs in the whole plan
    shards: int  # shards in the whole plan
    sampled: int  # images labeled to measure
    images_per_s: float  # steady-state rate of the whole pool
    gpus: float  # GPUs the pool holds
    bytes_per_sample: float  # mean shard bytes per labeled sample
    found: tuple[int, int] | None = None  # text-prompted presets: sampled images whose prompt found / did not find

    @property
    def hours(self) -> float:
        return self.images / self.images_per_s / 3600

    def format(self) -> str:
        gpu = f", {self.hours * self.gpus:.1f} GPU-hours on {self.gpus:g} GPU(s)" if self.gpus else " (no GPUs)"
        return (
            f"estimate from {self.sampled} images: {self.images_per_s:.1f} images/s -> "
            f"{self.images} images in {self.hours:.2f} h{gpu}; "
            f"{self.shards} shards, {self.images * self.bytes_per_sample / 1e9:.1f} GB "
            f"({self.bytes_per_sample / 1e3:.0f} KB per sample)"
            + (
                f"; the prompt found its object in {self.found[0]} of {sum(self.found)} sampled images"
                if self.found
                else ""
            )
        )


def sample_plan(plan: Plan, n: int, shard_size: int) -> Plan:
    """n items spread evenly over the plan (so over its classes and folders), in small shards."""
    n = max(1, min(n, plan.num_inputs))
    step = plan.num_inputs / n
    items = sorted({plan.items[int(i * step)] for i in range(n)}, key=lambda it: it.key)
    return Plan(plan.root, plan.imagenet, plan.classes, shard_size, "estimate", items)


def estimate(
    plan: Plan, n: int, pool: PoolSettings, settings: Settings, limits: DecodeLimits | None = None
) -> Estimate:
    sub = sample_plan(plan, n, shard_size=max(1, 2 * pool.batch_size))
    with tempfile.TemporaryDirectory(prefix="c2f-estimate-") as tmp:
        result = run_shards(sub, list(range(sub.num_shards)), Store(tmp), pool, settings, limits)
        done = read_done(tmp)
    samples = sum(s.samples for s in done.values()) or 1
    grounded = [s.grounded for s in done.values() if s.grounded is not None]
    return Estimate(
        images=plan.num_inputs,
        shards=plan.num_shards,
        sampled=sub.num_inputs,
        images_per_s=result.steady_rate(),
        gpus=result.pool_gpus,
        bytes_per_sample=sum(s.bytes for s in done.values()) / samples,
        found=(sum(g.found for g in grounded), sum(g.not_found for g in grounded)) if grounded else None,
    )
