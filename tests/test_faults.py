"""Faults injected without root: a proxy that misbehaves on command, servers
that restart, DNS answers that change, DNS servers that are slow or gone.

The proxy (:class:`faultproxy.FaultProxy`) sits on loopback between the pool
and a threaded :class:`servers.EchoServer`; it adds latency, limits bandwidth,
resets or closes a connection after N bytes, swallows everything, or closes
what it accepts.  Faults that need iptables are in ``test_faults_root.py``.
Each test ends by checking that the pool's counts add up and that no file
descriptor was left behind.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from anyio.abc import SocketAttribute

import conpool
from faultproxy import FaultProxy, Kind
from helpers_pool import (
    MisbehavingServer,
    check_quiet,
    echo,
    eventually,
    fd_baseline,
    fds_back_to,
)
from servers import (
    LOOPBACK,
    POOL_ADDRESSES,
    DnsmasqServer,
    EchoServer,
    TLSEchoServer,
    unused_port,
)

pytestmark = pytest.mark.anyio

# What a stream raises when the peer resets or closes mid-exchange.
STREAM_ERRORS = (anyio.BrokenResourceError, anyio.EndOfStream)


@pytest.fixture
def proxied(echo_server: EchoServer) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in pass-through mode in front of the echo server."""
    with FaultProxy(echo_server.address) as proxy:
        yield proxy
    assert proxy.errors == []


def endpoint_of(proxy: FaultProxy, tls: conpool.TLS | None = None) -> conpool.Endpoint:
    return conpool.Endpoint(proxy.host, proxy.port, tls=tls)


def closes(tracer: conpool.Tracer) -> dict[int, str]:
    """``{conn_id: reason}`` of every ``conn.close`` event."""
    return {e.conn_id: e.detail for e in tracer.events() if e.kind == "conn.close"}


async def timed_echo(conn: conpool.Connection, payload: bytes) -> float:
    start = time.monotonic()
    assert await echo(conn, payload) == payload
    return time.monotonic() - start


# --------------------------------------------------------------------------
# The harness itself


async def test_proxy_passes_through_and_counts(proxied: FaultProxy) -> None:
    ep = endpoint_of(proxied)
    async with conpool.Pool() as pool:
        for i in range(5):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"%05d" % i) == b"%05d" % i
        check_quiet(pool)
    await eventually(lambda: proxied.current == 0, what="proxied connection closed")
    assert (proxied.accepted, proxied.bytes_up, proxied.bytes_down) == (1, 25, 25)
    assert (proxied.resets, proxied.closes, proxied.refused) == (0, 0, 0)
    with pytest.raises(ValueError, match="after="):
        proxied.set_mode("reset_after")
    with pytest.raises(ValueError, match="kind"):
        proxied.set_mode("explode")  # type: ignore[arg-type]


def test_proxy_close_joins_every_thread(echo_server: EchoServer) -> None:
    before = {t.ident for t in threading.enumerate()}
    proxy = FaultProxy(echo_server.address)
    with proxy:
        clients = [socket.create_connection(proxy.address) for _ in range(3)]
        proxy.set_mode("blackhole")
        clients.append(socket.create_connection(proxy.address))
        deadline = time.monotonic() + 5
        while proxy.current < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.current == 4
    # close() returned with the clients still connected: every thread is gone.
    left = [
        t for t in threading.enumerate() if t.ident not in before and t.name.startswith("fault")
    ]
    assert left == []
    for sock in clients:
        sock.close()
    proxy.close()  # idempotent


# --------------------------------------------------------------------------
# Slow links


async def test_latency_adds_the_expected_delay(proxied: FaultProxy) -> None:
    ep = endpoint_of(proxied)
    async with conpool.Pool() as pool:
        async with pool.connection(ep) as conn:
            fast = await timed_echo(conn, b"warm")
        proxied.set_mode(latency=0.05)
        rtts = []
        for _ in range(3):
            async with pool.connection(ep) as conn:
                rtts.append(await timed_echo(conn, b"slow"))
        proxied.passthrough()
        async with pool.connection(ep) as conn:
            back = await timed_echo(conn, b"fast")
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.reused) == (1, 4)  # the delay never cost the connection
    assert fast < 0.05 and back < 0.05, (fast, back)
    # 50 ms each way: one round trip is at least 100 ms, and not much more.
    assert all(0.1 <= rtt < 0.4 for rtt in rtts), rtts


