"""One unit of work: shard *i* of the plan -> a finished tar + its stats JSON.

read (bounded) -> decode (shards.image) -> label (labeler) -> pack (shards.pack) -> write (shards.writer)

Every input of the shard ends up either in the tar or in the stats' `quarantined` list with the
stage and the reason: a failure on one image, at any stage, costs only that image. Only failures of
the shard itself (the output disk, the labeler's process) fail the task, which is then retried.
The stats JSON is the done-marker, written last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labeler.base import Labeler
from shards.image import BadImage, PreparedImage, prepare_image
from shards.manifest import Quarantined, ShardStats, write_stats
from shards.pack import Labels, pack_sample
from shards.writer import ShardWriter

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


class Quarantine(list):
    """The shard's quarantined inputs; `add` records one with its stage and reason."""

    def __init__(self, shard: str):
        super().__init__()
        self.shard = shard

    def add(self, item: Item, stage: str, reason: str) -> None:
        self.append(Quarantined(self.shard, item.key, item.source, stage, reason))


def decode_batches(job: ShardJob, quarantine: Quarantine) -> Iterator[list[tuple[Item, PreparedImage]]]:
    """read -> decode, in batches; inputs that cannot be read or decoded go to `quarantine`."""
    for b in range(0, len(job.items), job.batch_size):
        batch: list[tuple[Item, PreparedImage]] = []
        for item in job.items[b : b + job.batch_size]:
            try:
                data = read_input(job.root, item.source)
            except Exception as e:  # noqa: BLE001 - one unreadable input costs only itself
                quarantine.add(item, "read", _first_line(e))
                continue
            try:
                batch.append((item, prepare_image(data)))
            except BadImage as e:
                quarantine.add(item, "decode", str(e))
            except Exception as e:  # noqa: BLE001 - any decoder failure (plugins raise anything, MemoryError)
                quarantine.add(item, "decode", _first_line(e))
        yield batch


def write_labeled(
    writer: ShardWriter, batch: list[tuple[Item, PreparedImage]], results: list, quarantine: Quarantine
) -> None:
    """pack + write one labeled batch; a label or pack failure quarantines that image only."""
    for (item, im), labels in zip(batch, results, strict=True):
        if isinstance(labels, Exception):
            quarantine.add(item, "label", _first_line(labels))
            continue
        if not isinstance(labels, Labels):
            quarantine.add(item, "label", f"labeler returned {type(labels).__name__}, not Labels")
            continue
        try:
            members = pack_sample(item.key, im, labels, item.source, item.class_index, item.synset)
            writer.write(item.key, members)  # checks key and members before writing a byte
        except (ValueError, TypeError, OverflowError) as e:
            quarantine.add(item, "pack", _first_line(e))


def process_shard(job: ShardJob, labeler: Labeler) -> ShardStats:
    """Label and write one shard. The labeler's `submit` returns at once for a remote actor, so
    the next batch is read and decoded while the current one is labeled."""
    t0 = time.perf_counter()
    quarantine = Quarantine(job.shard)
    with ShardWriter(Path(job.out_dir) / job.shard) as writer:

        def finish(batch: list[tuple[Item, PreparedImage]], handle) -> None:
            write_labeled(writer, batch, labeler.collect(handle) if batch else [], quarantine)

        pending = None
        for batch in decode_batches(job, quarantine):
            handle = labeler.submit([im.rgb for _, im in batch]) if batch else None
            if pending is not None:
                finish(*pending)
            pending = (batch, handle)
        if pending is not None:
            finish(*pending)
    info = writer.info
    stats = ShardStats(
        index=job.index,
        shard=job.shard,
        planned=len(job.items),
        samples=info.samples,
        bytes=info.bytes,
        sha256=info.sha256,
        quarantined=list(quarantine),
        seconds=round(time.perf_counter() - t0, 3),
    )
    write_stats(job.out_dir, stats)
    return stats
