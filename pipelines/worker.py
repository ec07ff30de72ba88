"""One unit of work: shard *i* of the plan -> a finished tar + its stats JSON.

decode (shards.image) -> label (labeler) -> pack (shards.pack) -> write (shards.writer).
Every input of the shard ends up either in the tar or in the stats' `quarantined` list with a
reason; nothing raises out of a bad image. The stats JSON is the done-marker, written last.
"""

from __future__ import annotations

import time
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


def process_shard(
    index: int,
    shard: str,
    items: list[Item],
    root: str,
    out_dir: str,
    labeler: Labeler,
    batch_size: int = 16,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    quarantined: list[dict[str, Any]] = []
    with ShardWriter(Path(out_dir) / shard) as writer:
        for b in range(0, len(items), batch_size):
            batch: list[tuple[Item, PreparedImage]] = []
            for item in items[b : b + batch_size]:
                try:
                    data = (Path(root) / item.source).read_bytes()
                    batch.append((item, prepare_image(data)))
                except BadImage as e:
                    quarantined.append(quarantine_record(shard, item, "decode", str(e)))
                except OSError as e:
                    quarantined.append(quarantine_record(shard, item, "read", f"{type(e).__name__}: {e}"))
            results = labeler.label([im.rgb for _, im in batch]) if batch else []
            for (item, im), labels in zip(batch, results, strict=True):
                if isinstance(labels, Exception):
                    quarantined.append(quarantine_record(shard, item, "label", f"{type(labels).__name__}: {labels}"))
                    continue
                members = pack_sample(item.key, im, labels, item.source, item.class_index, item.synset)
                writer.write(item.key, members)
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