async def test_bandwidth_limit_bounds_throughput(proxied: FaultProxy) -> None:
    ep = endpoint_of(proxied)
    payload = bytes(range(256)) * 400  # 102,400 bytes
    rate = 400_000.0
    async with conpool.Pool() as pool:
        async with pool.connection(ep) as conn:
            unlimited = await timed_echo(conn, payload)
        proxied.set_mode(rate=rate)
        async with pool.connection(ep) as conn:
            limited = await timed_echo(conn, payload)
        check_quiet(pool)
    # Each direction is limited on its own and they overlap: the transfer
    # takes at least len/rate (minus the first piece, let out at once).
    floor = (len(payload) - rate / 50) / rate
    assert floor <= limited < floor + 1.5, (limited, floor)
    assert unlimited < floor / 2, unlimited


# --------------------------------------------------------------------------
# Connections cut mid-exchange


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("reset_after", anyio.BrokenResourceError), ("close_after", anyio.EndOfStream)],
)
async def test_cut_mid_exchange_fails_that_exchange_only(
    proxied: FaultProxy, kind: Kind, expected: type[Exception]
) -> None:
    ep = endpoint_of(proxied)
    tracer = conpool.Tracer()
    base = await fd_baseline()
    async with conpool.Pool(tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"before") == b"before"
            first = conn.id
        proxied.set_mode(kind, after=1000)
        with pytest.raises(STREAM_ERRORS) as info:
            async with pool.connection(ep) as conn:
                assert conn.id == first  # the idle connection was reused
                await echo(conn, b"x" * 10_000)
        # A reset reads as a broken stream, a FIN as the end of the stream.
        assert isinstance(info.value, expected), repr(info.value)
        if kind == "reset_after":
            assert isinstance(info.value.__cause__, ConnectionResetError)
        assert closes(tracer) == {first: "error"}  # closed, never reused
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.closed, s.idle) == (1, 1, 0)

        proxied.passthrough()
        async with pool.connection(ep) as conn:
            assert conn.id != first
            assert await echo(conn, b"after") == b"after"
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.reused, s.closed, s.idle) == (2, 1, 1, 1)
    assert (proxied.resets, proxied.closes) == (
        (kind == "reset_after") * 1,
        (kind == "close_after") * 1,
    )
    assert proxied.bytes_up >= 1000
    await fds_back_to(base)


async def test_accepted_and_never_answered_fails_by_the_users_timeout(
    proxied: FaultProxy,
) -> None:
    ep = endpoint_of(proxied)
    tracer = conpool.Tracer()
    base = await fd_baseline()
    proxied.set_mode("blackhole")
    async with conpool.Pool(conpool.Config(connect_timeout=5.0), tracer=tracer) as pool:
        ids = []
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.2):
                    async with pool.connection(ep) as conn:
                        ids.append(conn.id)
                        await echo(conn, b"anyone there?")
            # The TCP connect succeeded at once; the user's deadline ended it.
            assert 0.19 <= time.monotonic() - start < 1.0  # (loop timers may fire a hair early)
        assert ids[0] != ids[1]  # the abandoned connection was not handed out again
        assert closes(tracer) == dict.fromkeys(ids, "error")
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.reused, s.closed, s.idle, s.connect_failures) == (2, 0, 2, 0, 0)
        await eventually(lambda: proxied.bytes_up == 2 * len(b"anyone there?"))
        assert proxied.bytes_down == 0

        proxied.passthrough()
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"back") == b"back"
        assert check_quiet(pool).endpoints[ep].idle == 1
    await fds_back_to(base)


