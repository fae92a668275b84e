"""The ``httpx`` workload: httpx.AsyncClient on conpool's transport, against
its peers, in one run.

C tasks each loop ``GET /`` (a 200 with a 64-byte Content-Length body,
``response.content`` read and checked) against nginx started here (one
worker, keep-alive), on asyncio and uvloop, C = 1, 16, 64:

* ``conpool``: ``httpx.AsyncClient(transport=conpool.httpx.AsyncTransport(
  config=Config(max_connections_per_endpoint=C)))``;
* ``httpx``: httpx's default transport (httpcore), ``Limits(max_connections=C,
  max_keepalive_connections=C)``;
* ``httpx-aiohttp``: ``httpx_aiohttp.AiohttpTransport(limits=...)``;
* ``aiohttp``: ``aiohttp.ClientSession(connector=TCPConnector(limit=C))``,
  ``async with session.get(url) as r: await r.read()``;
* ``minimal``: conpool's minimal HTTP/1.1 client (the one of bench/http.py,
  copied here) on ``pool.connection()``: the ceiling of an HTTP client on
  the pool;
* ``canned``: httpx.AsyncClient with a transport that returns a canned
  response without I/O (after one ``asyncio.sleep(0)``, the loop trip a
  real response costs): the ceiling of any httpx transport;
* ``bare``: httpx.AsyncClient with the least transport that does the real
  I/O: the minimal client's one send and read on ``pool.connection()``, its
  head found by ``find``, no framing library, no checks, the server's head
  fields given to httpx as ``canned`` gives them.  Not a usable transport:
  it measures what the round trip alone costs httpx on this machine, which
  ``canned`` leaves out.

Printed: requests/s, client CPU µs per request (this process only; nginx
runs in its own), and the ratios the targets are set in:
conpool/httpx >= 15 at C=64 and >= 1.4 at C=1, conpool/canned >= 0.70 and
conpool/httpx-aiohttp > 1 at every C.

    python -m bench.httpx_workload [--duration 2] [--warmup 0.5] [--conc 1,16,64]
        [--loops asyncio,uvloop] [--impls conpool,httpx,...] [--profile]

``--profile`` runs the conpool cell at the highest C under cProfile and
prints where its time goes, grouped by package (httpx, h11, conpool, the
event loop) and by function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench import base
from bench.procs import server_core
from bench.servers import BODY as SERVER_BODY
from bench.servers import start

if TYPE_CHECKING:
    import conpool

BODY = b"x" * 63 + b"\n"
IMPLS = ("conpool", "httpx", "httpx-aiohttp", "aiohttp", "minimal", "canned", "bare")
LOOPS = ("asyncio", "uvloop")


# -- the server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def nginx(connections: int = 1024) -> Iterator[tuple[str, int]]:
    """nginx on 127.0.0.1 answering ``GET /`` with BODY, keep-alive; stopped by
    its PID on the way out."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if binary is None:
        raise SystemExit("the httpx workload needs nginx (Debian: nginx-light)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="conpool-bench-httpx-") as tmp:
        d = Path(tmp)
        (d / "nginx.conf").write_text(
            f"""\
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "{BODY.decode().strip()}\\n"; }}
    }}
}}
"""
        )
        argv = [binary, "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
        proc = subprocess.Popen([*argv, "-g", "daemon off;"])
        try:
            deadline = time.monotonic() + 10
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start")
                time.sleep(0.02)
            yield "127.0.0.1", port
        finally:
            proc.terminate()
            proc.wait(10)


# -- one timed phase ----------------------------------------------------------------------


class Meter:
    __slots__ = ("n", "stop")

    def __init__(self) -> None:
        self.n = 0
        self.stop = False


#: When set, (warm-up requests, measured requests): phases bounded by a
#: count of requests instead of seconds (bench/httpx_instructions.py, whose
#: measure is instructions, not time).
COUNTS: list[tuple[int, int] | None] = [None]


async def drive(
    one: Callable[[], Awaitable[None]], conc: int, warmup: float, duration: float
) -> tuple[int, float, float]:
    """C tasks loop ``one()``; returns (requests, wall s, CPU s) of the
    measured phase."""
    meter = Meter()
    counts = COUNTS[0]
    reached = asyncio.Event()
    goal = [counts[0] if counts is not None else -1]

    async def worker() -> None:
        while not meter.stop:
            await one()
            meter.n += 1
            if meter.n == goal[0]:
                reached.set()

    tasks = [asyncio.ensure_future(worker()) for _ in range(conc)]
    try:
        if counts is None:
            await asyncio.sleep(warmup)
        else:
            await reached.wait()
            reached.clear()
            goal[0] = counts[0] + counts[1]
        n0, t0, c0 = meter.n, time.perf_counter(), time.process_time()
        if counts is None:
            await asyncio.sleep(duration)
        else:
            await reached.wait()
        n1, t1, c1 = meter.n, time.perf_counter(), time.process_time()
    finally:
        meter.stop = True
        await asyncio.gather(*tasks)
    return n1 - n0, t1 - t0, c1 - c0


#: The body the server of the current cell answers with (this module's
#: nginx, or bench.servers' under the harness).
_expected = [BODY]


def _check(status: int, body: bytes) -> None:
    if status != 200 or body != _expected[0]:
        raise RuntimeError(f"unexpected response: {status} {body[:40]!r}")


# -- the implementations ----------------------------------------------------------------


async def run_conpool(
    url: str, conc: int, warmup: float, duration: float
) -> tuple[int, float, float]:
    import httpx

    import conpool
    import conpool.httpx

    config = conpool.Config(max_connections_per_endpoint=conc)
    transport = conpool.httpx.AsyncTransport(config=config)
    async with httpx.AsyncClient(transport=transport) as client:

        async def one() -> None:
            r = await client.get(url)
            _check(r.status_code, r.content)

        return await drive(one, conc, warmup, duration)


async def run_httpx(
    url: str, conc: int, warmup: float, duration: float
) -> tuple[int, float, float]:
    import httpx

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one() -> None:
            r = await client.get(url)
            _check(r.status_code, r.content)

        return await drive(one, conc, warmup, duration)


async def run_httpx_aiohttp(
    url: str, conc: int, warmup: float, duration: float
) -> tuple[int, float, float]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits)) as client:

        async def one() -> None:
            r = await client.get(url)
            _check(r.status_code, r.content)

        return await drive(one, conc, warmup, duration)


