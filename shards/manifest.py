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
import functools
import json
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import format as fmt
from .store import Store

T = TypeVar("T")


def load_json(data: bytes | str, what: str = "JSON", max_bytes: int = fmt.MAX_JSON_BYTES) -> Any:
    """Parse JSON that someone else may have written: at most `max_bytes`, finite numbers only
    (`1e999`, `NaN` and `Infinity` are refused), and nesting too deep for the parser is a
    ValueError like any other malformed input, never a RecursionError."""
    if len(data) > max_bytes:
        raise ValueError(f"{what} of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"{what} nests too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an int of 5000 digits
        raise ValueError(f"{what} does not parse: {str(e)[:200]}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text[:20]}")
    return value


@functools.cache
def _checker(tp: Any) -> Callable[[Any, str], Any]:
    """A function that checks a parsed JSON value against type `tp` (JSON types, lists, dicts,
    optionals, nested contracts) and returns it as that type, or raises ValueError with the path.
    Built once per type: the validator runs it on every sample's JSON."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        check_inner = _checker(inner)
        optional = type(None) in args
        return lambda v, where: None if v is None and optional else check_inner(v, where)
    if dataclasses.is_dataclass(tp):
        return lambda v, where: from_json(tp, v, where)
    if tp is Any:
        return lambda v, where: v
    if origin is list:
        item = _checker(args[0])

        def check_list(v, where):
            if not isinstance(v, list):
                raise ValueError(f"{where}: expected a list, got {type(v).__name__}")
            return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]

        return check_list
    if origin is dict:
        val = _checker(args[1])

        def check_dict(v, where):
            if not isinstance(v, dict):
                raise ValueError(f"{where}: expected an object, got {type(v).__name__}")
            return {k: val(x, f"{where}.{k}") for k, x in v.items()}

        return check_dict
    if tp is float:

        def check_float(v, where):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: expected a finite number, got {v!r:.40}")
            return float(v)

        return check_float
    if tp is int:

        def check_int(v, where):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}: expected an integer, got {v!r:.40}")
            return v

        return check_int

    def check_plain(v, where):
        if not isinstance(v, tp):
            raise ValueError(f"{where}: expected {tp.__name__}, got {type(v).__name__}")
        return v

    return check_plain


@functools.cache
def _fields(cls: type) -> list[tuple[str, str, Callable[[Any, str], Any], bool]]:
    """(attribute, JSON name, checker, required) per field; `metadata["json"]` renames a field
    whose JSON name is a Python keyword (`class`)."""
    hints = typing.get_type_hints(cls)
    return [
        (
            f.name,
            f.metadata.get("json", f.name),
            _checker(hints[f.name]),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,  # type: ignore[misc]
        )
        for f in dataclasses.fields(cls)
    ]


def from_json(cls: type[T], d: Any, where: str | None = None) -> T:
    """Build contract `cls` from parsed JSON, checking every field's type. Unknown keys are ignored
    (newer writers may add fields); missing required ones are an error."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    kwargs = {}
    for name, key, check, required in _fields(cls):
        if key in d:
            kwargs[name] = check(d[key], f"{where}.{key}")
        elif required:
            raise ValueError(f"{where}: missing {key!r}")
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

    shard: str  # "" for an entry refused at planning (stage `plan`): it is in no shard's plan
    key: str
    source: str  # path relative to the input root
    stage: str  # plan | read | decode | label | pack
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
    # key -> [size, mtime_ns] of each planned input as the task read it: a rerun redoes the shard
    # when an input changed since (pipelines.plan.changed_inputs)
    inputs: dict[str, list[int]] = field(default_factory=dict)


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
    skipped: int = 0  # entries refused at planning (in quarantine.jsonl with stage `plan`)


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
    quarantined: int  # lines of quarantine.jsonl: inputs of the shards + entries refused at planning
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


@dataclass
class InstanceRecord(Contract):
    id: int
    category: int | None
    score: float
    area: int
    bbox: list[int]  # [x, y, w, h]


@dataclass
class ClassRef(Contract):
    index: int
    synset: str | None


@dataclass
class SampleMeta(Contract):
    """A sample's `.json` member (docs/FORMAT.md); `shards.pack` writes it, readers check it here."""

    key: str
    source: str
    width: int
    height: int
    class_: ClassRef | None = field(metadata={"json": "class"})
    instances: list[InstanceRecord]
    reencoded: bool = False
    reencode_reason: str | None = None
    exif_orientation: int | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class"] = d.pop("class_")
        return d


@dataclass
class PlanInput:
    """One line of `plan.inputs.jsonl`: `[key, source, class index or null, size, mtime_ns]`."""

    key: str
    source: str
    class_index: int | None
    size: int
    mtime_ns: int


def read_plan_inputs(data: bytes) -> list[PlanInput]:
    """Parse `plan.inputs.jsonl` (parsed as one JSON array: 1.28M lines in seconds); a malformed
    line is a ValueError naming it."""
    lines = [line for line in data.splitlines() if line.strip()]
    rows = load_json(b"[" + b",".join(lines) + b"]", fmt.PLAN_INPUTS, len(data) + len(lines) + 2)
    if not isinstance(rows, list) or len(rows) != len(lines):  # a line holding two values
        raise ValueError(f"{fmt.PLAN_INPUTS}: expected one [key, source, class, size, mtime_ns] per line")
    out = []
    for n, row in enumerate(rows, start=1):
        if (
            type(row) is not list
            or len(row) != 5
            or type(row[0]) is not str
            or type(row[1]) is not str
            or not (row[2] is None or type(row[2]) is int)
            or type(row[3]) is not int
            or type(row[4]) is not int
        ):
            raise ValueError(f"{fmt.PLAN_INPUTS} line {n}: expected [key, source, class, size, mtime_ns]")
        out.append(PlanInput(*row))
    return out


def as_store(out: Store | str | os.PathLike) -> Store:
    return out if isinstance(out, Store) else Store(out)


def write_plan_inputs(out: Store | str | os.PathLike, rows: list[tuple[str, str, int | None, int, int]]) -> None:
    """The plan's inputs in shard order, one JSON array per line (shard i = lines i*n .. (i+1)*n-1)."""
    as_store(out).write_bytes(fmt.PLAN_INPUTS, "".join(json.dumps(list(r)) + "\n" for r in rows).encode())


def write_stats(out: Store | str | os.PathLike, stats: ShardStats) -> None:
    as_store(out).write_json(fmt.stats_name(stats.shard), stats.to_json())


def read_done(out: Store | str | os.PathLike) -> dict[int, ShardStats]:
    """Stats of every finished shard, by shard index, from one listing of the output. A stats file
    that does not parse, or whose tar is missing or differs in size (someone deleted or replaced
    it), is not "done": that shard is redone."""
    store = as_store(out)
    files = store.list()
    done: dict[int, ShardStats] = {}
    for name in sorted(files):
        if not name.endswith(fmt.STATS_SUFFIX):
            continue
        try:
            stats = ShardStats.from_json(load_json(store.read_bytes(name) or b"", name))
        except (OSError, ValueError):
            continue
        if stats.samples > 0 and files.get(stats.shard) != stats.bytes:
            continue
        done[stats.index] = stats
    return done


def read_manifest(out: Store | str | os.PathLike) -> Manifest:
    data = as_store(out).read_bytes(fmt.MANIFEST)
    if data is None:
        raise FileNotFoundError(f"no {fmt.MANIFEST} in {out}")
    return Manifest.from_json(load_json(data, fmt.MANIFEST))


def write_dataset_files(
    out: Store | str | os.PathLike,
    label_space: dict[str, Any],
    labeler: dict[str, Any],
    plan: PlanHeader,
    stats: list[ShardStats],
    config: dict[str, Any] | None = None,
    unplanned: list[Quarantined] | tuple = (),
) -> Manifest:
    """Write `manifest.json`, `quarantine.jsonl` and the wids index from the finished shards.

    Shards that ended with zero samples (every image quarantined) have no tar and are listed in
    the manifest's `empty_shards`, so that the plan's arithmetic still adds up. `unplanned`: the
    entries refused at planning (stage `plan`), listed first in `quarantine.jsonl`.
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
            quarantined=len(unplanned) + sum(len(s.quarantined) for s in stats),
            bytes=sum(s.bytes for s in stats),
            shards=len(shards),
        ),
        config=config or {},
    )
    quarantine = [q.to_json() for q in unplanned] + [q.to_json() for s in stats for q in s.quarantined]
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