async def test_accept_and_close_fails_the_first_request_of_a_plaintext_connection(
    proxied: FaultProxy,
) -> None:
    """Plain TCP: the kernel completes the connect before the server even
    accepts, so the dial succeeds (no ConnectError, no retry) and the first
    exchange is what fails; the connection is then closed, not pooled."""
    ep = endpoint_of(proxied)
    tracer = conpool.Tracer()
    proxied.set_mode("accept_close")
    config = conpool.Config(connect_retries=3, retry_backoff=0.01)
    async with conpool.Pool(config, tracer=tracer) as pool:
        with pytest.raises(STREAM_ERRORS):
            async with pool.connection(ep) as conn:
                failed = conn.id
                await echo(conn, b"hello?")
        assert closes(tracer) == {failed: "error"}
        assert not [e for e in tracer.events() if e.kind in ("connect.retry", "connect.failed")]
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.closed, s.connect_failures) == (1, 1, 0)
    await eventually(lambda: proxied.refused == 1)
    assert proxied.accepted == 1


# --------------------------------------------------------------------------
# Hostile TLS peers: a clear ConnectError within the timeouts, nothing leaks


@contextlib.contextmanager
def hostile_tls_peer(mode: str) -> Iterator[tuple[str, int]]:
    """A peer at ``(host, port)`` that does not complete a TLS handshake."""
    if mode == "garbage":
        with MisbehavingServer("garbage") as server:
            yield server.host, server.port
        return
    with TLSEchoServer() as tls_server, FaultProxy(tls_server.address) as proxy:
        proxy.set_mode("accept_close" if mode == "accept-close" else "blackhole")
        yield proxy.address
    assert proxy.errors == []


@pytest.mark.parametrize(
    ("mode", "attempts", "first_line"),
    [
        # Not TLS at all: an SSLError, which no retry can fix.
        ("garbage", 1, "TLS error: wrong version number"),
        # Closed during the handshake: retried, as a flaky server may recover.
        ("accept-close", 3, ""),
        # Accepted and silent: every attempt waits out connect_timeout.
        ("never-answers", 3, "TLS handshake timed out after 0.15 s"),
    ],
)
async def test_hostile_tls_peer_gives_a_clear_connect_error(
    mode: str, attempts: int, first_line: str
) -> None:
    base = await fd_baseline()
    timeout, retries = 0.15, 2
    with hostile_tls_peer(mode) as (host, port):
        tls = conpool.TLS(ssl.create_default_context(), server_name="localhost")
        ep = conpool.Endpoint(host, port, tls=tls)
        config = conpool.Config(
            connect_timeout=timeout, connect_retries=retries, retry_backoff=0.01
        )
        tracer = conpool.Tracer()
        async with conpool.Pool(config, tracer=tracer) as pool:
            for _ in range(3):  # the same story each time, and nothing piles up
                start = time.monotonic()
                with pytest.raises(conpool.ConnectError) as info:
                    await pool.acquire(ep)
                elapsed = time.monotonic() - start
                # Bounded by the timeouts: every attempt plus the worst backoff.
                assert elapsed < attempts * timeout + retries * 0.04 + 0.5, elapsed
                exc = info.value
                assert exc.attempts == attempts and len(exc.errors) == attempts
                assert all(isinstance(e, OSError) for e in exc.errors), exc.errors
                text, *context = str(exc).split("\n")
                if mode == "garbage":
                    # Either the TLS layer read the garbage as a record, or
                    # (asyncio/uvloop) it arrived before our hello.
                    assert "wrong version number" in text.lower().replace("_", " ") or (
                        "bytes before the tls handshake" in text.lower()
                    ), text
                    assert text.startswith("TLS error: "), text
                else:
                    assert first_line.lower() in text.lower().replace("_", " "), text
                if mode == "accept-close":
                    assert "reset" in text.lower() or "closed" in text.lower(), text
                assert context[:2] == [
                    f"  connecting to tcp:{host}:{port}",
                    f"  connecting to {ep}",
                ]
                s = check_quiet(pool).endpoints[ep]
                assert (s.created, s.active, s.idle) == (0, 0, 0)
            assert s.connect_failures == 3
            failed = [e for e in tracer.events() if e.kind == "connect.failed"]
            assert len(failed) == 3 * attempts
            assert all(e.kind != "connect.complete" for e in tracer.events())
    await fds_back_to(base)


