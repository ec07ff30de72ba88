"""Subset files: samples picked out of a labeled output without rewriting a shard (`c2f filter`
writes them; `shards.reader` and `c2f pretrain --subset` read them).

`.txt` is one key per line. `.json` is a wids dataset description (`wids_version`, `shardlist` of
the shards that hold a selected sample, with URLs relative to the file) plus a `c2f_subset` object:
the keys by shard, their positions in the shardlist's samples (`indices`, for
`torch.utils.data.Subset(wids.ShardListDataset(path), indices)`), the condition, and the
fingerprint of the labeled data it was made from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .location import is_local, local_path
from .manifest import ShardEntry
from .writer import atomic_write_bytes, atomic_write_json

SUBSET_KIND = "c2f-subset-v1"


@dataclass(frozen=True)
class Subset:
    """Samples to keep: their keys, and the shards that hold them (None: unknown, read every shard)."""

    keys: frozenset[str]
    shards: frozenset[str] | None

    def wants(self, sample: dict[str, Any]) -> bool:
        return sample.get("__key__") in self.keys

    def restrict(self, urls: list[str]) -> list[str]:
        """The shard URLs that can hold a selected sample (all of them for a plain key list)."""
        if self.shards is None:
            return urls
        return [u for u in urls if u.rstrip("/").rsplit("/", 1)[-1] in self.shards]


def subset_for_stream(subset: str, urls: list[str], source: str, repeating: bool) -> tuple[list[str], Subset]:
    """The shards a stream over `urls` must read for `subset`, and the subset; refuses a subset that
    selects nothing, and a plain key list for a repeating stream."""
    keep = load_subset(subset)
    urls = keep.restrict(urls)
    if not urls or not keep.keys:
        raise UsageError(f"the subset {subset} selects no sample of {source}")
    if keep.shards is None and repeating:
        # A worker whose shards hold none of the keys would read them forever and never yield.
        raise UsageError(
            f"{subset} is a plain key list: a repeating stream needs the .json subset that `c2f filter` "
            "writes, which also names the shards that hold the keys"
        )
    return urls, keep


def load_subset(path: str | os.PathLike) -> Subset:
    """A subset file written by `c2f filter` (.json) or any list of keys, one per line."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read the subset file {path}: {e.strerror or e}") from None
    if text.lstrip().startswith("{"):
        try:
            d = json.loads(text)
            by_shard = d["c2f_subset"]["keys"]
            if not isinstance(by_shard, dict) or not all(isinstance(v, list) for v in by_shard.values()):
                raise ValueError("c2f_subset.keys is not an object of key lists")
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path} is not a c2f subset file ({e})") from None
        keys = frozenset(str(k) for ks in by_shard.values() for k in ks)
        return Subset(keys, frozenset(by_shard))
    keys = frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return Subset(keys, None)


def write_subset(
    out: Path,
    output: str,
    listed: Iterable[ShardEntry],
    keys: list[str],
    shards: list[str],
    positions: list[int],
    info: dict[str, Any],
) -> None:
    """The subset file `out` (.txt: the keys; .json: the wids description above) of the samples
    `keys[i]`, at position `positions[i]` of shard `shards[i]` of the output `output`, whose
    manifest lists the shards `listed`; `info` (the condition, the fingerprint, the counts) is
    copied into `c2f_subset`."""
    if out.suffix == ".txt":
        atomic_write_bytes(out, "".join(f"{k}\n" for k in keys).encode())
        return
    if not is_local(output):
        raise UsageError("a .json subset of a URL output is not supported yet: use --out LIST.txt")
    root = Path(local_path(output))
    entries = {s.name: s for s in listed}
    by_shard: dict[str, list[str]] = {}
    offsets: dict[str, int] = {}
    shardlist = []
    indices: list[int] = []
    base = 0
    for name in dict.fromkeys(shards):  # shards in the order given, each once
        e = entries[name]
        offsets[name] = base
        rel = os.path.relpath(root / name, out.resolve().parent)
        shardlist.append({"url": rel, "nsamples": e.samples, "filesize": e.bytes})
        base += e.samples
    for k, s, i in zip(keys, shards, positions, strict=True):
        by_shard.setdefault(s, []).append(k)
        indices.append(offsets[s] + i)
    atomic_write_json(
        out,
        {
            "__kind__": SUBSET_KIND,
            "wids_version": 1,
            "name": f"{root.name}-subset",
            "shardlist": shardlist,
            "c2f_subset": {**info, "indices": indices, "keys": by_shard},
        },
    )
