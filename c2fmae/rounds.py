"""SMIR's iterative form (`--masking selective --selective-rounds R`): the run is split into R
rounds of equal steps, round r training on data partition r only. Round 0 masks at random; before
round r >= 1 the model as round r-1 left it scores partition r (each patch's loss averaged over a
few random maskings of the whole image), and round r masks each crop's highest-loss patches,
mapped through the crop geometry. The lookup costs the step nothing on the host: the round's
scores are one table on the device, the DataLoader workers put each sample's `row` in it into the
batch, and the step gathers the rows with `index_select`.

Scoring runs at the GPU's pace: DataLoader workers decode the partition's images, the passes run
under bf16 autocast on CUDA (compiled with `--compile`), each rank scores its share of the shards,
and the scores stay on the device until one copy at the end.

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

from .methods import bf16_autocast, estimate_patch_loss, loss_in_crop, round_start


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
    loss: torch.Tensor  # [K, g, g] float16, on the host

    def rows(self) -> dict[str, int]:
        """Each scored key's row in `table` (for the DataLoader workers)."""
        return {k: i for i, k in enumerate(self.keys)}

    @property
    def blank_row(self) -> int:
        """The row of a sample the round did not score: equal losses, so a random mask
        (selective_mask's tie-break)."""
        return len(self.keys)

    def table(self, device) -> torch.Tensor:
        """[K + 1, g, g] float16 on `device`: the scores, then the blank row (one copy per round)."""
        blank = torch.zeros(1, *self.loss.shape[1:], dtype=self.loss.dtype)
        return torch.cat([self.loss, blank]).to(device)


def cache_path(out: Path, r: int) -> Path:
    return out / f"smir_round{r:03d}.pt"


@torch.no_grad()
def score_partition(
    model, batches: Iterator[dict[str, Any]], passes: int, ratio: float, generator, scorer=None, bf16: bool = True
) -> Scores:
    """Score prepared whole-image batches (data.prepare) with `model` (bf16 autocast on CUDA;
    `scorer`: methods.patch_losses or a compiled copy): -> Scores. The losses stay on the device
    until one copy to the host at the end."""
    keys, losses = [], []
    g = model.grid
    device = next(model.parameters()).device
    amp = bf16_autocast(device, bf16)
    for batch in batches:
        with amp:
            loss = estimate_patch_loss(model, batch, passes, ratio, generator, scorer)
        keys += batch["key"]
        losses.append(loss.reshape(-1, g, g).half())
    loss = torch.cat(losses).cpu() if losses else torch.zeros(0, g, g, dtype=torch.float16)
    return Scores(keys, loss)


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


def with_scores(batches: Iterator[dict[str, Any]], table: torch.Tensor, grid: int) -> Iterator[dict[str, Any]]:
    """Add each prepared batch's `patch_loss` [N, L]: its rows of the round's table (`Scores.table`,
    by the `row` the workers put in the batch) mapped through the crops. On the device, no sync."""
    for batch in batches:
        batch["patch_loss"] = loss_in_crop(table.index_select(0, batch.pop("row")).float(), batch["crop"], grid)
        yield batch