async def run_aiohttp(
    url: str, conc: int, warmup: float, duration: float
) -> tuple[int, float, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.get(url) as r:
                _check(r.status, await r.read())

        return await drive(one, conc, warmup, duration)


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, keep-alive) of a response head (bench/http.py's)."""
    lower = head.lower()
    if not lower.startswith(b"http/1.1 "):
        raise RuntimeError(f"not an HTTP/1.1 response: {head[:40]!r}")
    i = lower.find(b"\r\ncontent-length:")
    j = lower.find(b"\r\n", i + 17)
    length = int(lower[i + 17 : j] if j >= 0 else lower[i + 17 :])
    return int(lower[9:12]), length, lower.find(b"\r\nconnection: close") < 0


async def _exchange(
    pool: conpool.Pool, endpoint: conpool.Endpoint, request: bytes
) -> tuple[int, bytes]:
    """conpool's minimal HTTP/1.1 client: one lease, ``request`` sent whole,
    the head found with ``find``, the body read to its Content-Length; the
    connection closed when the server will not keep it.  (``minimal``, and
    the I/O of ``bare``.)"""
    async with pool.connection(endpoint) as conn:
        await conn.send(request)
        buf = await conn.receive()
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            buf += await conn.receive()
            end = buf.find(b"\r\n\r\n")
        status, length, keep = _parse_head(buf[:end])
        body = buf[end + 4 :]
        while len(body) < length:
            body += await conn.receive()
        if not keep:
            await conn.aclose()
    return status, body


async def run_minimal(
    url: str, conc: int, warmup: float, duration: float
) -> tuple[int, float, float]:
    import conpool

    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    endpoint = conpool.Endpoint(host, int(port))
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=conc)) as pool:

        async def one() -> None:
            _check(*await _exchange(pool, endpoint, request))

        return await drive(one, conc, warmup, duration)


