"""The labeling job's progress as Ray metrics, for Ray's dashboard and the Grafana it feeds
(docs/RUNNING.md, "Watching a job"): what the driver's progress bar says, visible from anywhere
the cluster's metrics are scraped.

Every metric is tagged with the job's `output` (where its shards go), so two jobs on one cluster
are two series. Ray exports them with a `ray_` prefix, counters with `_total`:

    c2f_images_labeled       counter    inputs packed into shards, as each shard finishes (driver)
    c2f_images_quarantined   counter    inputs quarantined; tag `stage` (read, decode, label, pack) (driver)
    c2f_shards_done          counter    shards finished, their stats written (driver)
    c2f_shard_failures       counter    shard attempts that failed; tag `cause` (driver)
    c2f_stage_ms             histogram  ms per image of a shard task stage, one value per shard; tag `stage` (driver)
    c2f_actor_replacements   counter    labeling actors restarted or replaced; tag `cause` (actor or pool)
    c2f_label_batch_ms       histogram  ms a labeling actor took for one batch (actor)

The hooks are one call where the event happens (`shard_done`, `shard_failed`, `actor_started`,
`actor_replaced`, `batch_labeled`); each process says once which job it serves (`bind`). A pool
that replaces an actor itself calls `actor_replaced(cause)`. A hook outside a Ray
process, or one whose metric cannot be recorded, does nothing: metrics never cost a shard.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

from shards.manifest import ShardStats

log = logging.getLogger(__name__)

STAGE_MS_BOUNDARIES = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_MS_BOUNDARIES = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000, 120000]

_bound = {"output": ""}  # the job this process serves: its metrics' `output` tag


def bind(output: str) -> None:
    """Tag this process's metrics with the job's output (the driver at start, each actor when built)."""
    _bound["output"] = str(output)


@functools.cache
def _metrics() -> SimpleNamespace:
    """The metric objects, made once per process on first use (they need a connected Ray worker)."""
    from ray.util.metrics import Counter, Histogram

    out = ("output",)
    return SimpleNamespace(
        labeled=Counter("c2f_images_labeled", "inputs packed into shards", tag_keys=out),
        quarantined=Counter("c2f_images_quarantined", "inputs quarantined, by stage", tag_keys=(*out, "stage")),
        shards=Counter("c2f_shards_done", "shards finished", tag_keys=out),
        failures=Counter("c2f_shard_failures", "shard attempts that failed", tag_keys=(*out, "cause")),
        stage_ms=Histogram(
            "c2f_stage_ms",
            "milliseconds per image of a shard task stage (per shard)",
            boundaries=STAGE_MS_BOUNDARIES,
            tag_keys=(*out, "stage"),
        ),
        replaced=Counter("c2f_actor_replacements", "labeling actors restarted or replaced", tag_keys=(*out, "cause")),
        batch_ms=Histogram(
            "c2f_label_batch_ms",
            "milliseconds a labeling actor took for one batch",
            boundaries=BATCH_MS_BOUNDARIES,
            tag_keys=out,
        ),
    )


def _record(fn) -> None:
    """Run `fn(metrics, tags)` in a Ray process; anything else, or any failure, does nothing."""
    try:
        import ray

        if not ray.is_initialized():
            return
        fn(_metrics(), {"output": _bound["output"]})
    except Exception as e:  # noqa: BLE001 - a metric is never worth a shard
        log.debug("c2f metric not recorded: %s", e)


def shard_done(stats: ShardStats) -> None:
    """A shard finished: its images, its quarantine by stage, its stage times per image."""

    def record(m, tags):
        m.shards.inc(1, tags)
        if stats.samples:
            m.labeled.inc(stats.samples, tags)
        by_stage: dict[str, int] = {}
        for q in stats.quarantined:
            by_stage[q.stage] = by_stage.get(q.stage, 0) + 1
        for stage, n in by_stage.items():
            m.quarantined.inc(n, {**tags, "stage": stage})
        for stage, ms in stats.timings.items():
            if stats.planned:
                m.stage_ms.observe(ms / stats.planned, {**tags, "stage": stage})

    _record(record)


def shard_failed(cause: str) -> None:
    """A shard attempt failed (it is retried, or reported missing); `cause`: the exception's type name."""
    _record(lambda m, tags: m.failures.inc(1, {**tags, "cause": cause}))


def actor_replaced(cause: str) -> None:
    """A labeling actor was restarted or replaced; `cause` in a word or two (`restarted`, `died`, `hung`)."""
    _record(lambda m, tags: m.replaced.inc(1, {**tags, "cause": cause}))


def actor_started() -> None:
    """In a labeling actor's constructor: an actor that Ray restarted (its process died) counts as
    replaced, with cause `restarted`."""

    def record(m, tags):
        import ray

        if ray.get_runtime_context().was_current_actor_reconstructed:
            m.replaced.inc(1, {**tags, "cause": "restarted"})

    _record(record)


def batch_labeled(seconds: float) -> None:
    """A labeling actor finished one batch in `seconds`."""
    _record(lambda m, tags: m.batch_ms.observe(1000 * seconds, tags))
