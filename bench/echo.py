"""``echo``: C tasks each send 64 bytes and read them back, per loop and C."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from bench import base, timing
from bench.base import LOOPS, Cell, CellSpec, Impls, Metrics, Summary, Target
from bench.peers import REQUIRES as PEERS

SIZE = 64
MESSAGE = bytes(range(SIZE))
TARGET = 0.90  # conpool/raw


def _raw_asyncio(spec: CellSpec) -> Metrics:
    host, port = spec.host, spec.port

    async def worker(meter: timing.Meter) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not meter.stop:
                writer.write(MESSAGE)
                await writer.drain()
                await reader.readexactly(SIZE)
                meter.n += 1
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> Metrics:
        sample = await timing.drive_asyncio(worker, spec.cell.conc, spec.warmup, spec.duration)
        return sample.throughput()

    return timing.run_asyncio(spec.cell.loop, main)


def _raw_trio(spec: CellSpec) -> Metrics:
    import trio

    host, port = spec.host, spec.port

    async def worker(meter: timing.Meter) -> None:
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            while not meter.stop:
                await stream.send_all(MESSAGE)
                got = len(await stream.receive_some(65536))
                while got < SIZE:
                    got += len(await stream.receive_some(65536))
                meter.n += 1

    async def main() -> Metrics:
        sample = await timing.drive_trio(worker, spec.cell.conc, spec.warmup, spec.duration)
        return sample.throughput()

    return timing.run_trio(main)


def conpool_echo(
    spec: CellSpec,
    held: bool = False,
    tracer: Any = None,
    extra: Callable[[Any, int], Metrics] | None = None,
) -> Metrics:
    """Every request in ``async with pool.connection(ep)``; with ``held``,
    one lease per task for the whole run (conpool's stream alone).
    ``extra(pool, requests of the whole run)`` adds metrics while the pool is open."""
    import conpool

    endpoint = conpool.Endpoint(spec.host, spec.port)
    config = conpool.Config(max_connections_per_endpoint=spec.cell.conc)

    async def main() -> Metrics:
        async with conpool.Pool(config, tracer=tracer) as pool:

            async def leased(meter: timing.Meter) -> None:
                while not meter.stop:
                    async with pool.connection(endpoint) as conn:
                        await conn.send(MESSAGE)
                        got = len(await conn.receive())
                        while got < SIZE:
                            got += len(await conn.receive())
                    meter.n += 1

            async def kept(meter: timing.Meter) -> None:
                async with pool.connection(endpoint) as conn:
                    while not meter.stop:
                        await conn.send(MESSAGE)
                        got = len(await conn.receive())
                        while got < SIZE:
                            got += len(await conn.receive())
                        meter.n += 1

            worker = kept if held else leased
            sample = await timing.drive_anyio(worker, spec.cell.conc, spec.warmup, spec.duration)
            metrics = sample.throughput()
            if extra is not None:
                metrics.update(extra(pool, sample.total))
        return metrics

    return timing.run_anyio(spec.cell.loop, main)


Lease = Callable[[], AbstractAsyncContextManager[Any]]


def _peer(
    spec: CellSpec, make: Callable[[], tuple[Lease, Callable[[], Awaitable[None]]]]
) -> Metrics:
    """A pool of asyncio streams: ``make()`` (in the running loop) returns its
    ``async with`` that yields a (reader, writer) pair, and its close."""

    async def main() -> Metrics:
        lease, close = make()

        async def worker(meter: timing.Meter) -> None:
            while not meter.stop:
                async with lease() as (reader, writer):
                    writer.write(MESSAGE)
                    await writer.drain()
                    await reader.readexactly(SIZE)
                meter.n += 1

        try:
            sample = await timing.drive_asyncio(worker, spec.cell.conc, spec.warmup, spec.duration)
        finally:
            await close()
        return sample.throughput()

    return timing.run_asyncio(spec.cell.loop, main)


def _naive(spec: CellSpec) -> Metrics:
    from bench.peers import QueuePool

    def make() -> tuple[Lease, Callable[[], Awaitable[None]]]:
        pool = QueuePool(spec.host, spec.port, spec.cell.conc)
        return pool.connection, pool.aclose

    return _peer(spec, make)


def _acp(spec: CellSpec) -> Metrics:
    from bench.peers import acp_close, acp_pool

    def make() -> tuple[Lease, Callable[[], Awaitable[None]]]:
        pool = acp_pool(spec.host, spec.port, spec.cell.conc)
        return pool.get_connection, lambda: acp_close(pool)

    return _peer(spec, make)


def _gcp(spec: CellSpec) -> Metrics:
    from bench.peers import gcp_pool

    endpoint = (spec.host, spec.port)

    def make() -> tuple[Lease, Callable[[], Awaitable[None]]]:
        pool = gcp_pool(spec.cell.conc)
        return lambda: pool.connection(endpoint), lambda: pool.close(timeout=5.0)

    return _peer(spec, make)


RUNNERS: dict[str, Callable[[CellSpec], Metrics]] = {
    "conpool": conpool_echo,
    "held": lambda spec: conpool_echo(spec, held=True),
    "naive": _naive,
    "acp": _acp,
    "gcp": _gcp,
}


class Echo(base.VersusRaw):
    name = "echo"
    title = f"Echo round trips, {SIZE} B messages"
    impls: ClassVar[Impls] = {
        "raw": LOOPS,
        "conpool": LOOPS,
        "held": LOOPS,
        "naive": ("asyncio", "uvloop"),
        "acp": ("asyncio", "uvloop"),
        "gcp": ("asyncio", "uvloop"),
    }
    requires = PEERS
    pools = ("conpool", "held", "naive", "acp", "gcp")
    seconds = (0.75, 0.25)
    quick_seconds = (0.2, 0.05)

    def run(self, spec: CellSpec) -> Metrics:
        if spec.cell.impl == "raw":
            return _raw_trio(spec) if spec.cell.loop == "trio" else _raw_asyncio(spec)
        return RUNNERS[spec.cell.impl](spec)

    def _over_naive(self, cell: Cell) -> tuple[base.Ratio, base.Ratio]:
        naive = cell.but("naive")
        return (
            base.Ratio("conpool/naive", cell, naive, "rps"),
            base.Ratio("conpool/naive cpu", naive, cell, "cpu_us"),
        )

    def ratios(self, cells: Sequence[Cell]) -> list[base.Ratio]:
        present = set(cells)
        over = [c for c in cells if c.impl == "conpool" and c.but("naive") in present]
        return super().ratios(cells) + [r for c in over for r in self._over_naive(c)]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        present = set(cells)
        out = []
        for cell in sorted(cells, key=lambda c: (base.loop_order(c.loop), c.conc)):
            where = f"{cell.loop}, C={cell.conc}"
            for other, ratios, goal in (
                ("raw", self.pair(cell), TARGET),
                ("naive", self._over_naive(cell), 1.0),  # faster than the naive Queue pool
            ):
                if cell.impl == "conpool" and cell.but(other) in present:
                    rate, cpu = (summary.ratio(r) for r in ratios)
                    out.append(
                        Target.check(f"echo conpool/{other}, {where}", ">=", goal, rate, cpu)
                    )
        return out
