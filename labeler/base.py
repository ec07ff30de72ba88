"""The interface every labeling backend implements, its errors, and the device helper."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shards.errors import UsageError
from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels


class LabelerLoadError(UsageError):
    """A labeler that cannot be built (a missing checkpoint, an unknown model id or preset); the
    message says what to pass instead. Retrying cannot fix it, so the job stops with exit 2."""


@dataclass(frozen=True)
class ImageContext:
    """What the plan knows of one image besides its pixels, passed with it to `label`/`submit`:
    the text-prompted presets build its prompt from its class (or its key, with `--prompts`); the
    other labelers ignore it. Small and picklable: it travels with the image to the labeling actor,
    so a shard task never needs a label table."""

    key: str
    class_index: int | None = None  # the plan's class index (sorted synsets of the input)
    synset: str | None = None  # the image's class folder (a WordNet id in the ImageNet layout)


@runtime_checkable
class Labeler(Protocol):
    """Labels a batch of RGB images at their own resolutions.

    `label` returns one entry per input, in order: `Labels`, or the exception that image raised
    (a labeler never drops an image silently; the pipeline quarantines the failures).
    `submit` starts a batch and `collect` waits for it: a remote labeler returns at once from
    `submit`, so the caller decodes the next batch meanwhile; a local one labels in `submit`.
    `contexts` (optional, one `ImageContext` per image) is what the plan knows of each image; only
    the text-prompted presets read it.
    """

    # False for a labeler that reads only the images' sizes (`empty`): the shard task then checks each
    # JPEG at 1/8 scale instead of decoding it into an array (shards.image.check_scaled).
    needs_pixels: bool

    def label(  # images: [H, W, 3] uint8
        self, images: list[np.ndarray], contexts: list[ImageContext] | None = None
    ) -> list[Labels | Exception]: ...

    def submit(self, images: list[np.ndarray], contexts: list[ImageContext] | None = None) -> Any: ...

    def collect(self, handle: Any) -> list[Labels | Exception]: ...

    def label_space(self) -> LabelSpace:
        """What the maps' values mean, for the manifest."""
        ...

    def describe(self) -> LabelerInfo:
        """Preset, models and settings for the manifest; `random_labels` for test presets."""
        ...


class LocalLabeler:
    """Base of in-process labelers: `submit` labels at once and `collect` hands the result back."""

    needs_pixels = True

    def label(self, images: list[np.ndarray], contexts: list[ImageContext] | None = None) -> list[Labels | Exception]:
        raise NotImplementedError

    def submit(self, images: list[np.ndarray], contexts: list[ImageContext] | None = None) -> list[Labels | Exception]:
        return self.label(images, contexts)

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
