"""Composite labelers: the presets' models combined into one `Labeler`.

`SemanticPlusInstances` runs a semantic model for the scene map and SAM for class-agnostic
instances; `OnePassPanoptic` gets both maps from one panoptic pass. Both are `BatchLabeler`s: a batch
goes to the device in one copy, every model and all post-processing run there, and the finished maps
and records come back in one copy. `submit` returns once that copy is queued (on a GPU the host can
decode the next batch meanwhile); `collect` waits for it. A batch that fails is retried image by image,
so one bad image costs only itself; an error that leaves the device unusable (`base.is_device_fault`)
is raised instead, since every retry in this process would fail too and cost its image a label.
`submit` is called by one thread at a time; `collect` may run beside it (a pipelined actor).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels

from .base import SUBMIT_LOCK, LocalLabeler, is_device_fault
from .timing import StageClock


def label_each(fn: Callable[[list[np.ndarray]], list[Labels]], images: list[np.ndarray]) -> list[Labels | Exception]:
    """Run a batch; if it fails, run the images one by one so one bad image costs only itself. A
    device fault is raised: the process must end (every later call in it would fail)."""
    try:
        return list(fn(images))
    except Exception as e:  # noqa: BLE001 - isolated below, every failure is reported per image
        if is_device_fault(e):
            raise
        if len(images) == 1:
            return [e]
    return [label_each(fn, [im])[0] for im in images]


@dataclass
class Pending:
    """A submitted batch: its images (for a per-image retry), the copy in flight, or the error."""

    images: list[np.ndarray]
    download: Any = None
    counts: list[int] = field(default_factory=list)  # arrays per image in the download
    error: Exception | None = None
    events: list = field(default_factory=list)  # this batch's stage timing events (StageClock.take)
    contexts: list | None = None  # the images' ImageContexts, when the caller gave them


class BatchLabeler(LocalLabeler):
    """Base of device labelers. Subclasses give `_device_outputs` (per image, the tensors to bring back)
    and `_labels` (those arrays on the host -> `Labels`); both also get the images' contexts (None
    when the caller gave none), which only the text-prompted presets read."""

    device: Any  # torch.device
    clock: StageClock
    gpu_shaped = False  # transfers in the GPU layout (one copy each way) on any device: --code-path

    def _device_outputs(self, images: list[np.ndarray], on_device: list, contexts: list | None = None) -> list[list]:
        raise NotImplementedError

    def _labels(self, arrays: list[np.ndarray], context=None) -> Labels:
        raise NotImplementedError

    def submit(self, images: list[np.ndarray], contexts: list | None = None) -> Pending:
        from .transfer import Download, upload

        try:
            with self.clock.stage("preprocess"):
                on_device = upload(images, self.device, self.gpu_shaped)
            outputs = self._device_outputs(images, on_device, contexts)
            download = Download([a for item in outputs for a in item], self.gpu_shaped)
            counts = [len(item) for item in outputs]
            return Pending(images, download, counts, contexts=contexts, events=self.clock.take())
        except Exception as e:  # noqa: BLE001 - retried image by image in collect
            self.clock.discard()
            if is_device_fault(e):
                raise
            return Pending(images, error=e, contexts=contexts)

    def collect(self, handle: Pending) -> list[Labels | Exception]:
        error = handle.error
        if error is None:
            try:
                arrays = handle.download.result()  # the batch's one wait for the device
                self.clock.settle(len(handle.images), handle.events)
                t0 = time.perf_counter()
                out: list[Labels | Exception] = []
                offset = 0
                contexts = handle.contexts or [None] * len(handle.counts)
                for n, context in zip(handle.counts, contexts, strict=True):
                    try:
                        out.append(self._labels(arrays[offset : offset + n], context))
                    except Exception as e:  # noqa: BLE001 - that image only
                        if is_device_fault(e):
                            raise
                        out.append(e)
                    offset += n
                self.clock.add("host", time.perf_counter() - t0)
                return out
            except Exception as e:  # noqa: BLE001 - a device error surfaces at the wait
                if is_device_fault(e):
                    raise
                error = e
        if len(handle.images) == 1:
            return [error]
        out = []
        for im, c in zip(handle.images, handle.contexts or [None] * len(handle.images), strict=True):
            with SUBMIT_LOCK:  # collect may run beside another batch's submit
                retry = self.submit([im], None if c is None else [c])
            out.append(self.collect(retry)[0])
        return out

    def label(self, images: list[np.ndarray], contexts: list | None = None) -> list[Labels | Exception]:
        return self.collect(self.submit(images, contexts))

    def timings(self) -> dict[str, float]:
        """Cumulative {"images": n, "preprocess_ms", "forward_ms", "postprocess_ms", "host_ms"}: device
        time per stage (CUDA events, or wall time on a CPU) and host time building the records."""
        return self.clock.timings()


class SemanticPlusInstances(BatchLabeler):
    """A semantic model for the scene map and SAM for class-agnostic instances."""

    def __init__(self, semantic, instances, describe: LabelerInfo, clock: StageClock):
        import torch

        self.semantic, self.instances, self._describe = semantic, instances, describe
        self.device, self.clock = torch.device(semantic.seg.device), clock
        self.gpu_shaped = semantic.gpu

    def _device_outputs(self, images, on_device, contexts=None):
        sems = self.semantic.run(on_device)
        insts = self.instances.run(images, on_device)
        return [[s, i, r] for s, (i, r) in zip(sems, insts, strict=True)]

    def _labels(self, arrays, context=None):
        from .overlap import records_to_instances

        sem, inst, records = arrays
        return Labels(sem, inst, records_to_instances(records, agnostic=True))

    def label_space(self) -> LabelSpace:
        names = self.semantic.seg.id2label
        return LabelSpace(semantic={str(k): v for k, v in sorted(names.items())})

    def describe(self) -> LabelerInfo:
        return self._describe


class OnePassPanoptic(BatchLabeler):
    def __init__(self, panoptic, describe: LabelerInfo):
        import torch

        self.panoptic, self._describe = panoptic, describe
        self.device, self.clock = torch.device(panoptic.seg.device), panoptic.clock
        self.gpu_shaped = panoptic.gpu

    def _device_outputs(self, images, on_device, contexts=None):
        return [list(item) for item in self.panoptic.run(on_device)]

    def _labels(self, arrays, context=None):
        from .overlap import records_to_instances

        sem, inst, records = arrays
        return Labels(sem, inst, records_to_instances(records))

    def label_space(self) -> LabelSpace:
        return self.panoptic.label_space()

    def describe(self) -> LabelerInfo:
        return self._describe
