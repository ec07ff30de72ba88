"""Dataset-level files and their typed contracts: per-shard stats (the done-markers), the plan
header, the manifest, quarantine records and the wids index.

A shard is done when `{shard}.stats.json` exists; it is written after the tar is renamed into
place, so listing the stats files is how a rerun resumes (img2dataset's rule). The manifest,
`quarantine.jsonl` and the wids index are derived from the stats files and can always be rebuilt.

Each file is one dataclass here with `to_json` / `from_json`; every writer and reader of these
files goes through them. `from_json` checks types, so a tampered file is a `ValueError` with the
field's path, never a `KeyError` deep inside a consumer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import format as fmt
from .store import Store

T = TypeVar("T")


def _check(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp` (JSON types, lists, dicts, optionals, nested contracts), or ValueError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _check(value, tp, where)
    if dataclasses.is_dataclass(tp):
        return from_json(tp, value, where)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        return [_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r:.40}")
        return float(value)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected an integer, got {value!r:.40}")
    if tp in (str, bool, int) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
    return value


def from_json(cls: type[T], d: Any, where: str | None = None) -> T:
    """Build contract `cls` from parsed JSON, checking every field's type. Unknown keys are ignored
    (newer writers may add fields); missing required ones are an error."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in d:
            kwargs[f.name] = _check(d[f.name], hints[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ValueError(f"{where}: missing {f.name!r}")
    return cls(**kwargs)


class Contract:
    """`to_json` / `from_json` for the dataclasses below."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], d: Any) -> T:
        return from_json(cls, d)


@dataclass
class Quarantined(Contract):
    """One line of `quarantine.jsonl`: an input that is in no shard, and why."""

    shard: str
    key: str
    source: str  # path relative to the input root
    stage: str  # read | decode | label | pack
    reason: str


@dataclass
class ShardStats(Contract):
    """`{shard}.stats.json`, the done-marker of one shard, written after its tar."""

    index: int
    shard: str
    planned: int  # inputs the plan gave this shard
    samples: int  # samples in the tar (planned = samples + len(quarantined))
    bytes: int  # tar size; 0 when every input was quarantined (then there is no tar)
    sha256: str
    quarantined: list[Quarantined] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds spent per stage (read, decode, …)


@dataclass
class PlanHeader(Contract):
    """What `plan.json` and the manifest record of the plan (not the item list: the shards hold it)."""

    root: str
    imagenet: bool  # ImageNet layout: `<root>/<wnid>/<file>`, class index = sorted synset order
    classes: list[str]  # synsets in class-index order; empty when the input has no classes
    samples_per_shard: int
    prefix: str
    num_inputs: int
    num_shards: int
    listing_sha256: str
    shard_sizes: list[int]
    order_seed: int | None = None  # shards take inputs in a seeded hash order (None: key order, older plans)


@dataclass
class ShardEntry(Contract):
    name: str
    index: int
    samples: int
    bytes: int
    sha256: str


@dataclass
class Totals(Contract):
    samples: int
    quarantined: int
    bytes: int
    shards: int


@dataclass
class Manifest(Contract):
    """`manifest.json`: what the dataset is (docs/FORMAT.md)."""

    label_space: dict[str, Any]  # {"semantic": {id: name}, "instance": "class-agnostic" | {id: name}}
    labeler: dict[str, Any]  # preset, models, settings (the labeler's `describe()`)
    plan: PlanHeader
    shards: list[ShardEntry]
    empty_shards: list[str]  # shards whose every input was quarantined: no tar
    totals: Totals
    config: dict[str, Any] = field(default_factory=dict)  # the job's settings
    format_version: int = fmt.FORMAT_VERSION

    @property
    def semantic_names(self) -> dict[str, str]:
        names = self.label_space.get("semantic", {})
        if not isinstance(names, dict):
            raise ValueError("Manifest.label_space.semantic: expected an object")
        return names


def as_store(out: Store | str | os.PathLike) -> Store:
    return out if isinstance(out, Store) else Store(out)


def write_stats(out: Store | str | os.PathLike, stats: ShardStats) -> None:
    as_store(out).write_json(fmt.stats_name(stats.shard), stats.to_json())


def read_done(out: Store | str | os.PathLike) -> dict[int, ShardStats]:
    """Stats of every finished shard, by shard index, from one listing of the output. A stats file
    whose tar is missing or whose size differs is not "done" (someone deleted or replaced the
    tar): that shard is redone."""
    store = as_store(out)
    files = store.list()
    done: dict[int, ShardStats] = {}
    for name in sorted(files):
        if not name.endswith(fmt.STATS_SUFFIX):
            continue
        try:
            stats = ShardStats.from_json(store.read_json(name))
        except (OSError, ValueError, RecursionError):
            continue
        if stats.samples > 0 and files.get(stats.shard) != stats.bytes:
            continue
        done[stats.index] = stats
    return done


def read_manifest(out: Store | str | os.PathLike) -> Manifest:
    return Manifest.from_json(as_store(out).read_json(fmt.MANIFEST))


def write_dataset_files(
    out: Store | str | os.PathLike,
    label_space: dict[str, Any],
    labeler: dict[str, Any],
    plan: PlanHeader,
    stats: list[ShardStats],
    config: dict[str, Any] | None = None,
) -> Manifest:
    """Write `manifest.json`, `quarantine.jsonl` and the wids index from the finished shards.

    Shards that ended with zero samples (every image quarantined) have no tar and are listed in
    the manifest's `empty_shards`, so that the plan's arithmetic still adds up.
    """
    store = as_store(out)
    stats = sorted(stats, key=lambda s: s.index)
    shards = [ShardEntry(s.shard, s.index, s.samples, s.bytes, s.sha256) for s in stats if s.samples > 0]
    manifest = Manifest(
        label_space=label_space,
        labeler=labeler,
        plan=plan,
        shards=shards,
        empty_shards=[s.shard for s in stats if s.samples == 0],
        totals=Totals(
            samples=sum(s.samples for s in stats),
            quarantined=sum(len(s.quarantined) for s in stats),
            bytes=sum(s.bytes for s in stats),
            shards=len(shards),
        ),
        config=config or {},
    )
    quarantine = [q.to_json() for s in stats for q in s.quarantined]
    store.write_bytes(fmt.QUARANTINE, "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine).encode())
    store.write_json(
        fmt.wids_index_name(plan.prefix),
        {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": plan.prefix,
            "shardlist": [{"url": s.name, "nsamples": s.samples, "filesize": s.bytes} for s in shards],
        },
    )
    store.write_json(fmt.MANIFEST, manifest.to_json())
    return manifest
