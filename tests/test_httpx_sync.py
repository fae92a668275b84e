"""conpool.httpx.Transport (httpx.Client on conpool.SyncPool) against real
nginx (and dnsmasq for the name), from threads: balancing by nginx's own
log, large bodies both ways, early close, 204/HEAD, servers closing,
timeouts, TLS, leaks, and the 101/CONNECT hand-off.  The same behaviours
as the async transport's tests (tests/test_httpx.py), whose nginx and cued
server these reuse."""

from __future__ import annotations

import gc
import hashlib
import random
import socket
import ssl
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import trustme

import conpool
import conpool.httpx
from helpers_pool import check_quiet, fd_count
from servers import POOL_ADDRESSES, DnsmasqServer, unused_port
from test_httpx import (
    BIG,
    CuedServer,
    HttpxNginx,
    MiB,
    ca,
    dns_resolver,
    nginx,
    nginx4,
    tls_nginx,
)

pytestmark = pytest.mark.realserver

__all__ = ["ca", "nginx", "nginx4"]  # (fixtures shared with the async tests)


def transport(**kwargs: object) -> conpool.httpx.Transport:
    return conpool.httpx.Transport(**kwargs)  # type: ignore[arg-type]


def quiet(t: conpool.httpx.Transport) -> conpool.PoolStats:
    return check_quiet(t.pool)


