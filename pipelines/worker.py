"""One unit of work: shard *i* of the plan -> a finished tar + its stats JSON.

read + decode (shards.image) -> label (labeler) -> pack (shards.pack) -> write (shards.writer).
Every input of the shard ends up either in the tar or in the stats' `quarantined` list with a
reason; nothing raises out of a bad image. The stats JSON is the done-marker, written last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from labeler.base import Labeler
from shards.image import BadImage, PreparedImage, prepare_image
from shards.manifest import write_stats
from shards.pack import pack_sample
from shards.writer import ShardWriter

from .plan import Item


def quarantine_record(shard: str, item: Item, stage: str, reason: str) -> dict[str, Any]:
    return {"shard": shard, "key": item.key, "source": item.source, "stage": stage, "reason": reason}


def read_input(root: str, source: str) -> bytes:
    """Bytes of one input: a local path, or any fsspec URL root (s3://, gs://, …)."""
    if "://" in root and not root.startswith("file://"):
        import fsspec

        with fsspec.open(f"{root.rstrip('/')}/{source}", "rb") as f:
            return f.read()
    return (Path(root.removeprefix("file://")) / source).read_bytes()


def decode_batches(
    shard: str, items: list[Item], root: str, batch_size: int, quarantined: list[dict[str, Any]]
) -> Iterator[list[tuple[Item, PreparedImage]]]:
    """read -> decode, in batches; unreadable and undecodable inputs go to `quarantined`."""
    for b in range(0, len(items), batch_size):
        batch: list[tuple[Item, PreparedImage]] = []
        for item in items[b : b + batch_size]:
            try:
                batch.append((item, prepare_image(read_input(root, item.source))))
            except BadImage as e:
                quarantined.append(quarantine_record(shard, item, "decode", str(e)))
            except OSError as e:
                quarantined.append(quarantine_record(shard, item, "read", f"{type(e).__name__}: {e}"))
        yield batch


def process_shard(
    index: int,
    shard: str,
    items: list[Item],
    root: str,
    out_dir: str,
    labeler: Labeler,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Label and write one shard. A labeler with `submit(images) -> handle` and `collect(handle)`
    (a remote actor) gets the next batch decoded while it labels the current one."""
    t0 = time.perf_counter()
    quarantined: list[dict[str, Any]] = []
    submit = getattr(labeler, "submit", labeler.label)
    collect = getattr(labeler, "collect", lambda handle: handle)

    def write(writer: ShardWriter, batch: list[tuple[Item, PreparedImage]], handle) -> None:
        results = collect(handle) if batch else []
        for (item, im), labels in zip(batch, results, strict=True):
            if isinstance(labels, Exception):
                quarantined.append(quarantine_record(shard, item, "label", f"{type(labels).__name__}: {labels}"))
                continue
            writer.write(item.key, pack_sample(item.key, im, labels, item.source, item.class_index, item.synset))

    with ShardWriter(Path(out_dir) / shard) as writer:
        pending = None
        for batch in decode_batches(shard, items, root, batch_size, quarantined):
            handle = submit([im.rgb for _, im in batch]) if batch else None
            if pending is not None:
                write(writer, *pending)
            pending = (batch, handle)
        if pending is not None:
            write(writer, *pending)
    info = writer.info
    stats = {
        "index": index,
        "shard": shard,
        "planned": len(items),
        "samples": info.samples,
        "bytes": info.bytes,
        "sha256": info.sha256,
        "quarantined": quarantined,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_stats(out_dir, stats)
    return stats
