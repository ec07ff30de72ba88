"""Training batches from shards: compact samples in the workers, tensors for the model on the device.

Workers (CPU) decode, crop and read labels at cell resolution, and send compact integer arrays:

    image      [3, S, S] uint8      RandomResizedCrop (bicubic, antialiased, MAE's) + flip
    sem_cells  [S/c, S/c] uint8     class at each cell's centre pixel (c = cell size); int16 holding
                                    the uint16 bits when the label space needs 16 bits
    inst_cells [S/c, S/c] int16     instance id at each cell's centre (the uint16 bits)
    inst_edge  [S/c, S/c] bool      the cell holds more than one instance id (a boundary)
    crop       [7] int32            top, left, height, width, flipped, image height, image width:
                                    the crop in the stored image's pixels (CROP_FIELDS)
    cls        int64                image-level class (-1 when the shards have none)
    key        str                  the sample key (a list per batch)

About 160 KB per 224 sample, against 680 KB of float images and int64 targets. On the device,
`prepare` normalises the image, expands the instance targets (foreground, boundary, affinity
right/down) and each patch's dominant class and instance (for guided masking), vectorised.

The stream (`TrainStream`) is deterministic and resumable: the micro-batch with global index g
(counted from step 0) is always made by "virtual worker" g mod W of its rank from that epoch's
shard order, shuffle buffer and per-sample crop seeds, whatever process happens to run it; a
resumed run starts its workers at the right batch, skipping only raw tar bytes (no decoding).
"""

from __future__ import annotations

import functools
import math
import os
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shards.reader import decode_sample, expand_urls, interleave

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
CROP_FIELDS = ("top", "left", "height", "width", "flipped", "image_height", "image_width")


@dataclass
class DataSpec:
    num_classes: int  # semantic label space size, from the manifest
    ignore_index: int  # semantic ignore value, from the manifest
    num_image_classes: int  # image-level classes (0 when the shards have none)
    num_samples: int  # samples in the dataset (sets the default epoch length)


def read_spec(source: str) -> DataSpec:
    """Label spaces and size from `manifest.json` next to the shards (a local path or any URL);
    `shards.manifest.ManifestError` (a usage error) when it is missing or not a c2f manifest."""
    from shards import format as fmt
    from shards.manifest import ManifestMissing, read_manifest

    urls = expand_urls(source)
    folder = urls[0].rsplit("/", 1)[0] if "/" in urls[0] else "."
    try:
        m = read_manifest(folder)
    except ManifestMissing:
        raise ManifestMissing(f"no {fmt.MANIFEST} next to {urls[0]}: pretraining needs the label spaces") from None
    space = m.label_space
    return DataSpec(space.num_classes, space.ignore, len(m.plan.classes), m.totals.samples)


# --- worker side: numpy / uint8 ------------------------------------------------------------------


def crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawn from `rng` instead of torch's global RNG
    (so each sample's crop is a function of its seed): (top, left, height, width)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: the central crop with the ratio clamped
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _ids(a: np.ndarray) -> torch.Tensor:
    """uint8 stays uint8; uint16 travels as int16 (same bits; torch has no uint16 arithmetic)."""
    a = np.ascontiguousarray(a)
    return torch.from_numpy(a.view(np.int16) if a.dtype == np.uint16 else a)


def cell_labels(sem: np.ndarray, inst: np.ndarray, rows: np.ndarray, cols: np.ndarray, cell: int):
    """Full-size maps + the crop's source row/column per output pixel -> (semantic class at each
    cell's centre, instance id at each cell's centre, cell holds more than one instance id)."""
    c = cell
    # Row then column gathers: ~7x faster than one np.ix_ gather on these sizes.
    sem_cells = sem[rows[c // 2 :: c]][:, cols[c // 2 :: c]]
    inst_crop = inst[rows][:, cols]  # nearest neighbour: ids are never blended
    g, s = len(rows) // c, len(rows)
    blocks = inst_crop.reshape(g, c, g, c)
    differs = blocks != blocks[:, :1, :, :1]  # each pixel against its cell's first pixel
    edge = differs.reshape(g, c, s).any(axis=1).reshape(g, g, c).any(axis=2)  # contiguous reductions: 4x faster
    return sem_cells, inst_crop[c // 2 :: c, c // 2 :: c], edge


@dataclass(frozen=True)
class TrainTransform:
    """Worker stage: decoded sample (uint8 RGB tensor, numpy maps) + its RNG -> compact sample."""

    size: int = 224
    cell_size: int = 4
    scale: tuple[float, float] = (0.2, 1.0)  # MAE's RandomResizedCrop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    @classmethod
    def whole_image(cls, size: int, cell_size: int) -> TrainTransform:
        """No augmentation: the whole image resized to size x size (overfit checks)."""
        return cls(size, cell_size, scale=(1.0, 1.0), ratio=(1e-3, 1e3), flip=False)

    def __call__(self, s: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        import torchvision.transforms.v2.functional as F

        img = s["image"]
        height, width = img.shape[1:]
        top, left, h, w = crop_box(height, width, self.scale, self.ratio, rng)
        flipped = self.flip and rng.random() < 0.5
        out = F.resized_crop(
            img, top, left, h, w, [self.size, self.size], interpolation=F.InterpolationMode.BICUBIC, antialias=True
        )
        # Source pixel of each output pixel's centre, for the maps (src = start + (dst + 0.5) * h / size).
        rows = top + np.minimum(((np.arange(self.size) + 0.5) * (h / self.size)).astype(np.int64), h - 1)
        cols = left + np.minimum(((np.arange(self.size) + 0.5) * (w / self.size)).astype(np.int64), w - 1)
        if flipped:
            out, cols = out.flip(-1), cols[::-1]
        sem, inst = np.asarray(s["semantic"]), np.asarray(s["instance"])
        if sem.shape != (height, width) or inst.shape != sem.shape:
            raise ValueError(f"{s.get('__key__')}: masks {sem.shape}/{inst.shape} differ from image")
        sem_cells, inst_cells, edge = cell_labels(sem, inst, rows, cols, self.cell_size)
        return {
            "image": out.contiguous(),
            "sem_cells": _ids(sem_cells),
            "inst_cells": _ids(inst_cells.astype(np.uint16)),
            "inst_edge": torch.from_numpy(edge),
            "crop": torch.tensor([top, left, h, w, int(flipped), height, width], dtype=torch.int32),
            "cls": torch.tensor(s["cls"], dtype=torch.int64),
            "key": s["__key__"],
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors; strings (keys) stay a list."""
    return {
        k: torch.stack([s[k] for s in samples]) if isinstance(v, torch.Tensor) else [s[k] for s in samples]
        for k, v in samples[0].items()
    }


# --- device side: vectorised torch ---------------------------------------------------------------


def as_ids(t: torch.Tensor) -> torch.Tensor:
    """uint8, or int16 holding uint16 bits -> int64 ids."""
    return t.long() & 0xFFFF if t.dtype == torch.int16 else t.long()


@functools.lru_cache(maxsize=8)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return MEAN.to(device), STD.to(device)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float, ImageNet-normalised."""
    mean, std = _mean_std(images.device)
    return (images.float() - mean) / std


def patch_mode(cells: torch.Tensor, cells_per_patch: int) -> torch.Tensor:
    """[N, Hc, Wc] ids -> [N, L] most frequent id per patch (ties: the smallest id)."""
    n, hc, wc = cells.shape
    k = cells_per_patch
    v = cells.reshape(n, hc // k, k, wc // k, k).permute(0, 1, 3, 2, 4).reshape(n, -1, k * k)
    counts = (v.unsqueeze(-1) == v.unsqueeze(-2)).sum(-1)  # [N, L, k*k]: how often each cell's id occurs
    best = (counts.long() * (1 << 20) - v).argmax(-1, keepdim=True)  # ids < 2^20
    return v.gather(-1, best).squeeze(-1)


def instance_targets(ids: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """Instance id at each cell centre [N, Hc, Wc] + boundary cells -> [N, 4, Hc, Wc] float:
    foreground, boundary, same-instance-as-right, same-instance-as-below. Only "same or different"
    matters, so the targets do not depend on how instances are numbered."""
    fg = ids > 0
    right = torch.zeros_like(fg)
    down = torch.zeros_like(fg)
    right[:, :, :-1] = (ids[:, :, :-1] == ids[:, :, 1:]) & fg[:, :, :-1]
    down[:, :-1] = (ids[:, :-1] == ids[:, 1:]) & fg[:, :-1]
    return torch.stack([fg, edge.bool(), right, down], dim=1).float()


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy the tensors (asynchronously from pinned memory); keep the rest."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def prepare(batch: dict[str, Any], cells_per_patch: int) -> dict[str, Any]:
    """A compact batch on the device -> model inputs and masking labels:
    image [N, 3, S, S] float normalised, sem_cells [N, Hc, Wc] long, inst_cells [N, 4, Hc, Wc] float,
    sem_patch / inst_patch [N, L] long; crop, cls and key unchanged."""
    sem, inst = as_ids(batch["sem_cells"]), as_ids(batch["inst_cells"])
    return {
        "image": normalize(batch["image"]),
        "sem_cells": sem,
        "inst_cells": instance_targets(inst, batch["inst_edge"]),
        "sem_patch": patch_mode(sem, cells_per_patch),
        "inst_patch": patch_mode(inst, cells_per_patch),
        "crop": batch["crop"],
        "cls": batch["cls"],
        "key": batch["key"],
    }


def device_batches(loader, device: torch.device, cells_per_patch: int) -> Iterator[dict[str, Any]]:
    for batch in loader:
        yield prepare(to_device(batch, device), cells_per_patch)


# --- the stream ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamConfig:
    urls: tuple[str, ...]  # this dataset's shards
    batch_size: int  # samples per micro-batch
    batches_per_epoch: int  # micro-batches per epoch on each rank (steps per epoch x accumulation)
    seed: int = 0
    start_batch: int = 0  # first micro-batch to produce, counted from step 0 (a resume point)
    img_size: int = 224
    cell_size: int = 4
    augment: bool = True
    shuffle: int = 1000  # shuffle buffer per worker, in samples
    interleave: int = 4  # shards each worker reads at once
    rank: int = 0
    world: int = 1
    keys: frozenset[str] | None = None  # a subset (`c2f filter`): only these samples
    partition: tuple[int, int] | None = None  # (index, count): only that part of the data (SMIR's rounds)


class TrainStream(torch.utils.data.IterableDataset):
    """An infinite stream of compact micro-batches, deterministic given (seed, rank, worker count)."""

    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg
        self.transform = (
            TrainTransform(cfg.img_size, cfg.cell_size)
            if cfg.augment
            else TrainTransform.whole_image(cfg.img_size, cfg.cell_size)
        )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        real, workers = (info.id, info.num_workers) if info else (0, 1)
        c, per_epoch = self.cfg, self.cfg.batches_per_epoch
        # The DataLoader hands batch i of this iterator to worker i mod W; it is global batch
        # start + i, which must always come from the same virtual worker (g mod W).
        virtual = (real + c.start_batch) % workers
        g = c.start_batch + (virtual - c.start_batch) % workers
        while True:
            epoch = g // per_epoch
            first = epoch * per_epoch + (virtual - epoch * per_epoch) % workers  # its first batch this epoch
            count = len(range(first, (epoch + 1) * per_epoch, workers))  # its batches this epoch
            raw = self.epoch_samples(epoch, virtual, workers, count * c.batch_size)
            index = (g - first) // workers * c.batch_size  # samples of its batches before g (a resume)
            for _ in range(index):
                next(raw)
            while g < (epoch + 1) * per_epoch:
                samples = [self.sample(next(raw), epoch, virtual, index + j) for j in range(c.batch_size)]
                yield collate(samples)
                index += c.batch_size
                g += workers
            raw.close()

    def sample(self, raw: dict[str, Any], epoch: int, worker: int, index: int) -> dict[str, Any]:
        c = self.cfg
        rng = random.Random(f"{c.seed}:{c.rank}:{worker}:{epoch}:{index}")  # the sample's crop and flip
        return self.transform(decode_sample(raw, as_tensors=False), rng)

    def epoch_samples(self, epoch: int, worker: int, workers: int, needed: int):
        """Raw samples of one (epoch, rank, virtual worker): its shards, interleaved and shuffled
        (a buffer no larger than the `needed` samples: more would only be read and dropped)."""
        c = self.cfg
        tag = f"{c.seed}:{c.rank}:{worker}:{epoch}"
        slots = c.world * workers
        if len(c.urls) >= slots:  # disjoint shares, reshuffled each pass
            mine = list(c.urls[c.rank * workers + worker :: slots])

            def passes():
                for p in range(1 << 62):
                    order = list(mine)
                    random.Random(f"{tag}:{p}").shuffle(order)
                    yield from order

            urls = passes()
        else:  # fewer shards than readers: each draws shards with replacement
            pick = random.Random(f"{tag}:resample")
            urls = (pick.choice(c.urls) for _ in range(1 << 62))
        raw = interleave(urls, c.interleave, random.Random(f"{tag}:interleave"))
        if c.keys is not None:
            raw = (s for s in raw if s["__key__"] in c.keys)
        if c.partition is not None:
            index, count = c.partition
            raw = (s for s in raw if partition_of(s["__key__"], count) == index)
        size = min(c.shuffle, needed)
        return shuffled(raw, size, random.Random(f"{tag}:shuffle")) if size > 1 else raw


def partition_of(key: str, parts: int) -> int:
    """The data partition a sample belongs to (SMIR's rounds): a hash of its key, stable across runs."""
    return zlib.crc32(key.encode()) % parts


def whole_image_batches(
    urls: list[str], batch_size: int, img_size: int, cell_size: int, partition: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """One pass, in shard order, over the samples of `urls` (of one partition), each whole image
    resized to a square, no augmentation: compact batches as the training stream makes them."""
    transform = TrainTransform.whole_image(img_size, cell_size)
    rng = random.Random(0)  # unused by the whole-image transform, required by its signature
    batch: list[dict[str, Any]] = []
    for raw in interleave(iter(urls), 1, random.Random(0)):
        if partition is not None and partition_of(raw["__key__"], partition[1]) != partition[0]:
            continue
        batch.append(transform(decode_sample(raw, as_tensors=False), rng))
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch:
        yield collate(batch)


def shuffled(items: Iterator, size: int, rng: random.Random, initial: int = 100):
    """A shuffle buffer (webdataset's): emit from the first `initial` samples on, while the buffer
    grows to `size` by reading two samples per one emitted."""
    buf: list = []
    initial = min(initial, size)
    try:
        for item in items:
            buf.append(item)
            if len(buf) < size:
                extra = next(items, None)
                if extra is not None:
                    buf.append(extra)
            if len(buf) >= initial:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf
    finally:
        close = getattr(items, "close", None)
        if close:
            close()


def available_cpus() -> int:
    """CPUs this process may run on (affinity, then the cgroup quota where one is set)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def default_workers() -> int:
    """DataLoader workers per rank: the CPUs left to this rank after its own main process."""
    per_rank = available_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(16, per_rank - 1))


def make_loader(cfg: StreamConfig, workers: int):
    """The one DataLoader of a run: workers start once and stream across epochs."""
    return torch.utils.data.DataLoader(
        TrainStream(cfg),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,  # x workers x ~40 MB batches of shared memory
        pin_memory=torch.cuda.is_available(),
    )
