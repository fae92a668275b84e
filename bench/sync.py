"""``sync``: T threads, each doing 64-byte echo round trips or HTTP/1.1
keep-alive GETs (64-byte body), with :class:`conpool.SyncPool` and its peers.

Echo: ``raw`` (one blocking socket per thread, opened once) against
``conpool`` (a lease per round trip), and ``raw-work``: ``raw`` plus, per
round trip, a pure-Python loop calibrated to cost what one lease (acquire
and release, no I/O) costs one thread alone.  A diagnostic: what any Python
work of a lease's size between two system calls costs when threads share
the GIL, whoever's work it is.  HTTP: ``raw-http`` (one socket per
thread), ``conpool-http`` (a lease per request, the same minimal client),
``urllib3`` (``HTTPConnectionPool.request``), ``httpx`` (``httpx.Client``,
its default transport) and ``httpx-conpool`` (``httpx.Client`` on
:class:`conpool.httpx.Transport`).  The "loop" column is ``threads``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from bench import base
from bench.base import Cell, CellSpec, Impls, Metrics, Summary, Target
from bench.http import parse_head, request_head
from bench.procs import server_core
from bench.servers import BODY, Running, start

SIZE = 64
MESSAGE = b"x" * SIZE
THREADS = ("threads",)
ECHO_TARGET = 0.90
#: httpx.Client on conpool's transport against its default one, at 32 threads.
HTTPX_TARGET = 1.5
HTTPX_TARGET_AT = 32

Op = Callable[[], None]


def drive(
    make_op: Callable[[], tuple[Op, Callable[[], None]]], conc: int, spec: CellSpec
) -> Metrics:
    """``conc`` threads each looping ``op`` (made in the thread) through a
    warmup and a measured phase: requests/s and process CPU per request."""
    stop = threading.Event()
    measuring = threading.Event()
    counts = [0] * conc
    errors: list[BaseException] = []
    ready = threading.Barrier(conc + 1)

    def worker(i: int) -> None:
        try:
            op, close = make_op()
        except BaseException as exc:
            errors.append(exc)
            ready.wait()
            return
        ready.wait()
        try:
            n = 0
            while not stop.is_set():
                op()
                if measuring.is_set():
                    n += 1
            counts[i] = n
        except BaseException as exc:
            errors.append(exc)
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conc)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(spec.warmup)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    measuring.set()
    time.sleep(spec.duration)
    measuring.clear()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stop.set()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    n = sum(counts)
    if n == 0:
        raise RuntimeError(f"no operation completed in the {wall:.3f} s measured")
    return {"rps": n / wall, "cpu_us": cpu / n * 1e6, "requests": float(n), "seconds": wall}


def _recv_exact(recv: Callable[[int], bytes], n: int) -> None:
    while n > 0:
        chunk = recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-message")
        n -= len(chunk)


def _http_exchange(
    send: Callable[[bytes], object], recv: Callable[[int], bytes], req: bytes
) -> bool:
    send(req)
    buf = recv(65536)
    while (end := buf.find(b"\r\n\r\n")) < 0:
        more = recv(65536)
        if not more:
            raise ConnectionError("closed mid-response")
        buf += more
    status, length, keep = parse_head(buf[:end])
    have = len(buf) - end - 4
    while have < length:
        more = recv(65536)
        if not more:
            raise ConnectionError("closed mid-body")
        have += len(more)
    if status != 200 or length != len(BODY):
        raise ConnectionError(f"status {status}, {length} bytes")
    return keep


def _raw_socket(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def _lease_sized_spin(host: str, port: int) -> Callable[[], object]:
    """A call of ``_spin`` that costs, on one thread, what a lease costs."""
    import conpool

    with conpool.SyncPool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        endpoint = conpool.Endpoint(host, port)
        with pool.connection(endpoint):
            pass
        n = 20_000
        t0 = time.perf_counter()
        for _ in range(n):
            with pool.connection(endpoint):
                pass
        lease = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    _spin(100_000)
    per_step = (time.perf_counter() - t0) / 100_000
    steps = max(1, round(lease / per_step))
    return lambda: _spin(steps)


def _run(spec: CellSpec, srv: Running) -> Metrics:
    import conpool

    impl, conc = spec.cell.impl, spec.cell.conc
    host, port = srv.hosts[0], srv.port
    req = request_head(host, port)
    pool: conpool.SyncPool | None = None
    closers: list[Callable[[], None]] = []
    if impl.startswith("conpool"):
        pool = conpool.SyncPool(conpool.Config(max_connections_per_endpoint=conc))
        closers.append(pool.close)
    endpoint = conpool.Endpoint(host, port)
    work = _lease_sized_spin(host, port) if impl == "raw-work" else None

    def make_op() -> tuple[Op, Callable[[], None]]:
        if impl == "raw":
            sock = _raw_socket(host, port)

            def op() -> None:
                sock.sendall(MESSAGE)
                _recv_exact(sock.recv, SIZE)

            return op, sock.close
        if impl == "raw-work":
            sock = _raw_socket(host, port)
            assert work is not None
            spin = work

            def work_op() -> None:
                spin()
                sock.sendall(MESSAGE)
                _recv_exact(sock.recv, SIZE)

            return work_op, sock.close
        if impl == "raw-http":
            sock = _raw_socket(host, port)

            def http_op() -> None:
                if not _http_exchange(sock.sendall, sock.recv, req):
                    raise ConnectionError("the server closed a keep-alive connection")

            return http_op, sock.close
        if impl == "conpool":
            assert pool is not None
            p = pool

            def op() -> None:
                with p.connection(endpoint) as conn:
                    conn.send(MESSAGE)
                    _recv_exact(conn.receive, SIZE)

            return op, lambda: None
        if impl == "conpool-http":
            assert pool is not None
            p = pool

            def op() -> None:
                with p.connection(endpoint) as conn:
                    if not _http_exchange(conn.send, conn.receive, req):
                        conn.close()

            return op, lambda: None
        raise AssertionError(impl)

    if impl == "urllib3":
        import urllib3

        http = urllib3.HTTPConnectionPool(host, port, maxsize=conc, block=True)
        closers.append(http.close)

        def make_op() -> tuple[Op, Callable[[], None]]:
            def op() -> None:
                r = http.request("GET", "/", retries=False)
                if r.status != 200 or r.data != BODY:
                    raise ConnectionError(f"urllib3: status {r.status}")

            return op, lambda: None

    if impl in ("httpx", "httpx-conpool"):
        import httpx

        if impl == "httpx":
            limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
            client = httpx.Client(limits=limits)
        else:
            import conpool.httpx

            config = conpool.Config(max_connections_per_endpoint=conc, max_idle_time=5.0)
            client = httpx.Client(transport=conpool.httpx.Transport(config=config))
        closers.append(client.close)
        url = f"http://{host}:{port}/"

        def make_op() -> tuple[Op, Callable[[], None]]:
            def op() -> None:
                r = client.get(url)
                if r.status_code != 200 or r.content != BODY:
                    raise ConnectionError(f"httpx: status {r.status_code}")

            return op, lambda: None

    try:
        return drive(make_op, conc, spec)
    finally:
        for close in closers:
            close()


class Sync(base.Workload):
    name = "sync"
    title = "Threads: 64 B echo and HTTP/1.1 keep-alive GET, T threads (C = T)"
    impls: ClassVar[Impls] = {
        "raw": THREADS,
        "conpool": THREADS,
        "raw-work": THREADS,
        "raw-http": THREADS,
        "conpool-http": THREADS,
        "urllib3": THREADS,
        "httpx": THREADS,
        "httpx-conpool": THREADS,
    }
    requires: ClassVar[Mapping[str, str]] = {
        "urllib3": "urllib3",
        "httpx": "httpx",
        "httpx-conpool": "httpx",
    }
    seconds = (0.5, 0.15)
    quick_seconds = (0.15, 0.05)

    def levels(self, opts: base.Options) -> tuple[int, ...]:
        return (1, 8, 32)

    def run(self, spec: CellSpec) -> Metrics:
        kind = "echo" if spec.cell.impl in ("raw", "conpool", "raw-work") else "http"
        with start(kind, cpu=server_core(spec.cpu), connections=4 * spec.cell.conc + 64) as srv:
            return _run(spec, srv)

    def _pairs(self) -> list[tuple[str, str, float | None]]:
        return [
            ("conpool", "raw", ECHO_TARGET),
            ("raw-work", "raw", None),
            ("conpool-http", "urllib3", 1.0),
            ("conpool-http", "httpx", None),
            ("conpool-http", "raw-http", None),
            ("httpx-conpool", "httpx", HTTPX_TARGET),
            ("httpx-conpool", "urllib3", None),
        ]

    @staticmethod
    def _goal(num: str, goal: float | None, conc: int) -> float | None:
        # (httpx's goal is set at 32 threads; below, the ratio is shown.)
        if num == "httpx-conpool" and conc != HTTPX_TARGET_AT:
            return None
        return goal

    def _ratio(self, cell: Cell, other: str) -> tuple[base.Ratio, base.Ratio]:
        den = cell.but(other)
        return (
            base.Ratio(f"{cell.impl}/{other}", cell, den, "rps"),
            base.Ratio(f"{cell.impl}/{other} cpu", den, cell, "cpu_us"),
        )

    def ratios(self, cells: Sequence[Cell]) -> list[base.Ratio]:
        present = set(cells)
        return [
            r
            for c in cells
            for num, other, _ in self._pairs()
            if c.impl == num and c.but(other) in present
            for r in self._ratio(c, other)
        ]

    def targets(self, summary: Summary, cells: Sequence[Cell]) -> list[Target]:
        present = set(cells)
        out = []
        for cell in sorted(cells, key=lambda c: c.conc):
            for num, other, goal in self._pairs():
                if cell.impl == num and cell.but(other) in present:
                    rate, cpu = (summary.ratio(r) for r in self._ratio(cell, other))
                    what = f"sync {num}/{other}, T={cell.conc}"
                    limit = self._goal(num, goal, cell.conc)
                    out.append(Target.check(what, ">=", limit, rate, cpu))
        return out

    def report(self, summary: Summary, cells: Sequence[Cell]) -> list[str]:
        impls = self.columns(cells)

        def values(metric: str, scale: float) -> list[str]:
            return base.grid_table(
                cells, impls, lambda c: base.fmt_stat(summary.cell(c, metric), scale=scale)
            )

        return base.sections(
            ("Throughput, thousands of requests/s, median [min-max]", values("rps", 1e-3)),
            ("Client CPU µs per request", values("cpu_us", 1.0)),
        )
