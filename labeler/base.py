"""The interface every labeling backend implements, its errors, and the device helper."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shards.errors import UsageError
from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels

# One batch at a time enters this process's device (its upload and launches): a pipelined actor
# holds the lock around `submit`, and so does a labeler that submits again from `collect`.
SUBMIT_LOCK = threading.RLock()


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
    A labeling actor pipelines batches (pipelines/pool.py): it calls `submit` holding
    `SUBMIT_LOCK`, while `collect` of earlier batches runs in other threads; so `submit` may keep
    state (the device, its models), and `collect` must be safe beside a `submit` (and take the
    lock to submit again, as a per-image retry does).
    An error that leaves the device unusable (`is_device_fault`) is raised, never returned as an
    image's result: only a new process can recover from it.
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


# Words of the errors after which a CUDA (or ROCm) context is unusable: a device-side assert, an
# illegal access, an ECC error or a failed launch is sticky, so every later call in the process
# fails too. Out-of-memory is not among them: the next batch may fit.
DEVICE_FAULT_WORDS = (
    "CUDA error",
    "HIP error",
    "device-side assert",
    "illegal memory access",
    "illegal instruction",
    "misaligned address",
    "ECC error",
    "unspecified launch failure",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "CUDA driver error",
)


def is_device_fault(e: BaseException) -> bool:
    """Whether `e` (or an exception it was raised from) leaves the device unusable for this process:
    `torch.AcceleratorError`, or a message naming a CUDA/HIP error (older torch raises RuntimeError),
    except out-of-memory."""
    import sys

    torch = sys.modules.get("torch")  # no torch loaded: no device error possible
    accelerator = getattr(torch, "AcceleratorError", None) if torch is not None else None
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        if "out of memory" not in text.lower():
            if accelerator is not None and isinstance(e, accelerator):
                return True
            if any(word in text for word in DEVICE_FAULT_WORDS):
                return True
        e = e.__cause__ or e.__context__
    return False


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
