"""What the stress runner measures besides latency: where each request's time
went, how late the event loop ran, garbage collections, and CPU.

* :class:`StressTracer` is a :class:`conpool.Tracer` that also hands the
  events of one request (its acquire wait, its dial, TLS, resolution, failed
  attempts) to the client task that made it, through a context variable: the
  pool emits those events in the acquiring task (or a child of it).  It is
  drained incrementally (:meth:`StressTracer.take`): no copy of the whole
  ring, no reallocation, so the sampler stays short.
* :class:`LoopProbe` sleeps 10 ms at a time and records how late it woke:
  the event loop's lag, as any ready callback sees it.
* :class:`GCWatch` records every collection of the cyclic garbage collector
  (``gc.callbacks``): when, which generation, how long.
* :func:`cpu_snapshot` reads the CPU a process used and the time it spent
  runnable but not running (``/proc/PID/schedstat``).
"""

from __future__ import annotations

import contextvars
import gc
import os
import time
from array import array
from collections.abc import Callable
from typing import Any

import anyio

import conpool
from conpool._trace import Row

__all__ = [
    "PROBE_INTERVAL",
    "Raw",
    "GCWatch",
    "HandoffTracer",
    "LoopProbe",
    "Requests",
    "Slot",
    "StressTracer",
    "cpu_delta",
    "cpu_snapshot",
    "current_slot",
]

#: Seconds the loop probe sleeps between its measurements.
PROBE_INTERVAL = 0.010


class Slot:
    """The pool's events of the request a client task is making (reset per request)."""

    __slots__ = (
        "budget_ns",
        "conn_id",
        "dial_end_ns",
        "dial_start_ns",
        "failures",
        "got_ns",
        "granted_ns",
        "handed_ns",
        "ip",
        "released_ns",
        "resolve_ns",
        "retries",
        "tls_ns",
        "wait_ns",
        "xend_ns",
    )

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.wait_ns = 0
        self.granted_ns = 0
        # When the dial's wait for the fleet budget ended: its lease
        # (budget.granted), or an idle connection of its own pool instead
        # (budget.gave_up).
        self.budget_ns = 0
        self.dial_start_ns = 0
        self.dial_end_ns = 0
        self.tls_ns = 0
        self.resolve_ns = 0
        self.failures = 0
        self.retries = 0
        # Set by a driver that sees the connection (got it, finished the exchange) ...
        self.got_ns = 0
        self.xend_ns = 0
        # ... or by HandoffTracer from the pool's conn.reuse and conn.release.
        self.handed_ns = 0
        self.released_ns = 0
        # The connection the request got, for a driver that cannot say.
        self.ip = ""
        self.conn_id = 0


current_slot: contextvars.ContextVar[Slot | None] = contextvars.ContextVar(
    "conpool_stress_slot", default=None
)

_PER_REQUEST = frozenset(
    {
        "acquire.granted",
        "connect.started",
        "connect.complete",
        "connect.failed",
        "connect.retry",
        "tls.complete",
        "resolve.complete",
        "budget.granted",
        "budget.gave_up",
    }
)


#: One event as the runner folds it (see :meth:`conpool.Tracer.rows_since`).
Raw = Row


