"""The masked-image-modeling methods one trainer runs: what the encoder sees and where the loss counts.

    mae     random masking, pixel stage (He et al. 2021)
    c2fmae  the cascade under the semantic -> instance -> random curriculum
    smir    selective masking: remove the patches the model reconstructs worst (arXiv 2512.06981)
    folk    frequency masking + self-distillation: remove Fourier components (the weakest, "Com",
            or the strongest, "RCom") of two crops of each image; the student predicts an EMA
            teacher's features of the other crop's original (arXiv 2409.10362)
    srmae   scale masking: selected patches reach the encoder downsampled, a super-resolution
            head restores them (SRMAE)

Each method is a set of defaults for the trainer's flags (METHODS) plus one function per step,
`step_inputs`, that turns a prepared batch into the model's arguments. Everything here runs on the
training device and draws its randomness from the step's generator (no host sync, exact resume).
Choices the papers leave open are argued in docs/TRAINER.md (Methods).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .masking import Masking, MaskInputs, random_mask
from .model import STAGES, rfft_pair_weights


@dataclass(frozen=True)
class MethodDefaults:
    """What `--method` sets where the flag is left empty (an explicit flag always wins)."""

    stages: str  # decoder stages
    masking: str  # patch masking strategy
    mask_ratio: float  # fraction of patches removed (srmae: downsampled; folk: none)


METHODS: dict[str, MethodDefaults] = {
    "mae": MethodDefaults("pixel", "random", 0.75),
    "c2fmae": MethodDefaults("semantic,instance,pixel", "curriculum", 0.75),
    "smir": MethodDefaults("pixel", "selective", 0.5),  # the paper masks the highest-loss half
    "folk": MethodDefaults("pixel", "random", 0.0),  # frequencies are removed, not patches
    "srmae": MethodDefaults("pixel", "random", 0.75),  # the fraction of patches seen at low resolution
}


PROBE_RATIO = 0.75  # SMIR: mask ratio of the passes that estimate patch losses (MAE's: a patch's loss as MAE sees it)
FOLK_FILTERS = ("com", "rcom")  # remove the weakest components (a compressor's loss), or keep only them


@dataclass(frozen=True)
class MethodSettings:
    """The method and its per-step settings (built from TrainConfig, saved in every checkpoint)."""

    name: str = "c2fmae"  # mae|c2fmae|smir|folk|srmae
    selective_passes: int = 2  # SMIR online: no-grad random-mask passes that estimate per-patch losses
    selective_rounds: int = 0  # SMIR iterative: rounds over as many data partitions (0: the online form)
    folk_thresholds: tuple[float, ...] = field(default=(0.005, 0.01, 0.05))  # FOLK: energy fractions removed
    folk_momentum: float = 0.996  # FOLK: the teacher's EMA momentum at step 0 (cosine to 1 at the end)
    folk_filters: tuple[str, ...] = ("com", "rcom")  # FOLK: filters each view draws from (FOLK_FILTERS)
    folk_views: int = 2  # FOLK: crops of each image; 2: each view's student predicts the teacher of the other

    @property
    def views(self) -> int:
        """Crops of each image in a batch (stacked view by view)."""
        return self.folk_views if self.name == "folk" else 1


@dataclass
class StepInputs:
    """The model's arguments for one micro-batch besides the images and labels."""

    mask: torch.Tensor  # [N, L] removed from the encoder (1 = removed)
    keep: int  # patches kept per image
    picks: torch.Tensor  # [N] masking strategy per image (into masking.NAMES; -1: none)
    view: torch.Tensor | None = None  # what the encoder sees instead of the image (FOLK)
    lowres: torch.Tensor | None = None  # [N, L] patches the encoder sees downsampled (SRMAE)
    loss_on: torch.Tensor | None = None  # [N, L] where the reconstruction losses count (default: mask)
    views: int = 1  # crops of each image in the batch, stacked view by view (FOLK: 2)
    removed: torch.Tensor | None = None  # [N, 1, H, W//2+1] Fourier components the view lost (FOLK)

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "view": self.view,
            "lowres": self.lowres,
            "loss_on": self.loss_on,
            "views": self.views,
            "removed": self.removed,
        }


