"""Echo round trips: C tasks each send 64 bytes and read the 64 bytes back.

* ``raw``: one persistent connection per task, no pool: asyncio streams
  (write, drain, readexactly) on asyncio and uvloop; trio's SocketStream
  from ``trio.open_tcp_stream`` on trio.
* ``conpool``: every request is ``async with pool.connection(ep) as conn:
  send; receive`` with ``max_connections_per_endpoint = C``, under
  ``anyio.run`` (asyncio, uvloop or trio backend).
* ``held``: conpool's connection held by its task for the whole run (one
  acquire per task, not per request): the cost of conpool's stream alone.
* ``naive``: the asyncio.Queue pool of :mod:`bench.naive`, limit C.
* ``acp`` / ``gcp``: the pools of :mod:`bench.peers`, limit C.

Each pool request borrows a connection for exactly one round trip, so with C
tasks and a limit of C the pool holds C connections and never makes a task
wait: what the ratio to ``raw`` shows is the pool's cost per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from bench.loops import (
    Meter,
    Sample,
    drive_anyio,
    drive_asyncio,
    drive_trio,
    run_anyio,
    run_asyncio,
    run_trio,
)
from bench.workloads import (
    LOOPS,
    Cell,
    CellSpec,
    Metrics,
    Ratio,
    Stat,
    Summary,
    Target,
    Workload,
    fmt_stat,
    table,
)

__all__ = ["Echo"]

SIZE = 64
MESSAGE = bytes(range(SIZE))
TARGET_RATIO = 0.90


def _metrics(sample: Sample) -> Metrics:
    if sample.n == 0 or sample.wall <= 0:
        # A loaded machine can starve a short phase: fail the cell loudly
        # rather than dividing by zero.
        raise RuntimeError(f"no request completed in {sample.wall:.3f} s")
    return {
        "rps": sample.n / sample.wall,
        "cpu_us": sample.cpu / sample.n * 1e6,  # client CPU per request
        "cpu_share": sample.cpu / sample.wall,  # of the client's core
        "requests": float(sample.n),
        "seconds": sample.wall,
    }


# -- raw baselines --------------------------------------------------------------


def _raw_asyncio(spec: CellSpec) -> Metrics:
    host, port = spec.host, spec.port

    async def worker(meter: Meter) -> None:
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
        return _metrics(await drive_asyncio(worker, spec.cell.conc, spec.warmup, spec.duration))

    return run_asyncio(spec.cell.loop, main)


def _raw_trio(spec: CellSpec) -> Metrics:
    import trio

    host, port = spec.host, spec.port

    async def worker(meter: Meter) -> None:
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            while not meter.stop:
                await stream.send_all(MESSAGE)
                got = len(await stream.receive_some(65536))
                while got < SIZE:
                    got += len(await stream.receive_some(65536))
                meter.n += 1

    async def main() -> Metrics:
        return _metrics(await drive_trio(worker, spec.cell.conc, spec.warmup, spec.duration))

    return run_trio(main)


# -- pools -------------------------------------------------------------------------


def _conpool(spec: CellSpec) -> Metrics:
    import conpool

    endpoint = conpool.Endpoint(spec.host, spec.port)
    config = conpool.Config(max_connections_per_endpoint=spec.cell.conc)

    async def main() -> Metrics:
        async with conpool.Pool(config) as pool:

            async def worker(meter: Meter) -> None:
                while not meter.stop:
                    async with pool.connection(endpoint) as conn:
                        await conn.send(MESSAGE)
                        got = len(await conn.receive())
                        while got < SIZE:
                            got += len(await conn.receive())
                    meter.n += 1

            result = await drive_anyio(worker, spec.cell.conc, spec.warmup, spec.duration)
        return _metrics(result)

    return run_anyio(spec.cell.loop, main)


def _held(spec: CellSpec) -> Metrics:
    """conpool's connection without the pool on the request path: each task
    acquires once and keeps its connection.  Splits conpool/raw into the cost
    of conpool's stream (held/raw) and of a lease per request (conpool/held)."""
    import conpool

    endpoint = conpool.Endpoint(spec.host, spec.port)
    config = conpool.Config(max_connections_per_endpoint=spec.cell.conc)

    async def main() -> Metrics:
        async with conpool.Pool(config) as pool:

            async def worker(meter: Meter) -> None:
                async with pool.connection(endpoint) as conn:
                    while not meter.stop:
                        await conn.send(MESSAGE)
                        got = len(await conn.receive())
                        while got < SIZE:
                            got += len(await conn.receive())
                        meter.n += 1

            result = await drive_anyio(worker, spec.cell.conc, spec.warmup, spec.duration)
        return _metrics(result)

    return run_anyio(spec.cell.loop, main)


_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _streams_worker(
    lease: Callable[[], AbstractAsyncContextManager[_Streams]],
) -> Callable[[Meter], Coroutine[Any, Any, None]]:
    """The echo loop of a pool of asyncio streams: ``lease()`` is the pool's
    ``async with`` that yields a (reader, writer) pair."""

    async def worker(meter: Meter) -> None:
        while not meter.stop:
            async with lease() as (reader, writer):
                writer.write(MESSAGE)
                await writer.drain()
                await reader.readexactly(SIZE)
            meter.n += 1

    return worker


def _naive(spec: CellSpec) -> Metrics:
    from bench.naive import QueuePool

    async def main() -> Metrics:
        pool = QueuePool(spec.host, spec.port, spec.cell.conc)
        worker = _streams_worker(pool.connection)
        try:
            result = await drive_asyncio(worker, spec.cell.conc, spec.warmup, spec.duration)
        finally:
            await pool.aclose()
        return _metrics(result)

    return run_asyncio(spec.cell.loop, main)


