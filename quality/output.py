"""A labeled output directory as the quality tools see it: its manifest, its shards (local or any
fsspec URL) and its semantic classes, with the rule that says which of them are "things"."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from shards.errors import UsageError
from shards.location import list_shards, open_url
from shards.manifest import Manifest, ManifestError, ManifestMissing, read_manifest
from shards.tar import Report, group_samples, tar_members

T = TypeVar("T")


@dataclass(frozen=True)
class SemanticClasses:
    """The semantic classes of an output (its manifest's label space), with its thing classes.

    `things` is None when nothing names them: each image's own instance categories stand in
    (class-aware instance models that do not declare their space), or no thing fraction at all
    (class-agnostic instances, e.g. SAM): see `things_rule`."""

    names: dict[int, str]
    num_classes: int
    ignore: int
    things: frozenset[int] | None
    things_rule: str
    # grounded label spaces (text-prompted presets): synset -> the class id an image of that class
    # carries on its objects; empty for other label spaces
    class_of_synset: dict[str, int] = field(default_factory=dict)

    @property
    def grounded(self) -> bool:
        return bool(self.class_of_synset)

    def image_class(self, meta: dict) -> int | None:
        """Grounded spaces: the semantic id of this sample's own class (by its synset, else by its
        instances' category, which a prompt class without a synset gives); None when unknown."""
        syn = (meta.get("class") or {}).get("synset")
        if isinstance(syn, str) and syn in self.class_of_synset:
            return self.class_of_synset[syn]
        cats = [i.get("category") for i in meta.get("instances", []) if isinstance(i, dict)]
        cats = [c for c in cats if isinstance(c, int) and 0 <= c < self.num_classes]
        return cats[0] if cats else None

    def name(self, cid: int) -> str:
        if cid == self.ignore:
            return "ignore"
        return self.names.get(cid, f"#{cid}")


@dataclass
class Output:
    path: str
    manifest: Manifest
    shards: list[str]  # URLs of the manifest's shards, in manifest order

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def parse_ids(spec: str) -> frozenset[int]:
    """'0-79,90' -> {0..79, 90}; a UsageError names the part that is not an id or a range."""
    ids: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        try:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise UsageError(f"--things: {part!r} is not an id or a range like 0-79") from None
        if a < 0 or b < a:
            raise UsageError(f"--things: {part!r} is not an increasing range of ids >= 0")
        ids.update(range(a, b + 1))
    return frozenset(ids)


def semantic_classes(manifest: Manifest, things: str = "auto") -> SemanticClasses:
    space = manifest.label_space
    if things != "auto":
        ids, rule = parse_ids(things), f"--things {things}"
    elif space.thing_ids is not None:
        ids, rule = space.thing_ids, "the manifest's instance label space"
    else:
        ids, rule = None, "each image's instance categories (the manifest names no thing classes)"
    return SemanticClasses(space.semantic_names, space.num_classes, space.ignore, ids, rule, space.class_of_synset())


def open_output(path: str) -> Output:
    """The output at `path` (a directory, local or a URL); UsageError when it is not one."""
    urls = list_shards(path)
    if urls is None:
        raise UsageError(f"{path} is not a directory of shards")
    try:
        manifest = read_manifest(path)
    except ManifestMissing as e:
        raise UsageError(f"{e}: the quality tools need an output written by `c2f label`") from None
    except ManifestError as e:
        raise UsageError(f"{e}; run `c2f validate {path}`") from None
    on_disk = {u.rsplit("/", 1)[-1]: u for u in urls}
    missing = [s.name for s in manifest.shards if s.name not in on_disk]
    if missing:
        raise UsageError(f"{path}: {len(missing)} shard(s) of the manifest are missing, e.g. {missing[0]}")
    if not manifest.shards:
        raise UsageError(f"{path} holds no samples")
    return Output(path, manifest, [on_disk[s.name] for s in manifest.shards])


def iter_samples(url: str, report: Report) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for every sample of one shard, through the bounded tar path
    (shards.tar); raises `TarError` for a file that is not a readable tar."""
    with open_url(url) as f:
        stream = f if isinstance(f, io.BufferedIOBase) else io.BufferedReader(f, 1 << 20)
        yield from group_samples(tar_members(stream), report)


def read_some(url: str, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """The samples of one shard whose key is in `keys` (stops reading once it has them all)."""
    found: dict[str, dict[str, bytes]] = {}
    for key, sample in iter_samples(url, lambda *_: None):
        if key in keys:
            found[key] = sample
            if len(found) == len(keys):
                break
    return found


def map_shards(
    fn: Callable[..., T], jobs: list[tuple], workers: int, desc: str, progress: bool
) -> Iterator[tuple[int, T]]:
    """(job index, `fn(*job)`) for every job as it finishes, from a process pool of `workers`
    (validate's pattern: one shard per task, a progress bar per finished shard). Callers fold each
    result in and drop it, so memory holds one shard's result per worker, not the whole run's."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    with tqdm(total=len(jobs), unit="shard", desc=desc, disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                yield i, fn(*job)
                bar.update()
            return
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                yield futures.pop(fut), fut.result()
                bar.update()