def step_inputs(
    method: MethodSettings,
    masking: Masking,
    model: torch.nn.Module,
    batch: dict[str, Any],
    progress: float,
    generator: torch.Generator,
    scorer=None,
) -> StepInputs:
    """One micro-batch's masks (and views) for `method`. `model` is the plain module (no DDP):
    SMIR's online form asks it for per-patch losses without gradients, through `scorer`
    (`patch_losses`, or a compiled copy of it)."""
    n, length = batch["sem_patch"].shape
    dev = batch["image"].device
    if method.name == "folk":  # nothing removed: the whole filtered image in, the whole image's loss
        none = torch.full((n,), -1, dtype=torch.long, device=dev)
        view, removed = frequency_view(batch["image"], method.folk_thresholds, generator, method.folk_filters)
        return StepInputs(
            torch.zeros(n, length, device=dev),
            length,
            none,
            view=view,
            loss_on=torch.ones(n, length, device=dev),
            views=method.views,
            removed=removed,
        )
    patch_loss = batch.get("patch_loss")  # SMIR iterative: from the previous round's model
    if patch_loss is None and masking.needs_loss(progress) and not method.selective_rounds:
        patch_loss = estimate_patch_loss(model, batch, method.selective_passes, PROBE_RATIO, generator, scorer)
    mask, picks = masking(batch["sem_patch"], batch["inst_patch"], progress, generator, patch_loss)
    if method.name == "srmae":  # the chosen patches are degraded, not removed
        return StepInputs(torch.zeros_like(mask), length, picks, lowres=mask, loss_on=mask)
    return StepInputs(mask, masking.kept(length), picks)


def encoder_view(images: torch.Tensor, inputs: StepInputs, lowres_factor: int) -> torch.Tensor | None:
    """What the encoder saw where it differs from the image (for the pictures; no copy otherwise):
    FOLK's filtered view, SRMAE's degraded patches at their low resolution. [N, 3, H, W] or None."""
    if inputs.view is None and (inputs.lowres is None or not lowres_factor):
        return None
    x = images if inputs.view is None else inputs.view
    if inputs.lowres is not None and lowres_factor:
        f = lowres_factor
        small = F.interpolate(F.avg_pool2d(x, f), scale_factor=f, mode="nearest")
        n, length = inputs.lowres.shape
        g = math.isqrt(length)
        where = inputs.lowres.reshape(n, 1, g, g)
        where = F.interpolate(where.float(), size=x.shape[-2:], mode="nearest") > 0
        x = torch.where(where, small, x)
    return x


# --- SMIR: per-patch losses ---------------------------------------------------------------------


def bf16_autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on CUDA (`--bf16`); a no-op context elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and bf16 else contextlib.nullcontext()


def loss_scorer(compile: bool):
    """`patch_losses`, compiled with --compile: what SMIR scores patches with, in the step and in rounds."""
    return torch.compile(patch_losses) if compile else patch_losses


def patch_losses(model, imgs, mask, sem, inst, keep: int) -> torch.Tensor:
    """[N, L] the model's loss at every patch for this mask: the stage terms, weighted as in training."""
    latent, ids_restore = model.forward_encoder(imgs, mask, sem, inst, keep)
    preds = model.forward_decoder(latent, ids_restore)
    _, per_patch = model.forward_loss(preds, model.targets(imgs, sem, inst), mask, per_patch=True)
    weights = dict(zip(STAGES, model.cfg.loss_weights, strict=True))
    return sum(weights[k] * v.float() for k, v in per_patch.items())


@torch.no_grad()
def estimate_patch_loss(
    model, batch, passes: int, ratio: float, generator: torch.Generator, scorer=None
) -> torch.Tensor:
    """SMIR's estimate: each patch's reconstruction loss averaged over the passes that removed it
    (`passes` random masks at `ratio`); a patch no pass removed gets its image's mean. [N, L].
    Cost: `passes` forward passes without gradients, about passes / 3 of a training step.
    `scorer`: `patch_losses` or a compiled copy of it (the same function)."""
    scorer = scorer or patch_losses
    n, length = batch["sem_patch"].shape
    inputs = MaskInputs(length, n)
    keep = length - round(ratio * length)
    total = torch.zeros(n, length, device=batch["image"].device)
    count = torch.zeros_like(total)
    for _ in range(passes):
        m = random_mask(inputs, ratio, generator)
        total += scorer(model, batch["image"], m, batch["sem_cells"], batch["inst_cells"], keep) * m
        count += m
    mean = total.sum(1, keepdim=True) / count.sum(1, keepdim=True).clamp_min(1)
    return torch.where(count > 0, total / count.clamp_min(1), mean)


def round_start(r: int, total_steps: int, rounds: int) -> int:
    """First step of round r when `total_steps` are split into `rounds` equal rounds."""
    return math.ceil(r * total_steps / rounds)


