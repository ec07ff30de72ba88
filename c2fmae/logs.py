"""The run's record: metrics.jsonl (one line per step), TensorBoard (when installed), console lines
and reconstruction pictures, written by rank 0.

Step outputs stay on the device until a flush (every `log_every` steps, before each checkpoint,
and at the end): one device -> host copy per flush instead of one sync per step. Under DDP
every rank flushes at the same steps and the losses are averaged over ranks (the masking mix is
summed), so the logged loss is the global batch's, as MAE logs it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from shards import format as fmt

from .masking import NAMES

METRICS = "metrics.jsonl"


class RunLog:
    def __init__(self, out: Path, rank: int, world: int, start: int, log_every: int, vis_every: int, curriculum):
        self.out, self.rank, self.world = out, rank, world
        self.log_every, self.vis_every, self.curriculum = log_every, vis_every, curriculum
        self.pending: list[tuple[int, float, dict[str, torch.Tensor], torch.Tensor, float]] = []
        self.images, self.first = 0, True  # the run's first step is flushed at once: a quick sign of life
        self.clock = time.perf_counter()
        self.metrics = self.tb = None
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            keep_records_before(out / METRICS, start)
            self.metrics = open(out / METRICS, "a")  # noqa: SIM115 - closed in close()
            self.tb = _tensorboard(out)

    def step(self, out, progress: float, model_cfg, last: bool) -> None:
        """Record one StepOutput (kept on the device); flush at log intervals; picture at vis intervals."""
        self.pending.append((out.step, out.lr, out.losses, out.mix, progress))
        self.images += out.images
        if (out.step + 1) % self.log_every == 0 or last or self.first:
            self.flush()
        if self.pictures_at(out.step, last):
            from .methods import encoder_view
            from .visualize import save_reconstruction

            path = self.out / f"recon_{out.step:07d}.png"
            seen = encoder_view(out.batch["image"], out.inputs, model_cfg.lowres_factor) if out.inputs else None
            save_reconstruction(path, out.batch, out.mask, out.preds, model_cfg, seen=seen)

    def pictures_at(self, step: int, last: bool) -> bool:
        """Whether this process writes a picture of `step` (the steps whose outputs the loop keeps)."""
        return self.rank == 0 and bool(self.vis_every) and (step % self.vis_every == 0 or last)

    def flush(self, console: bool = True) -> None:
        """Write the pending steps (a sync; under DDP a collective: every rank calls it at the same
        step), and print the last of them unless `console` is off (a flush before a checkpoint)."""
        if not self.pending:
            return
        keys = sorted(self.pending[0][2])
        rows = torch.stack(
            [torch.cat([torch.stack([p[2][k] for k in keys]).float(), p[3].float()]) for p in self.pending]
        )
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(rows)
            rows[:, : len(keys)] /= self.world
        values = rows.tolist()  # the one device -> host sync of the interval
        now = time.perf_counter()
        rate = self.images / max(now - self.clock, 1e-9)  # this process's images/s over the interval
        if self.rank == 0:
            for (step, lr, _, _, progress), row in zip(self.pending, values, strict=True):
                losses = dict(zip(keys, row[: len(keys)], strict=True))
                self.write(step, lr, losses, row[len(keys) :], rate, progress, console and step == self.pending[-1][0])
        self.pending, self.images, self.clock, self.first = [], 0, now, False

    def write(self, step, lr: float, losses: dict[str, float], mix: list[float], rate, progress, console: bool):
        probs = self.curriculum.probs(progress) if self.curriculum is not None else None
        record: dict[str, Any] = {
            "step": step,
            "lr": lr,
            **{f"loss_{k}": v for k, v in losses.items()},
            "images_per_s": rate,
            "masking": {name: int(n) for name, n in zip(NAMES, mix, strict=True) if n},
            "curriculum": dict(zip(NAMES, probs, strict=False)) if probs else None,  # 3 or 4 phases
        }
        assert self.metrics is not None
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, float):
                    self.tb.add_scalar(k, v, step)
        if console:
            terms = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
            print(
                f"step {step:6d}  lr {lr:.2e}  {terms}  {rate * self.world:.1f} img/s  mix {record['masking']}",
                flush=True,
            )

    def close(self) -> None:
        self.flush()
        if self.metrics is not None:
            self.metrics.close()
        if self.tb is not None:
            self.tb.close()


def keep_records_before(path: Path, step: int) -> None:
    """Drop the records of steps >= `step` (and any torn last line): a resumed run replays the steps
    after its checkpoint, and each step must appear once in metrics.jsonl."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(fmt.temp_name(path.name, os.getpid()))
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))
