"""Count what a labeler asks of a GPU, on any device: the torch ops it dispatches (each one at least a
kernel launch on CUDA) and the ones that make the host wait for the device, split by stage.

No GPU is needed. The labelers' GPU-shaped code path runs on a CPU (`--code-path gpu`); this module
watches it at two levels and reports what CUDA would do with the same calls:

- every aten op (`TorchDispatchMode`): the launches, and the ops that read device data back to decide
  a shape or a value (`SYNC_OPS`: `nonzero`, `unique`, `masked_select`, boolean indexing, `bincount`
  (CUDA reads min and max back), `repeat_interleave` without an output size, `item`, `equal`,
  torchvision's `nms`, which finishes on the host);
- the Python calls that move data (`TorchFunctionMode`): `torch.tensor(..., device=...)` and
  `.to(device)` of host data (a blocking copy from pageable memory: a sync; non-blocking copies are
  counted as uploads), `.cpu()`, `.numpy()`, `.tolist()`, `.item()` and `copy_` into host memory
  (device to host: the host waits).

Which tensors live "on the device" is tracked by provenance, since on a CPU they all do: tensors that
exist before counting starts (model weights, buffers built at start-up) and everything computed from
them count as device tensors; tensors created inside without a `device=` argument, from numpy or by
`.cpu()`, and everything computed from those alone, count as host tensors. A host tensor of more than
one element that meets a device tensor in an op is counted as `mixed` (on CUDA an implicit copy, or an
error). Calls that target the labeler's device (`.to(device)` of a device tensor) are moves on the
device, so the CPU run sees the same calls a CUDA run makes.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_TAG = "_c2f_where"  # attribute set on tensors: "host" or "device"; absent = created before counting: device

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


def _where(t: torch.Tensor) -> str:
    return getattr(t, _TAG, "device")


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


@dataclass
class Counts:
    """Per stage: aten ops dispatched (launches), host syncs by kind, async uploads, mixed-device ops."""

    ops: Counter = field(default_factory=Counter)  # stage -> ops
    syncs: dict = field(default_factory=lambda: defaultdict(Counter))  # stage -> {kind: n}
    uploads: Counter = field(default_factory=Counter)  # stage -> non-blocking host -> device copies
    mixed: Counter = field(default_factory=Counter)  # stage -> ops mixing host and device tensors
    by_op: dict = field(default_factory=lambda: defaultdict(Counter))  # stage -> {op: n}

    def sync_total(self, stage: str | None = None) -> int:
        stages = [stage] if stage is not None else list(self.syncs)
        return sum(sum(self.syncs[s].values()) for s in stages if s in self.syncs)

    def op_total(self, stage: str | None = None) -> int:
        return self.ops[stage] if stage is not None else sum(self.ops.values())


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
        inputs = _tensors(args, []) + _tensors(kwargs, [])
        if name in ("copy_", "copy"):  # dst <- src: the direction decides
            dst, src = inputs[0], inputs[1]
            if _where(dst) == "host" and _where(src) == "device":
                c.counts.syncs[stage]["device->host copy"] += 1
            elif _where(dst) == "device" and _where(src) == "host" and src.numel() > 1:
                if kwargs.get("non_blocking") or (len(args) > 2 and args[2] is True):
                    c.counts.uploads[stage] += 1
                else:
                    c.counts.syncs[stage]["host->device copy"] += 1
            return out
        if not inputs:
            return out  # a factory: tagged by the function level, which sees its device= argument
        if not any(_where(t) == "device" for t in inputs):
            _tag(out, "host")
            return out
        kind = name if name in SYNC_OPS else None
        if name in ("index", "_index_put_impl_", "index_put", "index_put_"):
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx or ()):
                kind = "boolean index"
        elif name == "repeat_interleave" and func.__name__.startswith("repeat_interleave.Tensor"):
            if kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None):
                kind = "repeat_interleave"
        if kind is not None:
            c.counts.syncs[stage][kind] += 1
        if any(_where(t) == "host" and t.numel() > 1 for t in inputs):
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
            out = func(*args, **kwargs)
            explicit = kwargs.get("device") is not None
            if name in ("tensor", "as_tensor") and not (args and _tensors(args[0], [])):
                # Host data (a list, a number, an array) to a device: a blocking copy from pageable memory.
                if explicit:
                    c.counts.syncs[stage]["host-built tensor to device"] += 1
            _tag(out, "device" if explicit else "host")
            return out
        if name == "to" and args and isinstance(args[0], torch.Tensor):
            src = args[0]
            device, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            with c.pause():
                out = func(*args, **kwargs)
                if out is src:
                    out = src.detach()  # a distinct object, so that the two can carry different tags
            if device is not None and _where(src) == "host":
                if non_blocking:
                    c.counts.uploads[stage] += 1
                else:
                    c.counts.syncs[stage]["host->device copy"] += 1
                _tag(out, "device")
            else:
                _tag(out, _where(src))
                if src.dtype != out.dtype:
                    c.counts.ops[stage] += 1
                    c.counts.by_op[stage]["_to_copy"] += 1
            return out
        if name in _DEVICE_TO_HOST and args and isinstance(args[0], torch.Tensor) and _where(args[0]) == "device":
            kind = "device->host copy" if name in ("cpu", "numpy", "tolist") else "item"
            c.counts.syncs[stage][kind] += 1
            with c.pause():
                out = func(*args, **kwargs)
                if name == "cpu" and out is args[0]:
                    out = args[0].detach()
            _tag(out, "host")
            return out
        return func(*args, **kwargs)


class OpCounter:
    """Context manager: counts everything torch does inside it (see the module doc), by stage.

    The stage is the labeler's current `StageClock` stage (preprocess, forward, postprocess), else the
    name given to `phase()` by the caller (e.g. "records" around `collect`)."""

    def __init__(self):
        self.counts = Counts()
        self.paused = 0
        self._phase = ["other"]
        self._stages: list[str] = []

    @property
    def stage(self) -> str:
        return self._stages[-1] if self._stages else self._phase[-1]

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
        from . import timing

        counter = self
        original = timing.StageClock.stage
        self._original = original

        @contextlib.contextmanager
        def stage(clock, name):
            counter._stages.append(name)
            try:
                with original(clock, name):
                    yield
            finally:
                counter._stages.pop()

        timing.StageClock.stage = stage
        self._modes = [_Function(self), _Dispatch(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        from . import timing

        for m in reversed(self._modes):
            m.__exit__(*exc)
        timing.StageClock.stage = self._original
        return False


STAGES = ("preprocess", "forward", "postprocess", "download", "records")


def count_batch(labeler, images) -> Counts:
    """One batch through a labeler's `submit` and `collect`, counted. Stages: the labeler's own
    (preprocess, forward, postprocess); "download" for the rest of `submit` (queueing the copy of the
    batch's results), "records" for `collect` (the wait, and the records built on the host)."""
    with OpCounter() as counter:
        with counter.phase("download"):
            handle = labeler.submit(images)
        with counter.phase("records"):
            out = labeler.collect(handle)
    failed = [x for x in out if isinstance(x, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(out)} images failed: {failed[0]}")
    return counter.counts
