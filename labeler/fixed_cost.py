"""`fixed-cost`: no model; spends a fixed time per image, like a GPU model of known speed.

For benchmarks and fault-injection tests of the labeling job: the pipeline's overhead is
measured against this labeler's own throughput. Its maps are cheap functions of the pixels
(semantic = 4 brightness bands, instances = the 4x4 grid cells), so every downstream check
sees real structure; the manifest marks its labels as synthetic.

Its time is split as a GPU labeler's is. `seconds_per_image` runs on a simulated device: a
timeline on which batches run one after another while the host goes on, waited for without
holding the GIL, as a CUDA stream is (the maps are built meanwhile, so a batch costs the larger
of the two). `host_seconds_per_image` is host work after the wait that holds the GIL (spinning),
as post-processing and records do; like Python code under one GIL, the host work of two batches
never overlaps (a lock), so the host bounds the rate at 1/H however many threads run. A serial
actor pays device and host time per batch; a pipelined one overlaps them (pipelines/pool.py), and
a CPU shows by how much.

`fault_file` injects a device fault. When that file exists as a batch is submitted, the labeler
removes it and the device fails as a GPU's does after an illegal memory access: that batch's wait
raises `torch.AcceleratorError("CUDA error: an illegal memory access was encountered")`, and so
does every later call in this process (the error is sticky). A new process works: the file is
gone. The file may hold a number N: the fault comes at this process's batch N + 1.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from shards.manifest import LabelerInfo, LabelSpace
from shards.pack import Labels

from .base import LocalLabeler
from .overlap import instance_records

FAULT_MESSAGE = "CUDA error: an illegal memory access was encountered (injected by the fixed-cost labeler)"


def device_error(message: str = FAULT_MESSAGE) -> Exception:
    """The exception torch raises for a sticky device fault (RuntimeError before torch 2.8)."""
    import torch

    return getattr(torch, "AcceleratorError", RuntimeError)(message)


class SimulatedDevice:
    """One stream of device work: batches run back to back, each for its time, while the host goes
    on; the host waits for a batch without the GIL. After `fail`, work that ends later raises, and so
    does all new work (a fault is sticky for the process)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.free_at = 0.0  # when the work queued so far ends
        self.fault_at = math.inf  # device time from which everything fails

    def enqueue(self, seconds: float) -> float:
        """Queue `seconds` of work; returns when it ends (perf_counter time)."""
        with self._lock:
            if self.fault_at < math.inf:
                raise device_error()
            self.free_at = max(time.perf_counter(), self.free_at) + seconds
            return self.free_at

    def fail(self, start: float) -> None:
        """The work that starts at `start` faults the device."""
        with self._lock:
            self.fault_at = min(self.fault_at, start)

    def wait(self, done_at: float) -> None:
        time.sleep(max(0.0, done_at - time.perf_counter()))  # releases the GIL, like a CUDA event wait
        if done_at > self.fault_at:
            raise device_error()


@dataclass
class Batch:
    labels: list[Labels]
    done_at: float  # when its device work ends


class FixedCostLabeler(LocalLabeler):
    def __init__(self, seconds_per_image: float, host_seconds_per_image: float = 0.0, fault_file: str = ""):
        self.seconds, self.host_seconds, self.fault_file = seconds_per_image, host_seconds_per_image, fault_file
        self.device = SimulatedDevice()
        self._lock = threading.Lock()  # totals, from the threads of a pipelined actor
        self._host = threading.Lock()  # one batch's host work at a time, as under one GIL
        self._batches = 0  # submitted by this process
        self._totals = {"images": 0.0, "device_ms": 0.0, "host_ms": 0.0}

    def submit(self, images: list[np.ndarray], contexts=None) -> Batch:
        self._batches += 1
        seconds = self.seconds * len(images)
        done_at = self.device.enqueue(seconds)
        if self.fault_file and self._claim_fault():
            self.device.fail(done_at - seconds)
        return Batch([self._maps(im) for im in images], done_at)  # built while the device works

    def collect(self, batch: Batch) -> list[Labels]:
        self.device.wait(batch.done_at)
        with self._host:
            t0 = time.perf_counter()
            deadline = t0 + self.host_seconds * len(batch.labels)
            while time.perf_counter() < deadline:  # holds the GIL, as Python post-processing does
                pass
            host = time.perf_counter() - t0
        with self._lock:
            self._totals["images"] += len(batch.labels)
            self._totals["device_ms"] += 1000 * self.seconds * len(batch.labels)
            self._totals["host_ms"] += 1000 * host
        return batch.labels

    def label(self, images: list[np.ndarray], contexts=None) -> list[Labels]:
        return self.collect(self.submit(images, contexts))

    def timings(self) -> dict[str, float]:
        """Cumulative {"images", "device_ms" (simulated), "host_ms" (measured)}."""
        with self._lock:
            return dict(self._totals)

    def _claim_fault(self) -> bool:
        """Whether this batch is the injected fault: the fault file exists, this process has
        submitted more batches than it names, and this process removed it first."""
        try:
            with open(self.fault_file) as f:
                after = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return False
        if self._batches <= after:
            return False
        try:
            os.unlink(self.fault_file)  # one process wins, once
        except OSError:
            return False
        return True

    @staticmethod
    def _maps(im: np.ndarray) -> Labels:
        h, w = im.shape[:2]
        semantic = (im.mean(axis=2) // 64).astype(np.uint8)  # 0..3
        rows = np.minimum(np.arange(h) * 4 // h, 3)
        cols = np.minimum(np.arange(w) * 4 // w, 3)
        inst = (rows[:, None] * 4 + cols[None, :] + 1).astype(np.uint16)
        return Labels(semantic, inst, instance_records(inst, [None] * 16, [1.0] * 16))

    def label_space(self) -> LabelSpace:
        return LabelSpace(semantic={"0": "dark", "1": "dim", "2": "bright", "3": "light"})

    def describe(self) -> LabelerInfo:
        return LabelerInfo(
            "fixed-cost",
            seconds_per_image=self.seconds,
            random_labels=True,
            note="synthetic labels from pixel brightness and a grid, for benchmarks and tests",
        )