class StressTracer(conpool.Tracer):
    """A tracer that also tells each request which of its events were its own."""

    __slots__ = ("_cursor",)

    def __init__(self, capacity: int = 65536) -> None:
        super().__init__(capacity)
        self._cursor = 0

    def emit(
        self,
        kind: str,
        endpoint: object = "",
        address: str = "",
        conn_id: int = 0,
        duration_ns: int | None = None,
        detail: str = "",
        ts_ns: int | None = None,
    ) -> None:
        if kind in _PER_REQUEST:
            slot = current_slot.get()
            if slot is not None:
                if ts_ns is None:
                    ts_ns = time.monotonic_ns()
                if kind == "acquire.granted":
                    slot.wait_ns = duration_ns or 0
                    slot.granted_ns = ts_ns
                elif kind == "connect.started":
                    if not slot.dial_start_ns:
                        slot.dial_start_ns = ts_ns
                elif kind == "connect.complete":
                    slot.dial_end_ns = ts_ns
                    slot.ip = address
                    slot.conn_id = conn_id
                elif kind == "tls.complete":
                    slot.tls_ns += duration_ns or 0
                elif kind == "resolve.complete":
                    slot.resolve_ns += duration_ns or 0
                elif kind == "connect.failed":
                    slot.failures += 1
                elif kind == "budget.granted" or kind == "budget.gave_up":
                    slot.budget_ns = ts_ns
                else:
                    slot.retries += 1
        conpool.Tracer.emit(self, kind, endpoint, address, conn_id, duration_ns, detail, ts_ns)

    def take(self, full: bool = True) -> tuple[list[Raw], dict[str, int], int]:
        """The events emitted since the last call, oldest first; how many of
        each kind; and how many the ring overwrote before they could be read.

        With ``full=False`` the two hottest kinds (``conn.reuse``,
        ``conn.release``) are only counted (releases per address, under
        ``"conn.release@IP"``), not returned: the drain then allocates
        almost nothing, so it neither holds the loop nor feeds the garbage
        collector.
        """
        start = self._cursor
        end = self.emitted
        lost = max(0, self.dropped - start)
        out: list[Raw] = []
        counts: dict[str, int] = {}
        append = out.append
        # (Each row is freed before the next is read: the drain does not
        # feed the garbage collector.)
        for row in self.rows_since(start):
            kd = row[1]
            counts[kd] = counts.get(kd, 0) + 1
            if not full and (kd == "conn.reuse" or kd == "conn.release"):
                if kd == "conn.release":
                    key = "conn.release@" + row[3]
                    counts[key] = counts.get(key, 0) + 1
                continue
            append(row)
        self._cursor = end
        return out, counts, lost


class HandoffTracer(StressTracer):
    """A :class:`StressTracer` that also gives each request the moments the pool
    handed its connection out and took it back (``conn.reuse``,
    ``conn.release``), for drivers that never hold the connection themselves
    (an HTTP client over the pool's transport).  It costs the pool's two
    hottest events a call and a context lookup each, so the plain driver
    does without it."""

    __slots__ = ()

    def _record(self, kind: str, rec: Any, now: float) -> None:
        slot = current_slot.get()
        if slot is not None:
            if kind == "conn.reuse":
                slot.handed_ns = round(now * 1e9)
                slot.ip = rec.addr.ip
                slot.conn_id = rec.id
            elif kind == "conn.release":
                slot.released_ns = round(now * 1e9)
        conpool.Tracer._record(self, kind, rec, now)


class Requests:
    """One row per successful request, in compact arrays (nanoseconds since t0)."""

    FIELDS = (
        "start",
        "got",
        "xend",
        "end",
        "wait",
        "budget",
        "resume",
        "resolve",
        "dial",
        "tls",
        "failures",
        "conn",
        "addr",
    )

    def __init__(self) -> None:
        for name in self.FIELDS:
            setattr(self, name, array("q"))
        self.addresses: list[str] = []
        self._index: dict[str, int] = {}

    def address_index(self, ip: str) -> int:
        i = self._index.get(ip)
        if i is None:
            i = self._index[ip] = len(self.addresses)
            self.addresses.append(ip)
        return i

    def __len__(self) -> int:
        return len(self.column("start"))

    def column(self, name: str) -> array[int]:
        col: array[int] = getattr(self, name)
        return col


class LoopProbe:
    """Sleeps :data:`PROBE_INTERVAL` again and again, recording how late it woke,
    and how much of each interval the loop's thread spent waiting for a CPU
    (``/proc/self/schedstat``, where there is one)."""

    def __init__(self, t0_ns: int) -> None:
        self.t0_ns = t0_ns
        self.at = array("q")  # wake time, ns since t0
        self.late = array("q")  # ns later than asked
        self.runqueue = array("q")  # ns runnable but not running since the last wake

    async def run(self) -> None:
        mono = time.monotonic_ns
        interval_ns = int(PROBE_INTERVAL * 1e9)
        waited = _runqueue_reader()
        before = waited()
        while True:
            asked = mono()
            await anyio.sleep(PROBE_INTERVAL)
            woke = mono()
            self.at.append(woke - self.t0_ns)
            self.late.append(max(0, woke - asked - interval_ns))
            now = waited()
            self.runqueue.append(max(0, now - before))
            before = now

    def lag_at(self) -> Callable[[int], int]:
        """A function: the probe's lateness measured nearest to a time (ns since t0)."""
        at, late = self.at, self.late
        n = len(at)
        if n == 0:
            return lambda t: 0
        import bisect

        def lag(t: int) -> int:
            # The first probe that woke at or after t: the loop iteration
            # that delayed it is the one that ran the request's answer.
            i = bisect.bisect_left(at, t)
            return late[min(i, n - 1)]

        return lag


