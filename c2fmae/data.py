"""Training batches from shards: joint augmentation and patch-level targets, built in the workers.

Per sample (after RandomResizedCrop(224) + flip on the RGB and both masks together):
    image      [3, S, S] float, ImageNet-normalised
    sem_cells  [S/c, S/c] long: the class at each cell's centre pixel (c = cell size, 4)
    inst_cells [4, S/c, S/c] float: foreground, boundary, same-instance-as-right, -as-below.
               Independent of how instances are numbered: only "same or different" matters.
    sem_patch  [L] long: each patch's most frequent cell class (for semantic-guided masking)
    inst_patch [L] long: each patch's most frequent instance id (for instance-guided masking)
    cls        long: image-level class (-1 when the shards have none), for probes
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from shards.reader import JointTransform, expand_urls, make_dataset

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255


@dataclass
class DataSpec:
    num_classes: int  # semantic label space size, from the manifest
    ignore_index: int  # semantic ignore value, from the manifest
    num_image_classes: int  # image-level classes (0 when the shards have none)
    num_samples: int  # samples in the dataset (sets the default epoch length)


def read_spec(source: str) -> DataSpec:
    """Label spaces and size from `manifest.json` next to the shards (a local path or any URL)."""
    from shards import format as fmt
    from shards.location import open_url

    urls = expand_urls(source)
    murl = urls[0].rsplit("/", 1)[0] + "/" + fmt.MANIFEST if "/" in urls[0] else fmt.MANIFEST
    try:
        with open_url(murl) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {fmt.MANIFEST} next to {urls[0]}: pretraining needs the label spaces") from None
    n = len(m["label_space"]["semantic"])
    return DataSpec(n, fmt.semantic_ignore(n), len(m["plan"]["classes"]), int(m["totals"]["samples"]))


def patch_mode(cells: torch.Tensor, cells_per_patch: int) -> torch.Tensor:
    """[Hc, Wc] ids -> [L] most frequent id per patch (ties: the smallest id)."""
    hc, wc = cells.shape
    k = cells_per_patch
    blocks = cells.reshape(hc // k, k, wc // k, k).permute(0, 2, 1, 3).reshape(-1, k * k)
    return blocks.mode(dim=1).values


def instance_targets(inst: torch.Tensor, cell: int) -> torch.Tensor:
    """inst [S, S] ids -> [4, S/c, S/c]: foreground, boundary, affinity right, affinity down."""
    s = inst.shape[0]
    g = s // cell
    centres = inst[cell // 2 :: cell, cell // 2 :: cell]
    blocks = inst.reshape(g, cell, g, cell)
    boundary = blocks.amax(dim=(1, 3)) != blocks.amin(dim=(1, 3))
    fg = centres > 0
    right = torch.zeros_like(fg)
    down = torch.zeros_like(fg)
    right[:, :-1] = (centres[:, :-1] == centres[:, 1:]) & fg[:, :-1]
    down[:-1] = (centres[:-1] == centres[1:]) & fg[:-1]
    return torch.stack([fg, boundary, right, down]).float()


@dataclass
class Targets:
    """Worker-side stage: augmented sample -> tensors the model and the masking need."""

    patch_size: int = 16
    cell_size: int = 4

    def __call__(self, s: dict[str, Any]) -> dict[str, Any]:
        c = self.cell_size
        sem_cells = s["semantic"][c // 2 :: c, c // 2 :: c].contiguous()
        inst = s["instance"]
        per_patch = self.patch_size // c
        return {
            "image": (s["image"].float() - MEAN) / STD,
            "sem_cells": sem_cells,
            "inst_cells": instance_targets(inst, c),
            "sem_patch": patch_mode(sem_cells, per_patch),
            "inst_patch": patch_mode(inst[c // 2 :: c, c // 2 :: c], per_patch),
            "cls": torch.tensor(s["cls"]),
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0] if not k.startswith("__")}


def make_loader(
    source: str,
    batch_size: int,
    workers: int,
    seed: int,
    epoch: int,
    img_size: int = 224,
    patch_size: int = 16,
    cell_size: int = 4,
    shuffle: int = 1000,
    augment: bool = True,
    subset: str | None = None,
):
    """An infinite, deterministic (given seed, epoch, rank, worker count) stream of batches.

    Shards are split disjointly between ranks and workers when there are enough of them,
    else each worker resamples shards with replacement (small datasets, tests)."""
    import torch.distributed as dist
    import webdataset as wds

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    urls = expand_urls(source)
    if subset:  # only the shards that hold a selected sample count for the split below
        from shards.quality.select import load_subset

        urls = load_subset(subset).restrict(urls)
    disjoint = len(urls) >= world * max(1, workers)
    transform = (
        JointTransform(img_size, scale=(0.2, 1.0))
        if augment
        else JointTransform(img_size, scale=(1.0, 1.0), ratio=(1e-3, 1e3), flip=False)
    )  # whole image
    ds = make_dataset(
        urls,
        transform=transform,
        shuffle=shuffle,
        resampled=not disjoint,
        repeat=disjoint,
        seed=seed * 1_000_003 + epoch * 7919 + rank,
        subset=subset,
    )
    pipeline = wds.DataPipeline(
        ds, wds.map(Targets(patch_size, cell_size)), wds.batched(batch_size, collation_fn=collate, partial=False)
    )
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)  # worker seeds (transforms)
    if workers == 0:
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))  # transforms run here
    return torch.utils.data.DataLoader(
        pipeline,
        batch_size=None,
        num_workers=workers,
        generator=g,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )
