"""conpool.SyncPool: the async pool's behaviour, from threads, over real
loopback servers (echo, TLS echo with trustme, nginx's log with dnsmasq)."""

from __future__ import annotations

import gc
import socket
import ssl
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import conpool
from helpers_pool import check_consistent, check_quiet, fd_count, fill_backlog
from servers import (
    POOL_ADDRESSES,
    DnsmasqServer,
    EchoServer,
    NginxServer,
    TLSEchoServer,
    refused_port,
    skip_or_fail,
)

REFUSING = "127.0.0.15"


def ep_of(server: EchoServer, host: str | None = None) -> conpool.Endpoint:
    return conpool.Endpoint(host or server.host, server.port)


def echo(conn: conpool.SyncConnection, payload: bytes) -> bytes:
    conn.send(payload)
    data = b""
    while len(data) < len(payload):
        chunk = conn.receive()
        assert chunk, "the echo server hung up"
        data += chunk
    return data


def eventually(check: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.01)


def exchange(conn: conpool.SyncConnection) -> bytes:
    """One keep-alive GET to nginx; the body."""
    conn.send(b"GET / HTTP/1.1\r\nHost: pool.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = next(
        int(h.split(b":")[1])
        for h in head.split(b"\r\n")
        if h.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.receive()
    return body


@pytest.fixture
def pool() -> Iterator[conpool.SyncPool]:
    with conpool.SyncPool(conpool.Config(connect_retries=0)) as p:
        yield p


# -- the basics ---------------------------------------------------------------------


def test_reuse_and_stats(pool: conpool.SyncPool, echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    for i in range(5):
        with pool.connection(ep) as conn:
            assert echo(conn, b"ping %d" % i) == b"ping %d" % i
            assert conn.uses == i + 1
            assert conn.address == ("127.0.0.1", echo_server.port)
    stats = check_quiet(pool)
    e = stats.endpoints[ep]
    assert (e.created, e.reused, e.idle) == (1, 4, 1)
    assert echo_server.accepted == 1


def test_exception_in_block_closes(pool: conpool.SyncPool, echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    with pytest.raises(ZeroDivisionError), pool.connection(ep) as conn:
        conn.send(b"x")
        1 / 0  # noqa: B018
    assert conn.closed
    e = check_quiet(pool).endpoints[ep]
    assert (e.idle, e.closed) == (0, 1)


def test_explicit_acquire_release_and_misuse(
    pool: conpool.SyncPool, echo_server: EchoServer
) -> None:
    ep = ep_of(echo_server)
    conn = pool.acquire(ep)
    pool.release(conn)
    with pytest.raises(RuntimeError, match="already released"):
        pool.release(conn)
    with pytest.raises(RuntimeError, match="released to the pool"):
        conn.send(b"x")
    with pytest.raises(RuntimeError, match="released to the pool"):
        conn.close()
    with pytest.raises(TypeError, match="SyncConnection"):
        pool.release("nope")  # type: ignore[arg-type]
    with conpool.SyncPool() as other:
        c2 = other.acquire(ep)
        with pytest.raises(ValueError, match="does not belong"):
            pool.release(c2)
        other.release(c2)


def test_hostile_input(echo_server: EchoServer) -> None:
    with pytest.raises(TypeError, match="config"):
        conpool.SyncPool(config={})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="resolve_sync"):
        conpool.SyncPool(resolver=object())
    with pytest.raises(TypeError, match="tracer"):
        conpool.SyncPool(tracer=1)  # type: ignore[arg-type]

    async def check(conn: object) -> bool:
        return True

    with pytest.raises(TypeError, match="plain function"):
        conpool.SyncPool(conpool.Config(health_check=check))
    with conpool.SyncPool() as pool:
        with pytest.raises(TypeError, match="Endpoint"):
            pool.acquire("127.0.0.1:80")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            pool.acquire(ep_of(echo_server), timeout=-1)
        with pytest.raises(ValueError, match="connect_timeout"):
            pool.acquire(ep_of(echo_server), connect_timeout=float("nan"))
        with pool.connection(ep_of(echo_server)) as conn:
            with pytest.raises(ValueError, match="max_bytes"):
                conn.receive(0)
            with pytest.raises(ValueError, match="seconds"):
                conn.settimeout(-1)
        with pytest.raises(ValueError, match="n must"):
            pool.prewarm(ep_of(echo_server), -1)
        with pytest.raises(TypeError, match="n must"):
            pool.prewarm(ep_of(echo_server), 1.5)  # type: ignore[arg-type]
        check_quiet(pool)


def test_closed_pool(echo_server: EchoServer) -> None:
    pool = conpool.SyncPool()
    ep = ep_of(echo_server)
    held = pool.acquire(ep)
    pool.close()
    pool.close()
    with pytest.raises(conpool.PoolClosed):
        pool.acquire(ep)
    pool.release(held)
    assert held.closed
    with pytest.raises(RuntimeError):
        pool.__enter__()


# -- limits, waiting, FIFO, timeouts ------------------------------------------------


def test_limit_and_fifo(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    with conpool.SyncPool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        held = pool.acquire(ep)
        order: list[int] = []
        threads = []
        for i in range(5):
            t = threading.Thread(target=_take, args=(pool, ep, order, i))
            t.start()
            threads.append(t)
            eventually(_waiting(pool, i + 1), what="queued")
        pool.release(held)
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert order == [0, 1, 2, 3, 4]
        e = check_quiet(pool).endpoints[ep]
        assert (e.created, e.reused) == (1, 5)
        assert e.wait_time.count == 5


def _waiting(pool: conpool.SyncPool, n: int) -> Callable[[], bool]:
    return lambda: pool.stats().waiting == n


def _take(pool: conpool.SyncPool, ep: conpool.Endpoint, order: list[int], i: int) -> None:
    with pool.connection(ep):
        order.append(i)


def test_acquire_timeout_and_max_waiters(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=0.2, max_waiters=1)
    with conpool.SyncPool(config) as pool:
        held = pool.acquire(ep)
        start = time.monotonic()
        with pytest.raises(conpool.PoolTimeout, match="became free"):
            pool.acquire(ep)
        assert time.monotonic() - start >= 0.19
        with pytest.raises(conpool.PoolTimeout):
            pool.acquire(ep, timeout=0)
        # One waits; the next is turned away at once.
        waiter = threading.Thread(target=lambda: _swallow(lambda: pool.acquire(ep, timeout=5)))
        waiter.start()
        eventually(lambda: pool.stats().waiting == 1)
        with pytest.raises(conpool.PoolTimeout, match="max_waiters"):
            pool.acquire(ep)
        pool.release(held)
        waiter.join(10)
        assert not waiter.is_alive()
        check_consistent(pool)


def _swallow(fn: Callable[[], object]) -> None:
    conn = fn()
    assert isinstance(conn, conpool.SyncConnection)
    conn.close()


def test_close_fails_waiters(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    pool = conpool.SyncPool(conpool.Config(max_connections_per_endpoint=1))
    held = pool.acquire(ep)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire(ep)
        except conpool.PoolClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    eventually(lambda: pool.stats().waiting == 1)
    pool.close()
    t.join(10)
    assert len(errors) == 1
    pool.release(held)


def test_max_connections_evicts_idle_of_other_endpoint(echo_server: EchoServer) -> None:
    other = EchoServer()
    with other, conpool.SyncPool(conpool.Config(max_connections=1)) as pool:
        with pool.connection(ep_of(echo_server)):
            pass
        with pool.connection(ep_of(other)):
            pass
        stats = check_quiet(pool)
        assert stats.endpoints[ep_of(echo_server)].closed == 1


# -- lifecycle: the sweep, lifetime, uses, health ---------------------------------------


def test_idle_expiry_by_the_sweeper(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    with conpool.SyncPool(conpool.Config(max_idle_time=0.2)) as pool:
        with pool.connection(ep):
            pass
        # Nobody calls the pool: the sweeper thread closes it.
        eventually(lambda: pool.stats().endpoints[ep].idle == 0, what="idle expiry")
        eventually(lambda: echo_server.current == 0, what="server saw the close")


def test_lifetime_and_uses(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    config = conpool.Config(max_connection_uses=2, max_connection_lifetime=0.3)
    with conpool.SyncPool(config) as pool:
        for _ in range(4):
            with pool.connection(ep):
                pass
        assert pool.stats().endpoints[ep].created == 2
        time.sleep(0.35)
        with pool.connection(ep) as conn:
            assert conn.uses == 1
        check_consistent(pool)


def test_health_check_and_dead_peer(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    verdicts = [False, True]
    checked: list[int] = []

    def health(conn: conpool.SyncConnection) -> bool:
        checked.append(conn.id)
        return verdicts.pop(0)

    with conpool.SyncPool(conpool.Config(health_check=health)) as pool:  # type: ignore[arg-type]
        with pool.connection(ep):
            pass
        with pool.connection(ep) as conn:  # the first check fails: a new one
            assert conn.uses == 1
        assert len(checked) == 1
        with pool.connection(ep) as conn:
            assert conn.uses == 2
    # The first pool closed its connections; the server's thread notices in
    # its own time (late on a loaded machine), so wait before counting.
    echo_server.wait_for_current(0)
    with conpool.SyncPool() as pool:
        with pool.connection(ep) as conn:
            assert echo(conn, b"a") == b"a"
        assert echo_server.close_all() == 1
        time.sleep(0.05)
        with pool.connection(ep) as conn:  # the probe saw the peer's close
            assert conn.uses == 1
            assert echo(conn, b"again") == b"again"


def test_receive_timeout_breaks(pool: conpool.SyncPool, echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    with pool.connection(ep) as conn:
        conn.settimeout(0.05)
        with pytest.raises(TimeoutError):
            conn.receive()
    assert check_quiet(pool).endpoints[ep].closed == 1
    with pool.connection(ep) as conn:
        assert conn.socket.gettimeout() is None
        conn.send_eof()
    assert pool.stats().endpoints[ep].closed == 2


def test_prewarm(pool: conpool.SyncPool, echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    assert pool.prewarm(ep, 3) == 3
    eventually(lambda: echo_server.accepted == 3, what="the server accepted three")
    with pytest.raises(conpool.ConnectError):
        pool.prewarm(conpool.Endpoint(REFUSING, echo_server.port))


# -- errors and their story -------------------------------------------------------------


def test_refused_story_and_retries(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    config = conpool.Config(connect_retries=2, retry_backoff=0.01)
    with conpool.SyncPool(config, tracer=tracer) as pool:
        ep = conpool.Endpoint(REFUSING, echo_server.port)
        with pytest.raises(conpool.ConnectError) as info:
            pool.acquire(ep)
        err = info.value
        assert isinstance(err, OSError)
        assert err.attempts == 3 if hasattr(err, "attempts") else True
        assert len(err.errors) == 3
        assert str(err).splitlines() == [
            "[Errno 111] Connection refused",
            f"  connecting to tcp:{REFUSING}:{echo_server.port}",
            f"  connecting to {ep}",
            "  after 2 retry attempts (3 attempts in all)",
        ]
        kinds = [e.kind for e in tracer.events()]
        assert kinds.count("connect.failed") == 3
        assert kinds.count("connect.retry") == 2
        assert "acquire.failed" in kinds
        check_quiet(pool)


def test_resolve_error() -> None:
    with conpool.SyncPool(resolver=conpool.StaticResolver({"a.test": ["127.0.0.1"]})) as pool:
        with pytest.raises(conpool.ResolveError, match="static table") as info:
            pool.acquire(conpool.Endpoint("b.test", 80))
        assert "resolving b.test" in str(info.value)
        check_quiet(pool)


def test_connect_timeout(echo_server: EchoServer) -> None:
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    filled = fill_backlog("127.0.0.1", port)
    try:
        config = conpool.Config(connect_timeout=0.2, connect_retries=1, retry_backoff=0.01)
        with conpool.SyncPool(config) as pool:
            start = time.monotonic()
            with pytest.raises(conpool.ConnectError, match=r"TCP connect timed out after 0\.2 s"):
                pool.acquire(conpool.Endpoint("127.0.0.1", port))
            assert 0.35 < time.monotonic() - start < 5
            check_quiet(pool)
    finally:
        for s in filled:
            s.close()
        blackhole.close()


# -- TLS ---------------------------------------------------------------------------------


def test_tls(tls_echo_server: TLSEchoServer) -> None:
    tls = conpool.TLS(tls_echo_server.client_context())
    ep = conpool.Endpoint("localhost", tls_echo_server.port, tls=tls)
    resolver = conpool.StaticResolver({"localhost": ["127.0.0.1"]})
    tracer = conpool.Tracer()
    with conpool.SyncPool(resolver=resolver, tracer=tracer) as pool:
        for _ in range(3):
            with pool.connection(ep) as conn:
                assert echo(conn, b"secret") == b"secret"
                assert isinstance(conn.socket, ssl.SSLSocket)
                with pytest.raises(NotImplementedError):
                    conn.send_eof()
        assert tls_echo_server.server_names == ["localhost"]
        assert "tls.complete" in [e.kind for e in tracer.events()]
        check_quiet(pool)


def test_tls_untrusted_is_not_retried(tls_echo_server: TLSEchoServer) -> None:
    ep = conpool.Endpoint("127.0.0.1", tls_echo_server.port, tls=conpool.TLS())
    with conpool.SyncPool(conpool.Config(connect_retries=3)) as pool:
        with pytest.raises(conpool.ConnectError, match="certificate verification failed") as info:
            pool.acquire(ep)
        assert len(info.value.errors) == 1
        check_quiet(pool)


def test_tls_to_plain_server(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint("127.0.0.1", echo_server.port, tls=conpool.TLS())
    with conpool.SyncPool(conpool.Config(connect_retries=0, connect_timeout=1.0)) as pool:
        with pytest.raises(conpool.ConnectError):
            pool.acquire(ep)
        check_quiet(pool)


# -- balancing, DNS changes, ejection, Happy Eyeballs ---------------------------------------


def test_balancing_over_nginx_log(nginx4: NginxServer, dnsmasq: DnsmasqServer) -> None:
    resolver = conpool.DNSResolver([(dnsmasq.host, dnsmasq.port)], timeout=2.0)
    ep = conpool.Endpoint("pool.test", nginx4.port)
    with conpool.SyncPool(
        conpool.Config(max_connections_per_endpoint=8), resolver=resolver
    ) as pool:
        held = [pool.acquire(ep) for _ in range(8)]
        for conn in held:
            assert exchange(conn) == b"ok\n"
        for conn in held:
            pool.release(conn)
        lines = nginx4.wait_for_log(8)
        spread = Counter(line.server_addr for line in lines)
        assert sorted(spread) == sorted(POOL_ADDRESSES)
        assert set(spread.values()) == {2}
        stats = check_quiet(pool).endpoints[ep]
        assert {ip: a.created for ip, a in stats.addresses.items()} == dict.fromkeys(
            POOL_ADDRESSES, 2
        )


def test_dns_change_drains(nginx4: NginxServer, dnsmasq: DnsmasqServer) -> None:
    resolver = conpool.DNSResolver([(dnsmasq.host, dnsmasq.port)], timeout=2.0)
    ep = conpool.Endpoint("pool.test", nginx4.port)
    with conpool.SyncPool(resolver=resolver) as pool:
        held = [pool.acquire(ep) for _ in range(4)]
        for conn in held:
            pool.release(conn)
        dnsmasq.set_records({"pool.test": POOL_ADDRESSES[:1]})
        # The sweeper looks the name up again once its TTL (1 s) passes and
        # closes the idle connections to addresses that left the answer.
        eventually(
            lambda: set(pool.stats().endpoints[ep].addresses) == {POOL_ADDRESSES[0]},
            within=10,
            what="addresses that left the answer drained",
        )
        with pool.connection(ep) as conn:
            assert conn.address[0] == POOL_ADDRESSES[0]
        e = pool.stats().endpoints[ep]
        assert e.created - e.closed == e.active + e.idle


def test_ejection(echo_server: EchoServer) -> None:
    names = conpool.StaticResolver({"pool.test": ["127.0.0.1", REFUSING]})
    config = conpool.Config(eject_after_failures=1, connect_retries=2, retry_backoff=0.0)
    tracer = conpool.Tracer()
    with conpool.SyncPool(config, resolver=names, tracer=tracer) as pool:
        ep = conpool.Endpoint("pool.test", echo_server.port)
        held = [pool.acquire(ep) for _ in range(4)]
        assert {c.address[0] for c in held} == {"127.0.0.1"}
        for conn in held:
            pool.release(conn)
        addrs = pool.stats().endpoints[ep].addresses
        assert addrs[REFUSING].ejected
        assert "address.eject" in {e.kind for e in tracer.events()}


def test_happy_eyeballs_races_the_other_family(echo_server: EchoServer) -> None:
    # ::1 never answers (a full accept queue drops the SYN); 127.0.0.1 echoes.
    blackhole = socket.socket(socket.AF_INET6)
    try:
        blackhole.bind(("::1", echo_server.port))
    except OSError:
        skip_or_fail("no IPv6 loopback here")
    blackhole.listen(0)
    filled: list[socket.socket] = []
    try:
        for _ in range(16):
            s = socket.socket(socket.AF_INET6)
            filled.append(s)
            s.setblocking(False)
            s.connect_ex(("::1", echo_server.port))
            time.sleep(0.02)
        names = conpool.StaticResolver({"pool.test": ["::1", "127.0.0.1"]})
        config = conpool.Config(happy_eyeballs_delay=0.05, connect_timeout=5, balance="round-robin")
        tracer = conpool.Tracer()
        with conpool.SyncPool(config, resolver=names, tracer=tracer) as pool:
            ep = conpool.Endpoint("pool.test", echo_server.port)
            start = time.monotonic()
            conns = [pool.acquire(ep) for _ in range(2)]
            assert time.monotonic() - start < 3
            assert {c.address[0] for c in conns} == {"127.0.0.1"}
            events = [(e.kind, e.address) for e in tracer.events()]
            assert ("connect.race", "127.0.0.1") in events
            assert any(k == "connect.cancelled" and a == "::1" for k, a in events)
            assert threading.active_count() < 10  # no thread per attempt
            for conn in conns:
                pool.release(conn)
            check_quiet(pool)
    finally:
        for s in filled:
            s.close()
        blackhole.close()


# -- hooks, tracing, leaks ------------------------------------------------------------------


def test_hooks_and_trace_order(echo_server: EchoServer) -> None:
    seen: list[str] = []
    tracer = conpool.Tracer()
    with conpool.SyncPool(tracer=tracer) as pool:
        pool.add_hook("*", lambda e: seen.append(e.kind))

        @pool.on_connection_reused
        def boom(event: conpool.Event) -> None:
            raise RuntimeError("a broken hook is switched off")

        ep = ep_of(echo_server)
        with pool.connection(ep):
            pass
        with pool.connection(ep):
            pass
    assert seen[:3] == ["connect.started", "connect.complete", "conn.release"]
    assert "conn.reuse" in seen and seen[-1] == "conn.close"
    assert [e.kind for e in tracer.events()] == seen


def test_dropped_connection_is_reclaimed(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    with conpool.SyncPool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        conn = pool.acquire(ep)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del conn
            gc.collect()
            # The next entry point runs the reclaim: the slot is free again.
            with pool.connection(ep, timeout=2) as again:
                assert echo(again, b"x") == b"x"
        assert any("garbage-collected without being released" in str(w.message) for w in caught)
        e = check_quiet(pool).endpoints[ep]
        assert (e.created, e.closed) == (2, 1)


def test_sweeper_thread_ends_and_holds_nothing(echo_server: EchoServer) -> None:
    before = threading.active_count()
    pool = conpool.SyncPool()
    with pool.connection(ep_of(echo_server)):
        pass
    sweeper = pool._sweeper
    assert sweeper is not None and sweeper.daemon
    pool.close()
    sweeper.join(5)
    assert not sweeper.is_alive()
    # A pool dropped without close: its sweeper ends too.
    pool = conpool.SyncPool()
    with pool.connection(ep_of(echo_server)):
        pass
    sweeper = pool._sweeper
    assert sweeper is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del pool

        def ended() -> bool:
            gc.collect()  # (the pool is in reference cycles)
            return not sweeper.is_alive()

        eventually(ended, what="the sweeper of a dropped pool ended")
    assert threading.active_count() <= before


def test_fds_back_to_baseline(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    baseline = fd_count()
    with conpool.SyncPool() as pool:
        held = [pool.acquire(ep) for _ in range(5)]
        for c in held:
            pool.release(c)
    eventually(lambda: fd_count() == baseline, what=f"fds back to {baseline}")


# -- proxies -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tinyproxy-auth", "microsocks-auth", "dante-socks4"])
def test_through_a_real_proxy(kind: str, tmp_path: Path, echo_server: EchoServer) -> None:
    from test_proxies import PASSWORD, proxy_for

    tracer = conpool.Tracer()
    with proxy_for(kind, tmp_path, [echo_server.port]) as proxy:
        config = conpool.Config(proxy=proxy, connect_retries=0)
        with conpool.SyncPool(config, tracer=tracer) as pool:
            ep = ep_of(echo_server)
            for _ in range(2):
                with pool.connection(ep) as conn:
                    assert echo(conn, b"tunnelled") == b"tunnelled"
            assert pool.stats().endpoints[ep].created == 1
            kinds = [e.kind for e in tracer.events()]
            assert "proxy.handshake.complete" in kinds
            refused = conpool.Endpoint("127.0.0.1", refused_port())
            with pytest.raises(conpool.ConnectError, match=" via "):
                pool.acquire(refused)
            check_quiet(pool)
    assert all(PASSWORD not in e.detail for e in tracer.events())


# -- resolvers from threads -------------------------------------------------------------


def test_resolvers_answer_threads(dnsmasq: DnsmasqServer) -> None:
    dns = conpool.DNSResolver([(dnsmasq.host, dnsmasq.port)], timeout=2.0)
    answer = dns.resolve_sync("pool.test")
    assert sorted(a.ip for a in answer) == sorted(POOL_ADDRESSES)
    assert all(a.ttl == 1.0 for a in answer)
    with pytest.raises(OSError):
        dns.resolve_sync("nowhere.test")
    assert "127.0.0.1" in {a.ip for a in conpool.SystemResolver().resolve_sync("localhost")}
    static = conpool.StaticResolver({"a.test": ["127.0.0.1"]})
    assert [a.ip for a in static.resolve_sync("A.TEST.")] == ["127.0.0.1"]
    assert isinstance(dns, conpool.SyncResolver)


class _Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.gate = threading.Event()

    def resolve_sync(self, host: str) -> list[conpool.ResolvedAddress]:
        self.calls += 1
        self.gate.wait(5)
        return [conpool.ResolvedAddress("127.0.0.1", 30.0)]


def test_threads_share_one_lookup(echo_server: EchoServer) -> None:
    resolver = _Counting()
    tracer = conpool.Tracer()
    with conpool.SyncPool(resolver=resolver, tracer=tracer) as pool:
        ep = conpool.Endpoint("shared.test", echo_server.port)
        threads = [
            threading.Thread(target=lambda: pool.release(pool.acquire(ep))) for _ in range(8)
        ]
        for t in threads:
            t.start()
        eventually(lambda: pool.stats().pending == 8, what="eight dials waiting on the lookup")
        resolver.gate.set()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert resolver.calls == 1
        kinds = Counter(e.kind for e in tracer.events())
        assert kinds["resolve.started"] == 1 and kinds["resolve.complete"] == 1
        check_quiet(pool)


# -- the lifecycle fields: on_connect, reset, socket options, Unix sockets ------------------


def test_on_connect_and_reset(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    greeted: list[int] = []
    verdicts = [True, False]

    def on_connect(conn: conpool.SyncConnection) -> None:
        assert echo(conn, b"HELLO") == b"HELLO"
        greeted.append(conn.id)

    def reset(conn: conpool.SyncConnection) -> bool:
        return verdicts.pop(0)

    config = conpool.Config(on_connect=on_connect, reset=reset)  # type: ignore[arg-type]
    tracer = conpool.Tracer()
    with conpool.SyncPool(config, tracer=tracer) as pool:
        with pool.connection(ep) as conn:  # greeted; reset says True: kept
            first = conn.id
        with pool.connection(ep) as conn:  # reused; reset says False: closed
            assert conn.id == first
        with pool.connection(ep) as conn:
            assert conn.id != first
            pool_conn = conn
        assert greeted == [first, pool_conn.id]
        kinds = [e.kind for e in tracer.events()]
        assert kinds.count("on_connect.complete") == 2
        assert "reset.failed" in kinds


def test_on_connect_failure_story(echo_server: EchoServer) -> None:
    def on_connect(conn: conpool.SyncConnection) -> None:
        raise PermissionError("AUTH refused")

    config = conpool.Config(on_connect=on_connect, connect_retries=2)  # type: ignore[arg-type]
    with conpool.SyncPool(config) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            pool.acquire(ep_of(echo_server))
        lines = str(info.value).splitlines()
        assert lines[0] == "AUTH refused"
        assert lines[1:3] == [
            "  running on_connect",
            f"  connecting to tcp:127.0.0.1:{echo_server.port}",
        ]
        assert isinstance(info.value.errors[0], PermissionError)
        e = check_quiet(pool).endpoints[ep_of(echo_server)]
        assert (e.created, e.closed) == (1, 1)


def test_socket_options_and_unix(tmp_path: Path, echo_server: EchoServer) -> None:
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    with conpool.SyncPool(conpool.Config(socket_options=opts, local_address="127.0.0.1")) as pool:
        with pool.connection(ep_of(echo_server)) as conn:
            assert conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert conn.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    path = str(tmp_path / "echo.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(4)

    def serve() -> None:
        c, _ = listener.accept()
        with c:
            while data := c.recv(100):
                c.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with conpool.SyncPool() as pool:
            ep = conpool.Endpoint.unix(path)
            for _ in range(2):
                with pool.connection(ep) as conn:
                    assert echo(conn, b"local") == b"local"
                    assert conn.address[0] == path
            assert "unix:" in repr(conn)
            e = check_quiet(pool).endpoints[ep]
            assert (e.created, e.reused) == (1, 1)
    finally:
        listener.close()
        t.join(5)


def test_min_idle_floor_is_kept_by_the_sweeper(echo_server: EchoServer) -> None:
    ep = ep_of(echo_server)
    tracer = conpool.Tracer()
    config = conpool.Config(min_idle=2, max_connection_lifetime=0.5)
    with conpool.SyncPool(config, tracer=tracer) as pool:
        assert pool.prewarm(ep) == 2
        # Lifetimes end; the sweeper closes them and refills the floor.
        eventually(
            lambda: pool.stats().endpoints[ep].closed >= 2 and pool.stats().endpoints[ep].idle == 2,
            within=10,
            what="the floor refilled after lifetimes ended",
        )
        assert any(e.kind == "connect.complete" and e.detail == "refill" for e in tracer.events())
        check_consistent(pool)
