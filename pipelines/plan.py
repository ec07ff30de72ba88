"""Listing and plan: an input tree -> a deterministic list of shards.

The plan is the list of inputs sorted by key, put in a seeded pseudo-random order and cut into
shards of `samples_per_shard` (each shard's items sorted by key again, as the writer requires);
shard *i* always holds the same images, so any shard can be (re)done on its own. The order makes
every shard a random sample of the classes, so that training batches mix classes even though a
reader can only shuffle within a buffer (ImageNet sorted by key would put one class per shard).
Its hash is stored in `plan.json` and the manifest, and a rerun against a different input, order
or shard size is refused, naming what changed. `plan.inputs.jsonl` keeps the inputs themselves
(key, source, class, size, mtime) in shard order, for those messages and for `c2f validate`.

Listing trusts nothing in the tree (docs/RUNNING.md, "What is refused"):
- only regular files are planned; a FIFO, a device, a socket or a broken symlink with an image
  suffix is refused at planning and recorded in `quarantine.jsonl` (stage `plan`) with the reason;
- symlinks are followed (a class folder may be a link), a link back to an ancestor (a loop) is
  refused, and a folder reached twice is listed once;
- hidden entries (`.ipynb_checkpoints`, `.DS_Store`, `._*`) are ignored, and counted;
- the ImageNet layout (`<wnid>/<file>`) is decided by majority: when most inputs follow it, the
  dataset has classes and the inputs that do not are refused with a reason, instead of one stray
  file turning every class label off;
- file names that are not valid UTF-8 are kept (Python's PEP 383 escapes: `os.fsencode(source)`
  gives the bytes back); their keys are made of the valid characters as usual;
- size and mtime of every input are recorded, so a rerun redoes the shards whose inputs changed
  and names them.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from shards import format as fmt
from shards.errors import UsageError
from shards.manifest import PlanHeader, Quarantined, ShardStats, load_json, read_plan_inputs, write_plan_inputs
from shards.store import Store

ORDER_SEED = 0  # plan.json records it; plans made before it existed (key order) are refused on resume
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
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


@dataclass(frozen=True)
class Skipped:
    """An entry under the root that looked like an input and is not planned, and why."""

    source: str
    reason: str


@dataclass
class Listing:
    root: str
    files: list[tuple[str, int, int]]  # (relative path, size, mtime_ns) of regular image files
    skipped: list[Skipped] = field(default_factory=list)
    ignored: Counter[str] = field(default_factory=Counter)  # what was passed over on purpose, counted


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


def add_listed(out, rel: str, st: os.stat_result) -> None:
    """A listed input: planned when it is a regular file (with size and mtime), else skipped with its kind."""
    if stat.S_ISREG(st.st_mode):
        out.files.append((rel, st.st_size, st.st_mtime_ns))
    else:
        out.skipped.append(Skipped(rel, f"not a regular file ({file_kind(st.st_mode)})"))


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def remote_mtime_ns(info: dict) -> int:
    """Modification time in ns from an fsspec info dict (keys differ by backend); -1 if none."""
    for k in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        v = info.get(k)
        try:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return int(v * 1e9)
            if isinstance(v, datetime):
                return int(v.timestamp() * 1e9)
            if isinstance(v, str):
                return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1e9)
        except (ValueError, OverflowError, OSError):
            continue
    return -1


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _scan(root: Path) -> Listing:
    """Every regular image file under `root` with its size and mtime, depth first in name order
    (deterministic whatever the filesystem's order). Symlinks are followed; a directory that leads
    back to one of its ancestors is a loop and refused; one reached a second time is listed once."""
    out = Listing(str(root), [])
    st = os.stat(root)
    first_path = {(st.st_dev, st.st_ino): ""}
    stack: list[tuple[str, tuple]] = [("", ((st.st_dev, st.st_ino),))]
    while stack:
        rel, ancestors = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.skipped.append(Skipped(rel, f"cannot list directory: {e.strerror or e}"))
            continue
        subdirs = []
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if e.name.startswith("."):
                out.ignored["hidden entries"] += 1
                continue
            try:
                is_dir = e.is_dir()  # follows a symlink
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    dst = e.stat()
                except OSError as ex:
                    out.skipped.append(Skipped(r, f"cannot read directory: {ex.strerror or ex}"))
                    continue
                ident = (dst.st_dev, dst.st_ino)
                if ident in ancestors:
                    back = first_path.get(ident, "")
                    out.skipped.append(Skipped(r, f"symlink loop: leads back to {back or 'the input root'!r}"))
                elif ident in first_path:
                    out.ignored["folders reached twice through symlinks (listed once)"] += 1
                else:
                    first_path[ident] = r
                    subdirs.append((r, (*ancestors, ident)))
                continue
            if not _is_image_name(e.name):
                out.ignored["files without an image suffix"] += 1
                continue
            try:
                fst = e.stat()  # follows a symlink
            except OSError as ex:
                if ex.errno == errno.ELOOP:
                    out.skipped.append(Skipped(r, "symlink loop"))
                elif e.is_symlink():
                    out.skipped.append(Skipped(r, "broken symlink"))
                else:
                    out.skipped.append(Skipped(r, f"cannot stat: {ex.strerror or ex}"))
                continue
            add_listed(out, r, fst)
        stack.extend(reversed(subdirs))  # popped in name order
    return out


def _scan_url(root: str) -> Listing:
    """The same for an fsspec URL (s3://bucket/train, gs://…, file://…): one recursive listing."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    path = path.rstrip("/")
    out = Listing(root.rstrip("/"), [])
    for p, info in sorted(fs.find(path, detail=True).items()):
        rel = p[len(path) + 1 :]
        if any(part.startswith(".") for part in rel.split("/")):
            out.ignored["hidden entries"] += 1
        elif not _is_image_name(rel):
            out.ignored["files without an image suffix"] += 1
        elif info.get("type", "file") != "file":
            out.skipped.append(Skipped(rel, f"not a regular file ({info.get('type')})"))
        else:
            size = info.get("size")
            out.files.append((rel, -1 if size is None else int(size), remote_mtime_ns(info)))
    return out


def _read_list(list_file: Path) -> Listing:
    """A file list: one path per line (absolute, or relative to the list's folder); '#' comments.
    The root is the paths' common folder. Every listed path is checked like a scanned one."""
    base = list_file.parent.resolve()
    paths = []
    for line in list_file.read_text(errors="surrogateescape").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(os.path.normpath(line if os.path.isabs(line) else base / line))
    if not paths:
        return Listing(str(base), [])
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    out = Listing(root, [])
    for p in paths:
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        try:
            st = os.stat(p)
        except OSError as e:
            out.skipped.append(Skipped(rel, f"listed but cannot stat: {e.strerror or e}"))
            continue
        add_listed(out, rel, st)
    return out


def list_inputs(source: str) -> Listing:
    """The listing of a directory, an fsspec URL, or a `.txt` file list."""
    if "://" in source:
        return _scan_url(source)
    p = Path(source)
    if p.is_dir():
        return _scan(p.resolve())
    if p.is_file() and p.suffix in (".txt", ".lst"):
        return _read_list(p)
    raise PlanError(f"input {source!r} is not a directory, a URL, or a .txt file list")


def make_plan(source: str | os.PathLike, samples_per_shard: int, prefix: str = "c2f") -> Plan:
    if samples_per_shard < 1:
        raise PlanError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if "." in prefix or "/" in prefix or not prefix:
        raise PlanError(f"invalid shard prefix {prefix!r}")
    try:
        listing = list_inputs(str(source))
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


PLAN_FILE = fmt.PLAN


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
    data = out.read_bytes(PLAN_FILE)
    if data is not None and not overwrite:
        try:
            have = load_json(data, fmt.PLAN)
            if not isinstance(have, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise PlanError(
                f"{out.url(PLAN_FILE)} is unreadable ({e}); use a new output directory, "
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
            if fmt.parse_shard_name(name) or name.endswith(fmt.STATS_SUFFIX):
                out.remove(name)
    # The inputs first: a plan.json always has its complete listing beside it. The listing is
    # written with a new plan (sizes and times as listed then; what each shard read is in its
    # stats), in shard order; plan.json on every run (the count of refused entries may change).
    if overwrite or data is None or out.size(fmt.PLAN_INPUTS) is None:
        rows = [plan_input_row(it) for i in range(plan.num_shards) for it in plan.shard_items(i)]
        write_plan_inputs(out, rows)
    out.write_json(PLAN_FILE, want)


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


SETTINGS_FILE = "labeler_settings.json"


def check_or_write_settings(out: Store, settings: dict, overwrite: bool) -> None:
    """One dataset, one labeler: a rerun with other labeler settings is refused."""
    try:
        have = out.read_json(SETTINGS_FILE)
    except ValueError as e:
        raise PlanError(f"{out.url(SETTINGS_FILE)} is unreadable ({e}); use --overwrite to replace it") from None
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
    out.write_json(SETTINGS_FILE, settings)