def eventually(check: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {within} s"
        time.sleep(0.01)


# --------------------------------------------------------------------------
# Balancing behind a name


def test_400_requests_from_32_threads_spread_over_four_addresses(
    nginx4: HttpxNginx, dnsmasq: DnsmasqServer
) -> None:
    t = transport(resolver=dns_resolver(dnsmasq))
    url = f"http://pool.test:{nginx4.port}/"
    with httpx.Client(transport=t) as client:

        def worker(n: int) -> None:
            for _ in range(n):
                r = client.get(url)
                assert r.status_code == 200 and r.content == b"ok\n"

        with ThreadPoolExecutor(32) as ex:
            # 16 * 13 + 16 * 12 = 400
            for f in [ex.submit(worker, 13 if i < 16 else 12) for i in range(32)]:
                f.result(timeout=60)
        stats = quiet(t)
    lines = nginx4.wait_for_log(400)
    assert len(lines) == 400
    share = Counter(line.server_addr for line in lines)
    assert set(share) == set(POOL_ADDRESSES), share
    for address in POOL_ADDRESSES:
        assert 80 <= share[address] <= 120, share  # 25 % +- 5 % of 400
    per_conn = Counter((line.server_addr, line.conn) for line in lines)
    assert 400 / len(per_conn) > 1, per_conn  # kept alive
    ep = next(iter(stats.endpoints.values()))
    assert ep.created == len(per_conn) and ep.reused == 400 - ep.created


# --------------------------------------------------------------------------
# Bodies


@pytest.mark.parametrize("path", ["/big", "/chunked"])
def test_8_mib_download(nginx: HttpxNginx, path: str) -> None:
    t = transport()
    with httpx.Client(transport=t) as client:
        r = client.get(nginx.url(path))
        assert r.status_code == 200
        assert len(r.content) == BIG
        if path == "/big":
            assert r.headers["content-length"] == str(BIG)
            assert r.content == nginx.big_file.read_bytes()
        else:
            assert r.headers["transfer-encoding"] == "chunked"
            assert r.content == b"abcdefgh" * (BIG // 8)
        # In step: the next request reuses the connection.
        assert client.get(nginx.url("/")).content == b"ok\n"
        (stats,) = quiet(t).endpoints.values()
        assert (stats.created, stats.reused) == (1, 1)


def test_an_upload_refused_before_its_end_gets_the_answer(nginx: HttpxNginx) -> None:
    t = transport()
    with httpx.Client(transport=t) as client:
        r = client.post(nginx.url("/small"), content=bytes(BIG))
        assert r.status_code == 413
        r = client.get(nginx.url("/"))
        assert r.status_code == 200 and r.content == b"ok\n"
        (stats,) = quiet(t).endpoints.values()
        assert (stats.created, stats.reused, stats.closed) == (2, 0, 1)


def test_8_mib_upload_content_length_and_chunked(nginx: HttpxNginx) -> None:
    body = bytes(range(256)) * (BIG // 256)

    def chunks() -> Iterator[bytes]:
        for i in range(0, BIG, MiB):
            yield body[i : i + MiB]

    t = transport()
    with httpx.Client(transport=t) as client:
        # nginx sends back what it read: every byte arrived, in order.
        r = client.post(nginx.url("/upload"), content=body)
        assert r.status_code == 200 and r.content == body
        r = client.post(nginx.url("/upload"), content=chunks())
        assert r.status_code == 200 and r.content == body
        # Answered before the body is read (nginx then discards it).
        r = client.post(nginx.url("/"), content=body)
        assert r.status_code == 200 and r.content == b"ok\n"
        r = client.get(nginx.url("/"))
        assert r.status_code == 200 and r.content == b"ok\n"
        (stats,) = quiet(t).endpoints.values()
        assert (stats.created, stats.reused) == (1, 3)


def test_streaming_download_in_pieces(nginx: HttpxNginx) -> None:
    t = transport()
    with httpx.Client(transport=t) as client, client.stream("GET", nginx.url("/big")) as r:
        digest = hashlib.sha256()
        n = 0
        for chunk in r.iter_raw(100_000):
            digest.update(chunk)
            n += 1
        assert n >= BIG // 100_000
        assert digest.hexdigest() == hashlib.sha256(nginx.big_file.read_bytes()).hexdigest()
    quiet(t)


def test_a_response_closed_after_1_kib_does_not_come_back(nginx: HttpxNginx) -> None:
    t = transport()
    with httpx.Client(transport=t) as client:
        with client.stream("GET", nginx.url("/big")) as r:
            got = b""
            for chunk in r.iter_raw(1024):
                got += chunk
                if len(got) >= 1024:
                    break
        (ep,) = quiet(t).endpoints.values()
        assert (ep.created, ep.closed, ep.idle) == (1, 1, 0)
        assert client.get(nginx.url("/")).content == b"ok\n"
        (ep,) = quiet(t).endpoints.values()
        assert (ep.created, ep.idle) == (2, 1)


def test_a_small_response_closed_unread_keeps_its_connection(nginx: HttpxNginx) -> None:
    """The whole body came with the head: closing the response early loses nothing."""
    t = transport()
    with httpx.Client(transport=t) as client:
        for _ in range(3):
            with client.stream("GET", nginx.url("/")):
                pass
        (ep,) = quiet(t).endpoints.values()
        assert (ep.created, ep.reused, ep.closed) == (1, 2, 0)


def test_204_and_head(nginx: HttpxNginx) -> None:
    t = transport()
    with httpx.Client(transport=t) as client:
        r = client.get(nginx.url("/empty"))
        assert (r.status_code, r.content) == (204, b"")
        r = client.head(nginx.url("/big"))
        assert (r.status_code, r.content) == (200, b"")
        assert r.headers["content-length"] == str(BIG)
        assert client.get(nginx.url("/")).content == b"ok\n"
        (ep,) = quiet(t).endpoints.values()
        assert (ep.created, ep.reused) == (1, 2)


# --------------------------------------------------------------------------
# Servers that close


def test_keepalive_requests_1(tmp_path: Path) -> None:
    with HttpxNginx(tmp_path / "nginx", keepalive_requests=1) as server:
        t = transport()
        with httpx.Client(transport=t) as client:
            for _ in range(5):
                r = client.get(server.url("/"))
                assert r.content == b"ok\n"
                assert r.headers["connection"] == "close"
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.reused, ep.idle) == (5, 0, 0)
        assert len({line.conn for line in server.wait_for_log(5)}) == 5


def test_a_server_closing_idle_connections(tmp_path: Path) -> None:
    """nginx closes idle connections after 0.2 s; the pool's probe notices
    before reuse, so neither GET nor POST sees it."""
    with HttpxNginx(tmp_path / "nginx", keepalive_timeout=0.2) as server:
        t = transport()
        with httpx.Client(transport=t) as client:
            for method in ("GET", "POST", "GET"):
                r = client.request(method, server.url("/"), content=b"x")
                assert r.content == b"ok\n"
                time.sleep(0.5)
            (ep,) = quiet(t).endpoints.values()
            assert ep.created == 3


def test_stale_connection_retried_for_get_not_for_post() -> None:
    """The server drops a kept-alive connection as the next request
    arrives: a GET goes again on a fresh connection, unseen; a POST fails
    with the reason it was not retried."""
    server = CuedServer("close_second")
    try:
        t = transport()
        with httpx.Client(transport=t) as client:
            assert client.get(server.url()).content == b"ok"
            assert client.get(server.url()).content == b"ok"
            assert server.connections == 2
            with pytest.raises(httpx.RemoteProtocolError) as info:
                client.post(server.url(), content=b"data")
            message = str(info.value)
            assert "Server disconnected without sending a response" in message
            assert "reused" in message and "POST requests are not retried" in message
            assert info.value.request.method == "POST"
            quiet(t)
    finally:
        server.close()


def test_http10_peer() -> None:
    server = CuedServer("http10")
    try:
        t = transport()
        with httpx.Client(transport=t) as client:
            for _ in range(3):
                r = client.get(server.url())
                assert (r.status_code, r.content, r.http_version) == (
                    200,
                    b"old server",
                    "HTTP/1.0",
                )
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.reused, ep.idle) == (3, 0, 0)
    finally:
        server.close()


# --------------------------------------------------------------------------
# Timeouts and errors


def test_read_timeout_against_a_stalling_server(nginx: HttpxNginx) -> None:
    t = transport()
    with httpx.Client(transport=t, timeout=httpx.Timeout(5.0, read=0.3)) as client:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as info:
            client.get(nginx.url("/sleep?s=3"))
        assert time.monotonic() - start < 2.5
        assert "timed out after 0.3 s" in str(info.value)
        assert info.value.request.url.path == "/sleep"
        (ep,) = quiet(t).endpoints.values()
        assert ep.closed == 1
        assert client.get(nginx.url("/")).content == b"ok\n"


def test_pool_timeout_with_one_connection_per_endpoint(nginx: HttpxNginx) -> None:
    t = transport(config=conpool.Config(max_connections_per_endpoint=1))
    with httpx.Client(transport=t, timeout=httpx.Timeout(5.0, pool=0.2)) as client:
        with client.stream("GET", nginx.url("/big")):
            with pytest.raises(httpx.PoolTimeout) as info:
                client.get(nginx.url("/"))
            assert "within timeout=0.2 s" in str(info.value)
            assert info.value.request.url.path == "/"
        assert client.get(nginx.url("/")).content == b"ok\n"
        quiet(t)


def test_connect_error_carries_the_story_and_retries_count() -> None:
    port = unused_port()
    tracer = conpool.Tracer()
    t = transport(config=conpool.Config(connect_retries=0), tracer=tracer, retries=2)
    with httpx.Client(transport=t) as client:
        with pytest.raises(httpx.ConnectError) as info:
            client.get(f"http://127.0.0.1:{port}/")
        assert f"connecting to tcp:127.0.0.1:{port}" in str(info.value)
        assert isinstance(info.value.__cause__, conpool.ConnectError)
        assert sum(e.kind == "connect.started" for e in tracer.events()) == 3
        with pytest.raises(httpx.ConnectError):
            client.post(f"http://127.0.0.1:{port}/", content=b"x")
        assert sum(e.kind == "connect.started" for e in tracer.events()) == 4
        quiet(t)


def test_connect_timeout_on_a_stalled_tls_handshake() -> None:
    with socket.socket() as silent:  # accepts in the kernel, never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        t = transport(config=conpool.Config(connect_retries=0), verify=False)
        with httpx.Client(transport=t, timeout=httpx.Timeout(5.0, connect=0.3)) as client:
            start = time.monotonic()
            with pytest.raises(httpx.ConnectTimeout) as info:
                client.get(f"https://127.0.0.1:{port}/")
            assert time.monotonic() - start < 4.0
            assert "timed out after 0.3 s" in str(info.value)
            quiet(t)


def test_write_timeout_against_a_server_that_does_not_read() -> None:
    with socket.socket() as deaf:  # accepts, never reads: the send buffers fill
        deaf.bind(("127.0.0.1", 0))
        deaf.listen(8)
        port = deaf.getsockname()[1]
        t = transport()
        timeout = httpx.Timeout(5.0, write=0.3)
        with httpx.Client(transport=t, timeout=timeout) as client:
            with pytest.raises(httpx.WriteTimeout) as info:
                client.post(f"http://127.0.0.1:{port}/", content=b"x" * (64 * MiB))
            assert "timed out after 0.3 s" in str(info.value)
            assert "sending POST" in str(info.value)
            quiet(t)


def test_unsupported_scheme_and_a_closed_transport() -> None:
    t = transport()
    with pytest.raises(httpx.UnsupportedProtocol, match="ftp"):
        t.handle_request(httpx.Request("GET", "ftp://127.0.0.1/x"))
    t.close()
    with pytest.raises(httpx.ConnectError, match="closed"):
        t.handle_request(httpx.Request("GET", "http://127.0.0.1:9/"))
    with pytest.raises(RuntimeError, match="make a new transport"):
        with httpx.Client(transport=t):
            pass


def test_argument_errors() -> None:
    with pytest.raises(TypeError, match=r"conpool\.SyncPool"):
        conpool.httpx.Transport(conpool.Pool())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        conpool.httpx.Transport(conpool.SyncPool(), config=conpool.Config())
    with pytest.raises(TypeError, match="verify"):
        conpool.httpx.Transport(verify="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retries"):
        conpool.httpx.Transport(retries=-1)
    with pytest.raises(TypeError, match="retries"):
        conpool.httpx.Transport(retries=1.5)  # type: ignore[arg-type]


def test_a_shared_pool_stays_open(nginx: HttpxNginx) -> None:
    with conpool.SyncPool() as pool:
        t = conpool.httpx.Transport(pool)
        with httpx.Client(transport=t) as client:
            assert client.get(nginx.url("/")).content == b"ok\n"
        assert t.pool is pool and dict(t.pools) == {None: pool}
        assert "closed" not in repr(pool)
        conn = pool.acquire(conpool.Endpoint("127.0.0.1", nginx.port))
        assert conn.uses == 2
        pool.release(conn)
    owned = conpool.httpx.Transport()
    with httpx.Client(transport=owned):
        pass
    assert "closed" in repr(owned.pool)


# --------------------------------------------------------------------------
# TLS


def test_https_with_a_trusted_ca_by_name(tmp_path: Path, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with tls_nginx(tmp_path, ca, "pool.test") as server:
        resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
        t = transport(resolver=resolver, verify=context)
        with httpx.Client(transport=t) as client:
            for _ in range(3):
                r = client.get(f"https://pool.test:{server.tls_port}/")
                assert r.content == b"ok\n"
            big = client.get(f"https://pool.test:{server.tls_port}/big")
            assert big.content == server.big_file.read_bytes()
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.reused) == (1, 3)
    assert t._router.tls.alpn == ("http/1.1",)


def test_https_with_the_wrong_name(tmp_path: Path, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with tls_nginx(tmp_path, ca, "other.test") as server:
        resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
        t = transport(resolver=resolver, verify=context)
        with httpx.Client(transport=t) as client:
            with pytest.raises(httpx.ConnectError) as info:
                client.get(f"https://pool.test:{server.tls_port}/")
            message = str(info.value)
            assert "certificate" in message.lower()
            assert "pool.test" in message
            quiet(t)


def test_verify_false_and_a_context() -> None:
    t = conpool.httpx.Transport(verify=False)
    context = t._router.tls.context
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    mine = ssl.create_default_context()
    assert conpool.httpx.Transport(verify=mine)._router.tls.context is mine


# --------------------------------------------------------------------------
# Never a leaked lease


def test_a_response_dropped_unclosed_is_reclaimed(nginx: HttpxNginx) -> None:
    t = transport()
    with httpx.Client(transport=t) as client:
        response = client.send(client.build_request("GET", nginx.url("/big")), stream=True)
        assert t.pool.stats().active == 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del response
            gc.collect()
            # (The reclaim runs on the pool's next entry point.)
            eventually(lambda: t.pool.stats().active == 0)
        assert any("garbage-collected without being released" in str(w.message) for w in caught)
        quiet(t)


def test_an_exception_while_a_response_is_open(nginx: HttpxNginx) -> None:
    t = transport()
    with httpx.Client(transport=t) as client:
        with pytest.raises(ZeroDivisionError), client.stream("GET", nginx.url("/big")) as r:
            for _ in r.iter_raw():
                1 / 0  # noqa: B018
        (ep,) = quiet(t).endpoints.values()
        assert ep.closed == 1


def test_threads_with_exceptions_in_user_code_leak_nothing(nginx: HttpxNginx) -> None:
    """16 threads x 40 requests over 8 connections: some bodies read whole,
    some abandoned mid-way, some raising in the caller's code, with random
    pool timeouts; every request is accounted for and the descriptors are
    back at the end."""
    gc.collect()
    baseline = fd_count()
    t = transport(config=conpool.Config(max_connections_per_endpoint=8))
    urls = [nginx.url("/"), nginx.url("/big"), nginx.url("/chunked"), nginx.url("/sleep?s=0.01")]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            url = rng.choice(urls)
            what = rng.choice(["read", "abandon", "raise"])
            timeout = httpx.Timeout(10.0, pool=rng.choice([0.001, 0.05, 5.0]))
            try:
                with client.stream("GET", url, timeout=timeout) as r:
                    if what == "read":
                        r.read()
                    elif what == "abandon":
                        next(r.iter_raw(100), None)
                    else:
                        raise KeyError(url)
                got = what
            except KeyError:
                got = "raised"
            except httpx.PoolTimeout:
                got = "pool-timeout"
            with lock:
                outcomes[got] += 1

    with httpx.Client(transport=t) as client:
        with ThreadPoolExecutor(16) as ex:
            for f in [ex.submit(worker, i) for i in range(16)]:
                f.result(timeout=120)
        stats = quiet(t)
        assert sum(outcomes.values()) == 16 * 40, outcomes
        assert outcomes["read"] and outcomes["abandon"] and outcomes["raised"], outcomes
        (ep,) = stats.endpoints.values()
        assert ep.created + ep.reused + outcomes["pool-timeout"] == 16 * 40, (ep, outcomes)
        assert ep.created - ep.closed == ep.idle <= 8
        assert client.get(nginx.url("/")).content == b"ok\n"
    gc.collect()
    eventually(lambda: fd_count() <= baseline, within=10.0)


def test_response_hashes_stay_correct_under_threads(nginx: HttpxNginx) -> None:
    t = transport(config=conpool.Config(max_connections_per_endpoint=4))
    expect = hashlib.sha256(nginx.big_file.read_bytes()).hexdigest()
    with httpx.Client(transport=t) as client, ThreadPoolExecutor(8) as ex:

        def fetch() -> str:
            return hashlib.sha256(client.get(nginx.url("/big")).content).hexdigest()

        assert [f.result(timeout=60) for f in [ex.submit(fetch) for _ in range(8)]] == [expect] * 8
        quiet(t)


# --------------------------------------------------------------------------
# 101 / CONNECT: the connection leaves the pool


def test_connect_hands_the_connection_over(tmp_path: Path) -> None:
    """A CONNECT through tinyproxy: the 200 hands the tunnel over as the
    response's network_stream; it carries bytes and never comes back."""
    from servers import EchoServer, TinyproxyServer

    with (
        EchoServer() as echo,
        TinyproxyServer(tmp_path / "tiny", connect_ports=[echo.port]) as tiny,
    ):
        t = transport()
        with httpx.Client(transport=t) as client:
            target = f"127.0.0.1:{echo.port}".encode()
            request = client.build_request(
                "CONNECT", f"http://{tiny.host}:{tiny.port}", extensions={"target": target}
            )
            response = client.send(request)
            assert response.status_code == 200
            stream = response.extensions["network_stream"]
            stream.write(b"through the tunnel", timeout=5)
            got = b""
            while len(got) < 18:
                got += stream.read(100, timeout=5)
            assert got == b"through the tunnel"
            assert stream.get_extra_info("server_addr")[1] == tiny.port
            assert isinstance(stream.get_extra_info("connection"), conpool.SyncConnection)
            assert t.pool.stats().active == 1
            stream.close()
            stream.close()
            (ep,) = quiet(t).endpoints.values()
            assert (ep.created, ep.closed, ep.idle) == (1, 1, 0)
