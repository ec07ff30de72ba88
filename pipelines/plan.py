"""Listing and plan: an input tree -> a deterministic list of shards.

The plan is the list of inputs sorted by key, put in a seeded pseudo-random order and cut into
shards of `samples_per_shard` (each shard's items sorted by key again, as the writer requires);
shard *i* always holds the same images, so any shard can be (re)done on its own. The order makes
every shard a random sample of the classes, so that training batches mix classes even though a
reader can only shuffle within a buffer (ImageNet sorted by key would put one class per shard).
Its hash is stored in `plan.json` and the manifest, and a rerun against a different input, order
or shard size is refused.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from shards import format as fmt
from shards.errors import UsageError
from shards.manifest import PlanHeader
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


@dataclass
class Plan:
    root: str
    imagenet: bool  # ImageNet layout: `<root>/<wnid>/<file>`, class index = sorted synset order
    classes: list[str]  # synsets in class-index order; empty when the input has no classes
    samples_per_shard: int
    prefix: str
    items: list[Item] = field(repr=False)  # sorted by key
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
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.key}\t{it.source}\t{it.class_index}\n".encode())
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
        )


def _scan(root: Path) -> list[str]:
    """Relative POSIX paths of every image-suffixed file under root (os.scandir: no stat per file)."""
    out: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    stack.append(r)
                elif os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                    out.append(r)
    return out


def _scan_url(root: str) -> list[str]:
    """The same for an fsspec URL (s3://bucket/train, gs://…, file://…): one recursive listing."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(root)
    path = path.rstrip("/")
    return [p[len(path) + 1 :] for p in fs.find(path) if os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES]


def _read_list(list_file: Path) -> tuple[str, list[str]]:
    """A file list: one path per line (absolute, or relative to the list's folder); '#' comments.
    Returns the common root and the paths relative to it."""
    base = list_file.parent.resolve()
    paths = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(os.path.normpath(line if os.path.isabs(line) else base / line))
    if not paths:
        return str(base), []
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return root, [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]


def list_inputs(source: str) -> tuple[str, list[str]]:
    """(root, relative paths) for a directory, an fsspec URL, or a `.txt` file list."""
    if "://" in source:
        return source.rstrip("/"), _scan_url(source)
    p = Path(source)
    if p.is_dir():
        return str(p.resolve()), _scan(p)
    if p.is_file() and p.suffix in (".txt", ".lst"):
        return _read_list(p)
    raise PlanError(f"input {source!r} is not a directory, a URL, or a .txt file list")


def make_plan(source: str | os.PathLike, samples_per_shard: int, prefix: str = "c2f") -> Plan:
    if samples_per_shard < 1:
        raise PlanError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    if "." in prefix or "/" in prefix or not prefix:
        raise PlanError(f"invalid shard prefix {prefix!r}")
    try:
        root, rels = list_inputs(str(source))
    except (OSError, ValueError) as e:  # unreadable list, unreachable bucket
        raise PlanError(f"cannot list input {str(source)!r}: {e}") from None
    return plan_from_listing(root, rels, samples_per_shard, prefix)


def plan_from_listing(root: str, rels: list[str], samples_per_shard: int, prefix: str) -> Plan:
    if not rels:
        raise PlanError(f"no images (by suffix: {', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    top = {r.split("/", 1)[0] for r in rels}
    imagenet = all(r.count("/") == 1 for r in rels) and all(_WNID.match(t) for t in top)
    classes = sorted(top) if imagenet else []
    class_of = {s: i for i, s in enumerate(classes)}
    items = []
    for r in rels:
        syn = r.split("/", 1)[0] if imagenet else None
        items.append(Item(fmt.sample_key(r, imagenet), r, class_of.get(syn), syn))
    items.sort(key=lambda it: it.key)
    for a, b in zip(items, items[1:], strict=False):
        if a.key == b.key:
            raise PlanError(f"two inputs map to the same sample key {a.key!r}: {a.source} and {b.source}")
    return Plan(root, imagenet, classes, samples_per_shard, prefix, items)


PLAN_FILE = "plan.json"


def check_or_write_plan(out: Store, plan: Plan, overwrite: bool) -> None:
    """Refuse to mix two plans in one output directory; record the plan on first use."""
    want = plan.header().to_json()
    have = out.read_json(PLAN_FILE)
    if have is not None and not overwrite:
        diff = [k for k in ("listing_sha256", "samples_per_shard", "prefix", "order_seed") if have.get(k) != want[k]]
        if diff:
            raise PlanError(
                f"{out} holds shards of another plan (differs in: {', '.join(diff)}); "
                "use a new output directory, or --overwrite to discard the old shards"
            )
        return
    if overwrite:
        for name in out.list():
            if fmt.parse_shard_name(name) or name.endswith(fmt.STATS_SUFFIX):
                out.remove(name)
    out.write_json(PLAN_FILE, want)


SETTINGS_FILE = "labeler_settings.json"


def check_or_write_settings(out: Store, settings: dict, overwrite: bool) -> None:
    """One dataset, one labeler: a rerun with other labeler settings is refused."""
    have = out.read_json(SETTINGS_FILE)
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
