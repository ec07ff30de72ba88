"""One writer per output directory, on any machine: a lease file in OUTPUT itself.

A job that writes into OUTPUT first creates `format.LEASE` there, exclusively: a hard link on a
filesystem (atomic on NFS as locally), a PUT with `If-None-Match: *` on S3. The file names the
holder (host, pid, Ray job, start) and carries a heartbeat that a thread of the holder rewrites
every `interval` seconds. A second job finds the file and refuses in one line naming the holder
(`LeaseHeld`, exit 2), unless the holder is gone:

- its heartbeat is older than the taker's `--lease-timeout` (and than three of the holder's own
  intervals): it stopped on another machine, or hangs;
- it ran on this machine (same boot, same pid namespace) and its process no longer exists: a
  killed driver's job is rerun at once, without waiting for the timeout.

A lease that is gone is taken over with a compare-and-swap (`Store.swap`: rename aside and check
on a filesystem, `If-Match` on S3), so of several jobs taking it at once one wins and the others
refuse. Every acquisition is read back before it counts. The holder's heartbeat checks that the
lease is still its own: if another job took it over (this job was paused past the timeout), the
holder is told (`on_lost`) and stops. On stores without conditional writes (`Store.exact_conditional`
is False) the same steps run as read-compare-write: a best effort, with the read-back after a
pause as the only guard against two jobs starting within moments of each other.

Ages are measured against the holder's own clock (the heartbeat is its wall time): the machines of
one cluster must agree on the time to well within `--lease-timeout` (NTP does).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import format as fmt
from .errors import UsageError
from .manifest import Contract, load_json
from .store import Store

DEFAULT_TIMEOUT = 600.0  # seconds; `c2f label --lease-timeout`
MAX_INTERVAL = 30.0  # the heartbeat of a long timeout: an unreadable beat or two costs nothing
SETTLE_SECONDS = 2.0  # where writes are not conditional: the pause before the read-back


class LeaseHeld(UsageError):
    """Another live job holds the output's lease; the message names it."""


class LeaseLost(UsageError):
    """This job's lease was taken over by another job (this one was paused past the timeout)."""


@dataclass
class Lease(Contract):
    """The lease file `format.LEASE`: who writes into this output now."""

    token: str  # random, one per acquisition: a holder knows its own lease by it
    host: str  # socket.gethostname() of the holder's driver
    pid: int  # the driver's process id on that host
    started: float  # unix time the holder took the lease
    heartbeat: float  # unix time of the holder's last heartbeat (its own clock)
    interval: float  # seconds between the holder's heartbeats
    ray_job: str = ""  # the Ray job submission id (`ray job submit`), when the driver is one
    machine: str = ""  # boot id + pid namespace: where equal, the pid can be checked directly
    pid_start: int = 0  # the pid's start time (clock ticks after boot, Linux): tells a reused pid

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        job = f", Ray job {self.ray_job}" if self.ray_job else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return (
            f"host {self.host}, pid {self.pid}{job}, since {since}, "
            f"last heartbeat {max(0.0, now - self.heartbeat):.0f}s ago"
        )


def heartbeat_interval(timeout: float) -> float:
    """A tenth of the timeout, within [0.2 s, MAX_INTERVAL]."""
    return min(MAX_INTERVAL, max(0.2, timeout / 10))


