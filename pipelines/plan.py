"""The plan: a listing of the inputs (pipelines/listing.py) -> a deterministic list of shards, and
the output directory's records of it (plan.json, plan.inputs.jsonl, labeler_settings.json).

The plan is the list of inputs sorted by key, put in a seeded pseudo-random order and cut into
shards of `samples_per_shard` (each shard's items sorted by key again, as the writer requires);
shard *i* always holds the same images, so any shard can be (re)done on its own. The order makes
every shard a random sample of the classes, so that training batches mix classes even though a
reader can only shuffle within a buffer (ImageNet sorted by key would put one class per shard).
Its hash is stored in `plan.json` and the manifest, and a rerun against a different input, order
or shard size is refused, naming what changed. `plan.inputs.jsonl` keeps the inputs themselves
(key, source, class, size, mtime) in shard order, for those messages and for `c2f validate`.

The ImageNet layout (`<wnid>/<file>`) is decided by majority: when most inputs follow it, the
dataset has classes and the inputs that do not are refused with a reason, instead of one stray
file turning every class label off. Keys of names that are not valid UTF-8 are made of their
valid characters as usual (shards.format.sample_key).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shards import format as fmt
from shards.errors import UsageError
from shards.manifest import (
    PlanHeader,
    PlanInputsFile,
    Quarantined,
    ShardStats,
    load_json,
    parse_plan_inputs,
    plan_input_line,
    scan_plan_inputs,
    write_plan_inputs,
)
from shards.store import Store

from .compact import Strings, return_freed_memory, sort_strings
from .listing import IMAGE_SUFFIXES, Files, Listing, ListingError, Skipped, list_inputs

ORDER_SEED = 0  # plan.json records it; plans made before it existed (key order) are refused on resume
_WNID = re.compile(r"^n\d{8}$")
_CHUNK = 1 << 13  # inputs handled per step where a step builds Python objects (their memory is per chunk)


class PlanError(UsageError):
    """A plan that cannot be made or does not match the output directory; the message says why."""


@dataclass(frozen=True)
class Item:
    key: str
    source: str  # path relative to the input root, POSIX separators
    class_index: int | None = None
    synset: str | None = None
    size: int = -1  # bytes when listed (-1: unknown)
    mtime_ns: int = -1  # modification time when listed (-1: unknown)


@dataclass
class Inputs:
    """The listed inputs as columns (`pipelines.compact`): ~110 bytes per input while planning
    (ImageNet-1K: ~140 MB), where `Item`s cost ~600. Rows are in listing order; `by_key` lists the
    planned rows in key order (rows refused at planning are in no plan)."""

    sources: Strings  # path relative to the input root
    keys: Strings  # "" for rows outside the plan
    sizes: np.ndarray  # int64, -1: unknown
    mtimes: np.ndarray  # int64 ns, -1: unknown
    classes: np.ndarray  # int32 class index, -1: none
    by_key: np.ndarray  # int64 rows in key order

    @classmethod
    def of_items(cls, items: Iterable[Item]) -> Inputs:
        """Columns of `items`, which must be in key order."""
        sources, keys, sizes, mtimes, classes = Strings(), Strings(), [], [], []
        for it in items:
            sources.append(it.source)
            keys.append(it.key)
            sizes.append(it.size)
            mtimes.append(it.mtime_ns)
            classes.append(-1 if it.class_index is None else it.class_index)
        n = len(sizes)
        return cls(
            sources,
            keys,
            np.array(sizes, np.int64),
            np.array(mtimes, np.int64),
            np.array(classes, np.int32),
            np.arange(n, dtype=np.int64),
        )


class PlanItems(Sequence):
    """`plan.items`: the planned inputs in key order, made into `Item`s one at a time."""

    def __init__(self, plan: Plan):
        self._plan = plan

    def __len__(self) -> int:
        return self._plan.num_inputs

    def __getitem__(self, i):
        rows = self._plan._inputs_held().by_key
        if isinstance(i, slice):
            return [self._plan._item(int(r)) for r in rows[i]]
        return self._plan._item(int(rows[i]))

    def __iter__(self) -> Iterator[Item]:
        rows = self._plan._inputs_held().by_key
        return (self._plan._item(int(r)) for r in rows)

    def __eq__(self, other) -> bool:
        if not isinstance(other, (PlanItems, list)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]


class Plan:
    """The inputs sorted by key, in a seeded order cut into shards (module docstring).

    While it is made, the plan holds its inputs as columns (`Inputs`); once `plan.inputs.jsonl`
    is written or checked (`check_or_write_plan`), `drop_inputs()` lets them go and each shard's
    inputs are read from that file when the shard is dispatched: a labeling driver holds a few
    bytes per shard, not per input."""

    def __init__(
        self,
        root: str,
        imagenet: bool,  # ImageNet layout: `<root>/<wnid>/<file>`, class index = sorted synset order
        classes: list[str],  # synsets in class-index order; empty when the input has no classes
        samples_per_shard: int,
        prefix: str,
        items: Iterable[Item] | Inputs = (),  # in key order
        skipped: list[Skipped] | None = None,  # refused at planning
        ignored: dict[str, int] | None = None,
        order_seed: int = ORDER_SEED,  # shards take the items in the order of blake2b(f"{order_seed}:{key}")
    ):
        self.root, self.imagenet, self.classes = root, imagenet, classes
        self.samples_per_shard, self.prefix, self.order_seed = samples_per_shard, prefix, order_seed
        self.skipped = skipped if skipped is not None else []
        self.ignored = ignored if ignored is not None else {}
        self._inputs: Inputs | None = items if isinstance(items, Inputs) else Inputs.of_items(items)
        self.num_inputs = len(self._inputs.by_key)
        self._file: PlanInputsFile | None = None  # plan.inputs.jsonl, once written or checked
        # Inputs whose size or mtime differ from plan.inputs.jsonl's (edited since the plan was
        # made): position in shard order -> (size, mtime_ns) as listed now.
        self._restamped: dict[int, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"Plan({self.root!r}, {self.num_inputs} inputs, {self.num_shards} shards of {self.samples_per_shard})"

    @property
    def num_shards(self) -> int:
        return -(-self.num_inputs // self.samples_per_shard)

    @property
    def items(self) -> PlanItems:
        return PlanItems(self)

    def _inputs_held(self) -> Inputs:
        if self._inputs is None:
            raise RuntimeError("the plan's inputs were dropped: shards are read from plan.inputs.jsonl")
        return self._inputs

    def _item(self, row: int) -> Item:
        t = self._inputs_held()
        ci = int(t.classes[row])
        ci_or_none = None if ci < 0 else ci
        return self._make_item(t.keys[row], t.sources[row], ci_or_none, int(t.sizes[row]), int(t.mtimes[row]))

    def _make_item(self, key: str, source: str, class_index: int | None, size: int, mtime_ns: int) -> Item:
        """An input as a shard task gets it: with its class's synset."""
        synset = self.classes[class_index] if class_index is not None else None
        return Item(key, source, class_index, synset, size, mtime_ns)

    @functools.cached_property
    def _order(self) -> np.ndarray:
        """Positions in key order, in the seeded order: a hash of (seed, key), so it depends on
        nothing but the keys (no RNG whose stream could change between Python or numpy versions);
        ties (never seen) keep key order."""
        t = self._inputs_held()
        seed = f"{self.order_seed}:".encode()
        digest = np.empty(len(t.by_key), np.uint64)
        for lo in range(0, len(t.by_key), _CHUNK):
            keys = t.keys.take(t.by_key[lo : lo + _CHUNK])
            digest[lo : lo + len(keys)] = [
                int.from_bytes(hashlib.blake2b(seed + k.encode(), digest_size=8).digest(), "big") for k in keys
            ]
        return np.argsort(digest, kind="stable")

    def _shard_rows(self, index: int) -> np.ndarray:
        """Rows of shard `index`, in key order."""
        n = self.samples_per_shard
        return self._inputs_held().by_key[np.sort(self._order[index * n : (index + 1) * n])]

    def shard_size(self, index: int) -> int:
        n = self.samples_per_shard
        return max(0, min(n, self.num_inputs - index * n))

    def shard_items(self, index: int) -> list[Item]:
        """Shard `index`'s items, in increasing key order (the ShardWriter requires it): from
        `plan.inputs.jsonl` once the plan is bound to it, else from the listing."""
        if self._file is None:
            return [self._make_item(*row) for row in self._rows_of(index)]
        first = index * self.samples_per_shard
        items = []
        for k, row in enumerate(self._file.rows(index)):
            size, mtime = self._restamped.get(first + k, (row.size, row.mtime_ns))
            items.append(self._make_item(row.key, row.source, row.class_index, size, mtime))
        if len(items) != (want := self.shard_size(index)):
            raise ValueError(f"{fmt.PLAN_INPUTS}: shard {index} holds {len(items)} inputs, the plan {want}")
        return items

    def shard_name(self, index: int) -> str:
        return fmt.shard_name(self.prefix, index)

    @functools.cached_property
    def listing_sha256(self) -> str:
        """Names, keys and classes in key order (not sizes or times: an edited input redoes its
        shard, it does not make another plan)."""
        t = self._inputs_held()
        h = hashlib.sha256()
        for lo in range(0, len(t.by_key), _CHUNK):
            rows = t.by_key[lo : lo + _CHUNK]
            lines = [
                f"{key}\t{source}\t{None if ci < 0 else ci}\n"
                for key, source, ci in zip(
                    t.keys.take(rows), t.sources.take(rows), t.classes[rows].tolist(), strict=True
                )
            ]
            h.update("".join(lines).encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def header(self) -> PlanHeader:
        """What `plan.json` and the manifest record of the plan (not the items: the shards hold them)."""
        return PlanHeader(
            root=self.root,
            imagenet=self.imagenet,
            classes=self.classes,
            samples_per_shard=self.samples_per_shard,
            prefix=self.prefix,
            num_inputs=self.num_inputs,
            num_shards=self.num_shards,
            listing_sha256=self.listing_sha256,
            shard_sizes=[self.shard_size(i) for i in range(self.num_shards)],
            order_seed=self.order_seed,
            skipped=len(self.skipped),
        )

    def rows(self) -> Iterator[tuple[str, str, int | None, int, int]]:
        """(key, source, class, size, mtime_ns) of every input in shard order: plan.inputs.jsonl."""
        for i in range(self.num_shards):
            yield from self._rows_of(i)

    def _rows_of(self, index: int) -> Iterator[tuple[str, str, int | None, int, int]]:
        t = self._inputs_held()
        rows = self._shard_rows(index)
        for key, source, ci, size, mtime in zip(
            t.keys.take(rows),
            t.sources.take(rows),
            t.classes[rows].tolist(),
            t.sizes[rows].tolist(),
            t.mtimes[rows].tolist(),
            strict=True,
        ):
            yield key, source, None if ci < 0 else ci, size, mtime

    def write_inputs(self, out: Store) -> None:
        """Write plan.inputs.jsonl from the listing, and read shards from it from now on."""
        self._file = write_plan_inputs(out, self.rows(), self.samples_per_shard)
        self._restamped = {}

    def bind_inputs(self, out: Store) -> bool:
        """Read the plan.inputs.jsonl of an earlier run of this plan from start to end against the
        listing: index where each shard begins, note the inputs edited since (their size and mtime
        as listed now go to the shard tasks, as they would from the listing), and read shards from
        it from now on. False, and nothing bound, when it does not hold this plan's inputs (a
        damaged or foreign file), or cannot be read. Each line is compared with the line the
        listing would write; only a line that differs is parsed."""
        starts, restamped = [], {}
        rows = self.rows()
        n = self.samples_per_shard
        try:
            for start, lines in scan_plan_inputs(out, n):
                first = len(starts) * n
                starts.append(start)
                for k, line in enumerate(lines):
                    want = next(rows, None)
                    if want is None:
                        return False
                    if line == plan_input_line(*want):
                        continue
                    (row,) = parse_plan_inputs([line], first + k + 1)
                    if (row.key, row.source, row.class_index) != want[:3]:
                        return False
                    restamped[first + k] = want[3:]
        except (OSError, ValueError):
            return False
        if next(rows, None) is not None or len(starts) != self.num_shards + 1:
            return False
        self._file, self._restamped = PlanInputsFile(out, starts), restamped
        return True

    def drop_inputs(self) -> None:
        """Let the listing's columns go (the header is kept); shards are read from plan.inputs.jsonl."""
        if self._file is None:
            raise RuntimeError("the plan is not bound to its plan.inputs.jsonl")
        _ = self.listing_sha256
        self._inputs = None
        self.__dict__.pop("_order", None)
        return_freed_memory()

    def changes(self, stats: ShardStats) -> list[str]:
        """What changed among a done shard's inputs since the shard was made (size or mtime differ
        from what its task read), named; [] for stats written before inputs were recorded, which
        say nothing and are trusted."""
        if not stats.inputs or stats.index >= self.num_shards:
            return []
        changes = []
        for key, source, _, now_size, now_mtime in self._rows_of(stats.index):
            old = stats.inputs.get(key)
            if old is None or len(old) != 2:
                changes.append(f"{fmt.display(source)} (new in this shard)")
                continue
            size, mtime = old
            if size >= 0 and now_size >= 0 and size != now_size:
                changes.append(f"{fmt.display(source)} (size {size} -> {now_size} bytes)")
            elif mtime >= 0 and now_mtime >= 0 and mtime != now_mtime:
                changes.append(f"{fmt.display(source)} (modified)")
        return changes

    def unplanned(self) -> list[Quarantined]:
        """The inputs refused at planning, as quarantine records (stage `plan`, in no shard)."""
        out = []
        for s in self.skipped:
            try:
                key = fmt.sample_key(s.source, self.imagenet)
            except ValueError:
                key = ""
            out.append(Quarantined("", key, s.source, "plan", s.reason))
        return out

    def summary(self) -> list[str]:
        """What planning refused and passed over, for the job's output."""
        lines = []
        if self.skipped:
            why = Counter(s.reason.split(":")[0].split(" (")[0] for s in self.skipped)
            lines.append(
                f"plan: {len(self.skipped)} entries refused (quarantine.jsonl, stage plan): "
                + ", ".join(f"{n} {r}" for r, n in why.most_common())
            )
        if self.ignored:
            lines.append("plan: ignored " + ", ".join(f"{n} {r}" for r, n in sorted(self.ignored.items())))
        return lines


def make_plan(source: str | os.PathLike, samples_per_shard: int, prefix: str = "c2f") -> Plan:
    if samples_per_shard < 1:
        raise PlanError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if "." in prefix or "/" in prefix or not prefix:
        raise PlanError(f"invalid shard prefix {prefix!r}")
    try:
        listing = list_inputs(str(source))
    except ListingError as e:
        raise PlanError(str(e)) from None
    except (OSError, ValueError) as e:  # unreadable list, unreachable bucket
        raise PlanError(f"cannot list input {str(source)!r}: {e}") from None
    return plan_from_listing(listing, samples_per_shard, prefix)


def plan_from_listing(listing: Listing, samples_per_shard: int, prefix: str) -> Plan:
    files: Files = listing.files
    skipped = list(listing.skipped)
    if not len(files):
        first = skipped[0] if skipped else None
        refused = (
            f" ({len(skipped)} entries refused, e.g. {fmt.display(first.source)}: {first.reason})" if first else ""
        )
        raise PlanError(f"no images (by suffix: {', '.join(sorted(IMAGE_SUFFIXES))}) under {listing.root}{refused}")
    wnid = functools.lru_cache(maxsize=4096)(lambda folder: bool(_WNID.match(folder)))
    fits = np.fromiter((p.count("/") == 1 and wnid(p.split("/", 1)[0]) for p in files.paths), bool, count=len(files))
    imagenet = 2 * int(fits.sum()) > len(files)  # by majority: one stray file does not decide
    planned = np.flatnonzero(fits) if imagenet else np.arange(len(files), dtype=np.int64)
    if imagenet and not fits.all():
        why = f"outside the ImageNet layout <wnid>/<file> that {int(fits.sum())} of {len(files)} inputs follow"
        skipped += [Skipped(files.paths[int(r)], why) for r in np.flatnonzero(~fits)]
    del fits
    # One pass: each planned input's key and synset (numbered as first seen, then in sorted order).
    keys, seen = Strings(), np.full(len(files), -1, np.int32)
    synset_ids: dict[str, int] = {}
    is_planned = np.zeros(len(files), bool)
    is_planned[planned] = True
    for lo in range(0, len(files), _CHUNK):
        sources = files.paths.take(np.arange(lo, min(lo + _CHUNK, len(files))))
        chunk = []
        for r, source in enumerate(sources, start=lo):
            if not is_planned[r]:
                chunk.append("")
                continue
            chunk.append(fmt.sample_key(source, imagenet))
            if imagenet:
                seen[r] = synset_ids.setdefault(source.split("/", 1)[0], len(synset_ids))
        keys.extend(chunk)
    del is_planned
    classes = sorted(synset_ids)
    to_class = np.zeros(len(synset_ids) + 1, np.int32)  # the last entry maps -1 (no class) to -1
    to_class[-1] = -1
    for i, synset in enumerate(classes):
        to_class[synset_ids[synset]] = i
    class_index = to_class[seen]
    del seen
    by_key, duplicate = sort_strings(keys, planned)
    if duplicate:
        a, b = duplicate
        raise PlanError(
            f"two inputs map to the same sample key {keys[a]!r}: "
            f"{fmt.display(files.paths[a])} and {fmt.display(files.paths[b])}"
        )
    skipped.sort(key=lambda s: s.source)
    inputs = Inputs(
        files.paths,
        keys,
        np.frombuffer(files.sizes, np.int64),
        np.frombuffer(files.mtimes, np.int64),
        class_index,
        by_key,
    )
    return Plan(listing.root, imagenet, classes, samples_per_shard, prefix, inputs, skipped, dict(listing.ignored))


def _names(first: list[str], count: int) -> str:
    shown = ", ".join(fmt.display(s) for s in first)
    return shown + (f", … ({count - len(first)} more)" if count > len(first) else "")


def describe_listing_change(out: Store, plan: Plan) -> str:
    """What differs between the plan recorded in `out` and `plan`: inputs added and removed,
    named (the first five of each), or '' when the old listing cannot be read. Compares 64-bit
    hashes of the sources (an array per side, not a set of strings), then reads both sides again
    to name the first five."""
    t = plan._inputs_held()

    def old_sources() -> Iterator[list[str]]:
        try:
            for _, lines in scan_plan_inputs(out, _CHUNK):
                yield [row.source for row in parse_plan_inputs(lines)]
        except FileNotFoundError:  # no listing recorded: every input is new to it
            return

    def new_sources() -> Iterator[list[str]]:
        for lo in range(0, len(t.by_key), _CHUNK):
            yield t.sources.take(t.by_key[lo : lo + _CHUNK])

    def hashes(chunks: Iterable[list[str]]) -> np.ndarray:
        return np.concatenate([np.array([hash(s) for s in c], np.int64) for c in chunks] or [np.zeros(0, np.int64)])

    def first(chunks: Iterable[list[str]], wanted: np.ndarray) -> list[str]:
        return heapq.nsmallest(
            5,
            (s for c in chunks for s, hit in zip(c, np.isin(hashes([c]), wanted), strict=True) if hit),
        )

    try:
        before = hashes(old_sources())
    except (OSError, ValueError):
        return ""
    now = hashes(new_sources())
    added, removed = np.setdiff1d(now, before), np.setdiff1d(before, now)
    parts = []
    if len(added):
        parts.append(f"{len(added)} input(s) added: {_names(first(new_sources(), added), len(added))}")
    if len(removed):
        parts.append(f"{len(removed)} input(s) removed: {_names(first(old_sources(), removed), len(removed))}")
    if not parts:
        parts.append("the same inputs with other keys, classes or order")
    return "; " + "; ".join(parts)


def check_or_write_plan(out: Store, plan: Plan, overwrite: bool) -> str | None:
    """Refuse to mix two plans in one output directory; record the plan (header and inputs) and
    bind the plan to its `plan.inputs.jsonl`. Returns a note for the job's output, or None."""
    want = plan.header().to_json()
    data = out.read_bytes(fmt.PLAN)
    if data is not None and not overwrite:
        try:
            have = load_json(data, fmt.PLAN)
            if not isinstance(have, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise PlanError(
                f"{out.url(fmt.PLAN)} is unreadable ({e}); use a new output directory, "
                "or --overwrite to discard the old shards"
            ) from None
        diff = [k for k in ("listing_sha256", "samples_per_shard", "prefix", "order_seed") if have.get(k) != want[k]]
        if diff:
            detail = describe_listing_change(out, plan) if "listing_sha256" in diff else ""
            raise PlanError(
                f"{out} holds shards of another plan (differs in: {', '.join(diff)}{detail}); "
                "use a new output directory, or --overwrite to discard the old shards"
            )
    elif overwrite and data is not None:
        for name in out.list():
            if fmt.parse_shard_name(name) or fmt.parse_table_name(name) or name.endswith(fmt.STATS_SUFFIX):
                out.remove(name)
    # The inputs first: a plan.json always has its complete listing beside it. The listing is
    # written with a new plan (sizes and times as listed then; what each shard read is in its
    # stats), in shard order; plan.json on every run (the count of refused entries may change).
    # A rerun reads it back against its own listing: shard tasks get their inputs from it.
    note = None
    if overwrite or data is None or out.size(fmt.PLAN_INPUTS) is None:
        plan.write_inputs(out)
    elif not plan.bind_inputs(out):
        note = f"note: {out.url(fmt.PLAN_INPUTS)} did not hold this plan's inputs; written again from the listing"
        plan.write_inputs(out)
    out.write_json(fmt.PLAN, want)
    return note


def changed_inputs(plan: Plan, done: Mapping[int, ShardStats]) -> dict[int, list[str]]:
    """Done shards whose inputs changed since the shard was made (`Plan.changes`), with what changed."""
    return {i: what for i, stats in done.items() if (what := plan.changes(stats))}


def check_or_write_settings(out: Store, settings: dict, overwrite: bool, defaults: dict | None = None) -> None:
    """One dataset, one labeler: a rerun with other labeler settings is refused. A settings group or a
    setting that the stored file lacks (a newer version added it) counts as its `defaults`: what older
    versions did."""
    try:
        have = out.read_json(fmt.LABELER_SETTINGS)
    except ValueError as e:
        raise PlanError(f"{out.url(fmt.LABELER_SETTINGS)} is unreadable ({e}); use --overwrite to replace it") from None
    if isinstance(have, dict) and defaults:
        have = {
            **{g: v for g, v in defaults.items() if g in settings and g not in have},
            **{g: {**defaults[g], **v} if isinstance(v, dict) and g in defaults else v for g, v in have.items()},
        }
    if have is not None and not overwrite:
        if have != settings:
            diff = sorted(
                f"{group}.{k}"
                for group in settings
                for k in settings[group]
                if have.get(group, {}).get(k) != settings[group][k]
            )
            raise PlanError(
                f"{out} was labeled with other labeler settings (differs in: {', '.join(diff)}); "
                "use a new output directory, or --overwrite to discard the old shards"
            )
        return
    out.write_json(fmt.LABELER_SETTINGS, settings)
