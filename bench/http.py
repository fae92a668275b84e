"""``http``: HTTP/1.1 keep-alive GETs of a 64-byte body, C tasks, against
nginx (or bench.servers' HTTP server) on the other core.

``raw`` and ``conpool`` share one minimal client (a request head, a head
parser, a Content-Length body), so ``conpool/raw`` is what a lease per
request costs in an HTTP stack; ``httpcore`` and ``aiohttp`` are full
clients with their own pools.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import ClassVar

from bench import base, timing
from bench.base import LOOPS, Cell, CellSpec, Impls, Metrics, Summary
from bench.procs import server_core
from bench.servers import BODY, Running, start


class ProtocolError(Exception):
    """The server's answer is not what the minimal client understands."""


def request_head(host: str, port: int, path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("ascii")


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, keep-alive) of a response head (up to, not
    including, the blank line)."""
    lower = head.lower()
    if not lower.startswith(b"http/1.1 "):
        raise ProtocolError(f"not an HTTP/1.1 response: {head[:40]!r}")
    status = int(lower[9:12])
    i = lower.find(b"\r\ncontent-length:")
    if i < 0:
        raise ProtocolError("no Content-Length (chunked bodies are not supported)")
    j = lower.find(b"\r\n", i + 17)
    length = int(lower[i + 17 : j] if j >= 0 else lower[i + 17 :])
    return status, length, lower.find(b"\r\nconnection: close") < 0


async def exchange(
    send: Callable[[bytes], Awaitable[None]], recv: Callable[[], Awaitable[bytes]], request: bytes
) -> bool:
    """One request and its whole response; returns keep-alive."""
    await send(request)
    buf = await recv()
    end = buf.find(b"\r\n\r\n")
    while end < 0:
        more = await recv()
        if not more:
            raise ProtocolError("connection closed mid-response")
        buf += more
        end = buf.find(b"\r\n\r\n")
    status, length, keep = parse_head(buf[:end])
    have = len(buf) - end - 4
    while have < length:
        more = await recv()
        if not more:
            raise ProtocolError("connection closed mid-body")
        have += len(more)
    if status != 200 or have != length or length != len(BODY):
        raise ProtocolError(f"status {status}, body {have} of {length} bytes")
    return keep


Send = Callable[[bytes], Awaitable[None]]
Recv = Callable[[], Awaitable[bytes]]
Close = Callable[[], Awaitable[None]]


async def _open_trio(host: str, port: int) -> tuple[Send, Recv, Close]:
    import trio

    stream = await trio.open_tcp_stream(host, port)
    return stream.send_all, functools.partial(stream.receive_some, 65536), stream.aclose


async def _open_asyncio(host: str, port: int) -> tuple[Send, Recv, Close]:
    reader, writer = await asyncio.open_connection(host, port)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def close() -> None:
        writer.close()
        await writer.wait_closed()

    return send, functools.partial(reader.read, 65536), close


def _raw(spec: CellSpec, srv: Running) -> Metrics:
    """One persistent connection per task: trio's SocketStream, or asyncio streams."""
    host, port = srv.hosts[0], srv.port
    request = request_head(host, port)
    loop = spec.cell.loop
    open_ = _open_trio if loop == "trio" else _open_asyncio

    async def worker(meter: timing.Meter) -> None:
        while not meter.stop:
            send, recv, close = await open_(host, port)
            try:
                while not meter.stop:
                    keep = await exchange(send, recv, request)
                    meter.n += 1
                    if not keep:
                        break
            finally:
                await close()

    async def main() -> Metrics:
        sample = await timing.drive_native(loop)(worker, spec.cell.conc, spec.warmup, spec.duration)
        return sample.throughput()

    return timing.run_native(loop, main)


