"""The training step loop (MAE's engine_pretrain, one screen): schedule, masking, AMP, accumulation.

`train_steps` yields one `StepOutput` per optimizer step; what to do with it (metrics, pictures,
checkpoints) is the caller's business (c2fmae/train.py), so the loop holds nothing but the step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .masking import NAMES, Masking
from .methods import MethodSettings, StepInputs, bf16_autocast, loss_scorer, step_inputs, teacher_momentum


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a pure function of the step: linear warmup to `peak_lr`, half-cosine to `min_lr`."""

    total_steps: int  # optimizer steps of the whole run
    warmup_steps: int  # linear warmup steps
    peak_lr: float  # blr x global batch / 256 (MAE)
    min_lr: float = 0.0  # floor of the cosine
    steps_per_epoch: int = 1  # an epoch is a fixed number of steps (data order is per epoch)

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)

    def progress(self, step: int) -> float:
        """Training progress in [0, 1] (the curriculum's clock)."""
        return step / max(1, self.total_steps - 1)


@dataclass(frozen=True)
class Loop:
    """Everything `train_steps` needs besides the model, the optimizer and the data."""

    schedule: Schedule
    masking: Masking = Masking()
    mask_seed: int = 0  # masks are a pure function of (mask_seed, step, micro-batch): give each rank its own
    accum_steps: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max gradient norm (0: off)
    bf16: bool = True  # bf16 autocast on CUDA
    method: MethodSettings = MethodSettings()  # what the encoder sees besides the masks (methods.py)
    compile: bool = False  # also compile SMIR's estimating passes (the model is compiled by its caller)


@dataclass
class StepOutput:
    """What one optimizer step produced, still on the device (reading it is the caller's sync).
    `batch`, `mask`, `preds` and `inputs` are its last micro-batch's, kept only on the steps the
    loop's `keep` selects (pictures): elsewhere None, so that nothing of a step outlives it on
    the device (at batch 256 the semantic logits alone are ~240 MB)."""

    step: int
    lr: float
    losses: dict[str, torch.Tensor]  # every loss term (scalars), averaged over the micro-batches
    mix: torch.Tensor  # [4] images masked by each strategy (masking.NAMES order)
    images: int  # images in the step (all micro-batches, this process; a FOLK image counts once, not per view)
    batch: dict[str, Any] | None
    mask: torch.Tensor | None  # [N, L], 1 = where the loss counted (removed, or degraded by SRMAE)
    preds: dict[str, torch.Tensor] | None
    model: torch.nn.Module  # the module that stepped (for after-step hooks: EMA teachers, probes)
    inputs: StepInputs | None = None  # its last micro-batch's method inputs (what the encoder saw, for pictures)


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup to `peak`, then half-cosine to `floor`: a pure function of the step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers, in either order."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, tokens and other 1-D parameters (MAE)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "mask_token", "modality")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, weight_decay: float, lr: float) -> torch.optim.Optimizer:
    """AdamW (MAE's betas), fused into one kernel per step (CUDA and CPU): the step count stays a
    device tensor, so the step reads nothing back (the unfused CPU path reads it with .item())."""
    fused = True
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95), fused=fused)


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[dict[str, Any]],
    steps: range,
    loop: Loop,
    after_step: Callable[[StepOutput], None] | None = None,
    keep: Callable[[int], bool] | None = None,
) -> Iterator[StepOutput]:
    """Run the optimizer steps `steps`, each over `loop.accum_steps` prepared micro-batches (data.prepare),
    and yield each step's output. Nothing here reads a device value: no host sync. `keep(step)`:
    whether the step's output keeps its last batch, mask, predictions and inputs (default: every
    step; the trainer keeps them on picture steps only). `after_step` sees them on every step."""
    device = next(model.parameters()).device
    ddp = hasattr(model, "no_sync")
    plain = unwrap(model)
    amp = bf16_autocast(device, loop.bf16)
    scorer = loss_scorer(loop.compile)
    views = loop.method.views
    generator = torch.Generator(device)
    for step in steps:
        lr = loop.schedule.lr(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        wanted = keep is None or keep(step)  # the step's output keeps its batch, mask, predictions, inputs
        keeping = wanted or after_step is not None
        progress = loop.schedule.progress(step)
        sums: dict[str, torch.Tensor] = {}
        mix = torch.zeros(len(NAMES), dtype=torch.long, device=device)
        images = 0
        kept: tuple = (None, None, None, None)
        for micro in range(loop.accum_steps):
            batch = next(batches)
            generator.manual_seed(hash((loop.mask_seed, step, micro)) & (2**63 - 1))
            with amp:
                inputs = step_inputs(loop.method, loop.masking, plain, batch, progress, generator, scorer)
            mix += (inputs.picks.unsqueeze(1) == torch.arange(len(NAMES), device=device)).sum(0)  # bincount would sync
            reduce_grads = nullcontext() if not ddp or micro == loop.accum_steps - 1 else model.no_sync()
            with reduce_grads, amp:
                losses, preds = model(
                    batch["image"], inputs.mask, batch["sem_cells"], batch["inst_cells"], **inputs.model_kwargs()
                )
                (losses["total"] / loop.accum_steps).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / loop.accum_steps
            images += batch["image"].shape[0] // views
            if keeping and micro == loop.accum_steps - 1:
                mask = inputs.mask if inputs.loss_on is None else inputs.loss_on
                kept = (batch, mask, {k: v.detach() for k, v in preds.items()}, inputs)
            del batch, inputs, losses, preds  # nothing of this micro-batch lives through the next forward
        if loop.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if getattr(plain, "teacher", None) is not None:  # FOLK: every rank holds the same student, so the same teacher
            plain.teacher.update(plain, teacher_momentum(step, loop.schedule.total_steps, loop.method.folk_momentum))
        out = StepOutput(step, lr, sums, mix, images, kept[0], kept[1], kept[2], model, kept[3])
        if after_step is not None:
            after_step(out)
            if not wanted:
                out = dataclasses.replace(out, batch=None, mask=None, preds=None, inputs=None)
        del kept
        yield out
