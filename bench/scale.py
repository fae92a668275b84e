"""Scale: does the pool's cost stay flat as it grows?

Four workloads:

* ``scale``: the uncontended acquire + release with 1, 100 and 10,000
  endpoints and 1 or 64 addresses per endpoint, every address holding one
  idle connection.

  - ``core-a1`` / ``core-a64``: the state machine alone
    (:class:`conpool._state.PoolState`, no I/O, no event loop; fake handles
    whose ``_usable()`` says yes), N = 1, 100, 10,000 endpoints.  10,000
    endpoints of real sockets would be 640,000 descriptors with 64
    addresses; the core is what could grow with them.
  - ``pool-a1`` / ``pool-a64``: the full ``Pool`` on uvloop with real idle
    connections to echo listeners on 127.0.2.1 (-.64) in another process:
    N = 1, 100, 1,000 endpoints with one address, N = 1, 100 with 64
    (6,400 connections), names resolved by a ``StaticResolver``.

  Each cell times two access patterns: ``same`` (one endpoint again and
  again: the hot path) and ``spread`` (every endpoint in turn, in a shuffled
  cyclic order: what a client of many services does).  The ratio is each
  cell's CPU µs per pair over the 1-endpoint, 1-address cell of its family,
  paired within a repeat; target: at most 1.2.

* ``sweep``: the core's expiry sweep with 100,000 idle connections (100
  endpoints of 1,000), timed when 0, 10, 1,000 and 100,000 of them expire;
  µs per sweep and per expired connection.  The sweep should cost what
  expires, not what is idle.  The objects built for it are frozen out of
  the cyclic GC (``gc.freeze()``) so that a full collection of the
  benchmark's own 100,000 records does not land in one timed sweep.

* ``memory``: Python heap per idle pooled connection (tracemalloc), N = 1,000
  connections to the echo server (500 with ``--quick``), on asyncio, uvloop and trio, minus the heap
  of N connections made the same way without the pool (a socket connected
  by ``sock_connect`` and wrapped by ``create_connection`` with a bare
  protocol; on trio the connected socket alone, which is all conpool's
  trio path keeps), kept in a list.  Target:
  under 1 KiB beyond the socket's own objects.

* ``hold``: 10,000 connections open at once: C = 64 tasks acquire 10,000
  connections (limit 10,000) to one name whose 8 addresses are echo
  listeners on 127.0.3.1-8, hold them all, release them, acquire them all
  again from idle, and close the pool (uvloop only with ``--quick``).  The
  file limit is raised; the cell is skipped (and says why) if the hard limit
  is too low.
"""

from __future__ import annotations

import gc
import itertools
import os
import random
import resource
import socket
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from bench.common import fmt_ratio, stat_fmt
from bench.loops import run_anyio, time_batches
from bench.servers import raise_nofile, server_core, start
from bench.workloads import (
    LOOPS,
    Cell,
    CellSpec,
    Metrics,
    Options,
    Ratio,
    Stat,
    Summary,
    Target,
    Workload,
    table,
)

__all__ = ["Hold", "Memory", "Scale", "Sweep"]

FLAT_TARGET = 1.2
MEMORY_TARGET = 1024.0  # bytes per idle connection beyond the socket's own objects
SWEEP_TARGET = 1.5  # per-expired cost from 10 to 100,000 expired: within this factor
CORE = "core"  # the "loop" of cells that run no event loop


def _loop_order(loop: str) -> int:
    return LOOPS.index(loop) if loop in LOOPS else -1


class FakeHandle:
    """What the core keeps for a connection; it only ever asks ``_usable``."""

    __slots__ = ()

    def _usable(self, idle: float) -> bool:
        return True


def addresses(prefix: str, n: int) -> list[str]:
    """``n`` loopback addresses ``prefix.1`` .. ``prefix.n`` (n <= 254)."""
    return [f"{prefix}.{i}" for i in range(1, n + 1)]