def _conpool(spec: CellSpec, srv: Running) -> Metrics:
    import conpool

    endpoint = conpool.Endpoint(srv.hosts[0], srv.port)
    request = request_head(srv.hosts[0], srv.port)
    config = conpool.Config(max_connections_per_endpoint=spec.cell.conc)

    async def main() -> Metrics:
        async with conpool.Pool(config) as pool:

            async def worker(meter: timing.Meter) -> None:
                while not meter.stop:
                    async with pool.connection(endpoint) as conn:
                        if not await exchange(conn.send, conn.receive, request):
                            await conn.aclose()
                    meter.n += 1

            sample = await timing.drive_anyio(worker, spec.cell.conc, spec.warmup, spec.duration)
        return sample.throughput()

    return timing.run_anyio(spec.cell.loop, main)


def _httpcore(spec: CellSpec, srv: Running) -> Metrics:
    import httpcore

    url = f"http://{srv.hosts[0]}:{srv.port}/"
    conc = spec.cell.conc

    async def main() -> Metrics:
        pool = httpcore.AsyncConnectionPool(max_connections=conc, max_keepalive_connections=conc)
        async with pool:

            async def worker(meter: timing.Meter) -> None:
                while not meter.stop:
                    response = await pool.request("GET", url)
                    if response.status != 200 or response.content != BODY:
                        raise ProtocolError(f"httpcore: status {response.status}")
                    meter.n += 1

            drive = timing.drive_native(spec.cell.loop)
            sample = await drive(worker, conc, spec.warmup, spec.duration)
        return sample.throughput()

    return timing.run_native(spec.cell.loop, main)


def _aiohttp(spec: CellSpec, srv: Running) -> Metrics:
    import aiohttp

    url = f"http://{srv.hosts[0]}:{srv.port}/"
    conc = spec.cell.conc

    async def main() -> Metrics:
        connector = aiohttp.TCPConnector(limit=conc)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker(meter: timing.Meter) -> None:
                while not meter.stop:
                    async with session.get(url) as response:
                        body = await response.read()
                        if response.status != 200 or body != BODY:
                            raise ProtocolError(f"aiohttp: status {response.status}")
                    meter.n += 1

            sample = await timing.drive_asyncio(worker, conc, spec.warmup, spec.duration)
        return sample.throughput()

    return timing.run_asyncio(spec.cell.loop, main)


RUNNERS: dict[str, Callable[[CellSpec, Running], Metrics]] = {
    "raw": _raw,
    "conpool": _conpool,
    "httpcore": _httpcore,
    "aiohttp": _aiohttp,
}


class Http(base.VersusRaw):
    name = "http"
    title = "HTTP/1.1 keep-alive GET, 64 B body, C tasks"
    impls: ClassVar[Impls] = {
        "raw": LOOPS,
        "conpool": LOOPS,
        "httpcore": LOOPS,
        "aiohttp": ("asyncio", "uvloop"),
    }
    requires: ClassVar[Mapping[str, str]] = {"httpcore": "httpcore", "aiohttp": "aiohttp"}
    pools = ("conpool", "httpcore", "aiohttp")
    seconds = (0.4, 0.15)  # each cell also starts its server (~0.05 s for nginx)
    quick_seconds = (0.15, 0.05)

    def levels(self, opts: base.Options) -> tuple[int, ...]:
        if opts.quick and opts.conc == (1, 16, 64):
            return (1, 64)  # --quick with the default levels: the ends only
        return opts.conc

    def run(self, spec: CellSpec) -> Metrics:
        with start("http", cpu=server_core(spec.cpu), connections=4 * spec.cell.conc + 64) as srv:
            metrics = RUNNERS[spec.cell.impl](spec, srv)
        metrics["server_nginx"] = 1.0 if srv.name.startswith("nginx") else 0.0
        return metrics

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        nginx = {s.median for c in cells if (s := summary.cell(c, "server_nginx")) is not None}
        server = {1.0: "nginx (1 worker, pinned)", 0.0: "the uvloop server of bench/servers.py"}
        shown = server[nginx.pop()] if len(nginx) == 1 else "nginx or the uvloop server (mixed)"
        return [f"Server: {shown}", "", *super().report(summary, cells)]
