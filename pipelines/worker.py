"""One unit of work: shard *i* of the plan -> a finished tar + its stats JSON.

read (bounded) -> decode (shards.image) -> label (labeler) -> pack (shards.pack) -> write (shards.writer)

Every input of the shard ends up either in the tar or in the stats' `quarantined` list with the
stage and the reason: a failure on one image, at any stage, costs only that image. Only failures of
the shard itself (the output disk, the labeler's process) fail the task, which is then retried.
The stats JSON is the done-marker, written last.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labeler.base import Labeler
from shards.image import BadImage, PreparedImage, prepare_image
from shards.manifest import Quarantined, ShardStats, write_stats
from shards.pack import Labels, pack_sample
from shards.store import Store
from shards.writer import ShardInfo, ShardWriter

from .plan import Item


@dataclass(frozen=True)
class ShardJob:
    """What a shard task needs besides the labeler; small and picklable (Ray ships it)."""

    index: int
    shard: str  # file name of the tar
    items: list[Item]  # the plan's inputs for this shard, in key order
    root: str  # input root: a local directory or an fsspec URL
    out_dir: str
    batch_size: int = 16  # images per labeler call


def read_input(root: str, source: str) -> bytes:
    """Bytes of one input: a local path, or any fsspec URL root (s3://, gs://, …)."""
    if "://" in root and not root.startswith("file://"):
        import fsspec

        with fsspec.open(f"{root.rstrip('/')}/{source}", "rb") as f:
            return f.read()
    return (Path(root.removeprefix("file://")) / source).read_bytes()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class StageTimer(dict):
    """Milliseconds spent per stage of one shard: `with timer("decode"): …`."""

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[stage] = self.get(stage, 0.0) + 1000 * (time.perf_counter() - t0)


class Quarantine(list):
    """The shard's quarantined inputs; `add` records one with its stage and reason."""

    def __init__(self, shard: str):
        super().__init__()
        self.shard = shard

    def add(self, item: Item, stage: str, reason: str) -> None:
        self.append(Quarantined(self.shard, item.key, item.source, stage, reason))


def decode_batches(
    job: ShardJob, quarantine: Quarantine, timer: StageTimer | None = None
) -> Iterator[list[tuple[Item, PreparedImage]]]:
    """read -> decode, in batches; inputs that cannot be read or decoded go to `quarantine`."""
    timer = timer if timer is not None else StageTimer()
    for b in range(0, len(job.items), job.batch_size):
        batch: list[tuple[Item, PreparedImage]] = []
        for item in job.items[b : b + job.batch_size]:
            try:
                with timer("read"):
                    data = read_input(job.root, item.source)
            except Exception as e:  # noqa: BLE001 - one unreadable input costs only itself
                quarantine.add(item, "read", _first_line(e))
                continue
            try:
                with timer("decode"):
                    batch.append((item, prepare_image(data)))
            except BadImage as e:
                quarantine.add(item, "decode", str(e))
            except Exception as e:  # noqa: BLE001 - any decoder failure (plugins raise anything, MemoryError)
                quarantine.add(item, "decode", _first_line(e))
        yield batch


def write_labeled(
    writer: ShardWriter,
    batch: list[tuple[Item, PreparedImage]],
    results: list,
    quarantine: Quarantine,
    timer: StageTimer | None = None,
) -> None:
    """pack + write one labeled batch; a label or pack failure quarantines that image only."""
    timer = timer if timer is not None else StageTimer()
    for (item, im), labels in zip(batch, results, strict=True):
        if isinstance(labels, Exception):
            quarantine.add(item, "label", _first_line(labels))
            continue
        if not isinstance(labels, Labels):
            quarantine.add(item, "label", f"labeler returned {type(labels).__name__}, not Labels")
            continue
        try:
            with timer("pack"):
                members = pack_sample(item.key, im, labels, item.source, item.class_index, item.synset)
            with timer("write"):
                writer.write(item.key, members)  # checks key and members before writing a byte
        except (ValueError, TypeError, OverflowError) as e:
            quarantine.add(item, "pack", _first_line(e))


def process_shard(job: ShardJob, labeler: Labeler) -> ShardStats:
    """Label and write one shard. The labeler's `submit` returns at once for a remote actor, so
    the next batch is read and decoded while the current one is labeled."""
    t0 = time.perf_counter()
    quarantine, timer = Quarantine(job.shard), StageTimer()
    store = Store(job.out_dir)
    staging = store.staging_dir()
    try:
        info = _write_shard(job, labeler, Path(staging) / job.shard, quarantine, timer)
        if info.samples:
            with timer("publish"):
                store.publish(Path(staging) / job.shard, job.shard)  # the tar first, then its done-marker
    finally:
        store.discard_staging(staging)
    stats = ShardStats(
        index=job.index,
        shard=job.shard,
        planned=len(job.items),
        samples=info.samples,
        bytes=info.bytes,
        sha256=info.sha256,
        quarantined=list(quarantine),
        seconds=round(time.perf_counter() - t0, 3),
        timings={k: round(v, 1) for k, v in timer.items()},
    )
    write_stats(store, stats)
    return stats


def _write_shard(job: ShardJob, labeler: Labeler, path: Path, quarantine: Quarantine, timer: StageTimer) -> ShardInfo:
    """read -> decode -> label -> pack -> write into a tar at `path` (atomically, by the writer).
    `label_wait` is the time this task waited for labels beyond its own reading and decoding."""
    with ShardWriter(path) as writer:

        def finish(batch: list[tuple[Item, PreparedImage]], handle) -> None:
            with timer("label_wait"):
                results = labeler.collect(handle) if batch else []
            write_labeled(writer, batch, results, quarantine, timer)

        pending = None
        for batch in decode_batches(job, quarantine, timer):
            handle = labeler.submit([im.rgb for _, im in batch]) if batch else None
            if pending is not None:
                finish(*pending)
            pending = (batch, handle)
        if pending is not None:
            finish(*pending)
    return writer.info