# --------------------------------------------------------------------------
# A server restarted mid-run


async def test_server_restarted_mid_run() -> None:
    old = EchoServer()
    old.start()
    port = old.port
    new: EchoServer | None = None
    ep = conpool.Endpoint(LOOPBACK, port)
    tracer = conpool.Tracer()
    config = conpool.Config(connect_retries=3, retry_backoff=0.02)
    # (start, end, conn id or 0, local port or 0, error or None)
    log: list[tuple[float, float, int, int, BaseException | None]] = []
    marks: dict[str, float] = {}
    try:
        base = await fd_baseline()
        async with conpool.Pool(config, tracer=tracer) as pool:

            async def worker(deadline: float) -> None:
                while time.monotonic() < deadline:
                    start = time.monotonic()
                    cid = lport = 0
                    try:
                        async with pool.connection(ep) as conn:
                            cid = conn.id
                            lport = conn.extra(SocketAttribute.local_port)
                            assert await echo(conn, b"ping %d" % cid) == b"ping %d" % cid
                    except (conpool.ConnectError, *STREAM_ERRORS) as exc:
                        log.append((start, time.monotonic(), cid, lport, exc))
                    else:
                        log.append((start, time.monotonic(), cid, lport, None))

            async with anyio.create_task_group() as tg:
                deadline = time.monotonic() + 0.9
                for _ in range(8):
                    tg.start_soon(worker, deadline)
                await anyio.sleep(0.3)
                marks["stop"] = time.monotonic()
                stop_ns = time.monotonic_ns()
                await anyio.to_thread.run_sync(old.stop)
                new = EchoServer(port=port)
                await anyio.to_thread.run_sync(new.start)
                marks["restarted"] = time.monotonic()
                restarted_ns = time.monotonic_ns()
            events = tracer.events()
            check_quiet(pool)
        await fds_back_to(base)
    finally:
        old.stop()
        if new is not None:
            new.stop()
    assert new is not None
    stop, restarted = marks["stop"], marks["restarted"]
    failures = [entry for entry in log if entry[4] is not None]
    after = [entry for entry in log if entry[0] >= restarted]
    assert len(after) > 50 and sum(1 for e in log if e[1] < stop) > 50, len(log)
    # Only requests in flight while the server was down failed...
    for start, end, _cid, _lport, exc in failures:
        assert start < restarted and end > stop, (start - stop, end - stop, repr(exc))
    assert len(failures) <= 8 + 8 * (1 + config.connect_retries), failures
    # ...and every later one succeeded, on a connection to the new server.
    assert all(exc is None for *_, exc in after), [e for e in after if e[4] is not None]
    new_peers = set(new.peer_ports)
    assert {lport for _s, _e, _c, lport, _x in after} <= new_peers
    # The old server's connections: none handed out after the restart, and
    # each closed as stale (seen closed while idle) or broken (in flight).
    old_ids = {e.conn_id for e in events if e.kind == "connect.complete" and e.ts_ns < stop_ns}
    assert 1 <= len(old_ids) <= 8
    late_reuse = [e for e in events if e.kind == "conn.reuse" and e.ts_ns >= restarted_ns]
    assert not [e for e in late_reuse if e.conn_id in old_ids]
    reasons = {e.conn_id: e.detail for e in events if e.kind == "conn.close"}
    assert {reasons.get(i) for i in old_ids} <= {"stale", "error"}, reasons


# --------------------------------------------------------------------------
# DNS: answers that change, servers that are slow or gone


def dns_resolver(
    host: str, port: int, *, timeout: float = 2.0, min_ttl: float = 1.0, max_ttl: float = 300.0
) -> conpool.DNSResolver:
    return conpool.DNSResolver([(host, port)], timeout=timeout, min_ttl=min_ttl, max_ttl=max_ttl)


