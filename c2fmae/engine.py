"""The training step loop (MAE's engine_pretrain, one screen): schedule, masking, AMP, accumulation.

`train_steps` yields one `StepOutput` per optimizer step; what to do with it (metrics, pictures,
checkpoints) is the caller's business (c2fmae/train.py), so the loop holds nothing but the step.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .masking import STRATEGIES, Curriculum, MaskInputs, curriculum_mask


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
    masking: str = "random"  # curriculum|random|semantic|instance
    mask_ratio: float = 0.75
    curriculum: Curriculum = field(default_factory=Curriculum)
    ignore_index: int = 255  # semantic ignore value (never a masking region)
    accum_steps: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max gradient norm (0: off)
    bf16: bool = True  # bf16 autocast on CUDA


@dataclass
class StepOutput:
    """What one optimizer step produced; `batch`, `mask` and `preds` are its last micro-batch's."""

    step: int
    lr: float
    losses: dict[str, float]  # every loss term, averaged over the micro-batches
    images: int  # images in the step (all micro-batches, this process)
    seconds: float
    mix: dict[str, int]  # images per masking strategy
    batch: dict[str, torch.Tensor]
    mask: torch.Tensor  # [N, L], 1 = removed
    preds: dict[str, torch.Tensor]


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup to `peak`, then half-cosine to `floor`: a pure function of the step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, tokens and other 1-D parameters (MAE)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "mask_token", "modality")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_mask(
    batch: dict[str, torch.Tensor], loop: Loop, progress: float, generator: torch.Generator
) -> tuple[torch.Tensor, Counter]:
    """mask [N, L] (1 = removed) and how many images each strategy masked."""
    n, length = batch["sem_patch"].shape
    inputs = MaskInputs(length, n, batch["sem_patch"], batch["inst_patch"], loop.ignore_index)
    if loop.masking == "curriculum":
        mask, names = curriculum_mask(inputs, loop.mask_ratio, generator, progress, loop.curriculum)
        return mask, Counter(names)
    return STRATEGIES[loop.masking](inputs, loop.mask_ratio, generator), Counter({loop.masking: n})


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[dict[str, torch.Tensor]],
    steps: range,
    loop: Loop,
    generator: torch.Generator,
    after_step: Callable[[StepOutput], None] | None = None,
) -> Iterator[StepOutput]:
    """Run the optimizer steps `steps`, each over `loop.accum_steps` micro-batches; yield each step's output."""
    device = next(model.parameters()).device
    ddp = hasattr(model, "no_sync")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and loop.bf16 else nullcontext()
    for step in steps:
        t0 = time.perf_counter()
        lr = loop.schedule.lr(step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        mix: Counter = Counter()
        sums: dict[str, float] = {}
        for micro in range(loop.accum_steps):
            batch = next(batches)
            mask, used = make_mask(batch, loop, loop.schedule.progress(step), generator)
            mix += used
            b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            sync = nullcontext() if not ddp or micro == loop.accum_steps - 1 else model.no_sync()
            with sync, amp:
                losses, preds = model(b["image"], mask.to(device), b["sem_cells"], b["inst_cells"])
                (losses["total"] / loop.accum_steps).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / loop.accum_steps
        if loop.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images = batch["image"].shape[0] * loop.accum_steps
        out = StepOutput(step, lr, sums, images, time.perf_counter() - t0, dict(mix), b, mask, preds)
        if after_step is not None:
            after_step(out)
        yield out