async def run_canned(
    url: str, conc: int, warmup: float, duration: float
) -> tuple[int, float, float]:
    import httpx

    canned = _expected[0]
    # The real server's own head, fetched once before the clock starts: httpx
    # then builds the same Response (the same header fields to store, parse
    # and look up) as over the network, and the ceiling is fair to the
    # transports it bounds.
    headers = _server_headers(url)

    class Canned(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            # One trip through the loop, as a real response's arrival costs
            # (and without it the workers would never let the timer run).
            await asyncio.sleep(0)
            return httpx.Response(
                200,
                headers=headers,
                stream=httpx.ByteStream(canned),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": b"OK"},
            )

    async with httpx.AsyncClient(transport=Canned()) as client:

        async def one() -> None:
            r = await client.get(url)
            _check(r.status_code, r.content)

        return await drive(one, conc, warmup, duration)


async def run_bare(url: str, conc: int, warmup: float, duration: float) -> tuple[int, float, float]:
    import httpx

    import conpool

    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    endpoint = conpool.Endpoint(host, int(port))
    head = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    headers = _server_headers(url)
    extensions = {"http_version": b"HTTP/1.1", "reason_phrase": b"OK"}

    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=conc)) as pool:

        class Bare(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                status, body = await _exchange(pool, endpoint, head)
                return httpx.Response(
                    status,
                    headers=headers,
                    stream=httpx.ByteStream(body),
                    extensions=extensions,
                )

        async with httpx.AsyncClient(transport=Bare()) as client:

            async def one() -> None:
                r = await client.get(url)
                _check(r.status_code, r.content)

            return await drive(one, conc, warmup, duration)


def _server_headers(url: str) -> list[tuple[bytes, bytes]]:
    """The header fields of the server's response to ``GET url``, as sent."""
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise RuntimeError("the server closed before its response head")
            buf += data
    lines = buf.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    return [(name.strip(), value.strip()) for name, _, value in (h.partition(b":") for h in lines)]


RUNNERS: dict[str, Callable[[str, int, float, float], Awaitable[tuple[int, float, float]]]] = {
    "conpool": run_conpool,
    "httpx": run_httpx,
    "httpx-aiohttp": run_httpx_aiohttp,
    "aiohttp": run_aiohttp,
    "minimal": run_minimal,
    "canned": run_canned,
    "bare": run_bare,
}


def run_cell(
    impl: str,
    loop: str,
    url: str,
    conc: int,
    warmup: float,
    duration: float,
    body: bytes = BODY,
) -> Any:
    _expected[0] = body
    coro = RUNNERS[impl](url, conc, warmup, duration)
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


# -- the profile ----------------------------------------------------------------------------


def _group(filename: str) -> str:
    """The package a profiled function belongs to (by its path inside
    site-packages or src/, not the checkout's own path)."""
    if filename.startswith("~") or filename == "<built-in>":
        return "builtins (C)"
    inside = filename.rsplit("site-packages/", 1)[-1].rsplit("/src/", 1)[-1]
    top = inside.split("/", 1)[0]
    if top in (
        "h11",
        "httptools",
        "httpx",
        "httpcore",
        "anyio",
        "conpool",
        "uvloop",
        "sniffio",
        "idna",
    ):
        return top
    if "/asyncio/" in filename:
        return "asyncio"
    return "other"


def profile(url: str, loop: str, conc: int, duration: float, top: int = 25) -> None:
    prof = cProfile.Profile()
    prof.enable()
    n, _wall, _cpu = run_cell("conpool", loop, url, conc, 0.2, duration)
    prof.disable()
    stats = pstats.Stats(prof)
    groups: dict[str, float] = {}
    rows: list[tuple[float, str]] = []
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    for (filename, line, func), (_cc, _nc, tottime, _ct, _callers) in entries.items():
        group = _group(filename)
        groups[group] = groups.get(group, 0.0) + tottime
        total += tottime
        short = filename.rsplit("site-packages/", 1)[-1].rsplit("/src/", 1)[-1]
        rows.append((tottime, f"{short}:{line}({func})"))
    print(f"\nprofile: conpool transport, {loop}, C={conc}, ~{n} requests measured (cProfile)")
    print("self time by package (share of all profiled time):")
    for group, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {group:14s} {100 * t / total:5.1f} %")
    print(f"top {top} functions by self time:")
    for t, name in sorted(rows, reverse=True)[:top]:
        print(f"  {100 * t / total:5.1f} %  {name}")


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.httpx_workload", description=__doc__)
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per cell")
    p.add_argument("--conc", default="1,16,64", help="concurrency levels, comma-separated")
    p.add_argument("--loops", default=",".join(LOOPS), help="asyncio,uvloop")
    p.add_argument("--impls", default=",".join(IMPLS), help=",".join(IMPLS))
    p.add_argument("--profile", action="store_true", help="profile the conpool cell")
    args = p.parse_args(argv)
    concs = [int(c) for c in args.conc.split(",")]
    loops = [lp for lp in args.loops.split(",") if lp]
    impls = [i for i in args.impls.split(",") if i]
    for name in loops:
        if name not in LOOPS:
            p.error(f"unknown loop {name!r}")
    for name in impls:
        if name not in IMPLS:
            p.error(f"unknown implementation {name!r}")
    results: dict[tuple[str, str, int], tuple[float, float]] = {}
    with nginx(connections=4 * max(concs) + 64) as (host, port):
        url = f"http://{host}:{port}/"
        for loop in loops:
            for conc in concs:
                for impl in impls:
                    n, wall, cpu = run_cell(impl, loop, url, conc, args.warmup, args.duration)
                    rps = n / wall
                    cpu_us = 1e6 * cpu / max(n, 1)
                    results[(loop, impl, conc)] = (rps, cpu_us)
                    print(
                        f"{loop:8s} C={conc:<3d} {impl:14s} {rps:10,.0f} req/s "
                        f"{cpu_us:8.1f} µs CPU/req",
                        flush=True,
                    )
        _report(results, loops, concs, impls)
        if args.profile:
            profile(url, loops[-1], max(concs), args.duration)
    return 0


def _report(
    results: dict[tuple[str, str, int], tuple[float, float]],
    loops: list[str],
    concs: list[int],
    impls: list[str],
) -> None:
    print(f"\nrequests/s (client CPU µs per request), pid {os.getpid()}")
    print(f"{'loop':8s} {'C':>3s} " + " ".join(f"{i:>20s}" for i in impls))
    for loop in loops:
        for conc in concs:
            cells = []
            for impl in impls:
                rps, cpu = results[(loop, impl, conc)]
                cells.append(f"{rps:>10,.0f} ({cpu:6.1f})")
            print(f"{loop:8s} {conc:>3d} " + " ".join(f"{c:>20s}" for c in cells))
    if "conpool" not in impls:
        return
    print("\nratios of conpool's transport (throughput), with the targets")
    targets = {
        "httpx": None,
        "canned": 0.70,
        "httpx-aiohttp": 1.0,
        "aiohttp": None,
        "minimal": None,
        "bare": None,
    }
    for loop in loops:
        for conc in concs:
            mine = results[(loop, "conpool", conc)][0]
            parts = []
            for other, floor in targets.items():
                if other not in impls:
                    continue
                ratio = mine / results[(loop, other, conc)][0]
                if other == "httpx":
                    floor = 15.0 if conc >= 64 else 1.4 if conc == 1 else None
                mark = (
                    ""
                    if floor is None
                    else (" ok" if ratio >= floor else f" MISSED (>= {floor:g})")
                )
                parts.append(f"/{other} {ratio:.2f}{mark}")
            print(f"  {loop:8s} C={conc:<3d} " + ", ".join(parts))


# -- in the harness: python -m bench --workload httpx ------------------------------------


class Httpx(base.Workload):
    """The httpx workload in bench's harness (``python -m bench --workload httpx``)."""

    name = "httpx"
    title = "httpx.AsyncClient GET, 64 B body, C tasks: conpool's transport and its peers"
    impls: ClassVar[base.Impls] = dict.fromkeys(IMPLS, ("asyncio", "uvloop"))
    requires: ClassVar[Mapping[str, str]] = {
        "conpool": "httpx",
        "httpx": "httpx",
        "httpx-aiohttp": "httpx_aiohttp",
        "aiohttp": "aiohttp",
        "canned": "httpx",
        "bare": "httpx",
    }
    seconds = (0.5, 0.2)
    quick_seconds = (0.15, 0.05)
    others = ("httpx", "httpx-aiohttp", "aiohttp", "minimal", "canned", "bare")

    def run(self, spec: base.CellSpec) -> base.Metrics:
        conc = spec.cell.conc
        with start("http", cpu=server_core(spec.cpu), connections=4 * conc + 64) as srv:
            url = f"http://{srv.hosts[0]}:{srv.port}/"
            n, wall, cpu = run_cell(
                spec.cell.impl,
                spec.cell.loop,
                url,
                conc,
                spec.warmup,
                spec.duration,
                SERVER_BODY,
            )
        if n == 0:
            raise RuntimeError(f"no request completed in the {wall:.3f} s measured")
        return {"rps": n / wall, "cpu_us": 1e6 * cpu / n, "requests": float(n)}

    def pair(self, cell: base.Cell, other: str) -> tuple[base.Ratio, base.Ratio]:
        """conpool/other by throughput, and other's CPU per request over
        conpool's (both read "above 1 = conpool better")."""
        them = cell.but(other)
        return (
            base.Ratio(f"conpool/{other}", cell, them, "rps"),
            base.Ratio(f"conpool/{other} cpu", them, cell, "cpu_us"),
        )

    def ratios(self, cells: Sequence[base.Cell]) -> list[base.Ratio]:
        present = set(cells)
        return [
            r
            for c in cells
            if c.impl == "conpool"
            for other in self.others
            if c.but(other) in present
            for r in self.pair(c, other)
        ]

    def targets(self, summary: base.Summary, cells: Sequence[base.Cell]) -> list[base.Target]:
        present = set(cells)
        out = []
        for c in cells:
            if c.impl != "conpool":
                continue
            goals: list[tuple[str, float]] = [("canned", 0.70), ("httpx-aiohttp", 1.0)]
            if c.conc == 1:
                goals.append(("httpx", 1.4))
            if c.conc >= 64:
                goals.append(("httpx", 15.0))
            for other, limit in goals:
                if c.but(other) not in present:
                    continue
                wall, cpu = self.pair(c, other)
                out.append(
                    base.Target.check(
                        f"conpool/{other}, {c.loop}, C={c.conc}",
                        ">=",
                        limit,
                        summary.ratio(wall),
                        summary.ratio(cpu),
                    )
                )
        return out

    def report(self, summary: base.Summary, cells: Sequence[base.Cell]) -> list[str]:
        impls = self.columns(cells)
        others = [o for o in self.others if o in impls]

        def values(metric: str, scale: float) -> list[str]:
            return base.grid_table(
                cells, impls, lambda c: base.fmt_stat(summary.cell(c, metric), scale=scale)
            )

        def ratios(which: int) -> list[str]:
            return base.grid_table(
                cells,
                others,
                lambda c: base.fmt_stat(
                    summary.ratio(self.pair(c.but("conpool"), c.impl)[which]),
                    base.fmt_ratio,
                ),
                [f"conpool/{o}" for o in others],
            )

        return base.sections(
            ("Throughput, thousands of requests/s (median [min-max])", values("rps", 1e-3)),
            ("conpool's transport over each (throughput, paired)", ratios(0)),
            ("Client CPU µs per request", values("cpu_us", 1.0)),
            ("Each one's CPU per request over conpool's (paired)", ratios(1)),
        )


if __name__ == "__main__":
    sys.exit(main())
