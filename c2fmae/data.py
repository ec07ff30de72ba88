"""Training batches from shards: compact samples in the workers, tensors for the model on the device.

Workers (CPU) decode, crop and read labels at cell resolution, and send compact integer arrays,
one row per view (`views` crops of each image, stacked view by view: all first views, then all
second views; FOLK's two views, one elsewhere):

    image      [3, S, S] uint8      RandomResizedCrop (bicubic, antialiased, MAE's) + flip
    sem_cells  [S/c, S/c] uint8     class at each cell's centre pixel (c = cell size); int16 holding
                                    the uint16 bits when the label space needs 16 bits
    inst_cells [S/c, S/c] int16     instance id at each cell's centre (the uint16 bits)
    inst_edge  [S/c, S/c] bool      the cell holds more than one instance id (a boundary)
    crop       [7] int32            top, left, height, width, flipped, image height, image width:
                                    the crop in the stored image's pixels (CROP_FIELDS)
    cls        int64                image-level class (-1 when the shards have none)
    row        int64                the sample's row in SMIR's round scores (only in rounds)
    key        str                  the sample key (a list per batch)

About 160 KB per 224 sample, against 680 KB of float images and int64 targets. With
`decode="gpu"` the workers do not decode the JPEG: they read its size from the frame header, draw
the same crop boxes, and send the JPEG bytes (`jpeg`, one flat uint8 buffer per batch, with
`jpeg_sizes`, `box` and `source`, plain Python lists); `decode_on_device` decodes them in one
batched call on the training device and crops there. On the device, `prepare` normalises the
image, builds the instance targets (`instance_target`: Panoptic-DeepLab's centre heatmap and
offsets, or the local affinities) and each patch's dominant class and instance (for guided
masking), vectorised.

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
import torch.nn.functional as F

from shards.reader import decode_sample, expand_urls, interleave

from .model import INSTANCE_TARGETS

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
    # A cell holds two ids when one of its row segments does, or its rows' first pixels differ.
    segments = inst_crop.reshape(s, g, c)
    firsts = np.ascontiguousarray(segments[:, :, 0].reshape(g, c, g).transpose(0, 2, 1))  # [g, g, c]
    edge = _differs(segments).reshape(g, c, g).any(axis=1) | _differs(firsts)
    return sem_cells, inst_crop[c // 2 :: c, c // 2 :: c], edge


_WIDE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _differs(seg: np.ndarray) -> np.ndarray:
    """[..., c] -> [...] bool: some pixel of each segment differs from its first. A segment of 4
    uint16 ids is one uint64: one comparison with the first id repeated, 2.7x faster than
    comparing pixel by pixel and reducing."""
    width = seg.shape[-1] * seg.itemsize
    if width in _WIDE and seg.flags.c_contiguous:
        wide = _WIDE[width]
        repeat = wide(sum(1 << (8 * seg.itemsize * k) for k in range(seg.shape[-1])))
        return seg.view(wide)[..., 0] != seg[..., 0].astype(wide) * repeat
    return (seg != seg[..., :1]).any(-1)


def decode_maps(raw: dict[str, Any], max_pixels: int | None = None) -> dict[str, Any]:
    """`decode_sample(raw, as_tensors=False)` without decoding the JPEG (the `--decode gpu` workers):
    the maps and class as there, the image's size from its frame header, the JPEG bytes as read."""
    from shards import format as fmt
    from shards.image import jpeg_size
    from shards.png import check_pixels
    from shards.reader import _decode_mask, class_index, sample_error

    limit = fmt.MAX_PIXELS if max_pixels is None else max_pixels
    try:
        data = bytes(raw[fmt.JPG])
        size = jpeg_size(data)
        if size is None:
            raise ValueError("not a JPEG with a frame header")
        check_pixels(*size, limit, "JPEG")
        return {
            "__key__": raw.get("__key__"),
            "jpeg": data,
            "size": (size[1], size[0]),  # (height, width), as the decoded image's shape
            "cls": class_index(raw),
            "semantic": _decode_mask(raw[fmt.SEM], limit),
            "instance": _decode_mask(raw[fmt.INST], limit),
        }
    except Exception as e:  # noqa: BLE001 - re-raised with the sample's address, as decode_sample does
        raise sample_error(raw, e) from e


