"""Count what code asks of a GPU, on any device (a CPU included): the torch ops it dispatches (each one at
least a kernel launch on CUDA) and the ones that make the host wait for the device, by stage and by kind.

No GPU is needed. The labelers' GPU-shaped code path (`--code-path gpu`) and the trainer's step run on a
CPU; this module watches them at two levels and reports what CUDA would do with the same calls:

- every aten op (`TorchDispatchMode`): the launches, and the ops that read device data back to decide
  a shape or a value (`SYNC_OPS`: `nonzero`, `unique`, `masked_select`, boolean indexing, `bincount`
  (CUDA reads min and max back), `repeat_interleave` without an output size, `item`, `equal`,
  torchvision's `nms`, which finishes on the host);
- the Python calls that move data (`TorchFunctionMode`, which sees calls that never reach the
  dispatcher on a CPU tensor): `torch.tensor(..., device=...)` and `.to(device)` of host data (a
  blocking copy from pageable memory: a sync; non-blocking copies are counted as uploads), `.cpu()`,
  `.numpy()`, `.tolist()`, `.item()` and `copy_` into host memory (device to host: the host waits).

Which tensors live on the device is the one question a CPU cannot answer, and the two users answer it
differently (`OpCounter(provenance=...)`):

- provenance (the labelers, `count_batch`): tensors that exist before counting starts (model weights,
  buffers built at start-up) and everything computed from them count as device tensors; tensors created
  inside without a `device=` argument, from numpy or by `.cpu()`, and everything computed from those
  alone, count as host tensors, whose own work is no sync. A host tensor of more than one element that
  meets a device tensor in an op is counted as `mixed` (on CUDA an implicit copy, or an error). Calls
  that target the device (`.to(device)` of a device tensor) are moves on the device, so the CPU run
  sees the same calls a CUDA run makes. A labeler does host work (records) beside its device work.
- every tensor on the device (the trainer's step, `SyncCounter`): a step keeps nothing on the host, so
  every read-back counts, every tensor built from Python data is a blocking upload, and every
  `.to(device)` without `non_blocking` in the project's code is a blocking copy (its source may be a
  worker's batch in host memory); a library's `.to(the same device type)` copies nothing. On CUDA,
  copies between the real devices count as well.

    with SyncCounter() as syncs:
        ...                      # one training step
    assert syncs.total == 0, (dict(syncs.events), syncs.events.where)

A labeler's stages (preprocess, forward, postprocess) reach the counter through `stage()`, which
labeler/timing.py's `StageClock` enters around each stage; the caller names the rest (`phase()`).
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_TAG = "_c2f_where"  # attribute set on tensors: "host" or "device"; absent = created before counting: device
_ROOT = str(Path(__file__).resolve().parents[1])  # the project's code: where a sync is reported from

# aten ops (by overload packet name) that make the host wait for the device on CUDA.
SYNC_OPS = {
    "nonzero",
    "argwhere",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "bincount",
    "item",
    "_local_scalar_dense",
    "equal",
    "is_nonzero",
    "allclose",
    "nms",
}
# Ops that only describe or alias a tensor; not launches.
FREE_OPS = {
    "detach",
    "detach_",
    "alias",
    "view",
    "_unsafe_view",
    "as_strided",
    "expand",
    "permute",
    "transpose",
    "t",
    "unsqueeze",
    "squeeze",
    "select",
    "slice",
    "unbind",
    "split",
    "split_with_sizes",
    "chunk",
    "reshape",
    "flatten",
    "unflatten",
    "lift_fresh",
    "resolve_conj",
    "resolve_neg",
    "_reshape_alias",
    "diagonal",
    "narrow",
    "view_as",
    "expand_as",
    "movedim",
    "_to_copy_noop",
    "set_",
    "is_same_size",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "dim",
    "size",
    "stride",
    "_has_compatible_shallow_copy_type",
    "to",
}
_FACTORIES = {
    "arange",
    "zeros",
    "ones",
    "full",
    "empty",
    "linspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "tensor",
    "as_tensor",
    "scalar_tensor",
}
_DEVICE_TO_HOST = {"cpu", "numpy", "tolist", "item", "__float__", "__int__", "__bool__", "__index__"}
_INDEX_OPS = ("index", "_index_put_impl_", "index_put", "index_put_")


def _tag(obj, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        with contextlib.suppress(AttributeError, RuntimeError):
            setattr(obj, _TAG, where)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tag(o, where)


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


def _from_library() -> bool:
    """Whether the call comes from an installed library (torch's own `.to(its device)` calls are
    no-ops on any device), rather than from the project's code."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame is not None and "site-packages" in frame.f_code.co_filename


