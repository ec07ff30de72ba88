"""Host <-> device copies of a batch: images go up through pinned memory in one copy; the finished maps
and records come back in one copy, started without waiting so the host can prepare the next batch.

On a CPU device nothing is copied: tensors and arrays share memory.
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


def upload(images: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """[H, W, 3] uint8 arrays -> the same as tensors on `device`.

    CUDA: all images are staged in one pinned buffer and copied with one non-blocking transfer
    (torch's caching host allocator keeps the buffer alive until the copy has run)."""
    if device.type != "cuda":
        with warnings.catch_warnings():  # decoded images may be read-only; nothing here writes to them
            warnings.simplefilter("ignore", UserWarning)
            return [torch.from_numpy(np.ascontiguousarray(im)) for im in images]
    sizes = [im.size for im in images]
    staging = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=True)
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


class Download:
    """A non-blocking device -> host copy of a list of tensors (any dtypes and shapes); `result()`
    waits for it and returns numpy arrays. Host arrays in the list pass through untouched."""

    def __init__(self, items: list[torch.Tensor | np.ndarray]):
        self.items = items
        tensors = [t for t in items if isinstance(t, torch.Tensor) and t.device.type == "cuda"]
        self._event = None
        if tensors:
            # One byte buffer for all: one copy instead of one per map and record table.
            flat = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors])
            self._host = torch.empty(flat.numel(), dtype=torch.uint8, pin_memory=True)
            self._host.copy_(flat, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def result(self) -> list[np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
            host = self._host.numpy()
        out, offset = [], 0
        for t in self.items:
            if isinstance(t, np.ndarray):
                out.append(t)
            elif t.device.type != "cuda":
                out.append(t.numpy())
            else:
                nbytes = t.numel() * t.element_size()
                out.append(host[offset : offset + nbytes].view(_NUMPY[t.dtype]).reshape(t.shape))
                offset += nbytes
        return out
