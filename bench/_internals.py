"""Every use of conpool's private names in bench, in one place.

The core-alone cells (``scale``, ``sweep``) drive ``conpool._state.PoolState``
directly; ``tracing`` reads the pool's trace guard and the tracer's count;
``profiling`` anchors its counts on functions of ``conpool/_pool.py``.  When
conpool's internals move, this module is the one to fix.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from typing import Any

import conpool

# Regexes naming the function whose first calls count the operations
# (bench.profiling): Pool.release for acquire + release, a coroutine that
# never suspends; the lease's __aexit__ for a request through pool.connection().
RELEASE_ANCHOR = r"conpool/_pool\.py:\d+\((Pool\.)?release\)"
LEASE_EXIT_ANCHOR = r"conpool/_pool\.py:\d+\(_Lease\.__aexit__\)"


class _Handle:
    """What the core keeps for a connection; it only ever asks ``_usable``."""

    __slots__ = ()

    def _usable(self, idle: float) -> bool:
        return True


def _state(per_endpoint: int, max_idle: float, lifetime: float) -> Any:
    from conpool._state import PoolState

    return PoolState(
        conpool.Config(
            max_connections_per_endpoint=per_endpoint,
            max_idle_time=max_idle,
            max_connection_lifetime=lifetime,
        )
    )


def _dial(state: Any, ep: Any) -> None:
    from conpool._state import DIAL

    if state.acquire(ep, 0.0) != DIAL:
        raise RuntimeError("expected a dial slot")


def build_core(n_endpoints: int, ips: list[str]) -> tuple[Any, list[conpool.Endpoint]]:
    """A PoolState of ``n_endpoints`` endpoints of the addresses ``ips``,
    one idle connection on every address; and the endpoint keys."""
    n_addrs = len(ips)
    state = _state(n_addrs, 1e6, 1e7)
    keys = [conpool.Endpoint(f"e{i}.scale.test", 443) for i in range(n_endpoints)]
    handle = _Handle()
    for key in keys:
        ep = state.endpoint(key)
        state.set_addresses(ep, ips)
        recs = []
        for ip in ips:
            _dial(state, ep)
            # What pick_address does once it has chosen ``ip`` (least-busy
            # chooses each address once, in order): calling it scans every
            # address, which makes 640,000 records take minutes.
            ep.addresses[ip].pending += 1
            ep.turn += 1
            recs.append(state.connected(ep, ip, handle, 0.0))
        for rec in recs:
            state.release(rec, 0.0, True)
    for key in keys:
        ep = state.endpoints[key]
        if ep.idle != n_addrs or (n_addrs > 1 and len(ep.idle_addrs) != n_addrs):
            raise RuntimeError(f"expected {n_addrs} idle addresses on {key}")
        if any(a.pending or a.open != 1 or len(a.idle) != 1 for a in ep.addresses.values()):
            raise RuntimeError(f"expected one idle connection per address on {key}")
    if state.total != n_endpoints * n_addrs:
        raise RuntimeError(f"{state.total} connections, expected {n_endpoints * n_addrs}")
    return state, keys


def core_pairs(state: Any, order: list[conpool.Endpoint]) -> Callable[[int], None]:
    """``batch(k)``: k acquire + release pairs of the core, visiting the keys
    in ``order`` cyclically: what the shell does minus the clock and the I/O."""
    it = itertools.cycle(order)
    endpoints = state.endpoints
    acquire = state.acquire
    release = state.release

    def batch(k: int) -> None:
        now = 1.0
        for key in itertools.islice(it, k):
            rec = acquire(endpoints[key], now)
            release(rec, now, True)

    return batch


def core_at_rest(state: Any) -> bool:
    """Nothing to close or wake: the core's pairs were all reuses."""
    return not state.to_close and not state.to_wake


def build_sweep(n: int, n_endpoints: int = 100) -> Any:
    """``n`` idle records over ``n_endpoints`` endpoints; record i became idle
    at time i, so that at ``max_idle + k - 0.5`` exactly k have expired."""
    state = _state(-(-n // n_endpoints), 1e6, 1e8)
    handle = _Handle()
    eps = []
    for i in range(n_endpoints):
        ep = state.endpoint(conpool.Endpoint(f"s{i}.sweep.test", 443))
        state.set_addresses(ep, ["127.0.2.1"])
        eps.append(ep)
    recs = []
    for i in range(n):
        ep = eps[i % n_endpoints]
        _dial(state, ep)
        ip = state.pick_address(ep, 0.0)
        assert ip is not None
        recs.append(state.connected(ep, ip, handle, 0.0))
    for i, rec in enumerate(recs):
        state.release(rec, float(i), True)
    return state


def timed_sweep(state: Any, now: float) -> tuple[int, int, int]:
    """(wall ns, CPU ns, expired) of one ``sweep(now)``."""
    w0, c0 = time.perf_counter_ns(), time.process_time_ns()
    state.sweep(now)
    c1, w1 = time.process_time_ns(), time.perf_counter_ns()
    expired = len(state.to_close)
    state.to_close.clear()
    return w1 - w0, c1 - c0, expired


def trace_events(tracer: conpool.Tracer) -> int:
    """Events the tracer has recorded (its ring's write count)."""
    return int(tracer._next)


def _loop(body: str) -> Callable[[Any, int], None]:
    """``f(pool, n)``: ``body`` ``n`` times, compiled as a function (so that
    ``pool`` is a local, as in the pool's own methods)."""
    namespace: dict[str, Any] = {}
    exec(f"def f(pool, n):\n    for _ in range(n):\n{body}", namespace)
    f: Callable[[Any, int], None] = namespace["f"]
    return f


# Ten guards per turn, so that the loop's own cost is small beside them.
_guards = _loop("        if pool._trace is not None:\n            pass\n" * 10)
_empty = _loop("        pass\n")


def guard_ns(pool: conpool.Pool, n: int = 50_000) -> float:
    """Nanoseconds of one ``pool._trace is not None`` check, the guard of
    every trace point: the loop of ten minus the empty loop, CPU time,
    median of 7."""
    clock = time.process_time_ns
    diffs = []
    for _ in range(7):
        t0 = clock()
        _guards(pool, n)
        t1 = clock()
        _empty(pool, n)
        t2 = clock()
        diffs.append(((t1 - t0) - (t2 - t1)) / (10 * n))
    diffs.sort()
    return max(diffs[len(diffs) // 2], 0.0)


def count_traced_calls(run: Callable[[], None]) -> int:
    """Calls into the tracing code (``Hooks``, ``Tracer``, ``Pool._emit``)
    while ``run()`` runs."""
    import conpool._hooks
    import conpool._trace

    files = {conpool._hooks.__file__, conpool._trace.__file__}
    calls = 0

    def profile(frame: Any, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            code = frame.f_code
            if code.co_filename in files or code.co_name == "_emit":
                calls += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls
