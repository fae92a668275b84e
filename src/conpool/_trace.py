"""Events the pool emits, and a bounded ring buffer to keep them in.

Trace points are named ``<scope>.<op>[.started|.complete|.failed]``.  With no
tracer attached a trace point costs the pool one attribute check; with one
attached, one tuple and one list store.  The buffer overwrites its oldest
event when full and counts what it dropped, so tracing can stay on.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "Tracer"]

_now_ns = time.monotonic_ns


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the pool did.  Never carries payload bytes.

    :ivar ts_ns: :func:`time.monotonic_ns` when it happened (for a span, when it ended).
    :ivar kind: ``"connect.complete"``, ``"conn.close"``, ...
    :ivar endpoint: the endpoint as text (``"pool.test:8080"``), or ``""``.
    :ivar address: the IP dialled or reused, or ``""``.
    :ivar conn_id: the pool's connection number, or 0.
    :ivar duration_ns: the span's length for events that end one, else None.
    :ivar detail: a short human-readable note (a close reason, an error text).
    """

    ts_ns: int
    kind: str
    endpoint: str
    address: str
    conn_id: int
    duration_ns: int | None
    detail: str


Event.__module__ = "conpool"

#: One event as :meth:`Tracer.rows_since` gives it: ``(ts_ns, kind, endpoint,
#: address, conn_id, duration_ns, detail)``, the endpoint as the pool passed it.
Row = tuple[int, str, Any, str, int, "int | None", str]

# In the address column: "the endpoint column holds a connection record"
# (an event stored by Tracer._record; see there).
_BY_RECORD: Any = object()


