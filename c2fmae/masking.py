"""Masking strategies, vectorised over the batch and run on the training device. One signature:

    strategy(batch: MaskInputs, ratio: float, generator: torch.Generator) -> mask [N, L], 1 = removed

Every strategy removes exactly `num_removed(ratio, L)` patches per image, so batches stack, and
draws its randomness from `generator` on the generator's device (no host round trip, no sync).
`MaskInputs` carries what a strategy may look at: patch-level semantic and instance labels and,
for selective masking (SMIR), a per-patch reconstruction loss estimated by c2fmae/methods.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

NAMES = ("semantic", "instance", "random", "selective")  # the curriculum's strategies, in its order
SELECTIVE_MIN_PROB = 1e-3  # a curriculum's selective phase estimates losses only above this share


@dataclass
class MaskInputs:
    num_patches: int  # L (a square grid)
    batch_size: int  # N
    sem_patch: torch.Tensor | None = None  # [N, L] dominant semantic class per patch (ignore allowed)
    inst_patch: torch.Tensor | None = None  # [N, L] dominant instance id per patch (0 = none)
    ignore_index: int = 255
    patch_loss: torch.Tensor | None = None  # [N, L] estimated reconstruction loss per patch (selective)


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


def selective_mask(batch: MaskInputs, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """SMIR: remove the patches with the highest estimated loss. Ties are broken by the same noise
    random_mask draws, so equal losses everywhere give exactly random_mask's mask (a tested reduction)."""
    if batch.patch_loss is None:
        raise ValueError("selective masking needs per-patch losses (patch_loss)")
    n, length = batch.batch_size, batch.num_patches
    k = num_removed(ratio, length)
    by_noise = _rand(generator, n, length).argsort(1)  # ascending noise
    # A stable sort by loss of the noise-ordered patches: loss first, noise breaks ties.
    order = by_noise.gather(1, batch.patch_loss.float().gather(1, by_noise).argsort(dim=1, stable=True))
    mask = torch.zeros(n, length, device=order.device)
    mask.scatter_(1, order[:, length - k :], 1.0)
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
    "selective": selective_mask,
}


@dataclass(frozen=True)
class Curriculum:
    """Probabilities of (semantic, instance, random[, selective]) masking as a pure function of
    progress t in [0, 1].

    Each strategy's weight is a Gaussian bump centred on its phase; the weights are normalised,
    so the mix moves smoothly from semantic-heavy to instance-heavy to random (docs/TRAINER.md).
    A fourth centre adds selective masking (SMIR) as a late phase: the model's own losses say
    most about what it has not learned once the semantic and instance phases are behind it."""

    centers: tuple[float, ...] = (0.0, 0.5, 1.0)  # where semantic, instance, random (, selective) peak
    width: float = 0.25  # std of each bump, in units of training progress

    def __post_init__(self):
        if len(self.centers) not in (3, 4):
            raise ValueError(
                f"curriculum centres: 3 (semantic, instance, random) or 4 (+ selective), got {self.centers}"
            )

    def probs(self, t: float) -> tuple[float, ...]:
        t = min(max(t, 0.0), 1.0)
        w = [math.exp(-((t - c) ** 2) / (2 * self.width**2)) for c in self.centers]
        s = sum(w)
        return tuple(x / s for x in w)


def curriculum_picks(n: int, probs: tuple[float, ...], generator: torch.Generator) -> torch.Tensor:
    """[N] strategy index per image (into NAMES), drawn with `probs`, on the generator's device."""
    u = _rand(generator, n)
    picks = torch.zeros(n, dtype=torch.long, device=u.device)
    edge = 0.0
    for p in probs[:-1]:
        edge += p
        picks += (u >= edge).long()
    return picks


def curriculum_mask(
    batch: MaskInputs, ratio: float, generator: torch.Generator, progress: float, curriculum: Curriculum
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, draw a strategy from the curriculum's probabilities at `progress`.
    Returns (mask [N, L], picks [N] indices into NAMES)."""
    probs = curriculum.probs(progress)
    picks = curriculum_picks(batch.batch_size, probs, generator)
    mask = None
    for i, name in enumerate(NAMES[: len(probs)]):
        if probs[i] == 0.0:  # a host-side float: skipping costs no sync
            continue
        if name == "selective" and batch.patch_loss is None:  # a phase below SELECTIVE_MIN_PROB
            name, i = "random", NAMES.index("random")
            picks = torch.where(picks == NAMES.index("selective"), i, picks)  # the log counts what was drawn
        m = STRATEGIES[name](batch, ratio, generator)
        mask = m if mask is None else torch.where((picks == i).unsqueeze(1), m, mask)
    assert mask is not None
    return mask, picks


@dataclass(frozen=True)
class Masking:
    """The run's masking: a strategy (or the curriculum), the ratio, and the semantic ignore value."""

    strategy: str = "random"  # curriculum|random|semantic|instance|selective
    ratio: float = 0.75
    curriculum: Curriculum = Curriculum()
    ignore_index: int = 255

    def needs_loss(self, progress: float) -> bool:
        """Whether a mask drawn at `progress` may be selective (and so needs per-patch losses)."""
        if self.strategy == "curriculum":
            probs = self.curriculum.probs(progress)
            # Below 0.1% of the draws the loss passes would cost every step for a few images:
            # curriculum_mask masks those few at random instead.
            return len(probs) > 3 and probs[3] >= SELECTIVE_MIN_PROB
        return self.strategy == "selective"

    def __call__(
        self,
        sem_patch: torch.Tensor,
        inst_patch: torch.Tensor,
        progress: float,
        generator: torch.Generator,
        patch_loss: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mask [N, L], picks [N]: the strategy index per image, into NAMES)."""
        n, length = sem_patch.shape
        inputs = MaskInputs(length, n, sem_patch, inst_patch, self.ignore_index, patch_loss)
        if self.strategy == "curriculum":
            return curriculum_mask(inputs, self.ratio, generator, progress, self.curriculum)
        # SMIR's first round has no earlier model to ask: it masks at random, as the paper's does.
        strategy = "random" if self.strategy == "selective" and patch_loss is None else self.strategy
        mask = STRATEGIES[strategy](inputs, self.ratio, generator)
        return mask, torch.full((n,), NAMES.index(strategy), device=mask.device)

    def kept(self, num_patches: int) -> int:
        return num_patches - num_removed(self.ratio, num_patches)