def time_sync(batch: Callable[[int], None], warmup: float, duration: float) -> tuple[float, float]:
    """(wall µs, CPU µs) per operation of ``batch(1000)`` calls, after a warmup."""
    clock = time.perf_counter
    end = clock() + warmup
    while clock() < end:
        batch(1000)
    n = 0
    t0, c0 = clock(), time.process_time()
    end = t0 + duration
    while True:
        batch(1000)
        n += 1000
        t = clock()
        if t >= end:
            return (t - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


# -- scale: the core -----------------------------------------------------------------


def _core_state(n_endpoints: int, n_addrs: int) -> tuple[Any, list[Any]]:
    """A PoolState with ``n_endpoints`` endpoints of ``n_addrs`` addresses,
    one idle connection on every address; and the endpoint keys."""
    import conpool
    from conpool._state import DIAL, PoolState

    config = conpool.Config(
        max_connections_per_endpoint=n_addrs,
        max_idle_time=1e6,
        max_connection_lifetime=1e7,
    )
    state = PoolState(config)  # like the shell: conn._usable(idle)
    ips = addresses("127.0.2", n_addrs)
    keys = [conpool.Endpoint(f"e{i}.scale.test", 443) for i in range(n_endpoints)]
    handle = FakeHandle()
    for key in keys:
        ep = state.endpoint(key)
        state.set_addresses(ep, ips)
        recs = []
        for ip in ips:
            if state.acquire(ep, 0.0) != DIAL:
                raise RuntimeError("expected a dial slot")
            # What pick_address(ep, now) does once it has chosen ``ip``
            # (least-connections would choose each address once, in order):
            # it scans every address, so with 64 addresses it would make
            # building 640,000 records take minutes.
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


def _core_pattern(
    state: Any, order: list[Any], warmup: float, duration: float
) -> tuple[float, float]:
    """(wall, CPU) µs per acquire + release, visiting the keys in ``order``
    cyclically: what the shell does minus the clock and the I/O objects."""
    it = itertools.cycle(order)
    endpoints = state.endpoints
    acquire = state.acquire
    release = state.release

    def batch(k: int) -> None:
        now = 1.0
        for key in itertools.islice(it, k):
            rec = acquire(endpoints[key], now)
            release(rec, now, True)

    return time_sync(batch, warmup, duration)


def _core_cell(spec: CellSpec, n_addrs: int) -> Metrics:
    n = spec.cell.conc
    t0 = time.perf_counter()
    gc.disable()  # building 640,000 records is otherwise mostly full collections
    state, keys = _core_state(n, n_addrs)
    gc.enable()
    setup = time.perf_counter() - t0
    gc.collect()
    gc.freeze()
    rng = random.Random(1)
    out: Metrics = {"setup_s": setup}
    for pattern in ("same", "spread"):
        order = [keys[0]] if pattern == "same" else rng.sample(keys, len(keys))
        wall, cpu = _core_pattern(state, order, spec.warmup, spec.duration)
        out[f"us_{pattern}"] = wall
        out[f"cpu_us_{pattern}"] = cpu
    if state.to_close or state.to_wake:
        raise RuntimeError("the core closed or woke something: the setup is wrong")
    return out


# -- scale: the full pool -------------------------------------------------------------


async def _pool_pattern(
    pool: Any, order: list[Any], warmup: float, duration: float
) -> tuple[float, float]:
    """(wall, CPU) µs per ``acquire`` + ``release``, endpoints in ``order``."""
    it = itertools.cycle(order)
    acquire = pool.acquire
    release = pool.release

    async def batch(k: int) -> None:
        for key in itertools.islice(it, k):
            conn = await acquire(key)
            await release(conn)

    return (await time_batches(batch, warmup, duration)).per_op_us()


def _pool_cell(spec: CellSpec, n_addrs: int) -> Metrics:
    import conpool

    n = spec.cell.conc
    total = n * n_addrs
    raise_nofile(total + 512)
    ips = addresses("127.0.2", n_addrs)
    names = [f"e{i}.scale.test" for i in range(n)]
    resolver = conpool.StaticResolver({name: ips for name in names})
    keys = [conpool.Endpoint(name, 1) for name in names]  # port set below
    config = conpool.Config(
        max_connections_per_endpoint=n_addrs, max_idle_time=600.0, max_connection_lifetime=3600.0
    )
    rng = random.Random(1)

    with start("echo", ips, cpu=server_core(spec.cpu), connections=total + 64) as srv:
        keys = [conpool.Endpoint(name, srv.port) for name in names]

        async def main() -> Metrics:
            out: Metrics = {}
            async with conpool.Pool(config, resolver=resolver) as pool:
                t0 = time.perf_counter()
                for key in keys:
                    held = [await pool.acquire(key) for _ in range(n_addrs)]
                    for conn in held:
                        await pool.release(conn)
                out["setup_s"] = time.perf_counter() - t0
                for key, s in pool.stats().endpoints.items():
                    if s.idle != n_addrs or len(s.addresses) != n_addrs:
                        raise RuntimeError(f"expected {n_addrs} idle addresses on {key}")
                gc.collect()
                for pattern in ("same", "spread"):
                    order = [keys[0]] if pattern == "same" else rng.sample(keys, len(keys))
                    wall, cpu = await _pool_pattern(pool, order, spec.warmup, spec.duration)
                    out[f"us_{pattern}"] = wall
                    out[f"cpu_us_{pattern}"] = cpu
                stats = pool.stats()
                created = sum(e.created for e in stats.endpoints.values())
                if created != total:
                    raise RuntimeError(f"{created} connections were made, expected {total}")
            return out

        return run_anyio(spec.cell.loop, main)


class Scale(Workload):
    name = "scale"
    title = "Acquire + release vs endpoints and addresses per endpoint"
    impls: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "core-a1": (CORE,),
        "core-a64": (CORE,),
        "pool-a1": ("uvloop",),
        "pool-a64": ("uvloop",),
    }
    SIZES: ClassVar[Mapping[str, tuple[int, ...]]] = {
        "core-a1": (1, 100, 10_000),
        "core-a64": (1, 100, 10_000),
        "pool-a1": (1, 100, 1_000),
        "pool-a64": (1, 100),
    }

    def timing(self, quick: bool) -> tuple[float, float]:
        # Two patterns per cell, plus the setup (up to ~3 s for 640,000
        # records in the core, ~1 s for 6,400 real connections).
        return (0.1, 0.05) if quick else (0.3, 0.1)

    def phases(self) -> int:
        return 4

    def cells(self, opts: Options) -> list[Cell]:
        return [
            Cell(self.name, impl, loop, n)
            for impl, loops in self.impls.items()
            for loop in loops
            for n in self.SIZES[impl]
        ]

    def group(self, cell: Cell) -> str:
        # All cells of a family back to back: each is paired with its base.
        return f"{cell.workload}/{cell.impl.split('-')[0]}"

    def run(self, spec: CellSpec) -> Metrics:
        family, a = spec.cell.impl.split("-")
        n_addrs = int(a[1:])
        if family == "core":
            return _core_cell(spec, n_addrs)
        return _pool_cell(spec, n_addrs)

    def _base(self, cell: Cell) -> Cell:
        family = cell.impl.split("-")[0]
        return Cell(self.name, f"{family}-a1", cell.loop, 1)

    def ratios(self, cells: Sequence[Cell]) -> list[Ratio]:
        present = set(cells)
        out = []
        for cell in cells:
            base = self._base(cell)
            if base in present:
                for pattern in ("same", "spread"):
                    out.append(Ratio(f"x base {pattern}", cell, base, f"us_{pattern}"))
                    out.append(Ratio(f"x base cpu {pattern}", cell, base, f"cpu_us_{pattern}"))
        return out

    def _ratio(self, summary: Summary, cell: Cell, label: str, metric: str) -> Stat | None:
        return summary.ratio(Ratio(label, cell, self._base(cell), metric))

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        rows = []
        ordered = sorted(cells, key=lambda c: (c.impl.split("-")[0], int(c.impl[6:]), c.conc))
        for cell in ordered:
            family, a = cell.impl.split("-")
            rows.append(
                [
                    "core alone" if family == "core" else f"Pool, {cell.loop}",
                    str(cell.conc),
                    a[1:],
                    stat_fmt(summary.cell(cell, "cpu_us_same")),
                    stat_fmt(
                        self._ratio(summary, cell, "x base cpu same", "cpu_us_same"), fmt_ratio
                    ),
                    stat_fmt(summary.cell(cell, "cpu_us_spread")),
                    stat_fmt(
                        self._ratio(summary, cell, "x base cpu spread", "cpu_us_spread"), fmt_ratio
                    ),
                    stat_fmt(summary.cell(cell, "us_spread")),
                    stat_fmt(summary.cell(cell, "setup_s")),
                ]
            )
        header = [
            "what",
            "endpoints",
            "addrs",
            "same cpu µs",
            "x base",
            "spread cpu µs",
            "x base",
            "spread wall µs",
            "setup s",
        ]
        return [
            "CPU µs per acquire + release; 'x base' = over the 1-endpoint, 1-address cell of the",
            "same family (paired).  same: one endpoint again and again; spread: every endpoint in",
            "turn, shuffled.  Every address holds one idle connection.",
            "",
            *table(header, rows),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        out = []
        for cell in sorted(cells, key=lambda c: (c.impl, c.conc)):
            if cell == self._base(cell):
                continue
            pattern = "spread" if cell.conc > 1 else "same"
            family, a = cell.impl.split("-")
            out.append(
                Target.check(
                    f"scale {family} {cell.conc} endpoints x {a[1:]} addrs, {pattern}, x base",
                    "<=",
                    FLAT_TARGET,
                    self._ratio(summary, cell, f"x base {pattern}", f"us_{pattern}"),
                    self._ratio(summary, cell, f"x base cpu {pattern}", f"cpu_us_{pattern}"),
                )
            )
        return out


# -- sweep ----------------------------------------------------------------------------

SWEEP_COUNTS = (0, 10, 1_000, 100_000)


def _sweep_state(n: int, n_endpoints: int = 100) -> Any:
    """``n`` idle records over ``n_endpoints`` endpoints; record i became idle
    at time i (seconds), so that at ``MAX_IDLE + k - 0.5`` exactly k expired."""
    import conpool
    from conpool._state import DIAL, PoolState

    per = -(-n // n_endpoints)
    config = conpool.Config(
        max_connections_per_endpoint=per, max_idle_time=1e6, max_connection_lifetime=1e8
    )
    state = PoolState(config)  # like the shell: conn._usable(idle)
    handle = FakeHandle()
    eps = []
    for i in range(n_endpoints):
        ep = state.endpoint(conpool.Endpoint(f"s{i}.sweep.test", 443))
        state.set_addresses(ep, ["127.0.2.1"])
        eps.append(ep)
    recs = []
    for i in range(n):
        ep = eps[i % n_endpoints]
        if state.acquire(ep, 0.0) != DIAL:
            raise RuntimeError("expected a dial slot")
        ip = state.pick_address(ep, 0.0)
        assert ip is not None
        recs.append(state.connected(ep, ip, handle, 0.0))
    for i, rec in enumerate(recs):
        state.release(rec, float(i), True)
    return state


def _timed_sweep(state: Any, now: float) -> tuple[int, int, int]:
    """(wall ns, CPU ns, expired) of one sweep."""
    w0, c0 = time.perf_counter_ns(), time.process_time_ns()
    state.sweep(now)
    c1, w1 = time.process_time_ns(), time.perf_counter_ns()
    expired = len(state.to_close)
    state.to_close.clear()
    return w1 - w0, c1 - c0, expired


def _sweep_cell(spec: CellSpec) -> Metrics:
    n = spec.cell.conc
    max_idle = 1e6
    out: Metrics = {}
    budget = max(spec.duration, 0.05)

    def build(size: int) -> Any:
        gc.unfreeze()
        gc.collect()
        gc.disable()
        try:
            state = _sweep_state(size)
        finally:
            gc.enable()
        gc.collect()
        gc.freeze()
        return state

    # Nothing expires: with 10 idle, then with n idle on the state that the
    # successive sweeps below use next.
    state = None
    for label, size in (("0_small", 10), ("0", n)):
        state = build(size)
        reps = 0
        wall = cpu = 0
        end = time.perf_counter() + budget / 2
        while time.perf_counter() < end or reps < 100:
            w, c, k = _timed_sweep(state, max_idle - 0.5)
            if k:
                raise RuntimeError("a sweep expired something too early")
            wall, cpu, reps = wall + w, cpu + c, reps + 1
        out[f"us_sweep_{label}"] = wall / reps / 1e3
        out[f"cpu_us_sweep_{label}"] = cpu / reps / 1e3
    # k expire per sweep: successive sweeps, each taking the next k: 200 of
    # 10 (2,000 records), then 20 of 1,000 (20,000 more), so that about
    # 100,000 to 80,000 stay idle meanwhile.
    first = 0
    for k, sweeps in ((10, 200), (1_000, 20)):
        wall = cpu = 0
        done = 0
        for m in range(1, sweeps + 1):
            w, c, got = _timed_sweep(state, max_idle + first + k * m - 0.5)
            if got != k:
                raise RuntimeError(f"sweep {m} expired {got}, expected {k}")
            wall, cpu, done = wall + w, cpu + c, done + got
        first += done
        out[f"us_sweep_{k}"] = wall / sweeps / 1e3
        out[f"cpu_us_sweep_{k}"] = cpu / sweeps / 1e3
        out[f"cpu_us_per_expired_{k}"] = cpu / done / 1e3
        out[f"us_per_expired_{k}"] = wall / done / 1e3
    del state
    # Everything expires at once.
    state = build(n)
    w, c, got = _timed_sweep(state, max_idle + n)
    if got != n:
        raise RuntimeError(f"the sweep expired {got}, expected {n}")
    out[f"us_sweep_{n}"] = w / 1e3
    out[f"cpu_us_sweep_{n}"] = c / 1e3
    out[f"cpu_us_per_expired_{n}"] = c / n / 1e3
    out[f"us_per_expired_{n}"] = w / n / 1e3
    gc.unfreeze()
    return out


class Sweep(Workload):
    name = "sweep"
    title = "Idle sweep of the core with 100,000 idle connections"
    impls: ClassVar[Mapping[str, tuple[str, ...]]] = {"core": (CORE,)}

    def timing(self, quick: bool) -> tuple[float, float]:
        # Building the 100,000 records four times dominates (~0.5 s each).
        return (0.1, 0.0) if quick else (0.3, 0.0)

    def phases(self) -> int:
        return 10

    def cells(self, opts: Options) -> list[Cell]:
        return [Cell(self.name, "core", CORE, 100_000)]

    def run(self, spec: CellSpec) -> Metrics:
        return _sweep_cell(spec)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        rows = []
        for cell in cells:
            n = cell.conc
            for k in (0, *SWEEP_COUNTS[1:-1], n):
                label = str(k)
                rows.append(
                    [
                        f"{n} idle",
                        f"{k}",
                        stat_fmt(summary.cell(cell, f"cpu_us_sweep_{label}")),
                        stat_fmt(summary.cell(cell, f"us_sweep_{label}")),
                        stat_fmt(summary.cell(cell, f"cpu_us_per_expired_{label}")) if k else "",
                    ]
                )
            rows.append(
                [
                    "10 idle",
                    "0",
                    stat_fmt(summary.cell(cell, "cpu_us_sweep_0_small")),
                    stat_fmt(summary.cell(cell, "us_sweep_0_small")),
                    "",
                ]
            )
        return [
            "µs per sweep(now), the core alone (PoolState.sweep; closing sockets is the shell's)",
            "",
            *table(["idle", "expired", "cpu µs", "wall µs", "cpu µs per expired"], rows),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        out = []
        for cell in cells:
            n = cell.conc
            per = [summary.cell(cell, f"cpu_us_per_expired_{k}") for k in (10, 1_000, n)]
            wper = [summary.cell(cell, f"us_per_expired_{k}") for k in (10, 1_000, n)]

            def spread(stats: list[Stat | None]) -> Stat | None:
                vals = [s.median for s in stats if s is not None]
                if len(vals) < 2:
                    return None
                r = max(vals) / min(vals)
                return Stat(r, r, r, 1)

            out.append(
                Target.check(
                    f"sweep: per-expired cost, max/min over 10..{n} expired",
                    "<=",
                    SWEEP_TARGET,
                    spread(wper),
                    spread(per),
                )
            )
            big = summary.cell(cell, "cpu_us_sweep_0")
            small = summary.cell(cell, "cpu_us_sweep_0_small")
            wbig = summary.cell(cell, "us_sweep_0")
            wsmall = summary.cell(cell, "us_sweep_0_small")

            def over(a: Stat | None, b: Stat | None) -> Stat | None:
                if a is None or b is None or b.median <= 0:
                    return None
                r = a.median / b.median
                return Stat(r, r, r, 1)

            out.append(
                Target.check(
                    f"sweep: nothing expires, {n} idle over 10 idle",
                    "<=",
                    SWEEP_TARGET,
                    over(wbig, wsmall),
                    over(big, small),
                )
            )
        return out


# -- memory ---------------------------------------------------------------------------

MEMORY_N = 1000
MEMORY_N_QUICK = 500
# Seconds between the first measure and the second, with the connect
# timeout at half of it.  trio keeps the deadline of every cancel scope it
# was given in its timer heap until that deadline passes (about 230 bytes:
# the scope and two heap entries), so right after dialling, each connection
# made in the last connect_timeout seconds still carries its connect
# timeout's scope; the second measure is the idle connection alone.
MEMORY_SETTLE = 0.6


async def _raw_asyncio(host: str, port: int, n: int) -> tuple[list[Any], Callable[[], Any]]:
    import asyncio

    loop = asyncio.get_running_loop()

    class Bare(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

    out: list[Any] = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, (host, port))
        _transport, proto = await loop.create_connection(Bare, sock=sock)
        out.append(proto)

    async def close() -> None:
        for proto in out:
            proto.transport.close()
        await asyncio.sleep(0.05)

    return out, close


async def _raw_trio(host: str, port: int, n: int) -> tuple[list[Any], Callable[[], Any]]:
    """Connected sockets, kept as they are: conpool's plain TCP on trio
    holds the socket itself (no trio or anyio wrapper), so the socket is
    all that is "its own objects" there."""
    import errno

    import anyio
    import anyio.lowlevel

    out: list[socket.socket] = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((host, port))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        out.append(sock)

    async def close() -> None:
        for sock in out:
            sock.close()
        await anyio.lowlevel.checkpoint()

    return out, close


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _memory_cell(spec: CellSpec) -> Metrics:
    import anyio

    import conpool

    n = spec.cell.conc
    raise_nofile(2 * n + 512)
    host, port = spec.host, spec.port
    endpoint = conpool.Endpoint(host, port)
    # A short connect timeout, so that the second measure can be taken once
    # every connect's deadline has passed (see MEMORY_SETTLE).
    config = conpool.Config(max_connections_per_endpoint=n + 1, connect_timeout=MEMORY_SETTLE / 2)
    opener = _raw_trio if spec.cell.loop == "trio" else _raw_asyncio

    async def main() -> Metrics:
        tracemalloc.start()
        # Without the pool: one first (warms up the loop's own caches), then n.
        first, close_first = await opener(host, port, 1)
        m0 = _traced()
        conns, close = await opener(host, port, n)
        m1 = _traced()
        await close()
        await close_first()
        del conns, first
        # With the pool: one acquire + release first (the endpoint's state,
        # its histograms, lazy imports), then n more, held then released.
        async with conpool.Pool(config) as pool:
            await pool.release(await pool.acquire(endpoint))
            p0 = _traced()
            held = [await pool.acquire(endpoint) for _ in range(n + 1)]
            for conn in held:
                await pool.release(conn)
            del held, conn
            p1 = _traced()
            await anyio.sleep(MEMORY_SETTLE)
            p2 = _traced()
            idle = pool.stats().endpoints[endpoint].idle
            if idle != n + 1:
                raise RuntimeError(f"{idle} idle connections, expected {n + 1}")
        tracemalloc.stop()
        raw = (m1 - m0) / n
        pooled = (p1 - p0) / n
        settled = (p2 - p0) / n
        return {
            "bytes_raw": raw,
            "bytes_pooled": pooled,
            "bytes_beyond": pooled - raw,
            "bytes_settled": settled,
            "bytes_beyond_settled": settled - raw,
        }

    return run_anyio(spec.cell.loop, main)


class Memory(Workload):
    name = "memory"
    title = "Python heap per idle pooled connection (tracemalloc)"
    impls: ClassVar[Mapping[str, tuple[str, ...]]] = {"conpool": ("asyncio", "uvloop", "trio")}
    quick = False

    def timing(self, quick: bool) -> tuple[float, float]:
        # The runner asks for the timing before the cells: remember --quick.
        self.quick = quick
        return (1.0, 0.0)  # no phase: dialling 2 x N connections under tracemalloc

    def cells(self, opts: Options) -> list[Cell]:
        n = MEMORY_N_QUICK if self.quick else MEMORY_N
        return [Cell(self.name, "conpool", loop, n) for loop in self.impls["conpool"]]

    def run(self, spec: CellSpec) -> Metrics:
        return _memory_cell(spec)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        rows = [
            [
                c.loop,
                str(c.conc),
                stat_fmt(summary.cell(c, "bytes_pooled")),
                stat_fmt(summary.cell(c, "bytes_raw")),
                stat_fmt(summary.cell(c, "bytes_beyond")),
                stat_fmt(summary.cell(c, "bytes_settled")),
                stat_fmt(summary.cell(c, "bytes_beyond_settled")),
            ]
            for c in sorted(cells, key=lambda c: _loop_order(c.loop))
        ]
        return [
            "Bytes of Python heap per connection: pooled and idle, right after dialling;",
            "the same connection made without the pool; the difference (what the pool adds);",
            f"then the same two once the connects' deadlines have passed ({MEMORY_SETTLE} s later:",
            "trio frees a connect timeout's cancel scope only then)",
            "",
            *table(
                ["loop", "N", "pooled", "raw", "beyond raw", "pooled, settled", "beyond, settled"],
                rows,
            ),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return [
            Target.check(
                f"heap per idle connection beyond the socket's, {c.loop} (bytes)",
                "<=",
                MEMORY_TARGET,
                None,
                summary.cell(c, "bytes_beyond_settled"),
            )
            for c in sorted(cells, key=lambda c: _loop_order(c.loop))
        ]


# -- hold -----------------------------------------------------------------------------

HOLD_N = 10_000
HOLD_TASKS = 64
HOLD_ADDRS = 8


def _status_kb(field: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _hold_cell(spec: CellSpec) -> Metrics:
    import anyio

    import conpool

    n = spec.cell.conc
    need = n + 512
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < need:
        return {"skipped": 1.0, "nofile_hard": float(hard), "nofile_needed": float(need)}
    raise_nofile(need)
    ips = addresses("127.0.3", HOLD_ADDRS)
    name = "hold.bench.test"
    resolver = conpool.StaticResolver({name: ips})
    config = conpool.Config(
        max_connections_per_endpoint=n,
        max_connections=n,
        connect_timeout=30.0,
        max_idle_time=600.0,
        max_connection_lifetime=3600.0,
    )

    with start("echo", ips, cpu=server_core(spec.cpu), connections=n + 256) as srv:
        endpoint = conpool.Endpoint(name, srv.port)

        async def main() -> Metrics:
            out: Metrics = {"skipped": 0.0}
            rss0 = _status_kb("VmRSS")
            async with conpool.Pool(config, resolver=resolver) as pool:
                held: list[Any] = []
                todo = iter(range(n))

                async def opener() -> None:
                    mine = [await pool.acquire(endpoint) for _ in todo]
                    held.extend(mine)

                w0, c0 = time.perf_counter(), time.process_time()
                async with anyio.create_task_group() as tg:
                    for _ in range(HOLD_TASKS):
                        tg.start_soon(opener)
                w1, c1 = time.perf_counter(), time.process_time()
                stats = pool.stats().endpoints[endpoint]
                if stats.active != n or len(held) != n:
                    raise RuntimeError(f"{stats.active} active connections, expected {n}")
                spread = [a.active for a in stats.addresses.values()]
                out["open_s"] = w1 - w0
                out["open_us"] = (w1 - w0) / n * 1e6
                out["open_cpu_us"] = (c1 - c0) / n * 1e6
                out["addr_min"] = float(min(spread))
                out["addr_max"] = float(max(spread))
                out["rss_mb"] = _status_kb("VmRSS") / 1024
                out["rss_kb_per_conn"] = (_status_kb("VmRSS") - rss0) / n
                # Every one of them carries a byte there and back.
                w0 = time.perf_counter()
                for conn in held:
                    await conn.send(b"!")
                for conn in held:
                    if await conn.receive() != b"!":
                        raise RuntimeError(f"{conn!r} did not echo")
                out["echo_s"] = time.perf_counter() - w0
                w0, c0 = time.perf_counter(), time.process_time()
                for conn in held:
                    await pool.release(conn)
                w1, c1 = time.perf_counter(), time.process_time()
                held.clear()
                out["release_cpu_us"] = (c1 - c0) / n * 1e6
                # All of them again, from idle (no dial), then back.
                w0, c0 = time.perf_counter(), time.process_time()
                held = [await pool.acquire(endpoint) for _ in range(n)]
                for conn in held:
                    await pool.release(conn)
                w1, c1 = time.perf_counter(), time.process_time()
                held.clear()
                out["reuse_cpu_us"] = (c1 - c0) / n * 1e6
                stats = pool.stats().endpoints[endpoint]
                if stats.created != n or stats.idle != n:
                    raise RuntimeError(f"created {stats.created}, idle {stats.idle}, expected {n}")
                w0, c0 = time.perf_counter(), time.process_time()
            w1, c1 = time.perf_counter(), time.process_time()
            out["close_s"] = w1 - w0
            out["peak_rss_mb"] = _status_kb("VmHWM") / 1024
            return out

        return run_anyio(spec.cell.loop, main)


def _span(low: Stat | None, high: Stat | None) -> str:
    """``min-max`` of the medians (connections per address)."""
    if low is None or high is None:
        return "-"
    return f"{low.median:g}-{high.median:g}"


class Hold(Workload):
    name = "hold"
    title = f"{HOLD_N:,} connections open at once ({HOLD_TASKS} tasks, {HOLD_ADDRS} addresses)"
    impls: ClassVar[Mapping[str, tuple[str, ...]]] = {"conpool": ("asyncio", "uvloop", "trio")}
    quick = False

    def timing(self, quick: bool) -> tuple[float, float]:
        # The runner asks for the timing before the cells: remember --quick.
        self.quick = quick
        return (2.5, 0.0)  # no phase: ~2-3 s of dialling, holding and closing

    def cells(self, opts: Options) -> list[Cell]:
        loops = ("uvloop",) if self.quick else self.impls["conpool"]
        return [Cell(self.name, "conpool", loop, HOLD_N) for loop in loops]

    def run(self, spec: CellSpec) -> Metrics:
        return _hold_cell(spec)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        lines = []
        rows = []
        for c in sorted(cells, key=lambda c: _loop_order(c.loop)):
            skipped = summary.cell(c, "skipped")
            if skipped is not None and skipped.median > 0:
                hard = summary.cell(c, "nofile_hard")
                need = summary.cell(c, "nofile_needed")
                lines.append(
                    f"{c.loop}: SKIPPED: the hard RLIMIT_NOFILE is "
                    f"{hard.median if hard else '?':g}, {need.median if need else '?':g} needed"
                )
                continue

            def get(metric: str, cell: Cell = c) -> str:
                return stat_fmt(summary.cell(cell, metric))

            rows.append(
                [
                    c.loop,
                    str(c.conc),
                    get("open_s"),
                    get("open_cpu_us"),
                    get("echo_s"),
                    get("release_cpu_us"),
                    get("reuse_cpu_us"),
                    get("close_s"),
                    get("rss_mb"),
                    get("rss_kb_per_conn"),
                    get("peak_rss_mb"),
                    _span(summary.cell(c, "addr_min"), summary.cell(c, "addr_max")),
                ]
            )
        header = [
            "loop",
            "N",
            "open s",
            "open cpu µs",
            "echo all s",
            "release cpu µs",
            "reacquire+release cpu µs",
            "close s",
            "RSS MB",
            "RSS KB/conn",
            "peak RSS MB",
            "conns per address",
        ]
        out = [
            "open: C tasks acquire all N (dial), CPU µs per connection; echo all: one byte there",
            "and back on each held connection; then release all, acquire all again from idle and",
            "release (CPU µs per connection), close the pool.  RSS: after opening.",
            "",
        ]
        if rows:
            out += table(header, rows)
        return out + lines
