"""The labeling actors and the pool that keeps them alive for the whole job.

**A pipelined actor.** `LabelActor` is a threaded Ray actor: up to `actor_batches` calls run in it
at once. Each call takes `SUBMIT_LOCK` for its labeler's `submit` (upload and launches: one batch
at a time enters the device, in order) and releases it for `collect` (the wait for the device,
then the host work that builds the records, then Ray's serialisation of the result). So while the
device runs batch k, batch k+1 is received and uploaded and batch k-1 is finished on the host:

    thread A   submit k ─┐ wait for the device ......... host work k ── return k
    thread B             └ submit k+1 ─┐ wait ........................ host work k+1
    device          [ batch k ][ batch k+1 ]                         (one stream, back to back)

On CUDA the waits are event synchronisations and the GIL is released; on a CPU the same code runs
(the forward pass runs inside `submit`, so the overlap is of one batch's forward with another's
host work). Pinned staging buffers are torch's caching host allocator's (labeler/transfer.py):
a block is handed out again once the copy that used it has completed.

**A device fault ends the process, not the data.** An error that leaves the device unusable
(`labeler.base.is_device_fault`: a device-side assert, an illegal address, an ECC error, ...) is
sticky: every later call in the process would fail. The actor then takes no more work, tells the
driver why (`watch`), and exits with `DEVICE_FAULT_EXIT`; Ray starts a new process, and the calls
it had not answered run again there. No image is quarantined for it.

**A pool that heals.** Actors are created with unlimited Ray restarts and retries, so a process
that dies (killed, out of memory, its node preempted, a device fault) is restarted where its
resources fit and its batches rerun. `ActorPool` (in the driver) keeps one `watch` call waiting in
each actor: it fails (or answers, for a device fault) when the process ends. It then logs the
cause Ray recorded, counts the failure, and waits for the actor to answer again; an actor that
Ray will not restart is replaced by a new one. The job ends early only when failures exceed
`--max-actor-failures-per-hour` over the last hour, or when no actor of the pool has been up for
`--wait-timeout` seconds.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from labeler.base import SUBMIT_LOCK, LabelerLoadError, is_device_fault
from shards.errors import C2FError, first_line
from shards.manifest import LabelerRecord

from . import metrics
from .resources import REPORT_EVERY, ClusterBusy, cluster_view, describe

DEVICE_FAULT_EXIT = 75  # exit status of an actor process that ended itself after a device fault
FAULT_GRACE_SECONDS = 2.0  # how long such a process lives on so that its `watch` answer reaches the driver
HOUR = 3600.0
NAMESPACE = "c2f"  # of the labeling actors' names: labeler-<job id>-<slot>-<n>
SWITCH_INTERVAL = 0.001  # seconds a thread holds the GIL before another waiting one gets it


class PoolFailing(C2FError):
    """Labeling actors died more often than `--max-actor-failures-per-hour` (exit 1)."""

    exit_code = 1


def labeler_info(labeler) -> LabelerRecord:
    return LabelerRecord(labeler.label_space(), labeler.describe())


class LabelActor:
    """Holds one labeler (its models on this actor's GPU, if any) and labels batches, several at once.

    A labeler that cannot be built is kept as the actor's `error` and raised by `info()`: an
    exception from a method crosses Ray as its own type (`RayTaskError.cause`), one from a
    constructor only as text. `info`, `ready`, `watch` and `timings` run in the `control` group,
    so they answer while every labeling thread is busy."""

    def __init__(self, settings, threads: int, output: str = ""):
        from labeler.registry import build_labeler

        metrics.bind(output)  # this job's metrics (pipelines/metrics.py)
        metrics.actor_started()

        # A thread that holds the GIL for host work (records, Python post-processing) hands it over
        # every switch interval; at Python's 5 ms the thread that would feed the device waits that
        # long each time, so the device idles. 1 ms keeps it fed at a negligible switching cost.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.labeler, self.error = None, None
        try:
            self.labeler = build_labeler(settings)
        except LabelerLoadError as e:
            self.error = e
        except Exception as e:  # noqa: BLE001 - any build failure is a setup failure: retrying cannot fix it
            self.error = LabelerLoadError(
                f"cannot build the {settings.labeler.preset!r} labeler: {type(e).__name__}: {e}"
            )
        if "torch" in sys.modules:  # a labeler without a model need not pay for importing torch on every restart
            sys.modules["torch"].set_num_threads(max(1, threads))
        self._fault: str | None = None  # why this process is ending
        self._fault_seen = threading.Event()
        self._never = threading.Event()  # waited on by calls that must not return from this process
        self._lock = threading.Lock()  # the counters below
        self._in_flight = 0
        self._busy_since = 0.0
        self._busy = 0.0  # seconds with at least one batch in this actor
        self._in_actor = 0.0  # seconds of batches in this actor, summed over batches
        self._images = 0

    @ray.method(concurrency_group="control")
    def info(self) -> LabelerRecord:
        if self.error is not None:
            raise self.error
        return labeler_info(self.labeler)

    @ray.method(concurrency_group="control")
    def ready(self) -> int:
        """This process's pid, once its labeler is built; a process that is ending never answers."""
        self._hold_if_ending()
        if self.error is not None:
            raise self.error
        return os.getpid()

    @ray.method(concurrency_group="control", max_task_retries=0)
    def watch(self) -> tuple[int, str]:
        """Answers (pid, cause) when this process ends itself after a device fault; otherwise fails
        with the actor's death (no retry: the driver learns of every death)."""
        self._fault_seen.wait()
        return os.getpid(), self._fault or ""

    def label(self, images, contexts=None):
        self._hold_if_ending()
        if self.labeler is None:
            raise self.error
        t0 = self._enter()
        try:
            with SUBMIT_LOCK:
                handle = self.labeler.submit(images, contexts)
            results = self.labeler.collect(handle)
        except Exception as e:
            if is_device_fault(e):
                self._end_process(e)
            raise
        finally:
            self._leave(t0)
        metrics.batch_labeled(time.perf_counter() - t0)
        for r in results:
            if isinstance(r, BaseException) and is_device_fault(r):  # a labeler that returned it as an image's
                self._end_process(r)
        with self._lock:
            self._images += len(images)
        return results

    @ray.method(concurrency_group="control")
    def timings(self) -> dict[str, float]:
        """The labeler's own cumulative stage times (ms), when it keeps them, and `busy_ms`: the time
        this process had at least one batch (stages that overlap add up to more than that)."""
        get = getattr(self.labeler, "timings", None)
        out = dict(get()) if callable(get) else {}
        with self._lock:
            busy = self._busy + (time.perf_counter() - self._busy_since if self._in_flight else 0.0)
            out["busy_ms"] = 1000 * busy
            out["in_actor_ms"] = 1000 * self._in_actor
            out["labeled"] = float(self._images)
        return out

    def _enter(self) -> float:
        now = time.perf_counter()
        with self._lock:
            if not self._in_flight:
                self._busy_since = now
            self._in_flight += 1
        return now

    def _leave(self, t0: float) -> None:
        now = time.perf_counter()
        with self._lock:
            self._in_flight -= 1
            self._in_actor += now - t0
            if not self._in_flight:
                self._busy += now - self._busy_since

    def _hold_if_ending(self) -> None:
        if self._fault is not None:
            self._never.wait()  # this process is about to exit; Ray reruns the call on the next one

    def _end_process(self, e: BaseException) -> None:
        """Exit so that Ray restarts the actor on a fresh process; the calling batch, and every other
        one not answered yet, runs again there. Never returns."""
        with self._lock:
            first = self._fault is None
            if first:
                self._fault = first_line(e, typed=True)
        if first:
            print(f"labeling actor pid {os.getpid()}: device fault, ending the process:", file=sys.stderr)
            traceback.print_exception(e, file=sys.stderr)
            sys.stderr.flush()
            self._fault_seen.set()  # `watch` answers the driver with the cause
            threading.Timer(FAULT_GRACE_SECONDS, os._exit, args=(DEVICE_FAULT_EXIT,)).start()
        self._never.wait()


def new_actor(name: str, batches: int, args: tuple, **options):
    """A `LabelActor(*args)` named `name` (in `NAMESPACE`) with Ray `options`, and its thread
    groups: `batches` labeling calls at once, and two control threads (`watch` waits in one)."""
    cls = ray.remote(concurrency_groups={"control": 2})(LabelActor)
    cls = cls.options(name=name, namespace=NAMESPACE, max_concurrency=max(1, batches), **options)
    return cls.remote(*args)


def exit_cause(pid: int | None) -> str | None:
    """What Ray recorded of how the worker process `pid` ended (exit type and detail), or None.
    Read from the GCS worker table: Ray has no public call for it without a dashboard."""
    if pid is None:
        return None
    try:
        from ray._private.state import state
        from ray.core.generated import common_pb2, gcs_pb2

        rows = [gcs_pb2.WorkerTableData.FromString(b) for b in state._connect_and_get_accessor().get_worker_table()]
    except Exception:  # noqa: BLE001 - a private interface: without it the death is still logged, with less detail
        return None
    dead = [w for w in rows if w.pid == pid and not w.is_alive and w.exit_detail]
    if not dead:
        return None
    w = max(dead, key=lambda w: w.timestamp)
    detail = ""
    for sentence in " ".join(w.exit_detail.split()).split(". "):  # Ray's first sentences name the likely causes
        detail += sentence.rstrip(".") + ". "
        if len(detail) > 200:
            break
    return f"{common_pb2.WorkerExitType.Name(w.exit_type)}: {detail.strip()}"


class FailureBudget:
    """Actor failures over a sliding hour, against `per_hour`."""

    def __init__(self, per_hour: float):
        self.per_hour = per_hour
        self.times: deque[float] = deque()

    def add(self, now: float) -> int:
        """Count a failure at `now`; returns the failures of the last hour."""
        self.times.append(now)
        while self.times and self.times[0] <= now - HOUR:
            self.times.popleft()
        return len(self.times)

    def exceeded(self) -> bool:
        return len(self.times) > self.per_hour


@dataclass
class Slot:
    """One place in the pool: its actor (replaced if Ray cannot restart it) and what the driver knows."""

    index: int
    actor: Any
    pid: int | None = None  # the process that answered last; None while the slot is down
    last_pid: int | None = None  # the process before it went down
    watch: Any = None  # the waiting `watch` call while up
    ping: Any = None  # the waiting `ready` call while down
    down_since: float | None = None
    counted: bool = False  # the death that took it down is counted (and logged)
    shards: int = 0  # shard tasks it labels now


class ActorPool:
    """The driver's side of the labeling actors: start them, hand out the least loaded live one,
    notice deaths (logged with their cause and counted against the hourly budget), wait for Ray's
    restart or replace an actor it cannot restart, and end the job when the pool cannot recover."""

    def __init__(
        self,
        make: Callable[[str], Any],
        n: int,
        failures_per_hour: float,
        wait_timeout: float | None,
        say: Callable[[str], None] = lambda line: print(line, flush=True),
    ):
        self.make, self.say, self.wait_timeout = make, say, wait_timeout
        self.budget = FailureBudget(failures_per_hour)
        self._job = ray.get_runtime_context().get_job_id()
        self._made = 0  # actors created, for their names
        self.slots = [Slot(i, self._new(i)) for i in range(n)]
        self._refs: dict[Any, Slot] = {}
        self.failures = 0  # over the whole job
        self.last_failure = ""
        self._reported = time.monotonic()

    def start(self) -> dict[str, Any]:
        """Wait until every actor has its labeler (or one failed to build it); returns its info."""
        refs = [s.actor.info.remote() for s in self.slots]
        try:
            await_actors(refs)
            infos = ray.get(refs)
            pids = ray.get([s.actor.ready.remote() for s in self.slots])
        except ray.exceptions.RayTaskError as e:  # the caller shuts the pool down (start_pool)
            if isinstance(e.cause, LabelerLoadError):
                raise e.cause from None
            raise
        for slot, pid in zip(self.slots, pids, strict=True):
            self._up(slot, pid)
        return infos[0]

    def refs(self) -> list:
        """The calls to wait on beside the shard tasks (each slot's `watch` or `ready`)."""
        return list(self._refs)

    def owns(self, ref) -> bool:
        return ref in self._refs

    def pick(self) -> Slot:
        """The slot for a new shard: the least loaded of those up (of all, when none is)."""
        up = [s for s in self.slots if s.pid is not None] or self.slots
        slot = min(up, key=lambda s: (s.shards, s.index))
        slot.shards += 1
        return slot

    def handle(self, ref) -> None:
        """A `watch` or `ready` call of a slot has finished."""
        slot = self._refs.pop(ref)
        if ref == slot.watch:
            slot.watch = None
            try:
                pid, cause = ray.get(ref)
            except ray.exceptions.RayError:  # the actor died (or cannot be reached): `ready` tells which
                self._down(slot, None)
            else:
                self._down(slot, f"device fault: {cause}")
        elif ref == slot.ping:
            slot.ping = None
            try:
                pid = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, LabelerLoadError):
                    raise e.cause from None  # the restarted process cannot build the labeler: configuration
                raise
            except ray.exceptions.RayActorError as e:  # dead for good: Ray will not restart it
                if not slot.counted:
                    cause = exit_cause(slot.last_pid) or first_line(e, typed=True)
                    self._count(slot, f"cannot be restarted ({cause})", "a new actor takes its place")
                self._replace(slot)
            else:
                self._back(slot, pid)

    def check(self) -> None:
        """End the job when the pool cannot recover; say every minute what it waits for."""
        if self.budget.exceeded():
            raise PoolFailing(
                f"labeling actors failed {len(self.budget.times)} times in the last hour, more than "
                f"--max-actor-failures-per-hour {self.budget.per_hour:g}; the last: {self.last_failure}. "
                "Finished shards are kept: rerun the same command to resume"
            )
        now = time.monotonic()
        if all(s.pid is None for s in self.slots) and self.wait_timeout is not None:
            since = max(s.down_since or now for s in self.slots)
            if now - since >= self.wait_timeout:
                raise ClusterBusy(
                    f"gave up after --wait-timeout {self.wait_timeout:g}s: no labeling actor could be placed again "
                    f"(cluster free now: {describe(cluster_view().free)}); finished shards are kept: rerun to resume"
                )
        waiting = [s for s in self.slots if s.down_since is not None and now - s.down_since >= REPORT_EVERY]
        if waiting and now - self._reported >= REPORT_EVERY:
            self._reported = now
            which = ", ".join(f"{s.index} ({now - s.down_since:.0f}s)" for s in waiting)
            self.say(
                f"waiting for labeling actor(s) {which} to be placed again and load their models; "
                f"cluster free now: {describe(cluster_view().free)}"
            )

    def timings(self, timeout: float = 10.0) -> list[dict[str, float]]:
        """Each live actor's `timings()` (an actor that does not answer in time is left out)."""
        refs = [s.actor.timings.remote() for s in self.slots if s.pid is not None]
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        out = []
        for ref in ready:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError:
                continue
        return out

    def shutdown(self) -> None:
        for s in self.slots:
            ray.kill(s.actor)
        self._refs.clear()

    def _up(self, slot: Slot, pid: int) -> None:
        slot.pid, slot.down_since, slot.counted = pid, None, False
        slot.watch = slot.actor.watch.remote()
        self._refs[slot.watch] = slot

    def _down(self, slot: Slot, announced: str | None) -> None:
        """The slot's process ended (`announced`: it said why) or its `watch` failed."""
        slot.last_pid, slot.pid, slot.down_since = slot.pid, None, time.monotonic()
        if announced:
            self._count(slot, announced, "Ray restarts it and reruns its batches")
        else:
            self.say(f"labeling actor {slot.index} (pid {slot.last_pid}) stopped answering; Ray restarts it")
        slot.ping = slot.actor.ready.remote()  # answered by the restarted process (or fails: dead for good)
        self._refs[slot.ping] = slot

    def _back(self, slot: Slot, pid: int) -> None:
        waited = time.monotonic() - (slot.down_since or time.monotonic())
        if slot.counted:
            self.say(f"labeling actor {slot.index} is back after {waited:.0f}s (pid {slot.last_pid} -> {pid})")
        elif pid == slot.last_pid:  # not a death: its `watch` call was lost
            self.say(f"labeling actor {slot.index} answers again (same process, pid {pid})")
        else:
            cause = exit_cause(slot.last_pid) or "its process ended"
            self._count(slot, cause, f"it is back after {waited:.0f}s as pid {pid} and reruns its batches")
        self._up(slot, pid)

    def _replace(self, slot: Slot) -> None:
        metrics.actor_replaced("died")  # a restart is counted by the restarted process itself
        slot.actor, slot.counted = self._new(slot.index), False
        slot.ping = slot.actor.ready.remote()
        self._refs[slot.ping] = slot

    def _new(self, index: int):
        """A new actor for slot `index`, named so that `ray list actors` (and `ray kill`) find it."""
        self._made += 1
        return self.make(f"labeler-{self._job}-{index}-{self._made}")

    def _count(self, slot: Slot, cause: str, then: str) -> None:
        slot.counted = True
        self.failures += 1
        self.last_failure = f"actor {slot.index}: {cause}"
        n = self.budget.add(time.monotonic())
        self.say(
            f"labeling actor {slot.index} (pid {slot.last_pid}) failed: {cause}; {then} "
            f"({n} failure(s) in the last hour, --max-actor-failures-per-hour {self.budget.per_hour:g})"
        )


def await_actors(refs: list) -> None:
    """Wait until every actor answers (placed, its labeler built or failed), saying what it waits for
    every `REPORT_EVERY` seconds. What was free at the check may have been taken by another job
    since, and a large model takes a while to load: neither is a reason to give up, so
    `--wait-timeout` is not applied here, but the wait is never silent."""
    t0 = time.monotonic()
    while True:
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=REPORT_EVERY)
        if not pending:
            return
        print(
            f"waiting ({time.monotonic() - t0:.0f}s) for {len(pending)} of {len(refs)} labeling actor(s) to start "
            f"(placed by Ray as resources free up, then loading their models); "
            f"cluster free now: {describe(cluster_view().free)}",
            flush=True,
        )
