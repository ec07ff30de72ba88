"""One unit of work: shard *i* of the plan -> a finished tar + its stats JSON.

read (bounded) -> decode (shards.image) -> label (labeler) -> pack (shards.pack) -> write (shards.writer)

Reads are bounded (regular files only, at most `--max-input-bytes`) and decoding is bounded
(formats on an allowlist, at most `--max-pixels` checked from the header): docs/RUNNING.md says
what is refused and why.

Every input of the shard ends up either in the tar or in the stats' `quarantined` list with the
stage and the reason: a failure on one image, at any stage, costs only that image. Only failures of
the shard itself (the output disk, the labeler's process) fail the task, which is then retried;
a full disk or quota, on the output or the staging space, fails it with `OutputFull`
(shards.writer: one line naming the file and the free space, nothing left under a shard's name),
which stops the job instead (`stops_job`): retrying cannot free space.
Beside the tar goes its per-sample table (`{shard}.parquet`, shards/samples.py: one row per input,
packed or quarantined, with its facts and stage times); the stats JSON is the done-marker, written last.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labeler.base import ImageContext, Labeler
from shards import format as fmt
from shards.errors import first_line
from shards.image import BadImage, PreparedImage, prepare_image
from shards.manifest import GroundedCount, Quarantined, ShardStats, write_stats
from shards.pack import Labels, pack_sample
from shards.samples import InputRef, Packed, coverage, mean_score, shard_rows, table_bytes
from shards.store import Store
from shards.writer import ShardInfo, ShardWriter

from .listing import file_kind, remote_mtime_ns
from .plan import Item


@dataclass(frozen=True)
class DecodeLimits:
    """What one input may cost (`c2f label --max-pixels / --max-input-bytes`; docs/RUNNING.md)."""

    max_pixels: int = fmt.MAX_PIXELS  # width x height, checked from the header before decoding
    max_input_bytes: int = fmt.MAX_MEMBER_BYTES  # file size, checked before reading


@dataclass(frozen=True)
class ShardJob:
    """What a shard task needs besides the labeler; small and picklable (Ray ships it)."""

    index: int
    shard: str  # file name of the tar
    items: list[Item]  # the plan's inputs for this shard, in key order
    root: str  # input root: a local directory or an fsspec URL
    out_dir: str
    batch_size: int = 16  # images per labeler call
    limits: DecodeLimits = DecodeLimits()


class InputRefused(Exception):
    """An input that is not read at all (not a regular file, too large); the message says why."""


def read_input(root: str, source: str, max_bytes: int = fmt.MAX_MEMBER_BYTES) -> tuple[bytes, list[int]]:
    """Bytes of one input and its stamp `[size, mtime_ns]` as read: a local path, or any fsspec URL
    root (s3://, gs://, …). Bounded: only a regular file of at most `max_bytes` is read.

    A local file is opened non-blocking and checked with fstat on the open descriptor, so a FIFO
    cannot hang the task, a device (or a symlink to one) is never read, and a file swapped after
    planning is judged by what was actually opened."""
    if "://" in root and not root.startswith("file://"):
        return _read_remote(f"{root.rstrip('/')}/{source}", max_bytes)
    path = os.path.join(root.removeprefix("file://"), source)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused(f"not a regular file ({file_kind(st.st_mode)})")
        if st.st_size > max_bytes:
            raise InputRefused(f"file of {st.st_size} bytes exceeds --max-input-bytes {max_bytes}")
        data = f.read(st.st_size + 1)  # one more: a file that is not what fstat said is refused
    if len(data) != st.st_size:
        raise InputRefused(f"file changed while being read ({st.st_size} bytes by fstat, {len(data)} read)")
    return data, [st.st_size, st.st_mtime_ns]


def _read_remote(url: str, max_bytes: int) -> tuple[bytes, list[int]]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    if info.get("type") != "file":
        raise InputRefused(f"not a file ({info.get('type')})")
    size = info.get("size")
    if size is not None and size > max_bytes:
        raise InputRefused(f"object of {size} bytes exceeds --max-input-bytes {max_bytes}")
    with fs.open(path, "rb") as f:
        data = f.read((max_bytes if size is None else size) + 1)
    if len(data) > max_bytes:
        raise InputRefused(f"object of more than {max_bytes} bytes exceeds --max-input-bytes")
    if size is not None and len(data) != size:
        raise InputRefused(f"object changed while being read ({size} bytes listed, {len(data)} read)")
    return data, [-1 if size is None else size, remote_mtime_ns(info)]


class StageTimer(dict):
    """Milliseconds spent per stage of one shard: `with timer("decode"): …`; with `keys` (a key or a
    batch's keys, which share the time equally) also per input, in `per_key[key][stage]`."""

    def __init__(self):
        super().__init__()
        self.per_key: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str, keys: str | list[str] | None = None):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            ms = 1000 * (time.perf_counter() - t0)
            self[stage] = self.get(stage, 0.0) + ms
            keys = [keys] if isinstance(keys, str) else keys or []
            for k in keys:
                t = self.per_key.setdefault(k, {})
                t[stage] = t.get(stage, 0.0) + ms / len(keys)


class Quarantine(list):
    """The shard's quarantined inputs; `add` records one with its stage and reason."""

    def __init__(self, shard: str):
        super().__init__()
        self.shard = shard

    def add(self, item: Item, stage: str, reason: str) -> None:
        self.append(Quarantined(self.shard, item.key, item.source, stage, reason))


def decode_batches(
    job: ShardJob,
    quarantine: Quarantine,
    stamps: dict[str, list[int]] | None = None,
    timer: StageTimer | None = None,
    pixels: bool = True,
) -> Iterator[list[tuple[Item, PreparedImage]]]:
    """read -> decode, in batches; inputs that cannot be read or decoded go to `quarantine` with
    the stage and the reason (exception type and message), whatever the exception. `stamps`
    receives `[size, mtime_ns]` of every input as read (as planned when it could not be read), so a
    rerun can tell which inputs changed since this shard was made. `pixels=False` (a labeler that
    needs none): inputs are decoded to be checked, not into arrays (`shards.image.prepare_image`)."""
    timer = timer if timer is not None else StageTimer()
    stamps = {} if stamps is None else stamps
    for b in range(0, len(job.items), job.batch_size):
        batch: list[tuple[Item, PreparedImage]] = []
        for item in job.items[b : b + job.batch_size]:
            stamps[item.key] = [item.size, item.mtime_ns]
            try:
                with timer("read", item.key):
                    data, stamps[item.key] = read_input(job.root, item.source, job.limits.max_input_bytes)
            except InputRefused as e:
                quarantine.add(item, "read", str(e))
                continue
            except Exception as e:  # noqa: BLE001 - one unreadable input costs only itself
                quarantine.add(item, "read", first_line(e, typed=True))
                continue
            try:
                with timer("decode", item.key):
                    batch.append((item, prepare_image(data, job.limits.max_pixels, pixels)))
            except BadImage as e:
                quarantine.add(item, "decode", str(e))
            except Exception as e:  # noqa: BLE001 - any decoder failure (plugins raise anything, MemoryError)
                quarantine.add(item, "decode", first_line(e, typed=True))
        yield batch


def write_labeled(
    writer: ShardWriter,
    batch: list[tuple[Item, PreparedImage]],
    results: list,
    quarantine: Quarantine,
    timer: StageTimer | None = None,
    grounded: GroundedCount | None = None,
    packed: dict[str, Packed] | None = None,
) -> None:
    """pack + write one labeled batch; a label or pack failure quarantines that image only.
    `grounded` counts the written images that a text prompt labeled, found or not found; `packed`
    receives what the shard's table records of each sample written."""
    timer = timer if timer is not None else StageTimer()
    for (item, im), labels in zip(batch, results, strict=True):
        if isinstance(labels, Exception):
            quarantine.add(item, "label", first_line(labels, typed=True))
            continue
        if not isinstance(labels, Labels):
            quarantine.add(item, "label", f"labeler returned {type(labels).__name__}, not Labels")
            continue
        try:
            with timer("pack", item.key):
                members = pack_sample(item.key, im, labels, item.source, item.class_index, item.synset)
            index = writer.samples
            with timer("write", item.key):
                writer.write(item.key, members)  # checks key and members before writing a byte
        except (ValueError, TypeError, OverflowError) as e:
            quarantine.add(item, "pack", first_line(e, typed=True))
            continue
        if grounded is not None and labels.prompt is not None:
            grounded.add(bool(labels.instances))
        if packed is not None:
            cov, score = coverage(labels.semantic), mean_score(i.score for i in labels.instances)
            packed[item.key] = Packed(index, im.width, im.height, len(labels.instances), cov, score)


def process_shard(job: ShardJob, labeler: Labeler) -> ShardStats:
    """Label and write one shard. The labeler's `submit` returns at once for a remote actor, so
    the next batch is read and decoded while the current one is labeled. A labeler whose
    `needs_pixels` is False (the `empty` preset) gets images checked but not decoded into arrays."""
    t0 = time.perf_counter()
    quarantine, timer = Quarantine(job.shard), StageTimer()
    stamps: dict[str, list[int]] = {}
    grounded = GroundedCount()
    packed: dict[str, Packed] = {}
    store = Store(job.out_dir)
    staging = store.staging_dir()
    try:
        info = _write_shard(job, labeler, Path(staging) / job.shard, quarantine, timer, stamps, grounded, packed)
        if info.samples:
            with timer("publish"):
                store.publish(Path(staging) / job.shard, job.shard)  # the tar first, then its done-marker
    finally:
        store.discard_staging(staging)
    with timer("table"):  # the shard's table (written atomically) between the tar and the done-marker
        table = table_bytes(_table_rows(job, quarantine, packed, timer, stamps))
        store.write_bytes(fmt.table_name(job.shard), table)
    stats = ShardStats(
        index=job.index,
        shard=job.shard,
        planned=len(job.items),
        samples=info.samples,
        bytes=info.bytes,
        sha256=info.sha256,
        quarantined=list(quarantine),
        seconds=round(time.perf_counter() - t0, 3),
        timings={k: round(v, 1) for k, v in timer.items()},
        inputs=stamps,
        grounded=grounded if grounded.found + grounded.not_found else None,
        table_bytes=len(table),
    )
    write_stats(store, stats)
    return stats


def _table_rows(job: ShardJob, quarantine: Quarantine, packed: dict, timer: StageTimer, stamps: dict) -> list:
    """The shard's table (shards.samples): every input of the job, packed or quarantined."""
    inputs = [
        InputRef(it.key, it.source, it.synset, it.class_index, stamps.get(it.key, [it.size])[0]) for it in job.items
    ]
    reasons = {q.key: (q.stage, q.reason) for q in quarantine}
    return shard_rows(job.shard, inputs, packed, reasons, timer.per_key)


def _write_shard(
    job: ShardJob,
    labeler: Labeler,
    path: Path,
    quarantine: Quarantine,
    timer: StageTimer,
    stamps: dict,
    grounded: GroundedCount | None = None,
    packed: dict | None = None,
) -> ShardInfo:
    """read -> decode -> label -> pack -> write into a tar at `path` (atomically, by the writer).
    `label_wait` is the time this task waited for labels beyond its own reading and decoding. Each
    image goes to the labeler with its `ImageContext` (key and class), from which the text-prompted
    presets make its prompt."""
    with ShardWriter(path) as writer:

        def finish(batch: list[tuple[Item, PreparedImage]], handle) -> None:
            with timer("label_wait", [it.key for it, _ in batch]):
                results = labeler.collect(handle) if batch else []
            write_labeled(writer, batch, results, quarantine, timer, grounded, packed)

        pending = None
        for batch in decode_batches(job, quarantine, stamps, timer, labeler.needs_pixels):
            contexts = [ImageContext(it.key, it.class_index, it.synset) for it, _ in batch]
            handle = labeler.submit([im.labeler_input() for _, im in batch], contexts) if batch else None
            if pending is not None:
                finish(*pending)
            pending = (batch, handle)
        if pending is not None:
            finish(*pending)
    return writer.info