@contextlib.contextmanager
def echo_servers(addresses: Sequence[str]) -> Iterator[list[EchoServer]]:
    """One :class:`EchoServer` per address, all on the same port."""
    port = unused_port(addresses[0], extra_hosts=addresses[1:])
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(EchoServer(ip, port)) for ip in addresses]


@pytest.mark.realserver
async def test_answer_flipping_under_load_is_invisible(dnsmasq: DnsmasqServer) -> None:
    first, second = list(POOL_ADDRESSES[:2]), list(POOL_ADDRESSES[2:])
    await anyio.to_thread.run_sync(dnsmasq.set_records, {"pool.test": first})
    with echo_servers(POOL_ADDRESSES) as servers:
        ep = conpool.Endpoint("pool.test", servers[0].port)
        # dnsmasq's 1 s TTL clamped to 0.2 s, and a sweeper that looks often.
        resolver = dns_resolver(dnsmasq.host, dnsmasq.port, min_ttl=0.1, max_ttl=0.2)
        config = conpool.Config(sweep_interval=0.05)
        tracer = conpool.Tracer()
        errors: list[BaseException] = []
        done = 0
        stop = anyio.Event()
        async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:

            async def worker() -> None:
                nonlocal done
                while not stop.is_set():
                    try:
                        async with pool.connection(ep) as conn:
                            assert await echo(conn, b"flip") == b"flip"
                            await anyio.sleep(0.002)
                    except Exception as exc:  # any failure is a user-visible error
                        errors.append(exc)
                    done += 1

            def on(addresses: list[str]) -> bool:
                s = pool.stats().endpoints.get(ep)
                if s is None:
                    return False
                open_on = {ip for ip, a in s.addresses.items() if a.active or a.idle}
                listed = {ip for ip, a in s.addresses.items() if a.listed}
                return listed == set(addresses) and open_on == set(addresses)

            def settled(addresses: list[str]) -> Callable[[], bool]:
                return lambda: on(addresses)

            def past(goal: int) -> Callable[[], bool]:
                return lambda: done > goal

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(worker)
                await eventually(lambda: on(first), 3.0, what="connections on the first set")
                for flip, target in enumerate([second, first, second]):
                    before = done
                    await anyio.to_thread.run_sync(dnsmasq.set_records, {"pool.test": target})
                    await eventually(settled(target), 3.0, what=f"flip {flip} to {target}")
                    await eventually(past(before + 50), 3.0, what="load goes on")
                stop.set()
            # (check_quiet does not apply: drained addresses leave the stats.)
            s = pool.stats().endpoints[ep]
            assert (s.active, s.pending, s.waiting) == (0, 0, 0), s
            assert s.created - s.closed == s.idle == sum(a.idle for a in s.addresses.values())
            reasons = {e.detail for e in tracer.events() if e.kind == "conn.close"}
        assert errors == []
        assert reasons <= {"drained"}, reasons
        assert s.closed >= 3  # every flip drained the connections of the old set
        # Every server took connections: the first set twice, the second set twice.
        assert all(server.accepted > 0 for server in servers), servers
        assert all(server.errors == [] for server in servers)


class SlowDNSServer:
    """A UDP DNS server on loopback answering A queries from *table* after
    :attr:`delay` seconds (``None``: never).  AAAA queries get an empty answer;
    unknown names get NXDOMAIN.  :attr:`queries` counts what arrived."""

    def __init__(self, table: Mapping[str, Sequence[str]], delay: float | None = 0.0) -> None:
        self.table = {name.rstrip(".") + ".": list(ips) for name, ips in table.items()}
        self.delay = delay
        self.queries = 0
        self.host = LOOPBACK
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, 0))
        self.port: int = self._sock.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-dns", daemon=True)

    def _answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        ips = self.table.get(question.name.to_text().lower())
        if ips is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 1, dns.rdataclass.IN, dns.rdatatype.A, ips)
            )
        return response.to_wire()

    def _run(self) -> None:
        pending: list[tuple[float, bytes, tuple[str, int]]] = []
        while not self._stopping.is_set():
            now = time.monotonic()
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                self._sock.sendto(item[1], item[2])
            timeout = min([0.02, *(max(0.0, p[0] - now) for p in pending)])
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                continue
            wire, peer = self._sock.recvfrom(4096)
            self.queries += 1
            delay = self.delay
            if delay is not None:
                pending.append((time.monotonic() + delay, self._answer(wire), peer))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._sock.close()


