"""Synthetic scenes with known semantic and instance maps, packed through the real writer.

Used by tests, benchmarks and the trainer's overfit checks: unlike the `empty` preset, these
masks have real structure (a scene split into "stuff" regions, plus textured objects that
occlude each other), and every map is exact because it is drawn, not predicted.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from . import format as fmt
from .image import prepare_image
from .manifest import LabelerInfo, LabelSpace, Manifest, PlanHeader, ShardStats, write_dataset_files, write_stats
from .pack import Instance, Labels, pack_sample
from .samples import InputRef, Packed, coverage, mean_score, shard_rows, table_bytes
from .writer import ShardWriter, atomic_write_bytes

STUFF = ["sky", "grass", "road"]  # class ids 0..2: horizontal bands
THINGS = ["disc", "box", "triangle"]  # class ids 3..5: objects
CLASS_NAMES = STUFF + THINGS
PALETTE = np.array(
    [[110, 170, 235], [60, 150, 60], [90, 90, 95], [220, 60, 50], [240, 200, 40], [150, 70, 200]], np.uint8
)


def make_scene(rng: np.random.Generator, height: int = 160, width: int = 224, max_objects: int = 5):
    """One scene: (rgb [H,W,3] uint8, semantic [H,W] uint8, instance [H,W] uint16, instances)."""
    yy, xx = np.mgrid[0:height, 0:width]
    cuts = np.sort(rng.integers(height // 5, height - height // 5, size=2))
    sem = np.zeros((height, width), np.uint8)
    sem[yy >= cuts[0]] = 1
    sem[yy >= cuts[1]] = 2
    inst = np.zeros((height, width), np.uint16)
    n = int(rng.integers(2, max_objects + 1))
    records = []
    for i in range(1, n + 1):
        cls = int(rng.integers(3, 6))
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        r = int(rng.integers(min(height, width) // 10, min(height, width) // 4))
        if cls == 3:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif cls == 4:
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= int(r * 1.4))
        else:
            m = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) // 2)
        sem[m] = cls
        inst[m] = i  # later objects occlude earlier ones
        records.append((i, cls, float(rng.uniform(0.5, 1.0))))
    # Colour = class palette + per-pixel texture, so classes are visible but not trivially flat.
    noise = rng.normal(0, 12, (height, width, 3))
    stripes = 10 * np.sin(xx / (3 + rng.integers(0, 5)))[..., None] * (inst[..., None] % 2)
    rgb = np.clip(PALETTE[sem].astype(np.float32) + noise + stripes, 0, 255).astype(np.uint8)
    instances = []
    for i, cls, score in records:
        m = inst == i
        if not m.any():
            continue  # fully occluded
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        instances.append(Instance(i, cls, score, int(m.sum()), bbox))
    kept = {r.id for r in instances}
    inst[~np.isin(inst, list(kept))] = 0
    return rgb, sem, inst, instances


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_synthetic_dataset(
    out_dir: str | Path,
    num_samples: int,
    samples_per_shard: int,
    seed: int = 0,
    size: tuple[int, int] = (160, 224),
    prefix: str = "syn",
    num_classes_label: int = 10,
) -> Manifest:
    """A complete v1 dataset (shards, their tables and stats, manifest, wids index) of synthetic scenes.

    Each scene also gets an image-level class (`.cls`): the class of its largest object, so that
    linear probes have something to find."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_stats = []
    shard_sizes = []
    for index, start in enumerate(range(0, num_samples, samples_per_shard)):
        shard = fmt.shard_name(prefix, index)
        n = min(samples_per_shard, num_samples - start)
        shard_sizes.append(n)
        inputs, packed = [], {}
        with ShardWriter(out / shard) as w:
            for j in range(start, start + n):
                rgb, sem, inst, instances = make_scene(rng, *size)
                image = prepare_image(encode_jpeg(rgb))
                cls = max(instances, key=lambda r: r.area).category if instances else 0
                key = f"scene_{j:08d}"
                inputs.append(InputRef(key, f"synthetic/{key}", str(cls), cls, len(image.jpg)))
                packed[key] = Packed(
                    w.samples,
                    image.width,
                    image.height,
                    len(instances),
                    coverage(sem),
                    mean_score(i.score for i in instances),
                )
                w.write(key, pack_sample(key, image, Labels(sem, inst, instances), f"synthetic/{key}", cls, None))
        info = w.info
        table = table_bytes(shard_rows(shard, inputs, packed, {}, {}))
        atomic_write_bytes(out / fmt.table_name(shard), table)
        stats = ShardStats(index, shard, n, info.samples, info.bytes, info.sha256, table_bytes=len(table))
        write_stats(out, stats)
        all_stats.append(stats)
    plan = PlanHeader(
        root="synthetic",
        imagenet=False,
        classes=[str(i) for i in range(num_classes_label)],
        samples_per_shard=samples_per_shard,
        prefix=prefix,
        num_inputs=num_samples,
        num_shards=len(shard_sizes),
        listing_sha256="",
        shard_sizes=shard_sizes,
    )
    label_space = LabelSpace(semantic={str(i): c for i, c in enumerate(CLASS_NAMES)})
    return write_dataset_files(out, label_space, LabelerInfo("synthetic", settings={"seed": seed}), plan, all_stats)
