"""The pool through real proxies: tinyproxy (HTTP CONNECT, with and without
Basic auth), microsocks (SOCKS5, with and without user/password) and dante
(SOCKS5 and SOCKS4, with rules on which targets it may reach), each started
on loopback by the test and stopped by its PID.

Through each: an echo server, nginx on the four addresses of ``pool.test``
(dnsmasq) with the spread counted in nginx's log by the address each request
arrived on (nginx sees the proxy's source address, so that is the column that
tells the addresses apart), TLS to the target inside the tunnel with SNI by
name, a wrong password, a proxy that is down, stalls or hangs up, and a proxy
allowed to reach only some addresses (the others are ejected).
"""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import conpool
from conpool._tunnel import run_handshake_blocking
from helpers_pool import check_quiet, echo, fd_baseline, fds_back_to, fill_backlog
from servers import (
    LOOPBACK,
    POOL_ADDRESSES,
    DanteServer,
    DnsmasqServer,
    EchoServer,
    MicrosocksServer,
    NginxServer,
    TinyproxyServer,
    TLSEchoServer,
    TLSTerminator,
    refused_port,
    unused_port,
)
from test_balancing import dns_resolver, exchange, get

pytestmark = [pytest.mark.anyio, pytest.mark.realserver]

USER, PASSWORD = "pooluser", "s3cret-pw"

KINDS = [
    "tinyproxy",
    "tinyproxy-auth",
    "microsocks",
    "microsocks-auth",
    "dante-socks5",
    "dante-socks4",
]


@contextlib.contextmanager
def proxy_for(
    kind: str,
    directory: Path,
    ports: list[int],
    *,
    allow_hosts: list[str] | None = None,
    password: str = PASSWORD,
) -> Iterator[conpool.Proxy]:
    """Start the proxy *kind* allowed to reach *ports*; yield its Proxy, with
    *password* (the right one unless a test says otherwise)."""
    if kind.startswith("tinyproxy"):
        auth = kind.endswith("-auth")
        with TinyproxyServer(
            directory / kind,
            connect_ports=ports,
            username=USER if auth else None,
            password=PASSWORD if auth else None,
            allow_hosts=allow_hosts,
        ) as tiny:
            yield conpool.Proxy.parse(
                tiny.url(username=USER, password=password) if auth else tiny.url()
            )
    elif kind.startswith("microsocks"):
        assert allow_hosts is None
        auth = kind.endswith("-auth")
        with MicrosocksServer(
            directory / kind,
            username=USER if auth else None,
            password=PASSWORD if auth else None,
        ) as micro:
            yield conpool.Proxy.parse(
                micro.url(username=USER, password=password) if auth else micro.url()
            )
    else:
        scheme = kind.split("-")[1]
        with DanteServer(directory / kind, allow_hosts=allow_hosts) as dante:
            yield conpool.Proxy.parse(dante.url(scheme))


def handshake_events(tracer: conpool.Tracer) -> list[str]:
    return [e.kind for e in tracer.events() if e.kind.startswith(("connect.", "proxy.", "tls."))]


def no_secret_anywhere(tracer: conpool.Tracer, *texts: str) -> None:
    for event in tracer.events():
        assert PASSWORD not in event.detail and USER not in event.detail, event
    for text in texts:
        assert PASSWORD not in text and USER not in text, text


# --------------------------------------------------------------------------
# Through every proxy