def _site() -> str:
    """The innermost frame of the project's code on the current stack: where a sync was asked for."""
    for frame in reversed(traceback.extract_stack()):
        name = frame.filename
        if name.startswith(_ROOT) and "site-packages" not in name and name != __file__:
            return f"{name.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


class Kinds(Counter):
    """Host syncs by kind, and `where`: the line that first asked for each kind."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.where: dict[str, str] = {}


@dataclass
class Counts:
    """Per stage: aten ops dispatched (launches), host syncs by kind, async uploads, mixed-device ops."""

    ops: Counter = field(default_factory=Counter)  # stage -> ops
    syncs: dict = field(default_factory=lambda: defaultdict(Counter))  # stage -> {kind: n}
    uploads: Counter = field(default_factory=Counter)  # stage -> non-blocking host -> device copies
    mixed: Counter = field(default_factory=Counter)  # stage -> ops mixing host and device tensors
    by_op: dict = field(default_factory=lambda: defaultdict(Counter))  # stage -> {op: n}
    where: dict = field(default_factory=dict)  # kind -> the line that first asked for it

    def sync(self, stage: str, kind: str) -> None:
        self.syncs[stage][kind] += 1
        if kind not in self.where:
            self.where[kind] = _site()

    def sync_total(self, stage: str | None = None) -> int:
        stages = [stage] if stage is not None else list(self.syncs)
        return sum(sum(self.syncs[s].values()) for s in stages if s in self.syncs)

    def op_total(self, stage: str | None = None) -> int:
        return self.ops[stage] if stage is not None else sum(self.ops.values())

    def kinds(self) -> Kinds:
        """Syncs by kind over every stage, with where each kind was first asked for."""
        out = Kinds()
        for kinds in self.syncs.values():
            out.update(kinds)
        out.where = {k: self.where[k] for k in out if k in self.where}
        return out


def _blocking_copy_between_devices(func, args, kwargs) -> str | None:
    """The kind of a blocking copy between real devices (on CUDA: host and GPU), else None."""
    if func._overloadpacket.__name__ not in ("_to_copy", "copy_") or kwargs.get("non_blocking", False):
        return None
    copy = func._overloadpacket.__name__ == "copy_"
    src = args[1] if copy else args[0]
    if not isinstance(src, torch.Tensor):
        return None
    dst = args[0].device if copy else torch.device(kwargs.get("device") or src.device)
    if dst.type == src.device.type or "cpu" not in (src.device.type, dst.type):
        return None
    return "device->host copy" if dst.type == "cpu" else "host->device copy"


class _Dispatch(TorchDispatchMode):
    def __init__(self, counter: OpCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        c = self.counter
        if c.paused:
            return out
        name = func._overloadpacket.__name__
        stage = c.stage
        if name not in FREE_OPS:
            c.counts.ops[stage] += 1
            c.counts.by_op[stage][name] += 1
        if not c.provenance:
            kind = _blocking_copy_between_devices(func, args, kwargs)
            if kind is None and name == "lift_fresh" and args[0].dim() > 0:
                # A tensor from Python data: a blocking upload. (A 0-dim one is a Python number, as in
                # `t[i] = 1.0`, made on the device by a fill, no copy.)
                kind = "host-built tensor to device"
            if kind is not None:
                c.counts.sync(stage, kind)
                return out
        inputs = _tensors(args, []) + _tensors(kwargs, [])
        if c.provenance and name in ("copy_", "copy"):  # dst <- src: the direction decides
            dst, src = inputs[0], inputs[1]
            if c.where(dst) == "host" and c.where(src) == "device":
                c.counts.sync(stage, "device->host copy")
            elif c.where(dst) == "device" and c.where(src) == "host" and src.numel() > 1:
                if kwargs.get("non_blocking") or (len(args) > 2 and args[2] is True):
                    c.counts.uploads[stage] += 1
                else:
                    c.counts.sync(stage, "host->device copy")
            return out
        if not inputs:
            return out  # a factory: tagged by the function level, which sees its device= argument
        if not any(c.where(t) == "device" for t in inputs):
            _tag(out, "host")
            return out
        kind = name if name in SYNC_OPS else None
        if name in _INDEX_OPS:
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx or ()):
                kind = "boolean index"
        elif name == "repeat_interleave" and func.__name__.startswith("repeat_interleave.Tensor"):
            if kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None):
                kind = "repeat_interleave"
        if kind is not None:
            c.counts.sync(stage, kind)
        if c.provenance:
            if any(c.where(t) == "host" and t.numel() > 1 for t in inputs):
                c.counts.mixed[stage] += 1
            _tag(out, "device")
        return out


class _Function(TorchFunctionMode):
    def __init__(self, counter: OpCounter):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        c = self.counter
        name = getattr(func, "__name__", "")
        if c.paused:
            return func(*args, **kwargs)
        stage = c.stage
        if name in _FACTORIES or name == "from_numpy":
            out = func(*args, **kwargs)  # without provenance, a tensor from Python data is seen by the dispatch
            if c.provenance:
                explicit = kwargs.get("device") is not None
                if name in ("tensor", "as_tensor") and not (args and _tensors(args[0], [])):
                    # Host data (a list, a number, an array) to a device: a blocking copy from pageable memory.
                    if explicit:
                        c.counts.sync(stage, "host-built tensor to device")
                _tag(out, "device" if explicit else "host")
            return out
        if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor):
            src = args[0]
            if name == "cuda":
                device, non_blocking = torch.device("cuda"), bool(kwargs.get("non_blocking", False))
            else:
                device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            with c.pause():
                out = func(*args, **kwargs)
                if out is src:
                    out = src.detach()  # a distinct object, so that the two can carry different tags
            if not c.provenance:
                # The source may be host memory on CUDA; a library's `.to(the same device)` copies nothing.
                other = device is not None and src.device.type != torch.device(device).type
                if device is not None and not non_blocking and (not _from_library() or other):
                    c.counts.sync(stage, "host->device copy")
                elif src.dtype != out.dtype:
                    c.counts.ops[stage] += 1
                    c.counts.by_op[stage]["_to_copy"] += 1
            elif device is not None and c.where(src) == "host":
                if non_blocking:
                    c.counts.uploads[stage] += 1
                else:
                    c.counts.sync(stage, "host->device copy")
                _tag(out, "device")
            else:
                _tag(out, c.where(src))
                if src.dtype != out.dtype:
                    c.counts.ops[stage] += 1
                    c.counts.by_op[stage]["_to_copy"] += 1
            return out
        if name in _DEVICE_TO_HOST and args and isinstance(args[0], torch.Tensor) and c.where(args[0]) == "device":
            kind = "device->host copy" if name in ("cpu", "numpy", "tolist") else "item"
            c.counts.sync(stage, kind)
            with c.pause():
                out = func(*args, **kwargs)
                if name == "cpu" and out is args[0]:
                    out = args[0].detach()
            _tag(out, "host")
            return out
        return func(*args, **kwargs)


_COUNTING: list[OpCounter] = []  # the counters inside their `with`, innermost last


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """What runs inside is stage `name` for every counter counting now (labeler/timing.py's `StageClock`
    enters it around each stage; nothing is done while none counts)."""
    counters = list(_COUNTING)
    for c in counters:
        c._stages.append(name)
    try:
        yield
    finally:
        for c in counters:
            c._stages.pop()


class OpCounter:
    """Context manager: counts everything torch does inside it (see the module doc), by stage.

    The stage is the innermost `stage()` (a labeler's `StageClock` stage: preprocess, forward,
    postprocess), else the name given to `phase()` by the caller (e.g. "records" around `collect`).
    `provenance`: which tensors are on the device (the module doc)."""

    def __init__(self, provenance: bool = True):
        self.provenance = provenance
        self.counts = Counts()
        self.paused = 0
        self._phase = ["other"]
        self._stages: list[str] = []
        self._modes = (_Function(self), _Dispatch(self))

    @property
    def stage(self) -> str:
        return self._stages[-1] if self._stages else self._phase[-1]

    def where(self, t: torch.Tensor) -> str:
        """ "device" or "host" (see the module doc)."""
        return getattr(t, _TAG, "device") if self.provenance else "device"

    @contextlib.contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    @contextlib.contextmanager
    def phase(self, name: str):
        self._phase.append(name)
        try:
            yield
        finally:
            self._phase.pop()

    def __enter__(self) -> OpCounter:
        _COUNTING.append(self)
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        _COUNTING.remove(self)
        return False


class SyncCounter(OpCounter):
    """The host syncs of code that keeps every tensor on the device (the trainer's step): `events`
    counts each kind seen inside (empty: none), `events.where` names the line that first asked for
    each, `total` sums them."""

    def __init__(self):
        super().__init__(provenance=False)

    @property
    def events(self) -> Kinds:
        return self.counts.kinds()

    @property
    def total(self) -> int:
        return self.counts.sync_total()


STAGES = ("preprocess", "forward", "postprocess", "download", "records")


def count_batch(labeler, images) -> Counts:
    """One batch through a labeler's `submit` and `collect` (labeler.base.Labeler), counted. Stages: the
    labeler's own (preprocess, forward, postprocess); "download" for the rest of `submit` (queueing the
    copy of the batch's results), "records" for `collect` (the wait, and the records built on the host)."""
    with OpCounter() as counter:
        with counter.phase("download"):
            handle = labeler.submit(images)
        with counter.phase("records"):
            out = labeler.collect(handle)
    failed = [x for x in out if isinstance(x, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(out)} images failed: {failed[0]}")
    return counter.counts
