"""Acquire + release with no I/O: what the pool itself costs.

* ``acquire``: one task, ``conn = await pool.acquire(ep); await
  pool.release(conn)`` in a loop over one real, idle connection to the echo
  server (dialled before timing).  Reported: microseconds per pair.
* ``contended``: C tasks share a pool limited to C/4 connections; each
  acquires, yields once to the loop while holding, and releases.  The same
  process first times the same C tasks doing only the yield; reported is the
  time per pair minus the time per bare yield, i.e. what the pool adds to
  a loop that already switches tasks.

``fifo`` (:mod:`bench.fifo`) is the reference line: the least any
first-come-first-served pool costs, a free list and a queue of parked tasks.

The yield is the loop's own ``asyncio.sleep(0)`` / ``trio.sleep(0)`` in both
phases.  The peers run the same loops through their own APIs
(asyncio-connection-pool has only ``async with pool.get_connection()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from bench.loops import (
    Meter,
    Sample,
    Worker,
    drive_anyio,
    drive_asyncio,
    drive_trio,
    run_anyio,
    run_asyncio,
    run_trio,
)
from bench.loops import time_batches as _time_batches
from bench.workloads import (
    LOOPS,
    Cell,
    CellSpec,
    Metrics,
    Options,
    Summary,
    Target,
    Workload,
    fmt_stat,
    table,
)

__all__ = ["Contended", "Uncontended"]

IMPLS = {
    "conpool": ("asyncio", "uvloop", "trio"),
    "fifo": ("asyncio", "uvloop", "trio"),
    "naive": ("asyncio", "uvloop"),
    "acp": ("asyncio", "uvloop"),
    "gcp": ("asyncio", "uvloop"),
}
UNCONTENDED_TARGET = 1.5  # µs per pair on uvloop
CONTENDED_TARGET = 3.0  # µs per pair over the bare yield

Batch = Callable[[int], Awaitable[None]]
Driver = Callable[[Worker, int, float, float], Awaitable[Sample]]
Yield = Callable[[float], Awaitable[None]]


def limit_for(conc: int) -> int:
    return max(1, conc // 4)


# -- the two phases, then one setup per implementation --------------------------------
#
# Each implementation writes its own pair loop inline (no adapter call per
# pair, which would add the same ~0.1 µs to everyone and blur the small
# numbers), then hands it to the shared timing code.


async def _uncontended(batch: Batch, spec: CellSpec) -> Metrics:
    await batch(1)  # dial the one connection outside the timing
    sample = await _time_batches(batch, spec.warmup, spec.duration)
    wall, cpu = sample.per_op_us()
    return {"us_per_pair": wall, "cpu_us_per_pair": cpu, "pairs": float(sample.n)}


async def _contended(drive: Driver, bare: Worker, worker: Worker, spec: CellSpec) -> Metrics:
    conc = spec.cell.conc
    base = await drive(bare, conc, spec.warmup, spec.duration)
    pool = await drive(worker, conc, spec.warmup, spec.duration)
    yield_wall, yield_cpu = base.per_op_us()
    pair_wall, pair_cpu = pool.per_op_us()
    return {
        "us_over_yield": pair_wall - yield_wall,
        "cpu_us_over_yield": pair_cpu - yield_cpu,
        "us_per_pair": pair_wall,
        "cpu_us_per_pair": pair_cpu,
        "us_per_yield": yield_wall,
        "cpu_us_per_yield": yield_cpu,
        "pairs": float(pool.n),
        "yields": float(base.n),
        "limit": float(limit_for(conc)),
    }


def _bare(yield_: Yield) -> Worker:
    async def bare(meter: Meter) -> None:
        while not meter.stop:
            await yield_(0)
            meter.n += 1

    return bare


def _conpool(spec: CellSpec, contended: bool) -> Metrics:
    import conpool

    endpoint = conpool.Endpoint(spec.host, spec.port)
    size = limit_for(spec.cell.conc) if contended else 1
    config = conpool.Config(max_connections_per_endpoint=size)
    if spec.cell.loop == "trio":
        import trio

        yield_: Yield = trio.sleep
    else:
        yield_ = asyncio.sleep

    async def main() -> Metrics:
        async with conpool.Pool(config) as pool:

            async def batch(n: int) -> None:
                for _ in range(n):
                    conn = await pool.acquire(endpoint)
                    await pool.release(conn)

            async def worker(meter: Meter) -> None:
                while not meter.stop:
                    conn = await pool.acquire(endpoint)
                    await yield_(0)
                    await pool.release(conn)
                    meter.n += 1

            if contended:
                return await _contended(drive_anyio, _bare(yield_), worker, spec)
            return await _uncontended(batch, spec)

    return run_anyio(spec.cell.loop, main)


def _fifo(spec: CellSpec, contended: bool) -> Metrics:
    """The floor of a fair pool (bench.fifo), on the loop's own tasks."""
    from bench.fifo import AsyncioFifo, TrioFifo

    size = limit_for(spec.cell.conc) if contended else 1
    if spec.cell.loop == "trio":
        import trio

        trio_pool = TrioFifo(size)
        yield_: Yield = trio.sleep  # the same yield as every trio cell

        async def trio_batch(n: int) -> None:
            for _ in range(n):
                item = await trio_pool.acquire()
                trio_pool.release(item)

        async def trio_worker(meter: Meter) -> None:
            while not meter.stop:
                item = await trio_pool.acquire()
                await yield_(0)
                trio_pool.release(item)
                meter.n += 1

        async def trio_main() -> Metrics:
            if contended:
                return await _contended(drive_trio, _bare(yield_), trio_worker, spec)
            return await _uncontended(trio_batch, spec)

        return run_trio(trio_main)

    pool = AsyncioFifo(size)

    async def batch(n: int) -> None:
        for _ in range(n):
            item = await pool.acquire()
            pool.release(item)

    async def worker(meter: Meter) -> None:
        while not meter.stop:
            item = await pool.acquire()
            await asyncio.sleep(0)
            pool.release(item)
            meter.n += 1

    async def main() -> Metrics:
        if contended:
            return await _contended(drive_asyncio, _bare(asyncio.sleep), worker, spec)
        return await _uncontended(batch, spec)

    return run_asyncio(spec.cell.loop, main)


def _naive(spec: CellSpec, contended: bool) -> Metrics:
    from bench.naive import QueuePool

    async def main() -> Metrics:
        pool = QueuePool(spec.host, spec.port, limit_for(spec.cell.conc) if contended else 1)

        async def batch(n: int) -> None:
            for _ in range(n):
                conn = await pool.acquire()
                await pool.release(conn)

        async def worker(meter: Meter) -> None:
            while not meter.stop:
                conn = await pool.acquire()
                await asyncio.sleep(0)
                await pool.release(conn)
                meter.n += 1

        try:
            if contended:
                return await _contended(drive_asyncio, _bare(asyncio.sleep), worker, spec)
            return await _uncontended(batch, spec)
        finally:
            await pool.aclose()

    return run_asyncio(spec.cell.loop, main)


def _acp(spec: CellSpec, contended: bool) -> Metrics:
    from bench.peers import acp_pool

    async def main() -> Metrics:
        size = limit_for(spec.cell.conc) if contended else 1
        pool = acp_pool(spec.host, spec.port, size)

        async def batch(n: int) -> None:
            for _ in range(n):
                async with pool.get_connection():
                    pass

        async def worker(meter: Meter) -> None:
            while not meter.stop:
                async with pool.get_connection():
                    await asyncio.sleep(0)
                meter.n += 1

        try:
            if contended:
                return await _contended(drive_asyncio, _bare(asyncio.sleep), worker, spec)
            return await _uncontended(batch, spec)
        finally:
            while not pool.available.empty():
                await pool.strategy.close_connection(pool.available.get_nowait())

    return run_asyncio(spec.cell.loop, main)


def _gcp(spec: CellSpec, contended: bool) -> Metrics:
    from bench.peers import gcp_pool

    endpoint = (spec.host, spec.port)

    async def main() -> Metrics:
        pool = gcp_pool(limit_for(spec.cell.conc) if contended else 1)

        async def batch(n: int) -> None:
            for _ in range(n):
                conn = await pool.acquire(endpoint)
                await pool.release(conn, endpoint)

        async def worker(meter: Meter) -> None:
            while not meter.stop:
                conn = await pool.acquire(endpoint)
                await asyncio.sleep(0)
                await pool.release(conn, endpoint)
                meter.n += 1

        try:
            if contended:
                return await _contended(drive_asyncio, _bare(asyncio.sleep), worker, spec)
            return await _uncontended(batch, spec)
        finally:
            await pool.close(timeout=5.0)

    return run_asyncio(spec.cell.loop, main)


