"""Host <-> device copies of a batch: images go up through pinned memory in one copy; the finished maps
and records come back in one copy, started without waiting so the host can prepare the next batch.

On a CPU device nothing is copied: tensors and arrays share memory, unless the GPU layout is asked for
(`one_copy`, `--code-path gpu`): then a CPU makes the same calls a GPU does (one staging buffer up, one
byte buffer down), so that shards/opcount.py sees the batch's transfers as CUDA would.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

_NUMPY = {
    torch.uint8: np.uint8,
    torch.uint16: np.uint16,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bool: np.bool_,
}


def upload(images: list[np.ndarray], device: torch.device, one_copy: bool | None = None) -> list[torch.Tensor]:
    """[H, W, 3] uint8 arrays -> the same as tensors on `device`.

    CUDA (or `one_copy`): all images are staged in one buffer (pinned on CUDA) and copied with one
    non-blocking transfer (torch's caching host allocator keeps the buffer alive until the copy has run)."""
    cuda = device.type == "cuda"
    if not (cuda or one_copy):
        with warnings.catch_warnings():  # decoded images may be read-only; nothing here writes to them
            warnings.simplefilter("ignore", UserWarning)
            return [torch.from_numpy(np.ascontiguousarray(im)) for im in images]
    sizes = [im.size for im in images]
    staging = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=cuda)
    flat = staging.numpy()
    offset = 0
    for im, n in zip(images, sizes, strict=True):
        flat[offset : offset + n] = np.ascontiguousarray(im).reshape(-1)
        offset += n
    on_device = staging.to(device, non_blocking=True)
    out, offset = [], 0
    for im, n in zip(images, sizes, strict=True):
        out.append(on_device[offset : offset + n].view(im.shape))
        offset += n
    return out


def to_device(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host numbers (a list, nested lists, or a CPU tensor) -> a tensor on `device` without making
    the host wait: on CUDA staged in pinned memory and copied non-blocking (`torch.tensor(values,
    device=...)` copies from pageable memory and synchronises)."""
    host = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


class Download:
    """A non-blocking device -> host copy of a list of tensors (any dtypes and shapes); `result()`
    waits for it and returns numpy arrays. Host arrays in the list pass through untouched. CUDA tensors
    (or, with `one_copy`, CPU tensors too) travel in one byte buffer: one copy, one wait."""

    def __init__(self, items: list[torch.Tensor | np.ndarray], one_copy: bool | None = None):
        self.items = items
        tensors = [t for t in items if isinstance(t, torch.Tensor) and t.device.type == "cuda"]
        if not tensors and one_copy:  # a CPU run of the GPU layout: the same calls
            tensors = [t for t in items if isinstance(t, torch.Tensor)]
        self._copied = {id(t) for t in tensors}  # others (host tensors beside CUDA ones) pass as views
        self._event = self._host = None
        if tensors:
            cuda = tensors[0].device.type == "cuda"
            # One byte buffer for all: one copy instead of one per map and record table.
            flat = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors])
            self._host = torch.empty(flat.numel(), dtype=torch.uint8, pin_memory=cuda)
            self._host.copy_(flat, non_blocking=cuda)
            if cuda:
                self._event = torch.cuda.Event()
                self._event.record()

    def result(self) -> list[np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        host = self._host.numpy() if self._host is not None else None
        out, offset = [], 0
        for t in self.items:
            if isinstance(t, np.ndarray):
                out.append(t)
            elif id(t) not in self._copied:
                out.append(t.numpy())
            else:
                nbytes = t.numel() * t.element_size()
                out.append(host[offset : offset + nbytes].view(_NUMPY[t.dtype]).reshape(t.shape))
                offset += nbytes
        return out
