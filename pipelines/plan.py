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
import os
import re
from collections import Counter
from dataclasses import dataclass, field

from shards import format as fmt
from shards.errors import UsageError
from shards.manifest import PlanHeader, Quarantined, ShardStats, load_json, read_plan_inputs, write_plan_inputs
from shards.store import Store

from .listing import IMAGE_SUFFIXES, Listing, ListingError, Skipped, list_inputs

ORDER_SEED = 0  # plan.json records it; plans made before it existed (key order) are refused on resume
_WNID = re.compile(r"^n\d{8}$")


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
class Plan:
    root: str
    imagenet: bool  # ImageNet layout: `<root>/<wnid>/<file>`, class index = sorted synset order
    classes: list[str]  # synsets in class-index order; empty when the input has no classes
    samples_per_shard: int
    prefix: str
    items: list[Item] = field(repr=False)  # sorted by key
    skipped: list[Skipped] = field(default_factory=list, repr=False)  # refused at planning
    ignored: dict[str, int] = field(default_factory=dict)
    order_seed: int = ORDER_SEED  # shards take the items in the order of blake2b(f"{order_seed}:{key}")

    @property
    def num_shards(self) -> int:
        return -(-len(self.items) // self.samples_per_shard)

    @functools.cached_property
    def _order(self) -> list[int]:
        """Indices of `items` in the seeded order: a hash of (seed, key), so it depends on nothing
        but the keys (no RNG whose stream could change between Python or numpy versions)."""
        seed = str(self.order_seed)
        return sorted(
            range(len(self.items)),
            key=lambda i: hashlib.blake2b(f"{seed}:{self.items[i].key}".encode(), digest_size=8).digest(),
        )

    def shard_items(self, index: int) -> list[Item]:
        """Shard `index`'s items, in increasing key order (the ShardWriter requires it)."""
        n = self.samples_per_shard
        return [self.items[i] for i in sorted(self._order[index * n : (index + 1) * n])]

    def shard_name(self, index: int) -> str:
        return fmt.shard_name(self.prefix, index)

    @property
    def listing_sha256(self) -> str:
        """Names, keys and classes in plan order (not sizes or times: an edited input redoes its
        shard, it does not make another plan)."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.key}\t{it.source}\t{it.class_index}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def header(self) -> PlanHeader:
        """What `plan.json` and the manifest record of the plan (not the items: the shards hold them)."""
        return PlanHeader(
            root=self.root,
            imagenet=self.imagenet,
            classes=self.classes,
            samples_per_shard=self.samples_per_shard,
            prefix=self.prefix,
            num_inputs=len(self.items),
            num_shards=self.num_shards,
            listing_sha256=self.listing_sha256,
            shard_sizes=[len(self.shard_items(i)) for i in range(self.num_shards)],
            order_seed=self.order_seed,
            skipped=len(self.skipped),
        )

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
    files, skipped = listing.files, list(listing.skipped)
    if not files:
        first = skipped[0] if skipped else None
        refused = (
            f" ({len(skipped)} entries refused, e.g. {fmt.display(first.source)}: {first.reason})" if first else ""
        )
        raise PlanError(f"no images (by suffix: {', '.join(sorted(IMAGE_SUFFIXES))}) under {listing.root}{refused}")
    fits = [f[0].count("/") == 1 and bool(_WNID.match(f[0].split("/", 1)[0])) for f in files]
    imagenet = 2 * sum(fits) > len(files)  # by majority: one stray file does not decide
    if imagenet and not all(fits):
        why = f"outside the ImageNet layout <wnid>/<file> that {sum(fits)} of {len(files)} inputs follow"
        skipped += [Skipped(f[0], why) for f, ok in zip(files, fits, strict=True) if not ok]
        files = [f for f, ok in zip(files, fits, strict=True) if ok]
    classes = sorted({f[0].split("/", 1)[0] for f in files}) if imagenet else []
    class_of = {s: i for i, s in enumerate(classes)}
    items = []
    for r, size, mtime in files:
        syn = r.split("/", 1)[0] if imagenet else None
        items.append(Item(fmt.sample_key(r, imagenet), r, class_of.get(syn), syn, size, mtime))
    items.sort(key=lambda it: it.key)
    for a, b in zip(items, items[1:], strict=False):
        if a.key == b.key:
            raise PlanError(
                f"two inputs map to the same sample key {a.key!r}: {fmt.display(a.source)} and {fmt.display(b.source)}"
            )
    skipped.sort(key=lambda s: s.source)
    return Plan(listing.root, imagenet, classes, samples_per_shard, prefix, items, skipped, dict(listing.ignored))


def _names(sources: list[str], n: int = 5) -> str:
    shown = ", ".join(fmt.display(s) for s in sources[:n])
    return shown + (f", … ({len(sources) - n} more)" if len(sources) > n else "")


def describe_listing_change(out: Store, plan: Plan) -> str:
    """What differs between the plan recorded in `out` and `plan`: inputs added and removed,
    named (the first five of each), or '' when the old listing is not there to compare."""
    try:
        old = read_plan_inputs(out.read_bytes(fmt.PLAN_INPUTS) or b"")
    except (OSError, ValueError):
        return ""
    before = {r.source for r in old}
    now = {it.source for it in plan.items}
    added, removed = sorted(now - before), sorted(before - now)
    parts = []
    if added:
        parts.append(f"{len(added)} input(s) added: {_names(added)}")
    if removed:
        parts.append(f"{len(removed)} input(s) removed: {_names(removed)}")
    if not parts:
        parts.append("the same inputs with other keys, classes or order")
    return "; " + "; ".join(parts)


def check_or_write_plan(out: Store, plan: Plan, overwrite: bool) -> None:
    """Refuse to mix two plans in one output directory; record the plan (header and inputs)."""
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
    if overwrite or data is None or out.size(fmt.PLAN_INPUTS) is None:
        rows = [plan_input_row(it) for i in range(plan.num_shards) for it in plan.shard_items(i)]
        write_plan_inputs(out, rows)
    out.write_json(fmt.PLAN, want)


def plan_input_row(it: Item) -> tuple[str, str, int | None, int, int]:
    return (it.key, it.source, it.class_index, it.size, it.mtime_ns)


def changed_inputs(plan: Plan, done: dict[int, ShardStats]) -> dict[int, list[str]]:
    """Done shards whose inputs changed since the shard was made (size or mtime differ from what
    the shard task read), with what changed. Stats written before inputs were recorded say
    nothing and are trusted."""
    out: dict[int, list[str]] = {}
    for i, stats in done.items():
        if not stats.inputs or i >= plan.num_shards:
            continue
        changes = []
        for it in plan.shard_items(i):
            old = stats.inputs.get(it.key)
            if old is None or len(old) != 2:
                changes.append(f"{fmt.display(it.source)} (new in this shard)")
                continue
            size, mtime = old
            if size >= 0 and it.size >= 0 and size != it.size:
                changes.append(f"{fmt.display(it.source)} (size {size} -> {it.size} bytes)")
            elif mtime >= 0 and it.mtime_ns >= 0 and mtime != it.mtime_ns:
                changes.append(f"{fmt.display(it.source)} (modified)")
        if changes:
            out[i] = changes
    return out


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
