"""The interface every labeling backend implements, its errors, and the device helper."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from shards.errors import UsageError
from shards.pack import Labels


class LabelerLoadError(UsageError):
    """A labeler that cannot be built (a missing checkpoint, an unknown model id or preset); the
    message says what to pass instead. Retrying cannot fix it, so the job stops with exit 2."""


@runtime_checkable
class Labeler(Protocol):
    """Labels a batch of RGB images at their own resolutions.

    `label` returns one entry per input, in order: `Labels`, or the exception that image raised
    (a labeler never drops an image silently; the pipeline quarantines the failures).
    `submit` starts a batch and `collect` waits for it: a remote labeler returns at once from
    `submit`, so the caller decodes the next batch meanwhile; a local one labels in `submit`.
    """

    # False for a labeler that reads only the images' sizes (`empty`): the shard task then checks each
    # JPEG at 1/8 scale instead of decoding it into an array (shards.image.check_scaled).
    needs_pixels: bool

    def label(self, images: list[np.ndarray]) -> list[Labels | Exception]:  # images: [H, W, 3] uint8
        ...

    def submit(self, images: list[np.ndarray]) -> Any: ...

    def collect(self, handle: Any) -> list[Labels | Exception]: ...

    def label_space(self) -> dict[str, Any]:
        """{"semantic": {id: name}, "instance": "class-agnostic" | {id: name}} for the manifest."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model ids and settings for the manifest; `"random_labels": True` for test presets."""
        ...


class LocalLabeler:
    """Base of in-process labelers: `submit` labels at once and `collect` hands the result back."""

    needs_pixels = True

    def label(self, images: list[np.ndarray]) -> list[Labels | Exception]:
        raise NotImplementedError

    def submit(self, images: list[np.ndarray]) -> list[Labels | Exception]:
        return self.label(images)

    def collect(self, handle: list[Labels | Exception]) -> list[Labels | Exception]:
        return handle

    def timings(self) -> dict[str, float]:
        """Cumulative per-stage time ({"images": n, "<stage>_ms": ...}); empty for labelers without a
        model. Model presets report preprocess, forward, postprocess and host (labeler/timing.py)."""
        return {}


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def gpu_shaped(code_path: str, device) -> bool:
    """`--code-path` -> whether pre/post-processing takes its GPU layout (`auto`: on CUDA devices)."""
    if code_path not in ("auto", "gpu", "cpu"):
        raise LabelerLoadError(f"--code-path must be auto, gpu or cpu, not {code_path!r}")
    if code_path == "auto":
        return str(device).startswith("cuda")
    return code_path == "gpu"
