"""``memory``: Python heap per idle pooled connection (tracemalloc), minus the
heap of the same connections made without the pool."""

from __future__ import annotations

import errno
import gc
import os
import socket
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from bench import base, timing
from bench.base import LOOPS, Cell, CellSpec, Impls, Metrics, Summary, Target, Workload
from bench.procs import raise_nofile

TARGET = 1024.0  # bytes per idle connection beyond the socket's own objects
N, N_QUICK = 1000, 500
# Seconds between the pool's first measure and its second, with the connect
# timeout at half of it: trio keeps each cancel scope's deadline in its timer
# heap until it passes (about 230 bytes per connection), so the second
# measure is the idle connection alone.
SETTLE = 0.6

Opened = tuple[list[Any], Callable[[], Awaitable[None]]]


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _raw_asyncio(host: str, port: int, n: int) -> Opened:
    """What conpool's dial does on asyncio, with a bare protocol."""
    import asyncio

    loop = asyncio.get_running_loop()

    class Bare(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

    out: list[Bare] = []
    for _ in range(n):
        sock = _socket()
        await loop.sock_connect(sock, (host, port))
        _, proto = await loop.create_connection(Bare, sock=sock)
        out.append(proto)

    async def close() -> None:
        for proto in out:
            proto.transport.close()
        await asyncio.sleep(0.05)

    return out, close


async def _raw_trio(host: str, port: int, n: int) -> Opened:
    """Connected sockets: all that conpool's plain TCP on trio keeps."""
    import anyio
    import anyio.lowlevel

    out: list[socket.socket] = []
    for _ in range(n):
        sock = _socket()
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
    config = conpool.Config(max_connections_per_endpoint=n + 1, connect_timeout=SETTLE / 2)
    opener = _raw_trio if spec.cell.loop == "trio" else _raw_asyncio

    async def main() -> Metrics:
        tracemalloc.start()
        # Without the pool: one first (the loop's own caches), then n.
        first, close_first = await opener(host, port, 1)
        m0 = _traced()
        conns, close = await opener(host, port, n)
        m1 = _traced()
        await close()
        await close_first()
        del conns, first
        # With the pool: one acquire + release first (the endpoint's state,
        # lazy imports), then n more, held then released.
        async with conpool.Pool(config) as pool:
            await pool.release(await pool.acquire(endpoint))
            p0 = _traced()
            held = [await pool.acquire(endpoint) for _ in range(n + 1)]
            for conn in held:
                await pool.release(conn)
            del held, conn
            p1 = _traced()
            await anyio.sleep(SETTLE)
            p2 = _traced()
            idle = pool.stats().endpoints[endpoint].idle
            if idle != n + 1:
                raise RuntimeError(f"{idle} idle connections, expected {n + 1}")
        tracemalloc.stop()
        raw, pooled, settled = (m1 - m0) / n, (p1 - p0) / n, (p2 - p0) / n
        return {
            "bytes_raw": raw,
            "bytes_pooled": pooled,
            "bytes_beyond": pooled - raw,
            "bytes_settled": settled,
            "bytes_beyond_settled": settled - raw,
        }

    return timing.run_anyio(spec.cell.loop, main)


class Memory(Workload):
    name = "memory"
    title = "Python heap per idle pooled connection (tracemalloc)"
    impls: ClassVar[Impls] = {"conpool": LOOPS}
    seconds = quick_seconds = (1.0, 0.0)  # no phase: dialling 2 x N under tracemalloc

    def cells(self, opts: base.Options) -> list[Cell]:
        return [Cell(self.name, "conpool", loop, N_QUICK if opts.quick else N) for loop in LOOPS]

    def run(self, spec: CellSpec) -> Metrics:
        return _memory_cell(spec)

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        metrics = ["pooled", "raw", "beyond", "settled", "beyond_settled"]
        rows = [
            [c.loop, str(c.conc), *(base.fmt_stat(summary.cell(c, f"bytes_{m}")) for m in metrics)]
            for c in sorted(cells, key=lambda c: base.loop_order(c.loop))
        ]
        header = ["loop", "N", "pooled", "raw", "beyond raw", "pooled, settled", "beyond, settled"]
        return [
            "Bytes of Python heap per connection: pooled and idle, right after dialling;",
            "the same connection made without the pool; the difference (what the pool adds);",
            f"then the same two once the connects' deadlines have passed ({SETTLE} s later:",
            "trio frees a connect timeout's cancel scope only then)",
            "",
            *base.table(header, rows),
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        return [
            Target.check(
                f"heap per idle connection beyond the socket's, {c.loop} (bytes)",
                "<=",
                TARGET,
                None,
                summary.cell(c, "bytes_beyond_settled"),
            )
            for c in sorted(cells, key=lambda c: base.loop_order(c.loop))
        ]
