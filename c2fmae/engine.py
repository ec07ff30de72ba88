"""The training step and loop (MAE's engine_pretrain, one screen): schedule, masking, AMP, accumulation."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch

from .masking import STRATEGIES, Curriculum, MaskInputs, curriculum_mask


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
    batch: dict[str, torch.Tensor],
    strategy: str,
    ratio: float,
    progress: float,
    curriculum: Curriculum,
    generator: torch.Generator,
    ignore_index: int,
) -> tuple[torch.Tensor, Counter]:
    """mask [N, L] (1 = removed) and how many images each strategy masked."""
    n, length = batch["sem_patch"].shape
    inputs = MaskInputs(length, n, batch["sem_patch"], batch["inst_patch"], ignore_index)
    if strategy == "curriculum":
        mask, names = curriculum_mask(inputs, ratio, generator, progress, curriculum)
        return mask, Counter(names)
    return STRATEGIES[strategy](inputs, ratio, generator), Counter({strategy: n})


def train_steps(
    model: torch.nn.Module,
    model_cfg,  # ModelConfig
    optimizer: torch.optim.Optimizer,
    batches: Iterator[dict[str, torch.Tensor]],
    start: int,
    stop: int,
    cfg,  # TrainConfig
    peak_lr: float,
    total_steps: int,
    generator: torch.Generator,
    device: torch.device,
    on_step: Callable[[int, dict[str, Any], dict[str, torch.Tensor], torch.Tensor, dict], None],
) -> None:
    """Run optimizer steps [start, stop). Each step accumulates `cfg.accum_steps` micro-batches."""
    ddp = hasattr(model, "no_sync")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    curriculum = Curriculum(tuple(float(x) for x in cfg.curriculum_centers.split(",")), cfg.curriculum_width)
    for step in range(start, stop):
        t0 = time.perf_counter()
        lr = lr_at(step, total_steps, cfg.warmup_steps, peak_lr, cfg.min_lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        progress = step / max(1, total_steps - 1)
        mix: Counter = Counter()
        sums: dict[str, float] = {}
        for micro in range(cfg.accum_steps):
            batch = next(batches)
            mask, used = make_mask(
                batch, cfg.masking, cfg.mask_ratio, progress, curriculum, generator, model_cfg.ignore_index
            )
            mix += used
            b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            sync = nullcontext() if not ddp or micro == cfg.accum_steps - 1 else model.no_sync()
            with sync, amp:
                losses, preds = model(b["image"], mask.to(device), b["sem_cells"], b["inst_cells"])
                (losses["total"] / cfg.accum_steps).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.accum_steps
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n = batch["image"].shape[0] * cfg.accum_steps
        stats = {
            "step": step,
            "lr": lr,
            **{f"loss_{k}": v for k, v in sums.items()},
            "images_per_s": n / (time.perf_counter() - t0),
            "masking": dict(mix),
            "curriculum": dict(zip(("semantic", "instance", "random"), curriculum.probs(progress), strict=True))
            if cfg.masking == "curriculum"
            else None,
        }
        on_step(step, stats, b, mask, preds)
