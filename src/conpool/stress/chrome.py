"""A scenario's trace for Perfetto and chrome://tracing, and the window of it the report draws.

:func:`write_trace` turns the pool's events of one scenario into Chrome's
Trace Event Format with :meth:`conpool.Tracer.chrome_trace` (connections as
spans on per-address tracks, connects, TLS, acquire waits), and adds what
the stress client measured: the loop probe's lateness as a counter, garbage
collections and the sampler's runs as spans, and the slowest requests.

:func:`timeline_window` picks the stretch of a scenario the report's
zoomable timeline shows, small enough to stay light in a browser.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import conpool

from .measure import GCWatch, LoopProbe, Raw

__all__ = ["MAX_TIMELINE_ITEMS", "timeline_window", "trace_events", "write_trace"]

#: Instant events of the hottest kinds kept per trace file.
HOT_KINDS = frozenset({"conn.reuse", "conn.release", "acquire.queued"})
HOT_LIMIT = 20_000

#: Spans drawn in the report's timeline at most (connections, waits, connects).
MAX_TIMELINE_ITEMS = 2500


def trace_events(
    raw: Sequence[Raw],
    *,
    t0_ns: int,
    probe: LoopProbe,
    gcw: GCWatch,
    sampler: Sequence[tuple[int, int]],
    slow: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The whole trace as a JSON-ready dict (``{"traceEvents": [...]}``).

    The instants a busy pool emits by the hundred thousand (``conn.reuse``,
    ``conn.release``, ``acquire.queued``) are kept for the first
    :data:`HOT_LIMIT` of each kind only, so that a long run still gives a
    file a browser opens; ``otherData.left_out`` counts the rest.
    """
    tracer = conpool.Tracer(capacity=max(len(raw), 1))
    hot: dict[str, int] = {}
    for ts, kind, ep, addr, cid, dur, detail in raw:
        if kind in HOT_KINDS:
            seen = hot[kind] = hot.get(kind, 0) + 1
            if seen > HOT_LIMIT:
                continue
        tracer.emit(kind, ep, addr, cid, dur, detail, ts_ns=ts)
    trace = tracer.chrome_trace()
    events: list[dict[str, Any]] = trace["traceEvents"]
    first = min((ts - (dur or 0) for ts, _k, _e, _a, _c, dur, _d in raw), default=t0_ns)
    # The client's own measurements start with the scenario, maybe before
    # the pool's first event: count from whichever came first.
    origin = min(first, t0_ns)
    shift = (first - origin) / 1000
    for ev in events:
        if "ts" in ev:
            ev["ts"] += shift
    for ev in events:
        ev.setdefault("tid", 0)  # the format asks for pid and tid on every event
    next_pid = max((ev["pid"] for ev in events), default=0) + 1

    def us(t_ns: int) -> float:
        """ns since the scenario's start -> µs since the trace's first event."""
        return (t0_ns + t_ns - origin) / 1000

    loop_pid, slow_pid = next_pid, next_pid + 1
    extra: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": loop_pid, "tid": 0,
         "args": {"name": "client event loop"}},
        {"name": "thread_name", "ph": "M", "pid": loop_pid, "tid": 1,
         "args": {"name": "garbage collections"}},
        {"name": "thread_name", "ph": "M", "pid": loop_pid, "tid": 2,
         "args": {"name": "stress sampler"}},
        {"name": "process_name", "ph": "M", "pid": slow_pid, "tid": 0,
         "args": {"name": "slowest requests"}},
    ]  # fmt: skip
    for at, late in zip(probe.at, probe.late, strict=True):
        extra.append(
            {"name": "loop lag", "ph": "C", "ts": us(at), "pid": loop_pid, "tid": 0,
             "args": {"ms": round(late / 1e6, 4)}}
        )  # fmt: skip
    for start, dur, gen in zip(gcw.start, gcw.duration, gcw.generation, strict=True):
        extra.append(
            {"name": f"gc gen {gen}", "cat": "gc", "ph": "X", "ts": us(start),
             "dur": dur / 1000, "pid": loop_pid, "tid": 1, "args": {"generation": gen}}
        )  # fmt: skip
    for start, dur in sampler:
        extra.append(
            {"name": "sample + drain", "cat": "stress", "ph": "X", "ts": us(start),
             "dur": dur / 1000, "pid": loop_pid, "tid": 2, "args": {}}
        )  # fmt: skip
    for lane, r in enumerate(slow):
        extra.append(
            {"name": f"request {r['total_ms']:.2f} ms", "cat": "request", "ph": "X",
             "ts": us(int(r["t_s"] * 1e9)), "dur": r["total_ms"] * 1000,
             "pid": slow_pid, "tid": lane + 1,
             "args": {"address": r["address"], "conn_id": r["conn_id"],
                      "parts_ms": r["parts_ms"], "flags": r["flags"]}}
        )  # fmt: skip
    trace["traceEvents"] = events + extra
    trace["otherData"] = {
        "tool": "conpool stress",
        "clock": "time.monotonic_ns",
        "left_out": {k: n - HOT_LIMIT for k, n in hot.items() if n > HOT_LIMIT},
    }
    return trace


def write_trace(
    path: str,
    scenario: str,
    raw: Sequence[Raw],
    *,
    t0_ns: int,
    probe: LoopProbe,
    gcw: GCWatch,
    sampler: Sequence[tuple[int, int]],
    slow: Sequence[dict[str, Any]],
) -> None:
    """Write the trace of ``scenario`` to ``path`` (atomically)."""
    trace = trace_events(raw, t0_ns=t0_ns, probe=probe, gcw=gcw, sampler=sampler, slow=slow)
    trace["otherData"]["scenario"] = scenario
    tmp = path + ".tmp"
    # One string, then one write: json.dump's chunked writes cost several times more.
    text = json.dumps(trace, separators=(",", ":"))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def timeline_window(
    lifetimes: Sequence[list[Any]],
    waits_all: Sequence[list[float]],
    connects_all: Sequence[list[Any]],
    elapsed: float,
) -> dict[str, Any]:
    """Connections (``[id, ip, start_s, end_s, reason]``), acquire waits
    (``[start_s, end_s]``) and connects (``[ip, start_s, end_s, status]``) of
    the first stretch of the run that holds at most
    :data:`MAX_TIMELINE_ITEMS` of them (0.6 s at most)."""
    end = min(elapsed, 0.6)
    while True:
        conns = [list(lt) for lt in lifetimes if lt[2] < end]
        waits = [w for w in waits_all if w[0] < end]
        connects = [c for c in connects_all if c[1] < end]
        if len(conns) + len(waits) + len(connects) <= MAX_TIMELINE_ITEMS or end < 0.005:
            break
        end /= 1.5
    if len(conns) + len(waits) + len(connects) > MAX_TIMELINE_ITEMS:
        waits = waits[: max(0, MAX_TIMELINE_ITEMS - len(conns) - len(connects))]
    return {
        "window_s": [0.0, round(end, 5)],
        "connections": conns,
        "waits": waits,
        "connects": connects,
    }
