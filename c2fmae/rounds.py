"""SMIR's iterative form (`--masking selective --selective-rounds R`): the run is split into R
rounds of equal steps, round r training on data partition r only. Round 0 masks at random; before
round r >= 1 the model as round r-1 left it scores partition r (each patch's loss averaged over a
few random maskings of the whole image), and round r masks each crop's highest-loss patches,
looked up by sample key and mapped through the crop geometry.

The scores of round r are saved as OUTPUT/smir_round{r}.pt the moment they exist, so a run that
resumes inside a round masks with the same scores it would have used had it not stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shards import format as fmt

from .methods import estimate_patch_loss, loss_in_crop, round_start


def segments(start: int, end: int, total: int, rounds: int) -> list[tuple[int, int, int | None]]:
    """This process's steps [start, end) as (first, stop, round) pieces: one piece (round None)
    without rounds, else one per round they touch."""
    if not rounds:
        return [(start, end, None)]
    pieces = []
    for r in range(rounds):
        a, b = max(start, round_start(r, total, rounds)), min(end, round_start(r + 1, total, rounds))
        if a < b:
            pieces.append((a, b, r))
    return pieces


@dataclass
class Scores:
    """Per-patch losses of one round's partition, on the whole image's g x g patch grid."""

    keys: list[str]
    loss: torch.Tensor  # [K, g, g] float16

    def __post_init__(self):
        self.row = {k: i for i, k in enumerate(self.keys)}

    def for_batch(self, keys: list[str], crop: torch.Tensor, grid: int, device) -> torch.Tensor:
        """[N, grid*grid] losses of a batch's crops; a sample the round did not score gets equal
        losses (and so a random mask: selective_mask's tie-break)."""
        g = self.loss.shape[-1]
        blank = torch.zeros(1, g, g, dtype=self.loss.dtype)
        rows = torch.cat([self.loss[self.row[k]][None] if k in self.row else blank for k in keys])
        return loss_in_crop(rows.to(device).float(), crop, grid)


def cache_path(out: Path, r: int) -> Path:
    return out / f"smir_round{r:03d}.pt"


@torch.no_grad()
def score_partition(model, batches: Iterator[dict[str, Any]], passes: int, ratio: float, generator) -> Scores:
    """Score prepared whole-image batches (data.prepare) with `model`: -> Scores."""
    keys, losses = [], []
    g = model.grid
    for batch in batches:
        loss = estimate_patch_loss(model, batch, passes, ratio, generator)
        keys += batch["key"]
        losses.append(loss.reshape(-1, g, g).half().cpu())
    return Scores(keys, torch.cat(losses) if losses else torch.zeros(0, g, g, dtype=torch.float16))


def round_scores(out: Path, r: int, score, rank: int, world: int) -> Scores:
    """Round r's scores: read from OUTPUT when an earlier process saved them, else `score()` this
    rank's share, gather every rank's, and save (rank 0, atomically)."""
    path = cache_path(out, r)
    if not path.exists():
        mine = score()
        parts = [(mine.keys, mine.loss)]
        if world > 1:
            import torch.distributed as dist

            parts = [None] * world
            dist.all_gather_object(parts, (mine.keys, mine.loss))
        merged = Scores([k for keys, _ in parts for k in keys], torch.cat([loss for _, loss in parts]))
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(fmt.temp_name(path.name, os.getpid()))
            torch.save({"keys": merged.keys, "loss": merged.loss}, tmp)
            os.replace(tmp, path)
        if world > 1:
            dist.barrier()
        return merged
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return Scores(list(saved["keys"]), saved["loss"])
    except Exception as e:  # a damaged file: say which, never a traceback
        from shards.errors import UsageError

        raise UsageError(f"{path}: unreadable SMIR scores ({type(e).__name__}); delete it to score again") from None


def with_scores(batches: Iterator[dict[str, Any]], scores: Scores, grid: int) -> Iterator[dict[str, Any]]:
    """Add each prepared batch's `patch_loss` [N, L] from the round's scores."""
    for batch in batches:
        batch["patch_loss"] = scores.for_batch(batch["key"], batch["crop"], grid, batch["image"].device)
        yield batch
