"""Cumulative per-stage time of a labeler (preprocess, forward, postprocess, host), for job statistics.

On CUDA the stages are timed with events on the device's timeline and read after the batch's one
host synchronisation, so timing adds no synchronisation of its own; on a CPU, wall time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

STAGES = ("preprocess", "forward", "postprocess", "host")


class StageClock:
    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.totals: dict[str, float] = defaultdict(float)  # seconds
        self.images = 0
        self._pending: list[tuple[str, object, object]] = []  # CUDA events not read yet

    @contextmanager
    def stage(self, name: str):
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
                self.totals[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        """Host-side time measured by the caller (waiting for results, building records)."""
        self.totals[name] += seconds

    def settle(self, images: int) -> None:
        """Call after the batch's results reached the host: reads the batch's events (already complete)."""
        for name, start, end in self._pending:
            end.synchronize()  # returns at once: the results that depend on it are on the host
            self.totals[name] += start.elapsed_time(end) / 1000.0
        self._pending.clear()
        self.images += images

    def discard(self) -> None:
        """Forget the events of a batch that failed (its stages are not counted)."""
        self._pending.clear()

    def timings(self) -> dict[str, float]:
        """{"images": n, "<stage>_ms": cumulative milliseconds} for every stage seen so far."""
        out: dict[str, float] = {"images": float(self.images)}
        for name in (*STAGES, *sorted(set(self.totals) - set(STAGES))):
            if name in self.totals:
                out[f"{name}_ms"] = self.totals[name] * 1000.0
        return out