@pytest.mark.parametrize("kind", KINDS)
async def test_echo_through_the_proxy(kind: str, tmp_path: Path, echo_server: EchoServer) -> None:
    """Bytes go through the tunnel both ways; the trace shows the proxy
    handshake as its own span inside the connect; stats count the target."""
    endpoint = conpool.Endpoint(LOOPBACK, echo_server.port)
    tracer = conpool.Tracer()
    with proxy_for(kind, tmp_path, [echo_server.port]) as proxy:
        async with conpool.Pool(conpool.Config(proxy=proxy), tracer=tracer) as pool:
            for _ in range(3):
                async with pool.connection(endpoint) as conn:
                    await conn.send(b"ping through " + kind.encode())
                    assert await conn.receive() == b"ping through " + kind.encode()
            stats = pool.stats().endpoints[endpoint]
            assert stats.created == 1 and stats.reused == 2
            assert set(stats.addresses) == {LOOPBACK}
            assert stats.addresses[LOOPBACK].created == 1
            no_secret_anywhere(tracer, repr(pool.config), str(pool.stats()))
    assert handshake_events(tracer) == [
        "connect.started",
        "proxy.handshake.started",
        "proxy.handshake.complete",
        "connect.complete",
    ]
    span = next(e for e in tracer.events() if e.kind == "proxy.handshake.complete")
    assert span.detail == str(proxy) and span.address == LOOPBACK
    assert span.duration_ns is not None and span.duration_ns > 0
    # What the echo server saw come in was the proxy, not us.
    assert echo_server.accepted == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_spread_over_every_address_through_the_proxy(
    kind: str, tmp_path: Path, nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    """The pool resolves pool.test and names each chosen address to the
    proxy: 8 connections held at once land 2 on each of the 4 addresses, by
    nginx's own log (the address each request arrived on)."""
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    config = conpool.Config(max_connections_per_endpoint=8)
    with proxy_for(kind, tmp_path, [nginx4.port]) as proxy:
        config = conpool.Config(max_connections_per_endpoint=8, proxy=proxy)
        async with conpool.Pool(config, resolver=dns_resolver(dnsmasq)) as pool:
            conns = [await pool.acquire(endpoint) for _ in range(8)]
            try:
                with anyio.fail_after(10):
                    for conn in conns:
                        assert await exchange(conn) == b"ok\n"
            finally:
                for conn in conns:
                    await pool.release(conn)
            for _ in range(16):  # reused, still spread
                assert await get(pool, endpoint) == b"ok\n"
            stats = pool.stats().endpoints[endpoint]
            assert {ip: a.created for ip, a in stats.addresses.items()} == dict.fromkeys(
                POOL_ADDRESSES, 2
            )
    lines = nginx4.wait_for_log(24)
    by_address = Counter(line.server_addr for line in lines)
    assert set(by_address) == set(POOL_ADDRESSES), by_address
    assert Counter((line.server_addr, line.conn) for line in lines).keys().__len__() == 8
    for address in POOL_ADDRESSES:
        assert by_address[address] >= 2, by_address


TLS_KINDS = ["tinyproxy-auth", "microsocks-auth", "dante-socks5"]


@pytest.mark.parametrize("kind", TLS_KINDS)
async def test_tls_to_the_target_inside_the_tunnel(kind: str, tmp_path: Path) -> None:
    """TLS is between us and the target, through the tunnel: the certificate
    is checked against the endpoint's name, which is also the SNI sent."""
    with TLSEchoServer(names=("tls.test",)) as server:
        tls = conpool.TLS(context=server.client_context())
        endpoint = conpool.Endpoint("tls.test", server.port, tls=tls)
        resolver = conpool.StaticResolver({"tls.test": [LOOPBACK]})
        tracer = conpool.Tracer()
        with proxy_for(kind, tmp_path, [server.port]) as proxy:
            config = conpool.Config(proxy=proxy)
            async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
                async with pool.connection(endpoint) as conn:
                    await conn.send(b"secret payload")
                    assert await conn.receive() == b"secret payload"
        assert server.server_names == ["tls.test"]
    assert handshake_events(tracer) == [
        "connect.started",
        "proxy.handshake.started",
        "proxy.handshake.complete",
        "tls.complete",
        "connect.complete",
    ]


# --------------------------------------------------------------------------
# Failures, their stories, and what counts


@pytest.mark.parametrize("kind", ["tinyproxy-auth", "microsocks-auth"])
async def test_wrong_password_fails_at_once_and_blames_no_address(
    kind: str, tmp_path: Path, echo_server: EchoServer
) -> None:
    endpoint = conpool.Endpoint(LOOPBACK, echo_server.port)
    tracer = conpool.Tracer()
    with proxy_for(kind, tmp_path, [echo_server.port], password="wrong-pw") as proxy:
        config = conpool.Config(proxy=proxy, connect_retries=3, retry_backoff=0.0)
        async with conpool.Pool(config, tracer=tracer) as pool:
            with pytest.raises(conpool.ConnectError) as caught:
                await pool.acquire(endpoint)
            stats = pool.stats().endpoints[endpoint]
            assert all(a.failures == 0 for a in stats.addresses.values())
    exc = caught.value
    assert exc.attempts == 1  # a refusal that would repeat is not retried
    error = exc.errors[0]
    assert isinstance(error, conpool.ProxyError)
    assert not error.retryable and not error.blames_target
    text = str(exc)
    assert f"connecting to tcp:{LOOPBACK}:{echo_server.port} via {proxy}" in text
    if kind.startswith("tinyproxy"):
        # tinyproxy 1.11 says 401, not 407, to a CONNECT with wrong credentials.
        assert error.reply in (401, 407) and "the user name or password was not accepted" in text
    else:
        assert error.reply == "AUTH_FAILED" and "rejected the user name and password" in text
    assert "wrong-pw" not in text and "wrong-pw" not in repr(proxy)
    no_secret_anywhere(tracer, text, repr(exc.errors))
    assert [e.kind for e in tracer.events() if e.kind.startswith("proxy.")] == [
        "proxy.handshake.started",
        "proxy.handshake.failed",
    ]
    assert echo_server.accepted == 0


async def test_no_credentials_for_a_proxy_that_wants_them(
    tmp_path: Path, echo_server: EchoServer
) -> None:
    with MicrosocksServer(tmp_path / "m", username=USER, password=PASSWORD) as micro:
        config = conpool.Config(proxy=conpool.Proxy.parse(micro.url()))
        async with conpool.Pool(config) as pool:
            with pytest.raises(conpool.ConnectError, match="needs a user name and password"):
                await pool.acquire(conpool.Endpoint(LOOPBACK, echo_server.port))


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks4"])
async def test_proxy_down_is_retried_and_blames_no_address(
    scheme: str, nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    """Nothing listens where the proxy should be: every attempt fails
    'unreachable', the dial retries, and no address of the target is
    blamed (none is ejected: it is not their fault)."""
    proxy = conpool.Proxy.parse(f"{scheme}://{USER}@127.0.0.1:{refused_port()}")
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    tracer = conpool.Tracer()
    config = conpool.Config(
        proxy=proxy, connect_retries=5, retry_backoff=0.0, eject_after_failures=1
    )
    async with conpool.Pool(config, resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
        with pytest.raises(conpool.ConnectError) as caught:
            await pool.acquire(endpoint)
        stats = pool.stats().endpoints[endpoint]
        assert not any(a.ejected or a.failures for a in stats.addresses.values())
    exc = caught.value
    assert exc.attempts == 6
    assert all(isinstance(e, conpool.ProxyError) and e.retryable for e in exc.errors)
    assert f"the proxy {proxy} is unreachable: [Errno 111] Connection refused" in str(exc)
    assert f" via {proxy}" in str(exc)
    assert not [e for e in tracer.events() if e.kind == "address.eject"]
    # The handshake never started: no span for it.
    assert not [e for e in tracer.events() if e.kind.startswith("proxy.")]
    assert nginx4.log_lines() == []


@pytest.mark.parametrize("behaviour", ["stall", "hang-up"])
async def test_proxy_that_stalls_or_hangs_up_mid_handshake(behaviour: str) -> None:
    """A proxy that accepts and then never answers is cut off by
    connect_timeout; one that hangs up is reported as such; both retried."""
    listener = socket.socket()
    listener.bind((LOOPBACK, unused_port()))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            if behaviour == "hang-up":
                sock.recv(1024)
                sock.close()
            else:
                accepted.append(sock)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proxy = conpool.Proxy.parse(f"socks5://127.0.0.1:{port}")
        config = conpool.Config(
            proxy=proxy, connect_timeout=0.5, connect_retries=1, retry_backoff=0.0
        )
        tracer = conpool.Tracer()
        async with conpool.Pool(config, tracer=tracer) as pool:
            with anyio.fail_after(10), pytest.raises(conpool.ConnectError) as caught:
                await pool.acquire(conpool.Endpoint(LOOPBACK, 9))
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for sock in accepted:
            sock.close()
    exc = caught.value
    assert exc.attempts == 2
    expected = (
        "did not finish the handshake within 0.5 s"
        if behaviour == "stall"
        else "closed the connection during the handshake"
    )
    assert f"the SOCKS5 proxy {proxy} {expected}" in str(exc)
    assert [e.kind for e in tracer.events() if e.kind.startswith("proxy.")] == [
        "proxy.handshake.started",
        "proxy.handshake.failed",
    ] * 2


@pytest.mark.parametrize("kind", ["tinyproxy", "dante-socks5", "dante-socks4"])
async def test_a_proxy_that_reaches_only_some_addresses_ejects_the_others(
    kind: str, tmp_path: Path, nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    """The proxy may reach only 127.0.0.11 and .12: its refusals of .13 and
    .14 count against those addresses, which are ejected, and every request
    lands on the two it reaches."""
    allowed = list(POOL_ADDRESSES[:2])
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    tracer = conpool.Tracer()
    with proxy_for(kind, tmp_path, [nginx4.port], allow_hosts=allowed) as proxy:
        config = conpool.Config(
            proxy=proxy,
            balance="round-robin",
            eject_after_failures=1,
            eject_time=30.0,
            retry_backoff=0.0,
        )
        async with conpool.Pool(config, resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
            with anyio.fail_after(20):
                for _ in range(12):
                    async with pool.connection(endpoint) as conn:
                        assert await exchange(conn) == b"ok\n"
                        await conn.aclose()  # the next one dials again
            stats = pool.stats().endpoints[endpoint]
            assert {ip for ip, a in stats.addresses.items() if a.ejected} == set(POOL_ADDRESSES[2:])
            assert all(stats.addresses[ip].failures >= 1 for ip in POOL_ADDRESSES[2:])
            assert all(stats.addresses[ip].failures == 0 for ip in allowed)
    ejections = {e.address for e in tracer.events() if e.kind == "address.eject"}
    assert ejections == set(POOL_ADDRESSES[2:])
    failures = [e.detail for e in tracer.events() if e.kind == "connect.failed"]
    assert failures and all("refused the tunnel" in d or "could not open" in d for d in failures)
    lines = nginx4.wait_for_log(12)
    assert {line.server_addr for line in lines} == set(allowed)


async def test_target_refused_behind_socks5_counts_against_the_address(
    tmp_path: Path,
) -> None:
    """microsocks reports the target's refusal as CONNECTION_REFUSED: the
    address failed (as it would directly), so it counts and is retried."""
    port = refused_port()
    endpoint = conpool.Endpoint(LOOPBACK, port)
    with MicrosocksServer(tmp_path / "m") as micro:
        proxy = conpool.Proxy.parse(micro.url())
        config = conpool.Config(proxy=proxy, connect_retries=2, retry_backoff=0.0)
        async with conpool.Pool(config) as pool:
            with pytest.raises(conpool.ConnectError) as caught:
                await pool.acquire(endpoint)
            assert pool.stats().endpoints[endpoint].addresses[LOOPBACK].failures == 3
    exc = caught.value
    assert exc.attempts == 3
    error = exc.errors[-1]
    assert isinstance(error, conpool.ProxyError)
    assert error.reply == "CONNECTION_REFUSED" and error.blames_target and error.retryable
    assert str(exc).splitlines()[:2] == [
        f"the SOCKS5 proxy {proxy} could not open a tunnel to {LOOPBACK}:{port}: "
        "CONNECTION_REFUSED (the target refused the connection)",
        f"  connecting to tcp:{LOOPBACK}:{port} via {proxy}",
    ]


# --------------------------------------------------------------------------
# socks5h and no_proxy


async def test_socks5h_lets_the_proxy_resolve_the_name(
    tmp_path: Path, echo_server: EchoServer
) -> None:
    """With socks5h the name goes to the proxy (microsocks resolves
    localhost); the endpoint's one address is the name itself, and the
    pool's resolver is never asked."""

    class Refusing:
        async def resolve(self, host: str) -> list[conpool.ResolvedAddress]:
            raise AssertionError(f"the pool resolved {host}")

    endpoint = conpool.Endpoint("localhost", echo_server.port)
    tracer = conpool.Tracer()
    with MicrosocksServer(tmp_path / "m", username=USER, password=PASSWORD) as micro:
        proxy = conpool.Proxy.parse(micro.url("socks5h", username=USER, password=PASSWORD))
        config = conpool.Config(proxy=proxy)
        async with conpool.Pool(config, resolver=Refusing(), tracer=tracer) as pool:
            async with pool.connection(endpoint) as conn:
                assert conn.address == ("localhost", echo_server.port)
                await conn.send(b"by name")
                assert await conn.receive() == b"by name"
            assert set(pool.stats().endpoints[endpoint].addresses) == {"localhost"}
    assert not [e for e in tracer.events() if e.kind.startswith("resolve.")]
    assert echo_server.accepted == 1


async def test_no_proxy_endpoints_connect_directly(echo_server: EchoServer) -> None:
    """The proxy is down, but the endpoint is in no_proxy: it is dialled
    directly, with no proxy span."""
    proxy = conpool.Proxy.parse(f"http://127.0.0.1:{refused_port()}")
    tracer = conpool.Tracer()
    config = conpool.Config(proxy=proxy, no_proxy=["10.0.0.0/8", "127.0.0.0/8"])
    async with conpool.Pool(config, tracer=tracer) as pool:
        async with pool.connection(conpool.Endpoint(LOOPBACK, echo_server.port)) as conn:
            await conn.send(b"direct")
            assert await conn.receive() == b"direct"
    assert not [e for e in tracer.events() if e.kind.startswith("proxy.")]
    assert echo_server.peers[0][0] == LOOPBACK


# --------------------------------------------------------------------------
# The blocking driver (for a threaded shell)


@pytest.mark.parametrize("kind", ["tinyproxy-auth", "microsocks-auth", "dante-socks4"])
def test_blocking_driver_through_a_real_proxy(
    kind: str, tmp_path: Path, echo_server: EchoServer
) -> None:
    """The sans-I/O handshake on a plain blocking socket, as a threaded
    shell drives it: the tunnel carries bytes both ways; a refusal raises
    the same ProxyError the async pool wraps."""
    with proxy_for(kind, tmp_path, [echo_server.port]) as proxy:
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            run_handshake_blocking(sock, proxy.handshake(LOOPBACK, echo_server.port), 5.0)
            assert sock.gettimeout() == 5
            sock.sendall(b"blocking")
            assert sock.recv(100) == b"blocking"
        refused = refused_port()
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            with pytest.raises(conpool.ProxyError) as caught:
                run_handshake_blocking(sock, proxy.handshake(LOOPBACK, refused), 5.0)
    assert caught.value.blames_target and caught.value.retryable


def test_blocking_driver_stall_is_bounded() -> None:
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(1)
    proxy = conpool.Proxy.parse(f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            with pytest.raises(conpool.ProxyError, match=r"within 0\.3 s"):
                run_handshake_blocking(sock, proxy.handshake(LOOPBACK, 80), 0.3)
    finally:
        listener.close()


# --------------------------------------------------------------------------
# https:// proxies: TLS to the proxy, then TLS to the target inside it


@pytest.mark.parametrize("target_tls", [False, True], ids=["plain", "tls"])
async def test_https_proxy(target_tls: bool, tmp_path: Path) -> None:
    """tinyproxy behind TLS: the pool verifies the proxy's certificate,
    tunnels with CONNECT and Basic auth inside that TLS, and (for a TLS
    target) runs a second TLS session inside the tunnel, SNI by name."""
    with contextlib.ExitStack() as stack:
        if target_tls:
            server: EchoServer = stack.enter_context(TLSEchoServer(names=("tls.test",)))
        else:
            server = stack.enter_context(EchoServer())
        tiny = stack.enter_context(
            TinyproxyServer(
                tmp_path / "tiny", connect_ports=[server.port], username=USER, password=PASSWORD
            )
        )
        front = stack.enter_context(TLSTerminator((tiny.host, tiny.port)))
        proxy = conpool.Proxy.parse(
            f"https://{USER}:{PASSWORD}@127.0.0.1:{front.port}",
            tls_context=front.client_context(),
        )
        tls = None
        if isinstance(server, TLSEchoServer):
            tls = conpool.TLS(context=server.client_context())
        endpoint = conpool.Endpoint("tls.test", server.port, tls=tls)
        resolver = conpool.StaticResolver({"tls.test": [LOOPBACK]})
        tracer = conpool.Tracer()
        config = conpool.Config(proxy=proxy)
        async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
            for _ in range(2):
                async with pool.connection(endpoint) as conn:
                    await conn.send(b"twice wrapped")
                    assert await conn.receive() == b"twice wrapped"
            assert pool.stats().endpoints[endpoint].created == 1
            # A stale holder cannot close what the pool holds again.
            with pytest.raises(RuntimeError, match="released"):
                await conn.aclose()
            assert not conn.closed
            async with pool.connection(endpoint) as again:
                assert again is conn
        if isinstance(server, TLSEchoServer):
            assert server.server_names == ["tls.test"]
        assert front.accepted == 1
    expected = ["connect.started", "proxy.handshake.started", "proxy.handshake.complete"]
    expected += ["tls.complete"] if target_tls else []
    assert handshake_events(tracer) == [*expected, "connect.complete"]
    no_secret_anywhere(tracer)


async def test_https_proxy_with_an_untrusted_certificate(
    tmp_path: Path, echo_server: EchoServer
) -> None:
    with (
        TinyproxyServer(tmp_path / "tiny", connect_ports=[echo_server.port]) as tiny,
        TLSTerminator((tiny.host, tiny.port)) as front,
    ):
        proxy = conpool.Proxy.parse(f"https://127.0.0.1:{front.port}")  # system CAs
        config = conpool.Config(proxy=proxy, connect_retries=2, retry_backoff=0.0)
        async with conpool.Pool(config) as pool:
            with pytest.raises(conpool.ConnectError) as caught:
                await pool.acquire(conpool.Endpoint(LOOPBACK, echo_server.port))
    exc = caught.value
    assert exc.attempts == 1  # a certificate that does not verify will not later
    assert str(exc).startswith(
        f"TLS to the proxy {proxy} failed: TLS certificate verification failed"
    )
    assert echo_server.accepted == 0


# --------------------------------------------------------------------------
# Nothing leaks: failures and cancellations through a proxy


@pytest.mark.parametrize("where", ["refused", "wrong-password", "cancelled", "https"])
async def test_no_descriptor_leaks_through_proxies(
    where: str, tmp_path: Path, echo_server: EchoServer
) -> None:
    """Failed and cancelled attempts through a proxy close their sockets
    (and, on asyncio, their transports), and the pool's counts add up."""
    refused = refused_port()  # its socket lives for the whole run: open it first
    baseline = await fd_baseline()
    endpoint = conpool.Endpoint(LOOPBACK, echo_server.port)
    with contextlib.ExitStack() as stack:
        if where == "cancelled":
            # A proxy that accepts and never answers: cancel mid-handshake.
            listener = stack.enter_context(socket.socket())
            listener.bind((LOOPBACK, 0))
            listener.listen(64)
            proxy = conpool.Proxy.parse(f"socks5://127.0.0.1:{listener.getsockname()[1]}")
        elif where == "https":
            tiny = stack.enter_context(
                TinyproxyServer(tmp_path / "tiny", connect_ports=[echo_server.port])
            )
            front = stack.enter_context(TLSTerminator((tiny.host, tiny.port)))
            proxy = conpool.Proxy.parse(
                f"https://127.0.0.1:{front.port}", tls_context=front.client_context()
            )
        else:
            micro = stack.enter_context(
                MicrosocksServer(tmp_path / "m", username=USER, password=PASSWORD)
            )
            password = "nope" if where == "wrong-password" else PASSWORD
            proxy = conpool.Proxy.parse(micro.url(username=USER, password=password))
            if where == "refused":
                endpoint = conpool.Endpoint(LOOPBACK, refused)
        config = conpool.Config(proxy=proxy, connect_retries=1, retry_backoff=0.0)
        async with conpool.Pool(config) as pool:
            for _ in range(5):
                if where == "cancelled":
                    with anyio.move_on_after(0.2) as scope:
                        await pool.acquire(endpoint)
                    assert scope.cancelled_caught
                elif where == "https":
                    async with pool.connection(endpoint) as conn:
                        assert await echo(conn, b"x") == b"x"
                        await conn.aclose()
                else:
                    with pytest.raises(conpool.ConnectError):
                        await pool.acquire(endpoint)
                check_quiet(pool)
        gc.collect()
    await fds_back_to(baseline)


# --------------------------------------------------------------------------
# IPv6


@pytest.mark.parametrize("kind", ["tinyproxy", "microsocks-v6"])
async def test_ipv6_target_and_ipv6_proxy(kind: str, tmp_path: Path) -> None:
    """An IPv6 target goes to the proxy as an IPv6 address (CONNECT [::1]:port,
    SOCKS5 address type 4); a proxy listening on ::1 is reached over IPv6."""
    with contextlib.ExitStack() as stack:
        echo_v6 = stack.enter_context(EchoServer("::1"))
        if kind == "tinyproxy":
            tiny = stack.enter_context(
                TinyproxyServer(tmp_path / "tiny", connect_ports=[echo_v6.port])
            )
            proxy = conpool.Proxy.parse(tiny.url())
        else:
            micro = stack.enter_context(MicrosocksServer(tmp_path / "m", host="::1"))
            proxy = conpool.Proxy.parse(micro.url())
            assert str(proxy) == f"socks5://[::1]:{micro.port}"
        endpoint = conpool.Endpoint("::1", echo_v6.port)
        async with conpool.Pool(conpool.Config(proxy=proxy)) as pool:
            async with pool.connection(endpoint) as conn:
                assert conn.address == ("::1", echo_v6.port)
                assert await echo(conn, b"over six") == b"over six"
        assert echo_v6.accepted == 1


async def test_a_proxy_that_does_not_answer_the_connect_is_bounded_by_connect_timeout() -> None:
    """The proxy's accept queue is full, so our SYN goes unanswered: the
    attempt ends at connect_timeout as 'unreachable', is retried, and blames
    no address (it never got as far as a handshake)."""
    listener = socket.socket()
    listener.bind((LOOPBACK, unused_port()))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = fill_backlog(LOOPBACK, port)
    try:
        proxy = conpool.Proxy.parse(f"http://127.0.0.1:{port}")
        config = conpool.Config(
            proxy=proxy, connect_timeout=0.3, connect_retries=1, retry_backoff=0.0
        )
        tracer = conpool.Tracer()
        async with conpool.Pool(config, tracer=tracer) as pool:
            endpoint = conpool.Endpoint(LOOPBACK, 9)
            with anyio.fail_after(10), pytest.raises(conpool.ConnectError) as caught:
                await pool.acquire(endpoint)
            assert pool.stats().endpoints[endpoint].addresses.get(LOOPBACK) is None or (
                pool.stats().endpoints[endpoint].addresses[LOOPBACK].failures == 0
            )
    finally:
        for sock in filler:
            sock.close()
        listener.close()
    exc = caught.value
    assert exc.attempts == 2
    assert str(exc).startswith(f"the proxy {proxy} is unreachable: TCP connect")
    assert not [e for e in tracer.events() if e.kind.startswith("proxy.")]


def test_blocking_driver_over_tls_to_an_https_proxy(
    tmp_path: Path, echo_server: EchoServer
) -> None:
    """On an SSLSocket (no peeking) the blocking driver reads only what the
    handshake wants; the target's bytes then come through the same socket."""
    with (
        TinyproxyServer(tmp_path / "tiny", connect_ports=[echo_server.port]) as tiny,
        TLSTerminator((tiny.host, tiny.port)) as front,
    ):
        raw = socket.create_connection((front.host, front.port), timeout=5)
        with front.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            proxy = conpool.Proxy.parse(f"https://127.0.0.1:{front.port}")
            run_handshake_blocking(sock, proxy.handshake(LOOPBACK, echo_server.port), 5.0)
            sock.sendall(b"inside tls")
            assert sock.recv(100) == b"inside tls"