def _runqueue_reader() -> Callable[[], int]:
    """A function: ns this thread has spent runnable but not running, so far
    (always 0 where /proc/thread-self/schedstat cannot be read)."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        int(os.pread(fd, 128, 0).split()[1])
    except (OSError, IndexError, ValueError):
        return lambda: 0

    def read() -> int:
        try:
            return int(os.pread(fd, 128, 0).split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    return read


class GCWatch:
    """Every garbage collection while installed: start (ns since t0), duration, generation."""

    def __init__(self, t0_ns: int) -> None:
        self.t0_ns = t0_ns
        self.start = array("q")
        self.duration = array("q")
        self.generation = array("b")
        self._began = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic_ns()
        if phase == "start":
            self._began = now
        elif self._began:
            self.start.append(self._began - self.t0_ns)
            self.duration.append(now - self._began)
            self.generation.append(info.get("generation", 0))
            self._began = 0

    def __enter__(self) -> GCWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


# ----------------------------------------------------------------------------
# CPU

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot(pid: int | None = None) -> dict[str, float] | None:
    """CPU seconds used (user, system) and seconds spent waiting to run, by
    ``pid`` (this process when None), from /proc; None where /proc is absent."""
    who = "self" if pid is None else str(pid)
    try:
        with open(f"/proc/{who}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        if pid is None:
            t = os.times()
            nan = float("nan")
            return {"user_s": t.user, "system_s": t.system, "running_s": nan, "runqueue_s": nan}
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)): utime is field 14, stime 15;
    # the children's (cutime, cstime: 16, 17) are left out.
    user = int(fields[11]) / _TICK
    system = int(fields[12]) / _TICK
    runqueue = running = float("nan")
    try:
        # The main thread's (the event loop's): ns on the CPU, ns runnable
        # but waiting for one.
        with open(f"/proc/{who}/schedstat", encoding="ascii") as f:
            parts = f.read().split()
        running = int(parts[0]) / 1e9
        runqueue = int(parts[1]) / 1e9
    except (OSError, IndexError, ValueError):
        pass
    return {"user_s": user, "system_s": system, "running_s": running, "runqueue_s": runqueue}


def machine_snapshot() -> dict[str, float] | None:
    """Busy and total CPU seconds of the whole machine (every core), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            first = f.readline().split()
    except OSError:
        return None
    values = [int(v) / _TICK for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return {"busy_s": sum(values) - idle, "total_s": sum(values)}


def cpu_delta(
    before: dict[str, float] | None, after: dict[str, float] | None, wall_s: float
) -> dict[str, Any] | None:
    """CPU used between two snapshots, as seconds and as a share of the wall time."""
    if before is None or after is None or wall_s <= 0:
        return None
    user = after["user_s"] - before["user_s"]
    system = after["system_s"] - before["system_s"]
    runqueue = after["runqueue_s"] - before["runqueue_s"]
    out: dict[str, Any] = {
        "user_s": round(user, 4),
        "system_s": round(system, 4),
        "cpu_s": round(user + system, 4),
        "cpu_share": round((user + system) / wall_s, 4),
    }
    running = after["running_s"] - before["running_s"]
    if runqueue == runqueue:  # not NaN
        out["loop_thread_cpu_s"] = round(running, 4)
        out["runqueue_s"] = round(runqueue, 4)
        out["runqueue_share"] = round(runqueue / wall_s, 4)
    return out