def loss_in_crop(cache: torch.Tensor, crop: torch.Tensor, grid: int) -> torch.Tensor:
    """Per-patch losses scored on the whole image (cache [N, g, g], the image squashed to a square)
    -> the training crop's patches [N, grid*grid], by the crop geometry (data.CROP_FIELDS:
    top, left, height, width, flipped, image height, image width): each crop patch takes the
    loss of the scored cell under its centre."""
    c = crop.float()  # on the cache's device already: no copy
    top, left, h, w, flipped, height, width = c.unbind(1)
    centre = (torch.arange(grid, device=cache.device).float() + 0.5) / grid  # [grid], in crop units
    ys = top[:, None] + centre[None] * h[:, None]  # [N, grid] source rows
    xs = left[:, None] + centre[None] * w[:, None]
    xs = torch.where(flipped[:, None] > 0, left[:, None] + w[:, None] - (xs - left[:, None]), xs)
    g = cache.shape[-1]
    iy = (ys / height[:, None] * g).long().clamp(0, g - 1)  # [N, grid]
    ix = (xs / width[:, None] * g).long().clamp(0, g - 1)
    rows = cache.gather(1, iy[:, :, None].expand(-1, -1, g))  # [N, grid, g]
    return rows.gather(2, ix[:, None, :].expand(-1, grid, -1)).reshape(cache.shape[0], grid * grid)


# --- FOLK: the filtered view and the teacher's momentum --------------------------------------------


@functools.lru_cache(maxsize=16)
def _device_table(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A constant table on the device, made once per device (a host -> device copy per step would
    make the host wait)."""
    return torch.tensor(values, device=device)


def frequency_view(
    images: torch.Tensor,
    thresholds: tuple[float, ...],
    generator: torch.Generator,
    filters: tuple[str, ...] = ("com",),
) -> tuple[torch.Tensor, torch.Tensor]:
    """FOLK's view of each image and the components it lost: (view [N, 3, H, W], removed
    [N, 1, H, W//2+1] bool, over rfft2's columns).

    "com" removes the weakest Fourier components of the image's own spectrum that together hold
    at most a fraction t of its energy (the DC term excluded and always kept), as a compressor
    drops coefficients; "rcom", its reverse, removes the others: the view keeps only those weakest
    components (and the mean). t is drawn per image from `thresholds`, and, when `filters` lists
    both, the filter too (from the same generator, after t: "com" alone draws exactly what it
    always drew). The three colour channels share one selection; t = 0 with "com" alone returns
    the image unchanged."""
    n, _, h, w = images.shape
    dev = images.device
    if max(thresholds) <= 0.0 and tuple(filters) == ("com",):
        return images, torch.zeros(n, 1, h, w // 2 + 1, dtype=torch.bool, device=dev)
    spec = torch.fft.rfft2(images.float())  # [N, 3, H, W//2+1]: each column but the first and
    # (for even W) the last stands for a conjugate pair, whose energy counts twice
    power = (spec.abs().pow(2).sum(1) * rfft_pair_weights(w, dev)).flatten(1)  # [N, F]
    power[:, 0] = float("inf")  # DC: never removed
    ascending, order = power.sort(1)
    finite = ascending[:, :-1]
    share = finite.cumsum(1) / finite.sum(1, keepdim=True).clamp_min(1e-12)
    table = _device_table(tuple(thresholds), dev)
    t = table[torch.randint(len(thresholds), (n,), generator=generator, device=dev)]
    drop_sorted = torch.cat([share <= t[:, None], torch.zeros(n, 1, dtype=torch.bool, device=dev)], 1)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted).reshape(n, 1, h, w // 2 + 1)
    # The first column (and the last, at even W) holds conjugate pairs of its own (rows k and -k, of
    # equal energy): remove a pair only whole, so the removed part stays a real image.
    mirror = (-torch.arange(h, device=dev)) % h
    for col in (0, w // 2) if w % 2 == 0 else (0,):
        drop[..., col] &= drop[..., mirror, col]
    if "rcom" in filters:
        reverse = ~drop  # every component com keeps, but the mean: pairs stay whole, as their complements
        reverse[..., 0, 0] = False
        if len(filters) == 1:
            drop = reverse
        else:
            pick = torch.randint(len(filters), (n,), generator=generator, device=dev)
            is_rcom = _device_table(tuple(float(f == "rcom") for f in filters), dev)[pick] > 0
            drop = torch.where(is_rcom[:, None, None, None], reverse, drop)
    removed = torch.fft.irfft2(spec * drop, s=(h, w))
    return (images.float() - removed).to(images.dtype), drop


def frequency_filter(
    images: torch.Tensor, thresholds: tuple[float, ...], generator: torch.Generator, filters: tuple[str, ...] = ("com",)
) -> torch.Tensor:
    """FOLK's view of each image (`frequency_view` without the removed components)."""
    return frequency_view(images, thresholds, generator, filters)[0]


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """EMA momentum: `base` at step 0, cosine to 1 at the end (BYOL, DINO): a pure function of the step."""
    t = min(step / max(1, total_steps - 1), 1.0)
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * t))