@dataclass(frozen=True)
class TrainTransform:
    """Worker stage: decoded sample (uint8 RGB tensor, numpy maps) + its RNG -> one compact view.

    A sample without `image` (`decode_maps`: `--decode gpu`) gets the same crop box and flip from
    the same RNG draws, its `box` for the device to cut, and no pixels."""

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
        img = s.get("image")
        height, width = img.shape[1:] if img is not None else s["size"]
        top, left, h, w = crop_box(height, width, self.scale, self.ratio, rng)
        flipped = self.flip and rng.random() < 0.5
        out: dict[str, Any] = {}
        if img is not None:
            out["image"] = crop_image(img, (top, left, h, w, int(flipped)), self.size)
        # Source pixel of each output pixel's centre, for the maps (src = start + (dst + 0.5) * h / size).
        rows = top + np.minimum(((np.arange(self.size) + 0.5) * (h / self.size)).astype(np.int64), h - 1)
        cols = left + np.minimum(((np.arange(self.size) + 0.5) * (w / self.size)).astype(np.int64), w - 1)
        if flipped:
            cols = cols[::-1]
        sem, inst = np.asarray(s["semantic"]), np.asarray(s["instance"])
        if sem.shape != (height, width) or inst.shape != sem.shape:
            raise ValueError(f"{s.get('__key__')}: masks {sem.shape}/{inst.shape} differ from image")
        sem_cells, inst_cells, edge = cell_labels(sem, inst, rows, cols, self.cell_size)
        out.update(
            {
                "sem_cells": _ids(sem_cells),
                "inst_cells": _ids(inst_cells.astype(np.uint16)),
                "inst_edge": torch.from_numpy(edge),
                "crop": torch.tensor([top, left, h, w, int(flipped), height, width], dtype=torch.int32),
                "cls": torch.tensor(s["cls"], dtype=torch.int64),
                "key": s["__key__"],
            }
        )
        if img is None:
            out["box"] = (top, left, h, w, int(flipped))  # a Python tuple: the device's crop, read without a sync
        return out


