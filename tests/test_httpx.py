"""conpool.httpx.AsyncTransport against real nginx (and dnsmasq for the name),
on asyncio, uvloop and trio: balancing by nginx's own log, lifetimes moving
traffic, large bodies, early close, 204/HEAD, servers closing, timeouts, TLS.

A few behaviours need a server that misbehaves on cue (closing a kept-alive
connection just as the next request arrives, answering HTTP/1.0): the small
socket server :class:`CuedServer` below does that.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import shutil
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import cast

import anyio
import anyio.lowlevel
import httpx
import pytest
import trustme

import conpool
import conpool.httpx
from helpers_pool import check_quiet, eventually, fd_baseline, fds_back_to
from servers import (
    POOL_ADDRESSES,
    DnsmasqServer,
    NginxServer,
    skip_or_fail,
    unused_port,
    write_cert_files,
)

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
BIG = 8 * MiB


class HttpxNginx(NginxServer):
    """The suite's nginx with the locations these tests need: an 8 MiB file
    (Content-Length), 8 MiB chunked (the echo module), a 204, and uploads up
    to 16 MiB, sent back by ``/upload`` (``/small`` refuses more than 1 KiB)."""

    def __init__(self, directory: Path, **kwargs: object) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, **kwargs)  # type: ignore[arg-type]
        # As root, nginx's worker runs as nobody and cannot read the test's
        # private directory: the file it serves lives in a readable one.
        self.public = Path(tempfile.mkdtemp(prefix="conpool-httpx-"))
        self.public.chmod(0o755)
        self.big_file = self.public / "big.bin"
        self.big_file.write_bytes(bytes(range(256)) * (BIG // 256))
        self.big_file.chmod(0o644)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.public, ignore_errors=True)

    def _config(self) -> str:
        extra = f"""
        client_max_body_size 16m;
        location = /big {{ alias {self.big_file}; default_type application/octet-stream; }}
        location = /chunked {{ echo_duplicate {BIG // 8} "abcdefgh"; }}
        location = /empty {{ return 204; }}
        location = /small {{ client_max_body_size 1k; return 200 "ok\\n"; }}
        location = /upload {{
            client_body_buffer_size 16m;
            echo_read_request_body;
            echo_request_body;
        }}
        location / {{"""
        return super()._config().replace("\n        location / {", extra, 1)


# httpx's own BoundAsyncStream.__aiter__ is an async generator that a response
# closed mid-body leaves unfinished (whatever the transport); trio reports it.
_HTTPX_ASYNCGEN = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object BoundAsyncStream"
    ":pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(autouse=True)
def collect_garbage_here() -> Iterator[None]:
    """Collect each test's garbage in its own teardown, under its own
    warning filters: an async generator of httpx's that a test left
    unfinished (see _HTTPX_ASYNCGEN) must not be reported in whichever later
    test happens to trigger the collection (an 8 MiB body, say)."""
    yield
    gc.collect()


def raw(response: httpx.Response, size: int | None = None) -> AsyncGenerator[bytes, None]:
    """``response.aiter_raw()``, typed as the async generator it is (for aclosing)."""
    return cast(AsyncGenerator[bytes, None], response.aiter_raw(size))


def dns_resolver(server: DnsmasqServer) -> conpool.DNSResolver:
    return conpool.DNSResolver([(server.host, server.port)], timeout=2.0)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[HttpxNginx]:
    with HttpxNginx(tmp_path / "nginx") as server:
        if not server.has_sleep:
            skip_or_fail("nginx's echo module is not installed")
        yield server


@pytest.fixture
def nginx4(tmp_path: Path) -> Iterator[HttpxNginx]:
    with HttpxNginx(tmp_path / "nginx4", addresses=POOL_ADDRESSES) as server:
        yield server


def transport(**kwargs: object) -> conpool.httpx.AsyncTransport:
    return conpool.httpx.AsyncTransport(**kwargs)  # type: ignore[arg-type]


def quiet(t: conpool.httpx.AsyncTransport) -> conpool.PoolStats:
    return check_quiet(t.pool)


# --------------------------------------------------------------------------
# Balancing behind a name


async def test_400_requests_from_64_tasks_spread_over_four_addresses(
    nginx4: HttpxNginx, dnsmasq: DnsmasqServer
) -> None:
    t = transport(resolver=dns_resolver(dnsmasq))
    url = f"http://pool.test:{nginx4.port}/"
    async with httpx.AsyncClient(transport=t) as client:

        async def worker(n: int) -> None:
            for _ in range(n):
                r = await client.get(url)
                assert r.status_code == 200 and r.content == b"ok\n"

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(worker, 7 if i < 16 else 6)  # 16 * 7 + 48 * 6 = 400
        stats = quiet(t)
    lines = nginx4.wait_for_log(400)
    assert len(lines) == 400
    share = Counter(line.server_addr for line in lines)
    assert set(share) == set(POOL_ADDRESSES), share
    for address in POOL_ADDRESSES:
        assert 80 <= share[address] <= 120, share  # 25 % +- 5 % of 400
    per_conn = Counter((line.server_addr, line.conn) for line in lines)
    assert len(per_conn) < 400 and 400 / len(per_conn) > 1, per_conn
    ep = next(iter(stats.endpoints.values()))
    assert ep.created == len(per_conn) and ep.reused == 400 - ep.created


async def test_lifetime_moves_traffic_to_an_address_dns_adds(
    nginx4: HttpxNginx, dnsmasq: DnsmasqServer
) -> None:
    three = list(POOL_ADDRESSES[:3])
    dnsmasq.set_records({"pool.test": three})
    config = conpool.Config(max_connection_lifetime=0.5, max_idle_time=5.0)
    t = transport(config=config, resolver=dns_resolver(dnsmasq))
    url = f"http://pool.test:{nginx4.port}/"
    async with httpx.AsyncClient(transport=t) as client:

        async def burst() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(client.get, url)

        await burst()
        before = len(nginx4.wait_for_log(8))
        assert {line.server_addr for line in nginx4.log_lines()} <= set(three)
        dnsmasq.set_records({"pool.test": list(POOL_ADDRESSES)})
        deadline = time.monotonic() + 10
        while True:
            await anyio.sleep(0.1)
            await burst()
            lines = nginx4.log_lines()[before:]
            if any(line.server_addr == POOL_ADDRESSES[3] for line in lines):
                break
            assert time.monotonic() < deadline, "no request reached the new address"


async def test_an_address_removed_from_dns_gets_nothing_after_the_ttl(
    nginx4: HttpxNginx, dnsmasq: DnsmasqServer
) -> None:
    t = transport(resolver=dns_resolver(dnsmasq))
    url = f"http://pool.test:{nginx4.port}/"
    gone = POOL_ADDRESSES[3]
    async with httpx.AsyncClient(transport=t) as client:

        async def burst() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(client.get, url)

        await burst()
        assert gone in {line.server_addr for line in nginx4.wait_for_log(16)}
        dnsmasq.set_records({"pool.test": list(POOL_ADDRESSES[:3])})
        await anyio.sleep(2.5)  # the TTL (1 s), the sweep's refresh, and margin
        start = len(nginx4.log_lines())
        for _ in range(5):
            await burst()
        lines = nginx4.wait_for_log(start + 80)[start:]
        assert len(lines) == 80
        assert gone not in {line.server_addr for line in lines}
        # (Not check_quiet: the address that left is no longer in the stats.)
        stats = t.pool.stats()
        assert (stats.active, stats.pending, stats.waiting) == (0, 0, 0)
        ep = next(iter(stats.endpoints.values()))
        assert gone not in ep.addresses


# --------------------------------------------------------------------------
# Bodies


@pytest.mark.parametrize("path", ["/big", "/chunked"])
async def test_8_mib_download(nginx: HttpxNginx, path: str) -> None:
    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        r = await client.get(nginx.url(path))
        assert r.status_code == 200
        assert len(r.content) == BIG
        if path == "/big":
            assert r.headers["content-length"] == str(BIG)
            assert r.content == nginx.big_file.read_bytes()
        else:
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.content == b"abcdefgh" * (BIG // 8)
        # The connection is in step: the next request reuses it.
        assert (await client.get(nginx.url("/"))).content == b"ok\n"
        ep = quiet(t).endpoints
        (stats,) = ep.values()
        assert (stats.created, stats.reused) == (1, 1)


async def test_8_mib_upload_to_nginx(nginx: HttpxNginx) -> None:
    body = bytes(range(256)) * (BIG // 256)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, BIG, MiB):
            yield body[i : i + MiB]

    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        # nginx sends back what it read: every byte arrived, in order.
        r = await client.post(nginx.url("/upload"), content=body)
        assert r.status_code == 200 and r.content == body
        r = await client.post(nginx.url("/upload"), content=chunks())
        assert r.status_code == 200 and r.content == body
        # Answered before the body is read (nginx then discards it): the
        # answer comes back, and the connection serves the next request.
        r = await client.post(nginx.url("/"), content=body)
        assert r.status_code == 200 and r.content == b"ok\n"
        r = await client.get(nginx.url("/"))
        assert r.status_code == 200 and r.content == b"ok\n"
        (stats,) = quiet(t).endpoints.values()
        assert (stats.created, stats.reused) == (1, 3)


async def test_an_upload_refused_before_its_end_gets_the_answer(nginx: HttpxNginx) -> None:
    # nginx answers 413 from the head and closes; its answer is returned,
    # whatever became of the body, and the connection is not reused.
    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        r = await client.post(nginx.url("/small"), content=bytes(BIG))
        assert r.status_code == 413
        r = await client.get(nginx.url("/"))
        assert r.status_code == 200 and r.content == b"ok\n"
        (stats,) = quiet(t).endpoints.values()
        assert (stats.created, stats.reused, stats.closed) == (2, 0, 1)


@_HTTPX_ASYNCGEN
async def test_a_response_closed_after_1_kib_does_not_come_back(nginx: HttpxNginx) -> None:
    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        async with client.stream("GET", nginx.url("/big")) as r:
            got = b""
            # (aclosing: trio warns about an async generator left unfinished.)
            async with aclosing(raw(r, 1024)) as chunks:
                async for chunk in chunks:
                    got += chunk
                    if len(got) >= 1024:
                        break
        stats = quiet(t)
        (ep,) = stats.endpoints.values()
        assert (ep.created, ep.closed, ep.idle) == (1, 1, 0)
        assert (await client.get(nginx.url("/"))).content == b"ok\n"
        (ep,) = quiet(t).endpoints.values()
        assert (ep.created, ep.idle) == (2, 1)


async def test_204_and_head(nginx: HttpxNginx) -> None:
    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        r = await client.get(nginx.url("/empty"))
        assert (r.status_code, r.content) == (204, b"")
        r = await client.head(nginx.url("/big"))
        assert (r.status_code, r.content) == (200, b"")
        assert r.headers["content-length"] == str(BIG)
        r = await client.get(nginx.url("/"))
        assert r.content == b"ok\n"
        (ep,) = quiet(t).endpoints.values()
        assert (ep.created, ep.reused) == (1, 2)


# --------------------------------------------------------------------------
# Servers that close


async def test_keepalive_requests_1(tmp_path: Path) -> None:
    with HttpxNginx(tmp_path / "nginx", keepalive_requests=1) as server:
        t = transport()
        async with httpx.AsyncClient(transport=t) as client:
            for _ in range(5):
                r = await client.get(server.url("/"))
                assert r.content == b"ok\n"
                assert r.headers["connection"] == "close"
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.reused, ep.idle) == (5, 0, 0)
        assert len({line.conn for line in server.wait_for_log(5)}) == 5


async def test_a_server_closing_idle_connections(tmp_path: Path) -> None:
    """nginx closes idle connections after 0.2 s; the pool notices before
    reuse, so neither GET nor POST sees it."""
    with HttpxNginx(tmp_path / "nginx", keepalive_timeout=0.2) as server:
        t = transport()
        async with httpx.AsyncClient(transport=t) as client:
            for method in ("GET", "POST", "GET"):
                r = await client.request(method, server.url("/"), content=b"x")
                assert r.content == b"ok\n"
                await anyio.sleep(0.5)
            (ep,) = quiet(t).endpoints.values()
            assert ep.created == 3


class CuedServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 for the races nginx cannot be
    asked for: ``close_second`` answers the first request of each connection
    and closes the connection when the second arrives, without answering
    (a keep-alive connection the server dropped just as the client reused
    it); ``http10`` answers as an HTTP/1.0 server without keep-alive;
    ``trailing`` sends bytes past the end of each response.
    ``requests`` counts the requests read, ``connections`` the accepts."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            th = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            th.start()
            self._threads.append(th)

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        n = 0
        with conn:
            conn.settimeout(5)
            while True:
                try:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buf += data
                except OSError:
                    return
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                n += 1
                self.requests += 1
                if self.mode == "close_second" and n == 2:
                    return
                if self.mode == "http10":
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nold server")
                    return
                if self.mode == "trailing":
                    # Bytes past the end of the response, in the same packet.
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 2")
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self) -> None:
        self._stop = True
        # (shutdown wakes the thread blocked in accept; close alone does not.)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._accept.join(5)
        for th in self._threads:
            th.join(5)


@pytest.fixture
def close_second() -> Iterator[CuedServer]:
    server = CuedServer("close_second")
    yield server
    server.close()


async def test_stale_connection_retried_for_get_not_for_post(close_second: CuedServer) -> None:
    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        assert (await client.get(close_second.url())).content == b"ok"
        # Reused, dropped by the server on arrival: sent again on a new one.
        assert (await client.get(close_second.url())).content == b"ok"
        assert close_second.connections == 2
        # POST is not idempotent: the caller sees it.
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await client.post(close_second.url(), content=b"data")
        message = str(info.value)
        assert "Server disconnected without sending a response" in message
        assert "reused" in message and "POST requests are not retried" in message
        assert info.value.request.method == "POST"
        quiet(t)


async def test_http10_peer() -> None:
    server = CuedServer("http10")
    try:
        t = transport()
        async with httpx.AsyncClient(transport=t) as client:
            for _ in range(3):
                r = await client.get(server.url())
                assert (r.status_code, r.content, r.http_version) == (
                    200,
                    b"old server",
                    "HTTP/1.0",
                )
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.reused, ep.idle) == (3, 0, 0)
    finally:
        server.close()


async def test_bytes_past_the_response_retire_the_connection() -> None:
    # They answer no request: reused, the connection would be out of step.
    server = CuedServer("trailing")
    try:
        t = transport()
        async with httpx.AsyncClient(transport=t) as client:
            for _ in range(3):
                r = await client.get(server.url())
                assert (r.status_code, r.content) == (200, b"ok")
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.reused, ep.idle) == (3, 0, 0)
        assert server.connections == 3
    finally:
        server.close()


# --------------------------------------------------------------------------
# Timeouts


async def test_read_timeout_against_a_stalling_server(nginx: HttpxNginx) -> None:
    t = transport()
    async with httpx.AsyncClient(transport=t, timeout=httpx.Timeout(5.0, read=0.3)) as client:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get(nginx.url("/sleep?s=3"))
        assert time.monotonic() - start < 2.5
        assert "timed out after 0.3 s" in str(info.value)
        assert info.value.request.url.path == "/sleep"
        (ep,) = quiet(t).endpoints.values()
        assert ep.closed == 1
        assert (await client.get(nginx.url("/"))).content == b"ok\n"


async def test_pool_timeout_with_one_connection_per_endpoint(nginx: HttpxNginx) -> None:
    t = transport(config=conpool.Config(max_connections_per_endpoint=1))
    async with httpx.AsyncClient(transport=t, timeout=httpx.Timeout(5.0, pool=0.2)) as client:
        async with client.stream("GET", nginx.url("/big")):
            with pytest.raises(httpx.PoolTimeout) as info:
                await client.get(nginx.url("/"))
            assert "within timeout=0.2 s" in str(info.value)
        assert (await client.get(nginx.url("/"))).content == b"ok\n"
        quiet(t)


async def test_connect_error_carries_the_story() -> None:
    port = unused_port()
    t = transport(config=conpool.Config(connect_retries=0))
    async with httpx.AsyncClient(transport=t) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{port}/")
        assert f"connecting to tcp:127.0.0.1:{port}" in str(info.value)
        assert isinstance(info.value.__cause__, conpool.ConnectError)
        quiet(t)


async def test_retries_sends_an_idempotent_request_again_after_a_connect_failure() -> None:
    port = unused_port()
    tracer = conpool.Tracer()
    t = transport(config=conpool.Config(connect_retries=0), tracer=tracer, retries=2)
    async with httpx.AsyncClient(transport=t) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")
        assert sum(e.kind == "connect.started" for e in tracer.events()) == 3
        # A POST is sent once only.
        with pytest.raises(httpx.ConnectError):
            await client.post(f"http://127.0.0.1:{port}/", content=b"x")
        assert sum(e.kind == "connect.started" for e in tracer.events()) == 4
        quiet(t)


async def test_connect_timeout_on_a_stalled_tls_handshake() -> None:
    with socket.socket() as silent:  # accepts in the kernel, never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        t = transport(config=conpool.Config(connect_retries=0), verify=False)
        timeout = httpx.Timeout(5.0, connect=0.3)
        async with httpx.AsyncClient(transport=t, timeout=timeout) as client:
            start = time.monotonic()
            with pytest.raises(httpx.ConnectTimeout) as info:
                await client.get(f"https://127.0.0.1:{port}/")
            assert time.monotonic() - start < 4.0
            assert "timed out after 0.3 s" in str(info.value)
            quiet(t)


# --------------------------------------------------------------------------
# TLS


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_nginx(tmp_path: Path, ca: trustme.CA, name: str) -> HttpxNginx:
    (tmp_path / "certs").mkdir()
    chain, key = write_cert_files(ca, [name], tmp_path / "certs")
    return HttpxNginx(tmp_path / "nginx", tls_cert=chain, tls_key=key)


async def test_https_with_a_trusted_ca_by_name(tmp_path: Path, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with tls_nginx(tmp_path, ca, "pool.test") as server:
        resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
        t = transport(resolver=resolver, verify=context)
        async with httpx.AsyncClient(transport=t) as client:
            for _ in range(3):
                r = await client.get(f"https://pool.test:{server.tls_port}/")
                assert r.content == b"ok\n"
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.reused) == (1, 2)


async def test_https_with_the_wrong_name(tmp_path: Path, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with tls_nginx(tmp_path, ca, "other.test") as server:
        resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
        t = transport(resolver=resolver, verify=context)
        async with httpx.AsyncClient(transport=t) as client:
            with pytest.raises(httpx.ConnectError) as info:
                await client.get(f"https://pool.test:{server.tls_port}/")
            message = str(info.value)
            assert "certificate" in message.lower()
            assert "pool.test" in message
            quiet(t)


# --------------------------------------------------------------------------
# Never a leaked lease


async def test_a_response_dropped_unclosed_is_reclaimed(nginx: HttpxNginx) -> None:
    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        request = client.build_request("GET", nginx.url("/big"))
        response = await client.send(request, stream=True)
        assert t.pool.stats().active == 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del response
            gc.collect()
            await eventually(lambda: t.pool.stats().active == 0)
        assert any("garbage-collected without being released" in str(w.message) for w in caught)
        quiet(t)


@_HTTPX_ASYNCGEN
async def test_an_exception_while_a_response_is_open(nginx: HttpxNginx) -> None:
    t = transport()
    async with httpx.AsyncClient(transport=t) as client:
        with pytest.raises(ZeroDivisionError):
            async with (
                client.stream("GET", nginx.url("/big")) as r,
                aclosing(raw(r)) as chunks,
            ):
                async for _ in chunks:
                    1 / 0  # noqa: B018
        (ep,) = quiet(t).endpoints.values()
        assert ep.closed == 1


@_HTTPX_ASYNCGEN
async def test_cancellation_fuzz(nginx: HttpxNginx) -> None:
    """Requests cancelled at random points (sending, waiting for the head,
    mid-body, while waiting for a slot); afterwards nothing is held."""
    import random

    rng = random.Random(15)
    baseline = await fd_baseline()
    t = transport(config=conpool.Config(max_connections_per_endpoint=8))
    urls = [nginx.url("/"), nginx.url("/big"), nginx.url("/chunked"), nginx.url("/sleep?s=0.01")]
    done = 0
    cancelled = 0
    async with httpx.AsyncClient(transport=t) as client:

        async def one(url: str, delay: float) -> None:
            nonlocal done, cancelled
            with anyio.move_on_after(delay) as scope:
                async with client.stream("GET", url) as r, aclosing(raw(r)) as chunks:
                    async for _ in chunks:
                        pass
                done += 1
            if scope.cancelled_caught:
                cancelled += 1

        # Bounded by count and by time (a loaded machine gets fewer rounds).
        deadline = time.monotonic() + 12.0
        n = 0
        while n < 2000 and time.monotonic() < deadline:
            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    url = rng.choice(urls)
                    # Mostly within the exchange; one in 32 late enough to
                    # finish even on a loaded machine.
                    late = rng.random() < 1 / 32
                    tg.start_soon(one, url, rng.uniform(0.0, 0.15 if late else 0.004))
                    n += 1
        stats = quiet(t)
        assert stats.active == 0 and stats.waiting == 0
        assert n >= 1000 and cancelled > 0 and done > 0, (n, done, cancelled)
        # The pool still serves.
        assert (await client.get(nginx.url("/"))).content == b"ok\n"
    await fds_back_to(baseline, within=10.0)


async def test_read_timeouts_mixed_with_cancellations(nginx: HttpxNginx) -> None:
    """Many requests in flight at once, each with its own read timeout
    (on asyncio and uvloop, all on the loop's one shared timer) and some
    cancelled from outside: each ends as its own story says (in time, its
    ReadTimeout, or its cancellation), no timeout reaches a request whose
    limit had not passed, and nothing is left behind."""
    import random

    rng = random.Random(16)
    t = transport(config=conpool.Config(max_connections_per_endpoint=64))
    outcomes: Counter[str] = Counter()
    async with httpx.AsyncClient(transport=t) as client:

        async def one(read: float, outside: float) -> None:
            start = time.monotonic()
            outcome = "cancelled"
            with anyio.move_on_after(outside) as scope:
                try:
                    r = await client.get(
                        nginx.url("/sleep?s=0.1"), timeout=httpx.Timeout(5.0, read=read)
                    )
                except httpx.ReadTimeout:
                    took = time.monotonic() - start
                    # Not before its own limit (the loop's clock may round
                    # a little), whatever the other requests' limits.
                    assert took >= read - 0.005, (read, took)
                    outcome = "read-timeout"
                else:
                    assert r.content == b"ok\n"
                    outcome = "done"
            assert scope.cancelled_caught == (outcome == "cancelled"), outcome
            outcomes[outcome] += 1
            # No cancellation left on the task: it awaits on.
            await anyio.lowlevel.checkpoint()

        deadline = time.monotonic() + 12.0
        n = 0
        while n < 600 and time.monotonic() < deadline:
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    # Read limits on both sides of the 0.1 s the server takes.
                    read = rng.choice([0.02, 0.05, 0.08, 0.3, 1.0])
                    outside = rng.choice([0.01, 0.06, 5.0])
                    tg.start_soon(one, read, outside)
                    n += 1
        stats = quiet(t)
        assert stats.active == 0 and stats.waiting == 0
        assert n >= 200, n
        assert min(outcomes[k] for k in ("done", "read-timeout", "cancelled")) > 0, outcomes
        assert sum(outcomes.values()) == n, (n, outcomes)
        assert (await client.get(nginx.url("/"))).content == b"ok\n"
    import sniffio

    if sniffio.current_async_library() == "asyncio":
        import asyncio

        from conpool._backends._deadline import loop_timers

        assert len(loop_timers(asyncio.get_running_loop())) == 0


async def test_response_hashes_stay_correct_under_concurrency(nginx: HttpxNginx) -> None:
    t = transport(config=conpool.Config(max_connections_per_endpoint=4))
    expect = hashlib.sha256(nginx.big_file.read_bytes()).hexdigest()
    async with httpx.AsyncClient(transport=t) as client:
        results: list[str] = []

        async def fetch() -> None:
            r = await client.get(nginx.url("/big"))
            results.append(hashlib.sha256(r.content).hexdigest())

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(fetch)
        assert results == [expect] * 8
        quiet(t)
