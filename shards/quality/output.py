"""A labeled output directory as the quality tools see it: its manifest, its shards (local or any
fsspec URL) and its label space, with the rule that says which semantic classes are "things"."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .. import format as fmt
from ..errors import UsageError
from ..location import join, list_shards, open_url, read_text
from ..manifest import Manifest
from ..tar import Report, group_samples, tar_members

T = TypeVar("T")


@dataclass(frozen=True)
class LabelSpace:
    """The semantic label space of an output, with its thing classes.

    `things` is None when nothing names them: each image's own instance categories stand in
    (class-aware instance models that do not declare their space), or no thing fraction at all
    (class-agnostic instances, e.g. SAM): see `things_rule`."""

    names: dict[int, str]
    num_classes: int
    ignore: int
    things: frozenset[int] | None
    things_rule: str

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


def label_space(manifest: Manifest, things: str = "auto") -> LabelSpace:
    names = {int(k): str(v) for k, v in manifest.semantic_names.items()}
    n = len(names)
    instance = manifest.label_space.get("instance")
    if things != "auto":
        ids, rule = parse_ids(things), f"--things {things}"
    elif isinstance(instance, dict) and instance:
        ids, rule = frozenset(int(k) for k in instance), "the manifest's instance label space"
    else:
        ids, rule = None, "each image's instance categories (the manifest names no thing classes)"
    return LabelSpace(names, n, fmt.semantic_ignore(n), ids, rule)


def open_output(path: str) -> Output:
    """The output at `path` (a directory, local or a URL); UsageError when it is not one."""
    urls = list_shards(path)
    if urls is None:
        raise UsageError(f"{path} is not a directory of shards")
    text = read_text(join(path, fmt.MANIFEST))
    if text is None:
        raise UsageError(f"no {fmt.MANIFEST} in {path}: the quality tools need an output written by `c2f label`")
    try:
        manifest = Manifest.from_json(json.loads(text))
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{path}/{fmt.MANIFEST} is not a c2f manifest ({e}); run `c2f validate {path}`") from None
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