@pytest.mark.parametrize("delay", [1.0, None], ids=["slow", "silent"])
async def test_slow_dns_server_is_a_resolve_error_within_the_timeout(
    echo_server: EchoServer, delay: float | None
) -> None:
    base = await fd_baseline()
    with SlowDNSServer({"slow.test": [LOOPBACK]}, delay=delay) as dns_server:
        timeout = 0.3
        resolver = dns_resolver(dns_server.host, dns_server.port, timeout=timeout)
        ep = conpool.Endpoint("slow.test", echo_server.port)
        tracer = conpool.Tracer()
        async with conpool.Pool(resolver=resolver, tracer=tracer) as pool:
            outcomes: list[BaseException | None] = [None] * 4

            async def acquire(i: int) -> None:
                try:
                    async with pool.connection(ep):
                        pass
                except conpool.PoolError as exc:
                    outcomes[i] = exc

            start = time.monotonic()
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(acquire, i)
            elapsed = time.monotonic() - start
            assert timeout - 0.01 <= elapsed < timeout + 0.5, elapsed
            # Four acquires, one shared lookup, one error each.
            assert all(isinstance(o, conpool.ResolveError) for o in outcomes), outcomes
            exc = outcomes[0]
            assert isinstance(exc, conpool.ResolveError)
            text, *context = str(exc).split("\n")
            assert "timed out" in text.lower(), text
            assert context == ["  resolving slow.test", f"  connecting to {ep}"]
            kinds = [e.kind for e in tracer.events() if e.kind.startswith("resolve.")]
            # One lookup, traced once; the three acquires that shared it say so.
            assert kinds == ["resolve.started"] + ["resolve.joined"] * 3 + ["resolve.failed"]
            assert dns_server.queries <= 4  # one shared lookup: A and AAAA (maybe retried)
            check_quiet(pool)

            # The server speeds up: the next acquire asks again and succeeds.
            dns_server.delay = 0.0
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"resolved") == b"resolved"
            s = check_quiet(pool).endpoints[ep]
            assert (s.created, s.connect_failures) == (1, 4)
    await fds_back_to(base)


@pytest.mark.realserver
async def test_stopped_dns_server_is_a_resolve_error_within_the_timeout(
    dnsmasq: DnsmasqServer,
) -> None:
    await anyio.to_thread.run_sync(dnsmasq.set_records, {"pool.test": [POOL_ADDRESSES[0]]})
    with echo_servers([POOL_ADDRESSES[0]]) as (server,):
        ep = conpool.Endpoint("pool.test", server.port)
        resolver = dns_resolver(dnsmasq.host, dnsmasq.port, timeout=0.3)
        base = await fd_baseline()
        async with conpool.Pool(resolver=resolver) as pool:
            await anyio.to_thread.run_sync(dnsmasq.stop)
            start = time.monotonic()
            with pytest.raises(conpool.ResolveError) as info:
                await pool.acquire(ep)
            assert time.monotonic() - start < 0.3 + 0.5
            text, *context = str(info.value).split("\n")
            assert text.strip(), "an empty reason"
            assert context == ["  resolving pool.test", f"  connecting to {ep}"]
            check_quiet(pool)
            # Back up: the name resolves again, with no trace of the outage.
            await anyio.to_thread.run_sync(dnsmasq.start)
            async with pool.connection(ep) as conn:
                assert conn.address[0] in POOL_ADDRESSES
                assert await echo(conn, b"up") == b"up"
            check_quiet(pool)
        await fds_back_to(base)
