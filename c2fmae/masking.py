"""Masking strategies. One signature for all:

    strategy(batch: MaskInputs, ratio: float, generator: torch.Generator) -> mask [N, L], 1 = removed

Every strategy removes exactly `num_removed(ratio, L)` patches per image, so batches stack.
`MaskInputs` carries what a strategy may look at: patch-level semantic and instance labels
today; a per-patch loss cache (selective masking), the images (frequency-domain masking) or a
"degrade instead of remove" map are further optional fields, not a new signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class MaskInputs:
    num_patches: int  # L
    batch_size: int  # N
    sem_patch: torch.Tensor | None = None  # [N, L] dominant semantic class per patch (ignore allowed)
    inst_patch: torch.Tensor | None = None  # [N, L] dominant instance id per patch (0 = none)
    ignore_index: int = 255
    patch_loss: torch.Tensor | None = None  # [N, L] reserved: per-patch loss from an earlier pass


def num_removed(ratio: float, num_patches: int) -> int:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return round(ratio * num_patches)


def random_mask(batch: MaskInputs, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """MAE: uniform noise, remove the patches with the highest noise."""
    n, length = batch.batch_size, batch.num_patches
    k = num_removed(ratio, length)
    noise = torch.rand(n, length, generator=generator)
    mask = torch.zeros(n, length)
    mask.scatter_(1, noise.argsort(1)[:, length - k :], 1.0)
    return mask


def _region_mask(regions: torch.Tensor, skip: int | None, k: int, generator: torch.Generator) -> torch.Tensor:
    """One image: remove whole regions (ids in `regions` [L]) in random order while they fit in k,
    then top up with random patches. Patches whose id is `skip` never form a region."""
    length = regions.numel()
    mask = torch.zeros(length)
    ids = regions.unique()
    if skip is not None:
        ids = ids[ids != skip]
    budget = k
    for rid in ids[torch.randperm(ids.numel(), generator=generator)]:
        members = regions == rid
        size = int(members.sum())
        if size <= budget:  # greedy: any region that still fits is removed whole
            mask[members] = 1.0
            budget -= size
        if budget == 0:
            break
    if budget:
        free = (mask == 0).nonzero().squeeze(1)
        mask[free[torch.randperm(free.numel(), generator=generator)[:budget]]] = 1.0
    return mask


def semantic_mask(batch: MaskInputs, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Remove whole semantic regions (same dominant class), chosen at random, then top up at random."""
    if batch.sem_patch is None:
        raise ValueError("semantic masking needs semantic labels (sem_patch)")
    k = num_removed(ratio, batch.num_patches)
    return torch.stack([_region_mask(r, batch.ignore_index, k, generator) for r in batch.sem_patch])


def instance_mask(batch: MaskInputs, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Remove whole instances, chosen at random, then top up at random (background never a region)."""
    if batch.inst_patch is None:
        raise ValueError("instance masking needs instance labels (inst_patch)")
    k = num_removed(ratio, batch.num_patches)
    return torch.stack([_region_mask(r, 0, k, generator) for r in batch.inst_patch])


STRATEGIES: dict[str, Callable[[MaskInputs, float, torch.Generator], torch.Tensor]] = {
    "random": random_mask,
    "semantic": semantic_mask,
    "instance": instance_mask,
}


@dataclass
class Curriculum:
    """Probabilities of (semantic, instance, random) masking as a pure function of progress t in [0, 1].

    Each strategy's weight is a Gaussian bump centred on its phase; the weights are normalised,
    so the mix moves smoothly from semantic-heavy to instance-heavy to random (docs/TRAINER.md)."""

    centers: tuple[float, float, float] = (0.0, 0.5, 1.0)  # where semantic, instance, random peak
    width: float = 0.25  # std of each bump, in units of training progress

    def probs(self, t: float) -> tuple[float, float, float]:
        t = min(max(t, 0.0), 1.0)
        w = [math.exp(-((t - c) ** 2) / (2 * self.width**2)) for c in self.centers]
        s = sum(w)
        return w[0] / s, w[1] / s, w[2] / s


def curriculum_mask(
    batch: MaskInputs, ratio: float, generator: torch.Generator, progress: float, curriculum: Curriculum
) -> tuple[torch.Tensor, list[str]]:
    """Per image, draw a strategy from the curriculum's probabilities at `progress`."""
    p = torch.tensor(curriculum.probs(progress))
    picks = torch.multinomial(p, batch.batch_size, replacement=True, generator=generator).tolist()
    names = [("semantic", "instance", "random")[i] for i in picks]
    masks = []
    for i, name in enumerate(names):
        one = MaskInputs(
            batch.num_patches,
            1,
            None if batch.sem_patch is None else batch.sem_patch[i : i + 1],
            None if batch.inst_patch is None else batch.inst_patch[i : i + 1],
            batch.ignore_index,
        )
        masks.append(STRATEGIES[name](one, ratio, generator))
    return torch.cat(masks), names