RUNNERS: dict[str, Callable[[CellSpec, bool], Metrics]] = {
    "conpool": _conpool,
    "fifo": _fifo,
    "naive": _naive,
    "acp": _acp,
    "gcp": _gcp,
}


def _table(summary: Summary, cells: Sequence[Cell], metric: str, extra: str = "") -> list[str]:
    """Loops and C down, implementations across; ``extra`` adds conpool's
    value of another metric as a last column."""
    present = set(cells)
    impls = [i for i in IMPLS if any(c.impl == i for c in cells)]
    grid = sorted({(c.loop, c.conc) for c in cells}, key=lambda lc: (LOOPS.index(lc[0]), lc[1]))
    workload = cells[0].workload
    rows = []
    for loop, conc in grid:
        row = [loop, str(conc)]
        for impl in impls:
            cell = Cell(workload, impl, loop, conc)
            row.append(fmt_stat(summary.cell(cell, metric)) if cell in present else "")
        if extra:
            row.append(fmt_stat(summary.cell(Cell(workload, "conpool", loop, conc), extra)))
        rows.append(row)
    return table(["loop", "C", *impls, *([extra] if extra else [])], rows)


class Uncontended(Workload):
    name = "acquire"
    title = "Uncontended acquire + release, one task, one idle connection"
    impls = IMPLS

    def timing(self, quick: bool) -> tuple[float, float]:
        return (0.1, 0.05) if quick else (0.5, 0.15)

    def concurrency(self, opts: Options) -> tuple[int, ...]:
        return (1,)

    def run(self, spec: CellSpec) -> Metrics:
        return RUNNERS[spec.cell.impl](spec, False)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        return [
            "µs per pair by wall-clock time, median [min-max]",
            "",
            *_table(summary, cells, "us_per_pair"),
            "",
            "µs per pair by CPU time",
            "",
            *_table(summary, cells, "cpu_us_per_pair"),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return [
            Target.check(
                f"uncontended µs/pair, conpool, {cell.loop}",
                "<=",
                UNCONTENDED_TARGET if cell.loop == "uvloop" else None,
                summary.cell(cell, "us_per_pair"),
                summary.cell(cell, "cpu_us_per_pair"),
            )
            for cell in cells
            if cell.impl == "conpool"
        ]


class Contended(Workload):
    name = "contended"
    title = "Contended acquire + yield + release, C tasks, limit C/4"
    impls = IMPLS

    def timing(self, quick: bool) -> tuple[float, float]:
        return (0.1, 0.05) if quick else (0.4, 0.1)

    def phases(self) -> int:
        return 2

    def concurrency(self, opts: Options) -> tuple[int, ...]:
        # C/4 of C=1 is no pool at all; contention needs C >= 4.
        return tuple(c for c in opts.conc if c >= 4)

    def run(self, spec: CellSpec) -> Metrics:
        return RUNNERS[spec.cell.impl](spec, True)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        return [
            "µs per pair minus µs per bare yield, by wall-clock time, median [min-max]",
            "",
            *_table(summary, cells, "us_over_yield", "us_per_yield"),
            "",
            "The same by CPU time",
            "",
            *_table(summary, cells, "cpu_us_over_yield", "cpu_us_per_yield"),
            "",
            "Absolute µs per pair by wall-clock time (before subtracting the yield)",
            "",
            *_table(summary, cells, "us_per_pair"),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return [
            Target.check(
                f"contended µs/pair over yield, {cell.impl}, {cell.loop}, C={cell.conc}",
                "<=",
                # fifo, the floor of a fair pool, is shown for reference.
                CONTENDED_TARGET if cell.impl == "conpool" else None,
                summary.cell(cell, "us_over_yield"),
                summary.cell(cell, "cpu_us_over_yield"),
            )
            for cell in sorted(cells, key=lambda c: (c.conc, LOOPS.index(c.loop), c.impl))
            if cell.impl in ("conpool", "fifo")
        ]
