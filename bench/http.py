"""HTTP/1.1 keep-alive: what the pool costs inside an HTTP client.

C tasks each send ``GET /`` and read the whole response (a fixed 200 with a
64-byte ``Content-Length`` body) as fast as they can, against an HTTP server
the cell starts on the other core (nginx when installed, else the uvloop
server of :mod:`bench.servers`; see the ``server_nginx`` metric).

* ``raw``: the minimal client below over one persistent connection per
  task, no pool: asyncio streams on asyncio and uvloop (``write``,
  ``drain``, ``read``), trio's ``SocketStream`` on trio.
* ``conpool``: the same minimal client, every request in ``async with
  pool.connection(ep) as conn``, ``max_connections_per_endpoint = C``,
  under ``anyio.run``.
* ``httpcore``: ``httpcore.AsyncConnectionPool(max_connections=C)``,
  ``await pool.request("GET", url)`` (reads the body); asyncio, uvloop and
  trio.
* ``aiohttp``: ``aiohttp.ClientSession`` with ``TCPConnector(limit=C)``,
  ``async with session.get(url) as r: await r.read()``; asyncio and uvloop.

The minimal client is the same code for ``raw`` and ``conpool`` (one
request head, one head parser, a Content-Length body; no chunked bodies, no
pipelining), so ``conpool/raw`` is what borrowing a connection per request
costs in an HTTP stack, and ``httpcore/raw``, ``aiohttp/raw`` what a full
HTTP client with its own pool costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from bench.common import fmt_num, fmt_ratio, phase_metrics, stat_fmt
from bench.loops import (
    Meter,
    drive_anyio,
    drive_asyncio,
    drive_trio,
    run_anyio,
    run_asyncio,
    run_trio,
)
from bench.servers import BODY, Running, server_core, start
from bench.workloads import (
    LOOPS,
    Cell,
    CellSpec,
    Metrics,
    Options,
    Ratio,
    Stat,
    Summary,
    Workload,
    table,
)

__all__ = ["Http", "ProtocolError", "parse_head", "request_head"]


class ProtocolError(Exception):
    """The server's answer is not what the minimal client understands."""


# -- the minimal HTTP/1.1 client ------------------------------------------------------


