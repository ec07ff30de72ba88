"""Dataset-level files: per-shard stats (the done-markers), the manifest, quarantine, wids index.

A shard is done when `{shard}.stats.json` exists; it is written after the tar is renamed into
place, so listing the stats files is how a rerun resumes (img2dataset's rule). The manifest,
`quarantine.jsonl` and the wids index are derived from the stats files and can always be rebuilt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import format as fmt
from .writer import atomic_write_bytes, atomic_write_json


def write_stats(out_dir: str | os.PathLike, stats: dict[str, Any]) -> None:
    """`stats`: {index, shard, planned, samples, bytes, sha256, quarantined: [...], seconds}."""
    atomic_write_json(Path(out_dir) / fmt.stats_name(stats["shard"]), stats)


def read_done(out_dir: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """Stats of every finished shard, by shard index. A stats file whose tar is missing or whose
    size differs is not "done" (someone deleted or replaced the tar): that shard is redone."""
    done: dict[int, dict[str, Any]] = {}
    out = Path(out_dir)
    for p in sorted(out.glob("*" + fmt.STATS_SUFFIX)):
        try:
            stats = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        tar = out / stats["shard"]
        if stats["samples"] > 0 and (not tar.exists() or tar.stat().st_size != stats["bytes"]):
            continue
        done[int(stats["index"])] = stats
    return done


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(out_dir) / fmt.MANIFEST).read_text())


def write_dataset_files(out_dir: str | os.PathLike, header: dict[str, Any], stats: list[dict[str, Any]]) -> dict:
    """Write `manifest.json`, `quarantine.jsonl` and the wids index from the finished shards.

    `header` holds everything that is not per shard (format version, label spaces, models, plan).
    Shards that ended with zero samples (every image quarantined) have no tar and are listed in
    the manifest's `empty_shards`, so that the plan's arithmetic still adds up.
    """
    out = Path(out_dir)
    stats = sorted(stats, key=lambda s: s["index"])
    shards = [
        {"name": s["shard"], "index": s["index"], "samples": s["samples"], "bytes": s["bytes"], "sha256": s["sha256"]}
        for s in stats
        if s["samples"] > 0
    ]
    manifest = dict(header)
    manifest.update(
        format_version=fmt.FORMAT_VERSION,
        shards=shards,
        empty_shards=[s["shard"] for s in stats if s["samples"] == 0],
        totals={
            "samples": sum(s["samples"] for s in stats),
            "quarantined": sum(len(s["quarantined"]) for s in stats),
            "bytes": sum(s["bytes"] for s in stats),
            "shards": len(shards),
        },
    )
    quarantine = [q for s in stats for q in s["quarantined"]]
    atomic_write_bytes(out / fmt.QUARANTINE, "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine).encode())
    prefix = header["plan"]["prefix"]
    atomic_write_json(
        out / fmt.wids_index_name(prefix),
        {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": prefix,
            "shardlist": [{"url": s["name"], "nsamples": s["samples"], "filesize": s["bytes"]} for s in shards],
        },
    )
    atomic_write_json(out / fmt.MANIFEST, manifest)
    return manifest