def machine_id() -> str:
    """This machine and pid namespace (Linux: boot id + the namespace's inode); "" elsewhere, where
    only the heartbeat can tell a holder's death."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The start time of `pid` (clock ticks after boot), 0 when unknown (not Linux), None when no
    such process is running (gone, or a zombie: killed and not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return 0 if _pid_exists(pid) else None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state is field 3, start 22
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[str] = set()  # tokens of the leases this process holds now


def gone(holder: Lease, timeout: float, now: float) -> str | None:
    """Why `holder` no longer holds its lease (it is taken over), or None while it is alive."""
    if holder.machine and holder.machine == machine_id():
        start = process_start(holder.pid)
        if start is None or (holder.pid_start and start and start != holder.pid_start):
            return "its process is gone"
        if holder.pid == os.getpid() and holder.token not in _HELD:
            return "left by an earlier job of this process"
    age = now - holder.heartbeat
    if age > max(timeout, 3 * holder.interval):
        return f"no heartbeat for {age:.0f}s (--lease-timeout {timeout:g}s)"
    return None


class OutputLease:
    """This job's hold on an output's lease: `acquire` it, `release` it at the end; meanwhile a
    daemon thread renews the heartbeat and calls `on_lost` if another job took the lease over."""

    def __init__(self, store: Store, record: Lease, version: str, on_lost: Callable[[], None] | None = None):
        self.store, self.record, self.version = store, record, version
        self.on_lost = on_lost
        self.lost: str | None = None  # why this job no longer holds the lease
        self.failures = 0  # heartbeats in a row that could not be written (a network blip, a full disk)
        self._renewing = threading.Lock()  # the heartbeat thread and `confirm` never renew at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="c2f-lease-heartbeat", daemon=True)

    @classmethod
    def acquire(
        cls,
        store: Store,
        timeout: float = DEFAULT_TIMEOUT,
        ray_job: str = "",
        say: Callable[[str], None] = print,
        on_lost: Callable[[], None] | None = None,
    ) -> OutputLease:
        """Take the lease of `store` (creating it, or taking over one whose holder is gone) and
        start the heartbeat; `LeaseHeld` when a live job holds it."""
        if not timeout > 0:
            raise UsageError(f"--lease-timeout must be > 0 seconds, got {timeout:g}")
        now = time.time()
        me = Lease(
            token=secrets.token_hex(16),
            host=socket.gethostname(),
            pid=os.getpid(),
            started=now,
            heartbeat=now,
            interval=heartbeat_interval(timeout),
            ray_job=ray_job,
            machine=machine_id(),
            pid_start=process_start(os.getpid()) or 0,
        )
        data = _encode(me)
        unreadable: bytes | None = None
        for _ in range(20):  # each pass sees the lease change: contention ends in a few
            version = store.create(fmt.LEASE, data)
            if version is not None:
                if held := cls._confirm(store, me, version, on_lost):
                    return held
                continue
            current = store.read_versioned(fmt.LEASE)
            if current is None:
                continue  # released meanwhile
            raw, version = current
            try:
                holder = Lease.from_json(load_json(raw, fmt.LEASE))
            except ValueError as e:
                if raw != unreadable:  # a lease being written (a store without atomic writes): look again
                    unreadable = raw
                    time.sleep(SETTLE_SECONDS)
                    continue
                taking = f"taking over the lease of {store}: its lease file does not parse ({e})"
            else:
                why = gone(holder, timeout, time.time())
                if why is None:
                    raise LeaseHeld(
                        f"{store} is being written by another `c2f label` ({holder.describe()}): wait for it to "
                        f"end or stop it; a lease without a heartbeat for --lease-timeout {timeout:g}s is taken over"
                    )
                taking = f"taking over the lease of {store} from {holder.describe()}: {why}"
            me = replace(me, heartbeat=time.time())
            data = _encode(me)
            version = store.swap(fmt.LEASE, data, version)
            if version is not None and (held := cls._confirm(store, me, version, on_lost)):
                say(taking)
                return held
        raise LeaseHeld(f"{store}: other jobs keep taking its lease; is another `c2f label` starting there?")

    @classmethod
    def _confirm(cls, store: Store, me: Lease, version: str, on_lost) -> OutputLease | None:
        """Read the lease back (after a pause where writes are not conditional): ours, or None."""
        if not store.exact_conditional:
            time.sleep(SETTLE_SECONDS)
        current = store.read_versioned(fmt.LEASE)
        if current is None or _token(current[0]) != me.token:
            return None
        held = cls(store, me, current[1], on_lost)
        _HELD.add(me.token)
        held._thread.start()
        return held

    # --- heartbeat ---------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.record.interval):
            try:
                found = self._check()
            except Exception:  # noqa: BLE001 - a network blip or a full disk: try again next time
                self.failures += 1
                continue
            self.failures = 0
            if self.lost is not None:
                if found and self.on_lost is not None:  # not when `confirm` found it: the job knows
                    self.on_lost()
                return

    def confirm(self) -> str | None:
        """Renew now, whatever the heartbeat's schedule: why the lease is no longer this job's, or
        None. A job asks before it writes what only the lease's holder may (the dataset files): a
        job paused past the timeout and woken finds its lease gone here even when its heartbeat has
        not run since."""
        self._check()
        return self.lost

    def _check(self) -> bool:
        """Renew unless the lease is known to be lost (the heartbeat thread and `confirm` one at a
        time); True when this call is the one that found it lost."""
        with self._renewing:
            if self.lost is not None:
                return False
            self.lost = self._renew()
            if self.lost is None:
                return False
            _HELD.discard(self.record.token)
            return True

    def _renew(self) -> str | None:
        """Write a new heartbeat; why the lease is no longer this job's, or None."""
        record = replace(self.record, heartbeat=time.time())
        data = _encode(record)
        current = self.store.read_versioned(fmt.LEASE)
        if current is None:
            # Removed (by hand, or by a job that took it over and ended): no one holds it, so hold it again.
            version = self.store.create(fmt.LEASE, data)
            if version is None:
                return self._taken()
        elif _token(current[0]) != self.record.token:
            return self._taken(current[0])
        elif self.store.local:
            # Rename over the file (never absent, so a job starting now cannot slip in and create it).
            self.store.write_bytes(fmt.LEASE, data)
            version = ""
        else:
            version = self.store.swap(fmt.LEASE, data, current[1])
            if version is None:
                return self._taken()
        self.record, self.version = record, version
        return None

    def _taken(self, raw: bytes | None = None) -> str:
        if raw is None:
            current = self.store.read_versioned(fmt.LEASE)
            raw = current[0] if current else None
        try:
            holder = Lease.from_json(load_json(raw or b"", fmt.LEASE)).describe()
        except ValueError:
            holder = "another job"
        return f"the lease of {self.store} was taken over by {holder}: this job stopped"

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if it is still this job's."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        _HELD.discard(self.record.token)
        if self.lost is not None:
            return
        with contextlib.suppress(OSError):
            current = self.store.read_versioned(fmt.LEASE)
            if current is not None and _token(current[0]) == self.record.token:
                self.store.remove(fmt.LEASE)


def _encode(lease: Lease) -> bytes:
    import json

    return (json.dumps(lease.to_json(), sort_keys=True) + "\n").encode()


def _token(raw: bytes) -> str | None:
    try:
        return Lease.from_json(load_json(raw, fmt.LEASE)).token
    except ValueError:
        return None