def request_head(host: str, port: int, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("ascii")


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, keep-alive) from a response head (up to,
    not including, the blank line)."""
    lower = head.lower()
    if not lower.startswith(b"http/1.1 "):
        raise ProtocolError(f"not an HTTP/1.1 response: {head[:40]!r}")
    status = int(lower[9:12])
    i = lower.find(b"\r\ncontent-length:")
    if i < 0:
        raise ProtocolError("no Content-Length (chunked bodies are not supported)")
    j = lower.find(b"\r\n", i + 17)
    length = int(lower[i + 17 : j] if j >= 0 else lower[i + 17 :])
    keep = lower.find(b"\r\nconnection: close") < 0
    return status, length, keep


def _check(status: int, length: int, have: int) -> None:
    if status != 200 or have != length or length != len(BODY):
        raise ProtocolError(f"status {status}, body {have} of {length} bytes")


async def get_conpool(conn: Any, request: bytes) -> bool:
    """One exchange over a conpool Connection; returns keep-alive."""
    await conn.send(request)
    buf = await conn.receive()
    end = buf.find(b"\r\n\r\n")
    while end < 0:
        buf += await conn.receive()
        end = buf.find(b"\r\n\r\n")
    status, length, keep = parse_head(buf[:end])
    have = len(buf) - end - 4
    while have < length:
        have += len(await conn.receive())
    _check(status, length, have)
    return keep


async def get_asyncio(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bool:
    """The same exchange over asyncio streams."""
    writer.write(request)
    await writer.drain()
    buf = await reader.read(65536)
    end = buf.find(b"\r\n\r\n")
    while end < 0:
        more = await reader.read(65536)
        if not more:
            raise ProtocolError("connection closed mid-response")
        buf += more
        end = buf.find(b"\r\n\r\n")
    status, length, keep = parse_head(buf[:end])
    have = len(buf) - end - 4
    while have < length:
        more = await reader.read(65536)
        if not more:
            raise ProtocolError("connection closed mid-body")
        have += len(more)
    _check(status, length, have)
    return keep


async def get_trio(stream: Any, request: bytes) -> bool:
    """The same exchange over a trio SocketStream."""
    await stream.send_all(request)
    buf = await stream.receive_some(65536)
    end = buf.find(b"\r\n\r\n")
    while end < 0:
        more = await stream.receive_some(65536)
        if not more:
            raise ProtocolError("connection closed mid-response")
        buf += more
        end = buf.find(b"\r\n\r\n")
    status, length, keep = parse_head(buf[:end])
    have = len(buf) - end - 4
    while have < length:
        more = await stream.receive_some(65536)
        if not more:
            raise ProtocolError("connection closed mid-body")
        have += len(more)
    _check(status, length, have)
    return keep


# -- one runner per implementation ------------------------------------------------------


def _raw(spec: CellSpec, srv: Running) -> Metrics:
    host, port = srv.hosts[0], srv.port
    request = request_head(host, port)
    if spec.cell.loop == "trio":
        import trio

        async def trio_worker(meter: Meter) -> None:
            while not meter.stop:
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    while not meter.stop:
                        keep = await get_trio(stream, request)
                        meter.n += 1
                        if not keep:
                            break

        async def trio_main() -> Metrics:
            sample = await drive_trio(trio_worker, spec.cell.conc, spec.warmup, spec.duration)
            return phase_metrics(sample)

        return run_trio(trio_main)

    async def worker(meter: Meter) -> None:
        while not meter.stop:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while not meter.stop:
                    keep = await get_asyncio(reader, writer, request)
                    meter.n += 1
                    if not keep:
                        break
            finally:
                writer.close()
                await writer.wait_closed()

    async def main() -> Metrics:
        return phase_metrics(
            await drive_asyncio(worker, spec.cell.conc, spec.warmup, spec.duration)
        )

    return run_asyncio(spec.cell.loop, main)


def _conpool(spec: CellSpec, srv: Running) -> Metrics:
    import conpool

    host, port = srv.hosts[0], srv.port
    endpoint = conpool.Endpoint(host, port)
    request = request_head(host, port)
    config = conpool.Config(max_connections_per_endpoint=spec.cell.conc)

    async def main() -> Metrics:
        async with conpool.Pool(config) as pool:

            async def worker(meter: Meter) -> None:
                while not meter.stop:
                    async with pool.connection(endpoint) as conn:
                        if not await get_conpool(conn, request):
                            await conn.aclose()
                    meter.n += 1

            sample = await drive_anyio(worker, spec.cell.conc, spec.warmup, spec.duration)
        return phase_metrics(sample)

    return run_anyio(spec.cell.loop, main)


def _httpcore(spec: CellSpec, srv: Running) -> Metrics:
    import httpcore

    url = f"http://{srv.hosts[0]}:{srv.port}/"
    conc = spec.cell.conc

    async def main() -> Metrics:
        pool = httpcore.AsyncConnectionPool(max_connections=conc, max_keepalive_connections=conc)
        async with pool:

            async def worker(meter: Meter) -> None:
                while not meter.stop:
                    response = await pool.request("GET", url)
                    if response.status != 200 or response.content != BODY:
                        raise ProtocolError(f"httpcore: status {response.status}")
                    meter.n += 1

            if spec.cell.loop == "trio":
                sample = await drive_trio(worker, conc, spec.warmup, spec.duration)
            else:
                sample = await drive_asyncio(worker, conc, spec.warmup, spec.duration)
        return phase_metrics(sample)

    if spec.cell.loop == "trio":
        return run_trio(main)
    return run_asyncio(spec.cell.loop, main)


def _aiohttp(spec: CellSpec, srv: Running) -> Metrics:
    import aiohttp

    url = f"http://{srv.hosts[0]}:{srv.port}/"
    conc = spec.cell.conc

    async def main() -> Metrics:
        connector = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker(meter: Meter) -> None:
                while not meter.stop:
                    async with session.get(url) as response:
                        body = await response.read()
                        if response.status != 200 or body != BODY:
                            raise ProtocolError(f"aiohttp: status {response.status}")
                    meter.n += 1

            sample = await drive_asyncio(worker, conc, spec.warmup, spec.duration)
        return phase_metrics(sample)

    return run_asyncio(spec.cell.loop, main)


RUNNERS: dict[str, Callable[[CellSpec, Running], Metrics]] = {
    "raw": _raw,
    "conpool": _conpool,
    "httpcore": _httpcore,
    "aiohttp": _aiohttp,
}


class Http(Workload):
    name = "http"
    title = "HTTP/1.1 keep-alive GET, 64 B body, C tasks"
    impls: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "raw": ("asyncio", "uvloop", "trio"),
        "conpool": ("asyncio", "uvloop", "trio"),
        "httpcore": ("asyncio", "uvloop", "trio"),
        "aiohttp": ("asyncio", "uvloop"),
    }
    POOLS = ("conpool", "httpcore", "aiohttp")
    quick = False

    def timing(self, quick: bool) -> tuple[float, float]:
        # The runner asks for the timing before the cells: remember --quick.
        self.quick = quick
        # Each cell also starts its server (~0.05 s for nginx).
        return (0.15, 0.05) if quick else (0.4, 0.15)

    def concurrency(self, opts: Options) -> tuple[int, ...]:
        if self.quick and opts.conc == (1, 16, 64):
            return (1, 64)  # --quick with the default levels: the ends only
        return opts.conc

    def run(self, spec: CellSpec) -> Metrics:
        with start("http", cpu=server_core(spec.cpu), connections=4 * spec.cell.conc + 64) as srv:
            metrics = RUNNERS[spec.cell.impl](spec, srv)
        metrics["server_nginx"] = 1.0 if srv.name.startswith("nginx") else 0.0
        return metrics

    def _raw_of(self, cell: Cell) -> Cell:
        return Cell(self.name, "raw", cell.loop, cell.conc)

    def _pair(self, cell: Cell) -> tuple[Ratio, Ratio]:
        raw = self._raw_of(cell)
        return (
            Ratio(f"{cell.impl}/raw", cell, raw, "rps"),
            Ratio(f"{cell.impl}/raw cpu", raw, cell, "cpu_us"),
        )

    def ratios(self, cells: Sequence[Cell]) -> list[Ratio]:
        present = set(cells)
        out: list[Ratio] = []
        for cell in cells:
            if cell.impl in self.POOLS and self._raw_of(cell) in present:
                out += self._pair(cell)
        return out

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        present = set(cells)
        impls = [i for i in self.impls if any(c.impl == i for c in cells)]
        pools = [i for i in self.POOLS if i in impls]
        grid = sorted({(c.loop, c.conc) for c in cells}, key=lambda lc: (LOOPS.index(lc[0]), lc[1]))
        stats = [summary.cell(c, "server_nginx") for c in cells]
        nginx = [s.median for s in stats if s is not None]
        server = (
            "nginx (1 worker, pinned)"
            if nginx and min(nginx) == 1.0
            else "the uvloop server of bench/servers.py"
            if nginx and max(nginx) == 0.0
            else "nginx or the uvloop server (mixed)"
        )

        def cells_table(metric: str, scale: float) -> list[str]:
            rows = []
            for loop, conc in grid:
                row = [loop, str(conc)]
                for impl in impls:
                    cell = Cell(self.name, impl, loop, conc)
                    stat = summary.cell(cell, metric)
                    row.append(stat_fmt(stat, fmt_num, scale) if cell in present else "")
                rows.append(row)
            return table(["loop", "C", *impls], rows)

        def ratio_table(which: int) -> list[str]:
            rows = []
            for loop, conc in grid:
                row = [loop, str(conc)]
                for impl in pools:
                    cell = Cell(self.name, impl, loop, conc)
                    stat: Stat | None = summary.ratio(self._pair(cell)[which])
                    row.append(stat_fmt(stat, fmt_ratio) if cell in present else "")
                rows.append(row)
            return table(["loop", "C", *(f"{i}/raw" for i in pools)], rows)

        return [
            f"Server: {server}",
            "",
            "Throughput, thousands of requests/s, median [min-max] over the repeats",
            "",
            *cells_table("rps", 1e-3),
            "",
            "Throughput ratio to raw on the same loop and C (paired within each repeat)",
            "",
            *ratio_table(0),
            "",
            "Client CPU µs per request",
            "",
            *cells_table("cpu_us", 1.0),
            "",
            "CPU ratio: raw's CPU per request / the client's (1.00 = as cheap as raw; paired)",
            "",
            *ratio_table(1),
        ]
