"""Count the operations that make the host wait for the device, on any device (CPU included).

On CUDA a host sync is an operation whose result the host must read (`.item()`, `bool(t)`,
`.tolist()`, a copy to the CPU), whose output shape depends on the data (`nonzero`, boolean
indexing, `unique`), or a blocking copy from pageable host memory (`torch.tensor(python_list,
device=cuda)`, `.to(device)` without `non_blocking`). On a CPU machine none of these waits, but
every one of them is still dispatched: `SyncCounter` watches both torch's Python-level calls
(TorchFunctionMode: `.tolist()`, `.cpu()`, `.numpy()`, `.to(device)`, which on a CPU tensor never
reach the dispatcher) and the ATen operations (TorchDispatchMode), so a test running the
training step on CPU proves that the same code on CUDA would not wait for the GPU.

    with SyncCounter() as syncs:
        ...                      # one training step
    assert not syncs.events, syncs.events
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ATen operations that read a device value on the host or size their output by the data.
_DISPATCH = {
    aten._local_scalar_dense.default: "reads a value on the host (.item(), bool(), int(), float())",
    aten.nonzero.default: "output sized by the data (nonzero)",
    aten.masked_select.default: "output sized by the data (masked_select)",
    aten.unique_consecutive.default: "output sized by the data (unique)",
    aten._unique2.default: "output sized by the data (unique)",
    aten.unique_dim.default: "output sized by the data (unique)",
    aten.bincount.default: "output sized by the data (bincount)",
    aten.equal.default: "returns a Python bool (torch.equal)",
    aten.is_nonzero.default: "returns a Python bool",
    aten.lift_fresh.default: "a tensor from Python data: a blocking host -> device copy on CUDA",
}
# Python-level Tensor calls that copy to the host (invisible to the dispatcher on a CPU tensor).
_FUNCTION = {
    "tolist": "copies to the host (.tolist())",
    "numpy": "copies to the host (.numpy())",
    "cpu": "copies to the host (.cpu())",
}  # .item(), bool(t), int(t), float(t) reach the dispatcher as _local_scalar_dense on every device


def _target_device(args, kwargs) -> torch.device | None:
    """The device a `.to(...)` call names (None: a dtype only)."""
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    for a in args[1:]:
        if isinstance(a, (torch.device, str)):
            return torch.device(a)
    return None


def _from_library() -> bool:
    """Whether the call comes from an installed library (torch's own `.to(its device)` calls are
    no-ops on any device), rather than from the project's code."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame is not None and "site-packages" in frame.f_code.co_filename


def _where() -> str:
    """The innermost project frame of the current stack: where a sync was asked for."""
    for frame in reversed(traceback.extract_stack()):
        if "c2fmae" in frame.filename or "/tests/" in frame.filename or "/bench/" in frame.filename:
            if not frame.filename.endswith("syncs.py"):
                return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


class _Sink(Counter):
    """Counts per kind of sync, and remembers where each kind was first seen (`where`)."""

    def __init__(self):
        super().__init__()
        self.where: dict[str, str] = {}

    def add(self, why: str) -> None:
        self[why] += 1
        self.where.setdefault(why, _where())


class _Functions(TorchFunctionMode):
    def __init__(self, sink: _Sink):
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _FUNCTION:
            self.sink.add(_FUNCTION[name])
        elif name in ("to", "cuda") and not kwargs.get("non_blocking", False):
            # The project's `.to(device)` copies (on CPU the source may be host memory on CUDA);
            # a library's only where the devices differ (its `.to(the same device)` copies nothing).
            target = torch.device("cuda") if name == "cuda" else _target_device(args, kwargs)
            source = args[0].device if args and isinstance(args[0], torch.Tensor) else None
            if target is not None and (not _from_library() or (source is not None and source.type != target.type)):
                self.sink.add("a .to(device) without non_blocking: a blocking copy on CUDA")
        return func(*args, **kwargs)


class _Dispatch(TorchDispatchMode):
    def __init__(self, sink: _Sink):
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _DISPATCH.get(func)
        if func is aten.lift_fresh.default and args[0].dim() == 0:
            # A Python number: `t[i] = 1.0` makes it on the device by a fill, no copy. (A 0-dim
            # `torch.tensor(x, device=cuda)` looks the same here and is not counted.)
            why = None
        if why is None and func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
            indices = args[1] if len(args) > 1 else ()
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                why = "boolean indexing: output sized by the data"
        if why is None and func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            why = "output sized by the data (repeat_interleave without output_size)"
        if why is None and func in (aten._to_copy.default, aten.copy_.default):
            src = args[1] if func is aten.copy_.default else args[0]
            dst = args[0].device if func is aten.copy_.default else kwargs.get("device", src.device)
            if isinstance(src, torch.Tensor) and torch.device(dst).type != src.device.type:
                if "cpu" in (src.device.type, torch.device(dst).type) and not kwargs.get("non_blocking", False):
                    why = "a blocking copy between host and device"
        if why is not None:
            self.sink.add(why)
        return func(*args, **kwargs)


class SyncCounter:
    """Context manager: `events` counts each kind of host sync seen inside it (empty: none), and
    `events.where` names the line that first asked for each kind."""

    def __init__(self):
        self.events = _Sink()
        self._modes = (_Functions(self.events), _Dispatch(self.events))

    def __enter__(self) -> SyncCounter:
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.events.values())
