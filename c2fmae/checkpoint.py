"""Checkpoints: written atomically, read with `weights_only=True`, and checked before anything trusts them.

A checkpoint is a dict: `model` and `optimizer` state dicts, `step` (optimizer steps done),
`config` (the TrainConfig as JSON), `model_config` (the ModelConfig as JSON, every size resolved)
and `run` (what was derived from them and the machine: schedule, world size, DataLoader workers).
A file that is not one (corrupt, truncated, someone else's) is refused with one line naming it:
`DataError` when the file is unreadable or not a c2f checkpoint, `UsageError` when it is a
c2f checkpoint that does not fit this run (another label space, another model).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from shards import format as fmt
from shards.errors import DataError, UsageError, first_line

CHECKPOINT = "checkpoint.pt"
REQUIRED = {"model": dict, "optimizer": dict, "step": int, "config": dict, "model_config": dict}


def numbered(step: int) -> str:
    return f"checkpoint-{step:07d}.pt"


def save_checkpoint(out_dir: Path, state: dict[str, Any], keep: int = 1) -> Path:
    """Write `checkpoint-{step}.pt`, point `checkpoint.pt` at it (a hard link: no second copy on
    disk), and remove numbered checkpoints older than the newest `keep` (0: keep all). Every name
    appears atomically: a crash never leaves a half-written checkpoint under a name."""
    import shutil

    import torch

    path = out_dir / numbered(int(state["step"]))
    tmp = path.with_name(fmt.temp_name(path.name, os.getpid()))
    torch.save(state, tmp)
    os.replace(tmp, path)
    latest = out_dir / CHECKPOINT
    tmp = latest.with_name(fmt.temp_name(latest.name, os.getpid()))
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(path, tmp)
    os.replace(tmp, latest)
    if keep > 0:
        for old in sorted(out_dir.glob("checkpoint-*.pt"))[:-keep]:
            old.unlink()
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's structure; raises UsageError / DataError with one line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises a dozen types for a bad file; all mean the same
        raise DataError(f"{path} is not a readable checkpoint ({_why(e)})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path} is not a c2f pretrain checkpoint (it holds a {type(state).__name__}, not a dict)")
    missing = [k for k, t in REQUIRED.items() if not isinstance(state.get(k), t)]
    if missing:
        raise DataError(f"{path} is not a c2f pretrain checkpoint (no {', '.join(missing)})")
    return state


def _why(e: Exception) -> str:
    """torch.load's reason in a few words (its weights-only errors are paragraphs of advice)."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        detail = next(line for line in [*text.split("WeightsUnpickler error:", 1)[1].splitlines(), ""] if line.strip())
        detail = detail.split(" was not an allowed global")[0].strip()
        if detail.startswith("Unsupported global"):
            return f"it holds Python objects a safe weights-only load refuses: {detail.split()[-1]}"
        return f"corrupt or not a torch file: {detail or 'unpickling failed'}"
    return f"corrupt or truncated: {first_line(e, 160)}"


def config_from(cls: type, saved: dict[str, Any], path: Path, what: str):
    """Rebuild a config dataclass from a checkpoint, refusing fields this version does not know.
    A field the checkpoint predates takes the value its absence meant (`cls.ABSENT`), not today's
    default: an older run resumes as it was configured."""
    saved = {**getattr(cls, "ABSENT", {}), **saved}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - names)
    if unknown:
        raise DataError(f"{path}: its {what} has fields this version does not know: {', '.join(unknown)}")
    try:
        return cls.from_json(saved) if hasattr(cls, "from_json") else cls(**saved)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: its {what} does not load: {e}") from None


def check_fits(path: Path, saved_model_config, model_config) -> None:
    """A checkpoint's model must be the one this run builds (same label space, sizes, stages)."""
    a, b = dataclasses.asdict(saved_model_config), dataclasses.asdict(model_config)
    diff = [f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]
    if diff:
        raise UsageError(
            f"{path} was trained with another model or label space than these shards give "
            f"(checkpoint vs now: {'; '.join(diff)})"
        )


def load_weights(path: Path, module, state_dict: dict[str, Any], what: str) -> None:
    """`module.load_state_dict`, with a mismatch said in one line."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
        raise DataError(f"{path}: its {what} do not match the model it describes: {detail[:200]}") from None