class Tracer:
    """A fixed-capacity ring buffer of pool events.

    :param capacity: how many events to keep; older ones are overwritten.
    """

    __slots__ = (
        "_addr",
        "_cid",
        "_detail",
        "_dur",
        "_ep",
        "_kind",
        "_next",
        "_ts",
        "capacity",
    )

    def __init__(self, capacity: int = 65536) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, got {capacity!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._next = 0  # total events ever emitted
        self._columns()

    def _columns(self) -> None:
        # One preallocated list per field rather than a tuple per event: a
        # ring of tuples that reference live objects keeps feeding the cyclic
        # garbage collector long-lived containers, and every collection of
        # the old generations then walks all of them.  Storing into the
        # columns allocates nothing but the timestamp.
        cap = self.capacity
        self._ts: list[int | float] = [0] * cap
        self._kind: list[str] = [""] * cap
        self._ep: list[object] = [""] * cap
        self._addr: list[Any] = [""] * cap
        self._cid: list[int] = [0] * cap
        self._dur: list[int | None] = [None] * cap
        self._detail: list[str] = [""] * cap

    @property
    def dropped(self) -> int:
        """Events overwritten since the start (or the last :meth:`clear`)."""
        return max(0, self._next - self.capacity)

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
        """Record one event (the pool calls this; users may too)."""
        n = self._next
        i = n % self.capacity
        self._ts[i] = _now_ns() if ts_ns is None else ts_ns
        self._kind[i] = kind
        self._ep[i] = endpoint
        self._addr[i] = address
        self._cid[i] = conn_id
        self._dur[i] = duration_ns
        self._detail[i] = detail
        self._next = n + 1

    def _record(self, kind: str, rec: Any, now: float) -> None:
        """The pool's hottest events (a connection handed out, given back).

        Cheaper than :meth:`emit` in three ways: the connection record stands
        for the endpoint, address and id (read back when the events are; a
        record's never change); the columns that would hold None and "" are
        left alone; and the time is the ``time.monotonic()`` the pool has
        just read, kept as float seconds until read back.  The ring keeps at
        most ``capacity`` records alive, a few hundred bytes each and no
        sockets (the pool drops a closed record's connection).
        """
        n = self._next
        i = n % self.capacity
        self._ts[i] = now
        self._kind[i] = kind
        self._ep[i] = rec
        self._addr[i] = _BY_RECORD
        self._next = n + 1

    @property
    def emitted(self) -> int:
        """Events emitted since the start (or the last :meth:`clear`): the
        position the next one takes, to pass to :meth:`rows_since` later."""
        return self._next

    def rows_since(self, position: int) -> Iterator[Row]:
        """The kept events from ``position`` on (an earlier :attr:`emitted`),
        oldest first, read from the ring one at a time: no copy of it.

        Each is a tuple in :class:`Event`'s field order, except that the
        endpoint is the object the pool passed (``str()`` of it is
        :attr:`Event.endpoint`).  Events the ring overwrote before they
        were read are skipped: ``max(0, dropped - position)`` of them.
        Consume the iterator before the pool runs again (with no ``await`` in
        between): events emitted meanwhile may overwrite the ones not read.

        :param position: 0 for every kept event, or :attr:`emitted` as it was.
        :raises TypeError: ``position`` is not an int.
        :raises ValueError: ``position`` is negative or beyond :attr:`emitted`
            (a position from before :meth:`clear`).
        """
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError(f"position must be an int, got {position!r}")
        if not 0 <= position <= self._next:
            raise ValueError(f"position must be between 0 and emitted={self._next}, got {position}")
        return self._rows(max(position, self._next - self.capacity), self._next)

    def _rows(self, start: int, end: int) -> Iterator[Row]:
        cap = self.capacity
        ts, kind, ep, addr, cid, dur, detail = (
            self._ts,
            self._kind,
            self._ep,
            self._addr,
            self._cid,
            self._dur,
            self._detail,
        )
        for k in range(start, end):
            i = k % cap
            if addr[i] is _BY_RECORD:
                rec: Any = ep[i]
                # Float seconds from time.monotonic(), the clock monotonic_ns()
                # reads.  A double holds it to within t x 2e-16: round() gives
                # the very nanosecond while the machine has been up less than
                # about three weeks, one or two off after that, and events
                # lie much further apart than that, so their order holds.
                yield (round(ts[i] * 1e9), kind[i], rec.ep.key, rec.addr.ip, rec.id, None, "")
            else:
                yield (int(ts[i]), kind[i], ep[i], addr[i], cid[i], dur[i], detail[i])

    def events(self) -> list[Event]:
        """Every kept event, oldest first."""
        return [
            Event(ts, kind, str(ep) if ep else "", addr, cid, dur, detail)
            for ts, kind, ep, addr, cid, dur, detail in self.rows_since(0)
        ]

    def clear(self) -> None:
        """Forget every event and reset :attr:`dropped`."""
        self._next = 0
        self._columns()

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    def __repr__(self) -> str:
        return f"<conpool.Tracer {len(self)}/{self.capacity} events, {self.dropped} dropped>"

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        """One JSON object per line, one line per event."""
        with open(path, "w", encoding="utf-8") as f:
            for ev in self.events():
                f.write(
                    json.dumps(
                        {
                            "ts_ns": ev.ts_ns,
                            "kind": ev.kind,
                            "endpoint": ev.endpoint,
                            "address": ev.address,
                            "conn_id": ev.conn_id,
                            "duration_ns": ev.duration_ns,
                            "detail": ev.detail,
                        }
                    )
                    + "\n"
                )

    def chrome_trace(self) -> dict[str, Any]:
        """The events in Chrome's Trace Event Format (Perfetto and
        chrome://tracing open it).

        * each address is a process; each connection's lifetime (from the
          start of its connect to its close, named by its close reason) is a
          complete event (``ph: X``) on a lane of that process, lanes reused
          so that spans on one lane never overlap;
        * connect attempts, TLS handshakes and resolutions are spans on
          lanes of their own, acquire waits on the "acquire waits" process;
        * everything else is an instant event (``ph: i``).

        Timestamps are microseconds from the first event.
        """
        events = self.events()
        t0 = min((ev.ts_ns - (ev.duration_ns or 0) for ev in events), default=0)
        end_ts = max((ev.ts_ns for ev in events), default=0)
        out: list[dict[str, Any]] = []
        procs: dict[str, int] = {}
        lanes: dict[tuple[int, str], list[int]] = {}  # (pid, group) -> lane end times

        def pid_of(name: str) -> int:
            return procs.setdefault(name, len(procs) + 1)

        def lane(pid: int, group: str, start: int, end: int) -> int:
            ends = lanes.setdefault((pid, group), [])
            for i, busy_until in enumerate(ends):
                if busy_until <= start:
                    ends[i] = end
                    return i
            ends.append(end)
            return len(ends) - 1

        def span(
            name: str, pid: int, group: str, base: int, start: int, end: int, args: Any
        ) -> None:
            tid = base + lane(pid, group, start, end)
            out.append(
                {
                    "name": name,
                    "cat": group,
                    "ph": "X",
                    "ts": (start - t0) / 1000,
                    "dur": max(end - start, 0) / 1000,
                    "pid": pid,
                    "tid": tid,
                    "args": args,
                }
            )

        opened: dict[int, Event] = {}
        for ev in events:
            args: dict[str, Any] = {"endpoint": ev.endpoint}
            if ev.address:
                args["address"] = ev.address
            if ev.conn_id:
                args["conn_id"] = ev.conn_id
            if ev.detail:
                args["detail"] = ev.detail
            if ev.kind == "connect.complete" and ev.conn_id:
                opened[ev.conn_id] = ev
            if ev.kind == "conn.close" and ev.conn_id in opened:
                began = opened.pop(ev.conn_id)
                start = began.ts_ns - (began.duration_ns or 0)
                pid = pid_of(f"address {ev.address}")
                name = f"conn #{ev.conn_id} ({ev.detail})"
                span(name, pid, "connection", 1, start, ev.ts_ns, args)
            if ev.duration_ns is not None and ev.kind != "conn.close":
                start = ev.ts_ns - ev.duration_ns
                if ev.kind.startswith("acquire."):
                    span(ev.kind, pid_of("acquire waits"), "wait", 1, start, ev.ts_ns, args)
                else:
                    where = f"address {ev.address}" if ev.address else "pool"
                    span(ev.kind, pid_of(where), "attempt", 1000, start, ev.ts_ns, args)
            else:
                where = f"address {ev.address}" if ev.address else "pool"
                out.append(
                    {
                        "name": ev.kind,
                        "cat": ev.kind.split(".", 1)[0],
                        "ph": "i",
                        "s": "t",
                        "ts": (ev.ts_ns - t0) / 1000,
                        "pid": pid_of(where),
                        "tid": 0,
                        "args": args,
                    }
                )
        for conn_id, began in opened.items():
            # Still open when the trace was taken: the span runs to the end.
            start = began.ts_ns - (began.duration_ns or 0)
            pid = pid_of(f"address {began.address}")
            args = {"endpoint": began.endpoint, "address": began.address, "conn_id": conn_id}
            span(f"conn #{conn_id} (open)", pid, "connection", 1, start, end_ts, args)
        meta: list[dict[str, Any]] = []
        for name, pid in procs.items():
            meta.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}})
            meta.append(
                {"name": "thread_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "events"}}
            )
        for (pid, group), ends in lanes.items():
            base = {"connection": 1, "wait": 1, "attempt": 1000}[group]
            for i in range(len(ends)):
                label = f"{group} lane {i + 1}"
                meta.append(
                    {
                        "name": "thread_name",
                        "ph": "M",
                        "pid": pid,
                        "tid": base + i,
                        "args": {"name": label},
                    }
                )
        out.sort(key=lambda e: (e["ts"], e["pid"], e["tid"]))
        return {"traceEvents": meta + out, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`chrome_trace` as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.chrome_trace(), f)


Tracer.__module__ = "conpool"
