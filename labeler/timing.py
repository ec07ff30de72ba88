"""Cumulative per-stage time of a labeler (preprocess, forward, postprocess, host), for job statistics.

On CUDA the stages are timed with events on the device's timeline and read after the batch's one
host synchronisation, so timing adds no synchronisation of its own; on a CPU, wall time.
A pipelined actor has several batches in flight: `take` hands a batch its own events when it has
been submitted, and `settle` reads those alone, so one batch never waits for the next one's.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

from shards import opcount

STAGES = ("preprocess", "forward", "postprocess", "host")


class StageClock:
    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.totals: dict[str, float] = defaultdict(float)  # seconds
        self.images = 0
        self._pending: list[tuple[str, object, object]] = []  # CUDA events of the batch being submitted
        self._lock = threading.Lock()  # totals are added to from the threads of a pipelined actor

    @contextmanager
    def stage(self, name: str):
        with opcount.stage(name):  # an op counter at work (bench, tests) counts what runs here as this stage
            if self.cuda:
                import torch

                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                try:
                    yield
                finally:
                    end.record()
                    self._pending.append((name, start, end))
            else:
                t0 = time.perf_counter()
                try:
                    yield
                finally:
                    self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        """Host-side time measured by the caller (waiting for results, building records)."""
        with self._lock:
            self.totals[name] += seconds

    def take(self) -> list:
        """The events recorded since the last `take` (one batch's), for its `settle`."""
        events, self._pending = self._pending, []
        return events

    def settle(self, images: int, events: list | None = None) -> None:
        """Call after the batch's results reached the host: reads the batch's events (already
        complete), those `take` returned for it, or else all not taken yet."""
        events = self.take() if events is None else events
        seconds = []
        for name, start, end in events:
            end.synchronize()  # returns at once: the results that depend on it are on the host
            seconds.append((name, start.elapsed_time(end) / 1000.0))
        with self._lock:
            for name, sec in seconds:
                self.totals[name] += sec
            self.images += images

    def discard(self) -> None:
        """Forget the events of a batch that failed (its stages are not counted)."""
        self.take()

    def timings(self) -> dict[str, float]:
        """{"images": n, "<stage>_ms": cumulative milliseconds} for every stage seen so far."""
        with self._lock:
            totals, images = dict(self.totals), self.images
        out: dict[str, float] = {"images": float(images)}
        for name in (*STAGES, *sorted(set(totals) - set(STAGES))):
            if name in totals:
                out[f"{name}_ms"] = totals[name] * 1000.0
        return out