def _acp(spec: CellSpec) -> Metrics:
    from bench.peers import acp_pool

    async def main() -> Metrics:
        pool = acp_pool(spec.host, spec.port, spec.cell.conc)
        worker = _streams_worker(pool.get_connection)
        try:
            result = await drive_asyncio(worker, spec.cell.conc, spec.warmup, spec.duration)
        finally:
            while not pool.available.empty():
                await pool.strategy.close_connection(pool.available.get_nowait())
        return _metrics(result)

    return run_asyncio(spec.cell.loop, main)


def _gcp(spec: CellSpec) -> Metrics:
    from bench.peers import gcp_pool

    endpoint = (spec.host, spec.port)

    async def main() -> Metrics:
        pool = gcp_pool(spec.cell.conc)

        async def worker(meter: Meter) -> None:
            while not meter.stop:
                async with pool.connection(endpoint) as (reader, writer):
                    writer.write(MESSAGE)
                    await writer.drain()
                    await reader.readexactly(SIZE)
                meter.n += 1

        try:
            result = await drive_asyncio(worker, spec.cell.conc, spec.warmup, spec.duration)
        finally:
            await pool.close(timeout=5.0)
        return _metrics(result)

    return run_asyncio(spec.cell.loop, main)


# -- the workload ----------------------------------------------------------------------


class Echo(Workload):
    name = "echo"
    title = f"Echo round trips, {SIZE} B messages"
    impls: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "raw": ("asyncio", "uvloop", "trio"),
        "conpool": ("asyncio", "uvloop", "trio"),
        "held": ("asyncio", "uvloop", "trio"),
        "naive": ("asyncio", "uvloop"),
        "acp": ("asyncio", "uvloop"),
        "gcp": ("asyncio", "uvloop"),
    }
    POOLS = ("conpool", "held", "naive", "acp", "gcp")

    def timing(self, quick: bool) -> tuple[float, float]:
        return (0.2, 0.05) if quick else (0.75, 0.25)

    def run(self, spec: CellSpec) -> Metrics:
        impl = spec.cell.impl
        if impl == "raw":
            return _raw_trio(spec) if spec.cell.loop == "trio" else _raw_asyncio(spec)
        runner = {
            "conpool": _conpool,
            "held": _held,
            "naive": _naive,
            "acp": _acp,
            "gcp": _gcp,
        }[impl]
        return runner(spec)

    def ratios(self, cells: Sequence[Cell]) -> list[Ratio]:
        present = set(cells)
        out: list[Ratio] = []
        for cell in cells:
            if cell.impl in self.POOLS and self._raw(cell) in present:
                out += self._pair(cell)
        return out

    def _raw(self, cell: Cell) -> Cell:
        return Cell(self.name, "raw", cell.loop, cell.conc)

    def _pair(self, cell: Cell) -> tuple[Ratio, Ratio]:
        """impl/raw by throughput, and by client CPU per request (raw's CPU
        over the pool's, so that both read "1.0 = as good as raw")."""
        raw = self._raw(cell)
        return (
            Ratio(f"{cell.impl}/raw", cell, raw, "rps"),
            Ratio(f"{cell.impl}/raw cpu", raw, cell, "cpu_us"),
        )

    def _grid(self, cells: Sequence[Cell]) -> list[tuple[str, int]]:
        return sorted({(c.loop, c.conc) for c in cells}, key=lambda lc: (LOOPS.index(lc[0]), lc[1]))

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        present = set(cells)
        impls = [i for i in self.impls if any(c.impl == i for c in cells)]
        pools = [i for i in self.POOLS if i in impls]
        grid = self._grid(cells)

        def cell_table(metric: str, scale: float, fmt: str) -> list[str]:
            rows = []
            for loop, conc in grid:
                row = [loop, str(conc)]
                for impl in impls:
                    cell = Cell(self.name, impl, loop, conc)
                    stat = summary.cell(cell, metric)
                    if stat is not None:
                        stat = Stat(stat.median * scale, stat.min * scale, stat.max * scale, stat.n)
                    row.append(fmt_stat(stat, fmt) if cell in present else "")
                rows.append(row)
            return table(["loop", "C", *impls], rows)

        def ratio_table(which: int) -> list[str]:
            rows = []
            for loop, conc in grid:
                row = [loop, str(conc)]
                for impl in pools:
                    cell = Cell(self.name, impl, loop, conc)
                    ratio = self._pair(cell)[which]
                    row.append(fmt_stat(summary.ratio(ratio)) if cell in present else "")
                rows.append(row)
            return table(["loop", "C", *(f"{i}/raw" for i in pools)], rows)

        return [
            "Throughput, thousands of requests/s, median [min-max] over the repeats",
            "",
            *cell_table("rps", 1e-3, "{:.1f}"),
            "",
            "Throughput ratio to raw on the same loop and C (paired within each repeat)",
            "",
            *ratio_table(0),
            "",
            "Client CPU µs per request",
            "",
            *cell_table("cpu_us", 1.0, "{:.1f}"),
            "",
            "CPU ratio: raw's CPU per request / the pool's (1.00 = as cheap as raw; paired)",
            "",
            *ratio_table(1),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        present = set(cells)
        out = []
        for loop, conc in self._grid(cells):
            cell = Cell(self.name, "conpool", loop, conc)
            if cell not in present or self._raw(cell) not in present:
                continue
            by_rps, by_cpu = self._pair(cell)
            out.append(
                Target.check(
                    f"echo conpool/raw, {loop}, C={conc}",
                    ">=",
                    TARGET_RATIO,
                    summary.ratio(by_rps),
                    summary.ratio(by_cpu),
                )
            )
        return out
