"""``acquire``: one task, ``acquire`` + ``release`` of one idle connection.

Each implementation writes its pair loop inline (an adapter call per pair
would add the same ~0.1 µs to everyone and blur the small numbers); the
loops here serve ``contended`` too, where C tasks yield once while holding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from bench import base, timing
from bench.base import LOOPS, Cell, CellSpec, Impls, Metrics, Summary, Target, Workload
from bench.peers import REQUIRES as PEERS

IMPLS: Impls = {
    "conpool": LOOPS,
    "fifo": LOOPS,
    "naive": ("asyncio", "uvloop"),
    "acp": ("asyncio", "uvloop"),
    "gcp": ("asyncio", "uvloop"),
}
TARGET = 1.5  # µs per pair on uvloop

Batch = Callable[[int], Awaitable[None]]
Yield = Callable[[float], Awaitable[None]]


def limit_for(spec: CellSpec, contended: bool) -> int:
    """The pool's size: C/4 when contended (C >= 4), else 1."""
    return max(1, spec.cell.conc // 4) if contended else 1


async def _measure(
    spec: CellSpec,
    contended: bool,
    batch: Batch,
    worker: timing.Worker,
    drive: timing.Driver,
    yield_: Yield,
) -> Metrics:
    if not contended:
        await batch(1)  # dial the one connection outside the timing
        sample = await timing.time_batches(batch, spec.warmup, spec.duration)
        wall, cpu = sample.per_op_us()
        total = float(sample.total + 1)  # every pair of the run, the first included
        return {
            "us_per_pair": wall,
            "cpu_us_per_pair": cpu,
            "pairs": float(sample.n),
            "ops_total": total,
        }

    async def bare(meter: timing.Meter) -> None:
        while not meter.stop:
            await yield_(0)
            meter.n += 1

    conc = spec.cell.conc
    bare_sample = await drive(bare, conc, spec.warmup, spec.duration)
    pool = await drive(worker, conc, spec.warmup, spec.duration)
    yield_wall, yield_cpu = bare_sample.per_op_us()
    pair_wall, pair_cpu = pool.per_op_us()
    return {
        "us_over_yield": pair_wall - yield_wall,
        "cpu_us_over_yield": pair_cpu - yield_cpu,
        "us_per_pair": pair_wall,
        "cpu_us_per_pair": pair_cpu,
        "us_per_yield": yield_wall,
        "cpu_us_per_yield": yield_cpu,
        "pairs": float(pool.n),
        "ops_total": float(pool.total),
        "yields": float(bare_sample.n),
        "limit": float(limit_for(spec, True)),
    }


def conpool_pairs(
    spec: CellSpec,
    contended: bool,
    tracer: Any = None,
    extra: Callable[[Any, int], Metrics] | None = None,
) -> Metrics:
    """``extra(pool, pairs of the whole run)`` adds metrics while the pool is open."""
    import conpool

    endpoint = conpool.Endpoint(spec.host, spec.port)
    config = conpool.Config(max_connections_per_endpoint=limit_for(spec, contended))
    if spec.cell.loop == "trio":
        import trio

        yield_: Yield = trio.sleep
    else:
        yield_ = asyncio.sleep

    async def main() -> Metrics:
        async with conpool.Pool(config, tracer=tracer) as pool:

            async def batch(n: int) -> None:
                for _ in range(n):
                    conn = await pool.acquire(endpoint)
                    await pool.release(conn)

            async def worker(meter: timing.Meter) -> None:
                while not meter.stop:
                    conn = await pool.acquire(endpoint)
                    await yield_(0)
                    await pool.release(conn)
                    meter.n += 1

            metrics = await _measure(spec, contended, batch, worker, timing.drive_anyio, yield_)
            if extra is not None:
                metrics.update(extra(pool, int(metrics["ops_total"])))
        return metrics

    return timing.run_anyio(spec.cell.loop, main)


def _fifo(spec: CellSpec, contended: bool) -> Metrics:
    from bench.peers import AsyncioFifo, TrioFifo

    loop = spec.cell.loop
    if loop == "trio":
        import trio

        yield_: Yield = trio.sleep
    else:
        yield_ = asyncio.sleep

    async def main() -> Metrics:
        pool = (TrioFifo if loop == "trio" else AsyncioFifo)(limit_for(spec, contended))

        async def batch(n: int) -> None:
            for _ in range(n):
                item = await pool.acquire()
                pool.release(item)

        async def worker(meter: timing.Meter) -> None:
            while not meter.stop:
                item = await pool.acquire()
                await yield_(0)
                pool.release(item)
                meter.n += 1

        return await _measure(spec, contended, batch, worker, timing.drive_native(loop), yield_)

    return timing.run_native(loop, main)


def _naive(spec: CellSpec, contended: bool) -> Metrics:
    from bench.peers import QueuePool

    async def main() -> Metrics:
        pool = QueuePool(spec.host, spec.port, limit_for(spec, contended))

        async def batch(n: int) -> None:
            for _ in range(n):
                conn = await pool.acquire()
                await pool.release(conn)

        async def worker(meter: timing.Meter) -> None:
            while not meter.stop:
                conn = await pool.acquire()
                await asyncio.sleep(0)
                await pool.release(conn)
                meter.n += 1

        try:
            return await _measure(
                spec, contended, batch, worker, timing.drive_asyncio, asyncio.sleep
            )
        finally:
            await pool.aclose()

    return timing.run_asyncio(spec.cell.loop, main)


def _acp(spec: CellSpec, contended: bool) -> Metrics:
    from bench.peers import acp_close, acp_pool

    async def main() -> Metrics:
        pool = acp_pool(spec.host, spec.port, limit_for(spec, contended))

        async def batch(n: int) -> None:
            for _ in range(n):
                async with pool.get_connection():
                    pass

        async def worker(meter: timing.Meter) -> None:
            while not meter.stop:
                async with pool.get_connection():
                    await asyncio.sleep(0)
                meter.n += 1

        try:
            return await _measure(
                spec, contended, batch, worker, timing.drive_asyncio, asyncio.sleep
            )
        finally:
            await acp_close(pool)

    return timing.run_asyncio(spec.cell.loop, main)


def _gcp(spec: CellSpec, contended: bool) -> Metrics:
    from bench.peers import gcp_pool

    endpoint = (spec.host, spec.port)

    async def main() -> Metrics:
        pool = gcp_pool(limit_for(spec, contended))

        async def batch(n: int) -> None:
            for _ in range(n):
                conn = await pool.acquire(endpoint)
                await pool.release(conn, endpoint)

        async def worker(meter: timing.Meter) -> None:
            while not meter.stop:
                conn = await pool.acquire(endpoint)
                await asyncio.sleep(0)
                await pool.release(conn, endpoint)
                meter.n += 1

        try:
            return await _measure(
                spec, contended, batch, worker, timing.drive_asyncio, asyncio.sleep
            )
        finally:
            await pool.close(timeout=5.0)

    return timing.run_asyncio(spec.cell.loop, main)


RUNNERS: dict[str, Callable[[CellSpec, bool], Metrics]] = {
    "conpool": conpool_pairs,
    "fifo": _fifo,
    "naive": _naive,
    "acp": _acp,
    "gcp": _gcp,
}


def pairs_table(summary: Summary, cells: Sequence[Cell], metric: str, extra: str = "") -> list[str]:
    """Implementations across; ``extra`` adds conpool's value of another
    metric as a last column."""
    impls = [i for i in IMPLS if any(c.impl == i for c in cells)]
    columns = [*impls, *([extra] if extra else [])]

    def value(cell: Cell) -> str:
        if cell.impl == extra:
            return base.fmt_stat(summary.cell(cell.but("conpool"), extra), "{:.2f}".format)
        return base.fmt_stat(summary.cell(cell, metric), "{:.2f}".format)

    extended = [*cells, *(c.but(extra) for c in cells if extra and c.impl == "conpool")]
    return base.grid_table(extended, columns, value)


class Acquire(Workload):
    name = "acquire"
    title = "Uncontended acquire + release, one task, one idle connection"
    impls: ClassVar[Impls] = IMPLS
    requires = PEERS

    def levels(self, opts: base.Options) -> tuple[int, ...]:
        return (1,)

    def run(self, spec: CellSpec) -> Metrics:
        return RUNNERS[spec.cell.impl](spec, False)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        return base.sections(
            (
                "µs per pair by wall-clock time, median [min-max]",
                pairs_table(summary, cells, "us_per_pair"),
            ),
            ("µs per pair by CPU time", pairs_table(summary, cells, "cpu_us_per_pair")),
        )

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return [
            Target.check(
                f"uncontended µs/pair, conpool, {cell.loop}",
                "<=",
                TARGET if cell.loop == "uvloop" else None,
                summary.cell(cell, "us_per_pair"),
                summary.cell(cell, "cpu_us_per_pair"),
            )
            for cell in cells
            if cell.impl == "conpool"
        ]
