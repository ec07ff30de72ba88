"""Masking strategies, vectorised over the batch and run on the training device. One signature:

    strategy(batch: MaskInputs, ratio: float, generator: torch.Generator) -> mask [N, L], 1 = removed

Every strategy removes exactly `num_removed(ratio, L)` patches per image, so batches stack, and
draws its randomness from `generator` on the generator's device (no host round trip, no sync).
`MaskInputs` carries what a strategy may look at: patch-level semantic and instance labels
today; a per-patch loss cache (selective masking), the images (frequency-domain masking) or a
"degrade instead of remove" map are further optional fields, not a new signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

NAMES = ("semantic", "instance", "random")  # the curriculum's strategies, in its order


@dataclass
class MaskInputs:
    num_patches: int  # L (a square grid)
    batch_size: int  # N
    sem_patch: torch.Tensor | None = None  # [N, L] dominant semantic class per patch (ignore allowed)
    inst_patch: torch.Tensor | None = None  # [N, L] dominant instance id per patch (0 = none)
    ignore_index: int = 255
    patch_loss: torch.Tensor | None = None  # [N, L] reserved: per-patch loss from an earlier pass


def num_removed(ratio: float, num_patches: int) -> int:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return round(ratio * num_patches)


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device)


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """mask [N, L] with 1 at each row's k highest scores."""
    mask = torch.zeros_like(scores)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1).indices, 1.0)
    return mask


def random_mask(batch: MaskInputs, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """MAE: uniform noise, remove the patches with the highest noise."""
    n, length = batch.batch_size, batch.num_patches
    k = num_removed(ratio, length)
    noise = _rand(generator, n, length)
    mask = torch.zeros(n, length, device=noise.device)
    mask.scatter_(1, noise.argsort(1)[:, length - k :], 1.0)
    return mask


def region_mask(regions: torch.Tensor, skip: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Whole-region masking, for a batch: regions [N, L] (a region = the patches sharing an id;
    `skip` is not a region) -> mask [N, L] with exactly k ones per row.

    Per image, regions are taken in a random order and removed whole while they fit in the
    budget k. The first one that does not fit (an object larger than what is left, e.g. a
    close-up covering 90% of the image) loses a compact part of itself: the patches nearest to a
    random patch of it, as many as the budget still allows. Only when every region is removed
    whole do random patches outside them fill the rest."""
    n, length = regions.shape
    dev = regions.device
    valid = regions != skip
    # Compact region ids per row: rank of the id among the row's distinct ids.
    ids, order = regions.sort(dim=1)
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    rid = torch.empty_like(order).scatter_(1, order, new.long().cumsum(1) - 1)  # [N, L] in 0..L-1
    size = torch.zeros(n, length, device=dev).scatter_add_(1, rid, valid.float())  # per compact id
    # Random order of the regions (size 0 = not a region: last), and which prefix fits in k.
    rank = torch.where(size > 0, _rand(generator, n, length), 2.0).argsort(1)
    sizes = size.gather(1, rank)
    fits = (sizes.cumsum(1) <= k) & (sizes > 0)
    whole = torch.zeros(n, length, device=dev).scatter_(1, rank, fits.float()).gather(1, rid) > 0
    first_misfit = fits.sum(1, keepdim=True).clamp(max=length - 1)  # position in `rank`
    part_id = rank.gather(1, first_misfit)
    has_part = sizes.gather(1, first_misfit) > 0
    part = valid & (rid == part_id) & has_part & ~whole
    # The compact part: distance from a random patch of the region (ties broken at random).
    side = math.isqrt(length)
    grid = torch.arange(side, device=dev, dtype=torch.float32)
    yx = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    seed = torch.where(part, _rand(generator, n, length), -1.0).argmax(1)
    dist = ((yx.unsqueeze(0) - yx[seed].unsqueeze(1)) ** 2).sum(-1) + 0.5 * _rand(generator, n, length)
    near = 1.0 - dist / (2.0 * side * side + 1.0)  # in (0, 1]: nearer is higher
    scores = torch.where(whole, 3.0, torch.where(part, 1.0 + near, _rand(generator, n, length)))
    return _top(scores, k)


def semantic_mask(batch: MaskInputs, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Remove whole semantic regions (same dominant class), chosen at random (region_mask)."""
    if batch.sem_patch is None:
        raise ValueError("semantic masking needs semantic labels (sem_patch)")
    return region_mask(batch.sem_patch, batch.ignore_index, num_removed(ratio, batch.num_patches), generator)


def instance_mask(batch: MaskInputs, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Remove whole instances, chosen at random (region_mask); background (id 0) is never a region."""
    if batch.inst_patch is None:
        raise ValueError("instance masking needs instance labels (inst_patch)")
    return region_mask(batch.inst_patch, 0, num_removed(ratio, batch.num_patches), generator)


STRATEGIES: dict[str, Callable[[MaskInputs, float, torch.Generator], torch.Tensor]] = {
    "random": random_mask,
    "semantic": semantic_mask,
    "instance": instance_mask,
}


@dataclass(frozen=True)
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


def curriculum_picks(n: int, probs: tuple[float, float, float], generator: torch.Generator) -> torch.Tensor:
    """[N] strategy index per image (into NAMES), drawn with `probs`, on the generator's device."""
    u = _rand(generator, n)
    return (u >= probs[0]).long() + (u >= probs[0] + probs[1]).long()


def curriculum_mask(
    batch: MaskInputs, ratio: float, generator: torch.Generator, progress: float, curriculum: Curriculum
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, draw a strategy from the curriculum's probabilities at `progress`.
    Returns (mask [N, L], picks [N] indices into NAMES)."""
    probs = curriculum.probs(progress)
    picks = curriculum_picks(batch.batch_size, probs, generator)
    mask = None
    for i, name in enumerate(NAMES):
        if probs[i] == 0.0:  # a host-side float: skipping costs no sync
            continue
        m = STRATEGIES[name](batch, ratio, generator)
        mask = m if mask is None else torch.where((picks == i).unsqueeze(1), m, mask)
    assert mask is not None
    return mask, picks


@dataclass(frozen=True)
class Masking:
    """The run's masking: a strategy (or the curriculum), the ratio, and the semantic ignore value."""

    strategy: str = "random"  # curriculum|random|semantic|instance
    ratio: float = 0.75
    curriculum: Curriculum = Curriculum()
    ignore_index: int = 255

    def __call__(
        self, sem_patch: torch.Tensor, inst_patch: torch.Tensor, progress: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mask [N, L], picks [N]: the strategy index per image, into NAMES)."""
        n, length = sem_patch.shape
        inputs = MaskInputs(length, n, sem_patch, inst_patch, self.ignore_index)
        if self.strategy == "curriculum":
            return curriculum_mask(inputs, self.ratio, generator, progress, self.curriculum)
        mask = STRATEGIES[self.strategy](inputs, self.ratio, generator)
        return mask, torch.full((n,), NAMES.index(self.strategy), device=mask.device)

    def kept(self, num_patches: int) -> int:
        return num_patches - num_removed(self.ratio, num_patches)