def crop_image(img: torch.Tensor, box: tuple[int, int, int, int, int], size: int) -> torch.Tensor:
    """uint8 [3, H, W] on any device -> the box (top, left, height, width, flipped) resized to
    size x size, bicubic, antialiased (MAE's), flipped where the box says: the one crop of both
    decode paths, so they give the same pixels from the same decoded image."""
    import torchvision.transforms.v2.functional as TF

    top, left, h, w, flipped = box
    out = TF.resized_crop(
        img, top, left, h, w, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True
    )
    return (out.flip(-1) if flipped else out).contiguous()


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors; strings (keys) and tuples (boxes) stay a list."""
    return {
        k: torch.stack([s[k] for s in samples]) if isinstance(v, torch.Tensor) else [s[k] for s in samples]
        for k, v in samples[0].items()
    }


def collate_views(samples: list[list[dict[str, Any]]], jpegs: list[bytes] | None = None) -> dict[str, Any]:
    """Samples of `views` view dicts each -> one batch, view by view (all first views, then all
    second views). With `jpegs` (`--decode gpu`): one flat uint8 buffer of the JPEGs, `jpeg_sizes`,
    and per view its `source` (the index of its JPEG) and `box`."""
    views = len(samples[0])
    batch = collate([s[v] for v in range(views) for s in samples])
    if jpegs is not None:
        batch["jpeg"] = torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8)
        batch["jpeg_sizes"] = [len(j) for j in jpegs]
        batch["source"] = [i for _ in range(views) for i in range(len(samples))]
    return batch


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


def instance_targets(ids: torch.Tensor, edge: torch.Tensor, cells_per_patch: int = 4) -> torch.Tensor:
    """The local target (`--instance-target local`). Instance id at each cell centre [N, Hc, Wc] +
    boundary cells -> [N, 4, Hc, Wc] float: foreground, boundary, same-instance-as-right,
    same-instance-as-below. Only "same or different" matters, so the targets do not depend on how
    instances are numbered; but nothing in them links two cells more than one apart."""
    fg = ids > 0
    right = torch.zeros_like(fg)
    down = torch.zeros_like(fg)
    right[:, :, :-1] = (ids[:, :, :-1] == ids[:, :, 1:]) & fg[:, :, :-1]
    down[:, :-1] = (ids[:, :-1] == ids[:, 1:]) & fg[:, :-1]
    return torch.stack([fg, edge.bool(), right, down], dim=1).float()


CENTRE_SIGMA = 2.0  # cells: the centre heatmap's Gaussian (8 px at 4-px cells, Panoptic-DeepLab's sigma)


@functools.lru_cache(maxsize=8)
def _gaussian_taps(sigma: float, device: torch.device) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    return torch.exp(-(x**2) / (2 * sigma**2)).to(device)  # peak 1: an impulse becomes a bump of height 1


def instance_slots(ids: torch.Tensor) -> torch.Tensor:
    """[N, C] ids -> [N, C] each cell's instance named by its first cell (row-major position): an
    index in 0..C-1 that does not depend on how instances are numbered. No unique (no sync)."""
    n, length = ids.shape
    sorted_ids, order = ids.sort(dim=1, stable=True)  # a group's positions ascending: its first is its first cell
    start = torch.ones_like(sorted_ids, dtype=torch.bool)
    start[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    at = torch.arange(length, device=ids.device).expand(n, -1)
    first = order.gather(1, torch.where(start, at, 0).cummax(1).values)  # the first position of each group
    return torch.empty_like(order).scatter_(1, order, first)


def centre_targets(ids: torch.Tensor, edge: torch.Tensor, cells_per_patch: int, sigma: float = CENTRE_SIGMA):
    """The object-level target (`--instance-target centre`, Panoptic-DeepLab's encoding).
    Instance id at each cell centre [N, Hc, Wc] + boundary cells -> [N, 5, Hc, Wc] float:

    0 foreground, 1 boundary (as the local target);
    2 centre heatmap: a Gaussian (sigma cells, peak 1) at each instance's centre of mass (its cells
      in this crop), splatted bilinearly at the sub-cell position, overlapping bumps summed and
      clipped at 1;
    3, 4 offset (y, x) from each foreground cell to its instance's centre, in patches (0 elsewhere).

    Every cell of an object points at the same centre, however far apart: two cells are one
    object when cell + offset agree. Centres are sums over each instance's cells, so renumbering
    the instances changes nothing (bit for bit: each instance is indexed by its first cell)."""
    n, hc, wc = ids.shape
    length = hc * wc
    flat = ids.reshape(n, length)
    fg = flat > 0
    slot = instance_slots(flat)
    pos = torch.arange(length, device=ids.device)
    ys, xs = (pos // wc).float().expand(n, -1), (pos % wc).float().expand(n, -1)
    count = torch.zeros(n, length, device=ids.device).scatter_add_(1, slot, torch.ones_like(ys))
    cy_slot = torch.zeros_like(count).scatter_add_(1, slot, ys) / count.clamp_min(1)
    cx_slot = torch.zeros_like(count).scatter_add_(1, slot, xs) / count.clamp_min(1)
    off_y = torch.where(fg, (cy_slot.gather(1, slot) - ys) / cells_per_patch, 0.0)
    off_x = torch.where(fg, (cx_slot.gather(1, slot) - xs) / cells_per_patch, 0.0)
    # The heatmap: a unit impulse at each instance's centre (slot s is an instance when its first
    # cell, position s, is foreground), spread bilinearly over the 4 nearest cells, then blurred.
    valid = ((count > 0) & fg).float()
    y0, x0 = cy_slot.floor(), cx_slot.floor()
    wy, wx = cy_slot - y0, cx_slot - x0
    impulses = torch.zeros_like(count)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        weight = (wy if dy else 1 - wy) * (wx if dx else 1 - wx) * valid
        at = (y0 + dy).clamp(max=hc - 1) * wc + (x0 + dx).clamp(max=wc - 1)
        impulses.scatter_add_(1, at.long(), weight)
    taps = _gaussian_taps(sigma, ids.device)
    r = taps.numel() // 2
    heat = F.conv2d(impulses.view(n, 1, hc, wc), taps.view(1, 1, -1, 1), padding=(r, 0))
    heat = F.conv2d(heat, taps.view(1, 1, 1, -1), padding=(0, r)).clamp(max=1.0).view(n, length)
    channels = [fg.float(), edge.reshape(n, length).float(), heat, off_y, off_x]
    return torch.stack(channels, 1).view(n, 5, hc, wc)


TARGET_MAKERS = {"centre": centre_targets, "local": instance_targets}
assert set(TARGET_MAKERS) == set(INSTANCE_TARGETS)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy the tensors (asynchronously from pinned memory); keep the rest. The JPEG buffer stays on
    the host: the decoder reads it from there."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "jpeg" else v
        for k, v in batch.items()
    }


def decode_on_device(batch: dict[str, Any], device: torch.device, size: int) -> dict[str, Any]:
    """`--decode gpu`: the batch's JPEGs decoded in one batched call on `device` (nvJPEG on CUDA;
    libjpeg-turbo with device="cpu") and each view cropped there by its box, with the workers' crop
    code (`crop_image`): `image` [M, 3, size, size] uint8 on `device`. The boxes, sizes and sources
    are Python lists, so nothing is read back from the device."""
    from torchvision.io import ImageReadMode, decode_jpeg

    batch = dict(batch)
    parts = list(batch.pop("jpeg").split(batch.pop("jpeg_sizes")))
    images = decode_jpeg(parts, mode=ImageReadMode.RGB, device=device)
    boxes, source = batch.pop("box"), batch.pop("source")
    batch["image"] = torch.stack([crop_image(images[i], box, size) for i, box in zip(source, boxes, strict=True)])
    return batch


def prepare(batch: dict[str, Any], cells_per_patch: int, instance_target: str = "centre") -> dict[str, Any]:
    """A compact batch on the device -> model inputs and masking labels:
    image [N, 3, S, S] float normalised, sem_cells [N, Hc, Wc] long, inst_cells [N, K, Hc, Wc] float
    (`instance_target`'s K channels), sem_patch / inst_patch [N, L] long; crop, cls, key (and SMIR's
    row) unchanged."""
    sem, inst = as_ids(batch["sem_cells"]), as_ids(batch["inst_cells"])
    out = {
        "image": normalize(batch["image"]),
        "sem_cells": sem,
        "inst_cells": TARGET_MAKERS[instance_target](inst, batch["inst_edge"], cells_per_patch),
        "sem_patch": patch_mode(sem, cells_per_patch),
        "inst_patch": patch_mode(inst, cells_per_patch),
        "crop": batch["crop"],
        "cls": batch["cls"],
        "key": batch["key"],
    }
    if "row" in batch:
        out["row"] = batch["row"]
    return out


def device_batches(
    loader, device: torch.device, cells_per_patch: int, instance_target: str = "centre", size: int = 224
) -> Iterator[dict[str, Any]]:
    for batch in loader:
        batch = to_device(batch, device)
        if "jpeg" in batch:
            batch = decode_on_device(batch, device, size)
        yield prepare(batch, cells_per_patch, instance_target)


# --- the stream ------------------------------------------------------------------------------------

DECODERS = ("cpu", "gpu")  # where the JPEGs are decoded: the DataLoader workers, or the training device


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
    views: int = 1  # crops of each sample (FOLK: 2), stacked view by view in the batch
    decode: str = "cpu"  # cpu: workers decode and crop; gpu: workers send JPEG bytes and boxes (DECODERS)
    rows: dict[str, int] | None = None  # SMIR's rounds: each scored key's row in the round's table
    blank_row: int = 0  # ... and the row of a sample the round did not score


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
                jpegs = [s[0].pop("jpeg") for s in samples] if c.decode == "gpu" else None
                yield collate_views(samples, jpegs)
                index += c.batch_size
                g += workers
            raw.close()

    def sample(self, raw: dict[str, Any], epoch: int, worker: int, index: int) -> list[dict[str, Any]]:
        """One raw sample -> its `views` compact views (their crops drawn one after the other from
        the sample's RNG: the first view is the one-view stream's sample)."""
        c = self.cfg
        rng = random.Random(f"{c.seed}:{c.rank}:{worker}:{epoch}:{index}")  # the sample's crops and flips
        decoded = decode_maps(raw) if c.decode == "gpu" else decode_sample(raw, as_tensors=False)
        views = [self.transform(decoded, rng) for _ in range(c.views)]
        if c.rows is not None:
            row = torch.tensor(c.rows.get(decoded["__key__"], c.blank_row), dtype=torch.int64)
            for v in views:
                v["row"] = row
        if c.decode == "gpu":
            views[0]["jpeg"] = decoded["jpeg"]
        return views

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


class WholeImages(torch.utils.data.IterableDataset):
    """One pass, in shard order, over the samples of `urls` (of one partition), each whole image
    resized to a square, no augmentation: compact batches as the training stream makes them. Under
    a DataLoader with W workers, worker w reads shards w, w + W, ... (SMIR's round scoring)."""

    def __init__(self, urls, batch_size: int, img_size: int, cell_size: int, partition=None):
        self.urls, self.batch_size, self.partition = list(urls), batch_size, partition
        self.transform = TrainTransform.whole_image(img_size, cell_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        mine = self.urls[info.id :: info.num_workers] if info else self.urls
        rng = random.Random(0)  # unused by the whole-image transform, required by its signature
        batch: list[list[dict[str, Any]]] = []
        for raw in interleave(iter(mine), 1, random.Random(0)):
            if self.partition is not None and partition_of(raw["__key__"], self.partition[1]) != self.partition[0]:
                continue
            batch.append([self.transform(decode_sample(raw, as_tensors=False), rng)])
            if len(batch) == self.batch_size:
                yield collate_views(batch)
                batch = []
        if batch:
            yield collate_views(batch)


def whole_image_batches(
    urls: list[str], batch_size: int, img_size: int, cell_size: int, partition: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
    """WholeImages in this process (no workers)."""
    return iter(WholeImages(urls, batch_size, img_size, cell_size, partition))


def whole_image_loader(urls, batch_size: int, img_size: int, cell_size: int, partition, workers: int):
    """WholeImages read by `workers` DataLoader processes (pinned batches on CUDA)."""
    return torch.utils.data.DataLoader(
        WholeImages(urls, batch_size, img_size, cell_size, partition),
        batch_size=None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )


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
