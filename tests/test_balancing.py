"""Name-based load balancing against real servers.

dnsmasq answers ``pool.test`` with 127.0.0.11-14 (TTL 1 s) and the pool asks it
through :class:`conpool.DNSResolver`; nginx listens on those four addresses and
logs, for every request, the address it arrived on and nginx's own connection
number.  Shares are counted from that log, not only from the pool's statistics.

Addresses where nothing listens (127.0.0.15 and up, on nginx's port) stand in
for a server that refuses connections; a listening socket whose accept queue is
full stands in for one that never answers (Happy Eyeballs).  Faults that need
iptables are in ``test_faults_root.py``.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

import conpool
from helpers_pool import check_consistent, echo, eventually, fd_count, fds_back_to
from servers import POOL_ADDRESSES, DnsmasqServer, EchoServer, NginxServer, unused_port

pytestmark = pytest.mark.anyio

REFUSING = "127.0.0.15"  # nothing listens there: every connect is refused


def dns_resolver(server: DnsmasqServer, timeout: float = 2.0) -> conpool.DNSResolver:
    return conpool.DNSResolver([(server.host, server.port)], timeout=timeout)


async def exchange(conn: conpool.Connection) -> bytes:
    """One HTTP/1.1 keep-alive GET over *conn*; returns the body.

    nginx answers ``ok\\n`` with a Content-Length, so the response ends after
    exactly that many body bytes and the connection stays reusable.
    """
    await conn.send(b"GET / HTTP/1.1\r\nHost: pool.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += await conn.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *headers = head.decode("latin-1").split("\r\n")
    assert status.startswith("HTTP/1.1 200 "), status
    length = next(int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length:"))
    while len(body) < length:
        body += await conn.receive()
    assert len(body) == length
    return body


async def get(pool: conpool.Pool, endpoint: conpool.Endpoint) -> bytes:
    async with pool.connection(endpoint) as conn:
        return await exchange(conn)


def kinds(tracer: conpool.Tracer, *prefixes: str) -> list[tuple[str, str, str]]:
    """``(kind, address, detail)`` of the traced events whose kind starts with a prefix."""
    return [(e.kind, e.address, e.detail) for e in tracer.events() if e.kind.startswith(prefixes)]


@contextlib.asynccontextmanager
async def holding(
    pool: conpool.Pool, endpoint: conpool.Endpoint, n: int
) -> AsyncIterator[list[conpool.Connection]]:
    """Hold *n* connections for the block; release them on the way out."""
    conns: list[conpool.Connection] = []
    try:
        for _ in range(n):
            # One at a time, so that those acquired before a failure are released.
            conns.append(await pool.acquire(endpoint))  # noqa: PERF401
        yield conns
    finally:
        for conn in conns:
            await pool.release(conn)


def ejected(pool: conpool.Pool, endpoint: conpool.Endpoint) -> set[str]:
    """The addresses of *endpoint* ejected now, by the pool's statistics."""
    stats = pool.stats().endpoints.get(endpoint)
    if stats is None:
        return set()
    return {ip for ip, a in stats.addresses.items() if a.ejected}


# --------------------------------------------------------------------------
# Spreading load


@pytest.mark.realserver
@pytest.mark.parametrize("policy", ["least-connections", "round-robin", "power-of-two"])
async def test_four_addresses_share_connections_and_requests(
    nginx4: NginxServer, dnsmasq: DnsmasqServer, policy: str
) -> None:
    """400 requests from 64 tasks, at most 32 connections: each address gets
    25 % +- 5 % of the connections and of the requests, by nginx's count."""
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    config = conpool.Config(max_connections_per_endpoint=32, balance=policy, balance_seed=1)
    todo = iter(range(400))  # shared: each task takes the next request
    bodies: list[bytes] = []

    async def client(pool: conpool.Pool) -> None:
        for _ in todo:
            body = await get(pool, endpoint)
            bodies.append(body)

    async with conpool.Pool(config, resolver=dns_resolver(dnsmasq)) as pool:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(64):
                    tg.start_soon(client, pool)
        stats = check_consistent(pool).endpoints[endpoint]
    assert bodies == [b"ok\n"] * 400

    lines = nginx4.wait_for_log(400)
    assert len(lines) == 400
    requests = Counter(line.server_addr for line in lines)
    connections = Counter(addr for addr, _conn in {(line.server_addr, line.conn) for line in lines})
    total = sum(connections.values())
    shares = {
        ip: (round(connections[ip] / total, 3), round(requests[ip] / 400, 3))
        for ip in POOL_ADDRESSES
    }
    print(f"{policy}: {total} connections; (connection share, request share): {shares}")
    assert set(requests) == set(POOL_ADDRESSES), requests
    for ip in POOL_ADDRESSES:
        assert 0.20 <= connections[ip] / total <= 0.30, (policy, shares)
        assert 0.20 <= requests[ip] / 400 <= 0.30, (policy, shares)
    # Every slot was used, never more; the pool's own per-address books agree with nginx.
    assert total == stats.created == 32
    assert {ip: a.created for ip, a in stats.addresses.items()} == dict(connections)
    assert stats.created + stats.reused == 400
    assert all(a.failures == 0 and not a.ejected for a in stats.addresses.values())


@pytest.mark.realserver
@pytest.mark.parametrize("in_flight", [1, 2])
async def test_requests_take_turns_over_idle_connections_when_few_are_in_flight(
    nginx4: NginxServer, dnsmasq: DnsmasqServer, in_flight: int
) -> None:
    """One warm connection per address, then 80 requests with only one or
    two in flight: every address serves a quarter of them, by nginx's count.
    (Every address is then equally busy; reuse once broke that tie the same
    way each time, and two of the four addresses served every request.)"""
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    async with conpool.Pool(resolver=dns_resolver(dnsmasq)) as pool:
        async with holding(pool, endpoint, 4) as conns:  # one per address
            assert sorted(conn.address[0] for conn in conns) == list(POOL_ADDRESSES)
            for conn in conns:
                assert await exchange(conn) == b"ok\n"
        todo = iter(range(80))

        async def client() -> None:
            for _ in todo:
                assert await get(pool, endpoint) == b"ok\n"

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(in_flight):
                    tg.start_soon(client)
        stats = check_consistent(pool).endpoints[endpoint]
    assert (stats.created, stats.reused) == (4, 80)
    lines = nginx4.wait_for_log(84)
    served = Counter(line.server_addr for line in lines[4:])
    assert sum(served.values()) == 80
    assert all(abs(served[ip] - 20) <= 2 * in_flight for ip in POOL_ADDRESSES), served


@pytest.mark.realserver
async def test_power_of_two_is_reproducible_with_a_seed(nginx4: NginxServer) -> None:
    resolver = conpool.StaticResolver({"pool.test": list(POOL_ADDRESSES)})
    endpoint = conpool.Endpoint("pool.test", nginx4.port)

    async def choices(seed: int) -> list[str]:
        config = conpool.Config(balance="power-of-two", balance_seed=seed)
        async with conpool.Pool(config, resolver=resolver) as pool:
            async with holding(pool, endpoint, 10) as conns:
                return [conn.address[0] for conn in conns]

    first = await choices(7)
    assert first == await choices(7)  # the same seed, the same sequence of addresses
    assert set(first) == set(POOL_ADDRESSES)
    assert [await choices(seed) for seed in range(3)] != [first] * 3


@pytest.mark.realserver
async def test_idle_connections_are_reused_before_dialling_least_loaded_first(
    nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    async with conpool.Pool(resolver=dns_resolver(dnsmasq)) as pool:
        # Eight connections, two per address (least-connections rotates over the ties).
        conns = [await pool.acquire(endpoint) for _ in range(8)]
        by_ip: dict[str, list[conpool.Connection]] = {}
        for conn in conns:
            assert await exchange(conn) == b"ok\n"
            by_ip.setdefault(conn.address[0], []).append(conn)
        assert sorted(by_ip) == list(POOL_ADDRESSES)
        assert all(len(v) == 2 for v in by_ip.values())
        # Give back both of .11's, one of .12's and one of .13's: .11 now has
        # nothing in use, .12 and .13 one each, .14 two (and nothing idle).
        for conn in [*by_ip["127.0.0.11"], by_ip["127.0.0.12"][0], by_ip["127.0.0.13"][0]]:
            await pool.release(conn)
        first = await pool.acquire(endpoint)
        assert first.address[0] == "127.0.0.11"  # the least loaded address with an idle one
        # The other three idle connections go out before anything is dialled.
        rest = [await pool.acquire(endpoint) for _ in range(3)]
        assert sorted(c.address[0] for c in rest) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
        stats = pool.stats().endpoints[endpoint]
        assert (stats.created, stats.reused, stats.idle) == (8, 4, 0)
        # Only now does an acquire dial, and it goes to an address with the fewest
        # connections: all have two, so any; the count says it was a new one.
        extra = await pool.acquire(endpoint)
        assert extra.id not in {c.id for c in conns}
        assert pool.stats().endpoints[endpoint].created == 9
        for conn in [first, *rest, extra, by_ip["127.0.0.12"][1], by_ip["127.0.0.13"][1]]:
            await pool.release(conn)
        for conn in by_ip["127.0.0.14"]:
            await pool.release(conn)
        stats = check_consistent(pool).endpoints[endpoint]
        assert (stats.active, stats.idle) == (0, 9)


# --------------------------------------------------------------------------
# Re-resolution


@pytest.mark.realserver
async def test_changed_answer_drains_the_old_address_and_feeds_the_new(
    nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    dnsmasq.set_records({"pool.test": ["127.0.0.11", "127.0.0.12", "127.0.0.13"]})
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    tracer = conpool.Tracer()
    # The default sweep: it wakes at least once a second to refresh names.
    config = conpool.Config(max_connections_per_endpoint=6)
    async with conpool.Pool(config, resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
        conns = [await pool.acquire(endpoint) for _ in range(6)]
        assert Counter(c.address[0] for c in conns) == {
            "127.0.0.11": 2,
            "127.0.0.12": 2,
            "127.0.0.13": 2,
        }
        for conn in conns:
            assert await exchange(conn) == b"ok\n"
        held = next(c for c in conns if c.address[0] == "127.0.0.11")
        for conn in conns:
            if conn is not held:
                await pool.release(conn)
        before = nginx4.wait_for_log(6)
        old_conns_11 = {line.conn for line in before if line.server_addr == "127.0.0.11"}
        assert len(old_conns_11) == 2

        # .11 leaves the answer, .14 joins.  Nobody acquires: the sweeper
        # refreshes the name once its 1 s TTL is over.
        changed_at = time.monotonic()
        dnsmasq.set_records({"pool.test": ["127.0.0.12", "127.0.0.13", "127.0.0.14"]})

        def drained() -> bool:
            a = pool.stats().endpoints[endpoint].addresses.get("127.0.0.11")
            return a is not None and not a.listed and a.idle == 0

        await eventually(drained, 5.0, what=".11 drained")
        took = time.monotonic() - changed_at
        stats = pool.stats().endpoints[endpoint]
        # The idle connection to .11 was closed; the one in use was not (yet).
        assert stats.addresses["127.0.0.11"].active == 1
        assert stats.addresses["127.0.0.14"].listed
        assert [d for k, ip, d in kinds(tracer, "conn.close") if ip == "127.0.0.11"] == ["drained"]
        assert took < 3.5, took  # TTL (1 s) + at most a second to the next sweep + lookup
        # The connection in use still works, and is closed when released.
        assert await exchange(held) == b"ok\n"
        await pool.release(held)
        assert "127.0.0.11" not in pool.stats().endpoints[endpoint].addresses
        assert [d for k, ip, d in kinds(tracer, "conn.close") if ip == "127.0.0.11"] == [
            "drained",
            "drained",
        ]

        # Six at once: the four idle ones (.12, .13) are reused, and the two new
        # connections go to .14 at once: it has the fewest.
        conns = [await pool.acquire(endpoint) for _ in range(6)]
        assert Counter(c.address[0] for c in conns) == {
            "127.0.0.12": 2,
            "127.0.0.13": 2,
            "127.0.0.14": 2,
        }
        for conn in conns:
            assert await exchange(conn) == b"ok\n"
            await pool.release(conn)
        stats = pool.stats().endpoints[endpoint]
        assert (stats.created, stats.closed, stats.idle, stats.active) == (8, 2, 6, 0)
        assert sorted(stats.addresses) == ["127.0.0.12", "127.0.0.13", "127.0.0.14"]
        assert all(a.idle == 2 and a.listed for a in stats.addresses.values())
    lines = nginx4.wait_for_log(13)
    after = lines[len(before) :]
    # From nginx's side: after the change .11 saw only the held connection's
    # request, on a connection it already knew; .14 got two new connections.
    assert [line.server_addr for line in after].count("127.0.0.11") == 1
    assert {line.conn for line in after if line.server_addr == "127.0.0.11"} <= old_conns_11
    assert len({line.conn for line in after if line.server_addr == "127.0.0.14"}) == 2


@pytest.mark.realserver
async def test_every_endpoint_of_a_changed_name_is_drained(
    nginx4: NginxServer, dnsmasq: DnsmasqServer, tmp_path: Path
) -> None:
    # Two endpoints share the name pool.test (two ports: two pool keys, one
    # DNS answer).  When .11 leaves the answer, the idle connections of both
    # are closed, though nobody dials.
    with NginxServer(tmp_path / "second", addresses=POOL_ADDRESSES) as second:
        endpoints = [
            conpool.Endpoint("pool.test", nginx4.port),
            conpool.Endpoint("pool.test", second.port),
        ]
        config = conpool.Config(sweep_interval=0.1)
        async with conpool.Pool(config, resolver=dns_resolver(dnsmasq)) as pool:
            for endpoint in endpoints:
                async with holding(pool, endpoint, 4) as conns:
                    assert sorted(c.address[0] for c in conns) == list(POOL_ADDRESSES)
            dnsmasq.set_records({"pool.test": POOL_ADDRESSES[1:]})

            def drained() -> bool:
                stats = pool.stats().endpoints
                return all("127.0.0.11" not in stats[ep].addresses for ep in endpoints)

            # The TTL is 1 s and the sweeper looks every 0.1 s: 3 s is plenty.
            with anyio.move_on_after(3.0):
                await eventually(drained, 5.0)
            left = {str(ep): sorted(pool.stats().endpoints[ep].addresses) for ep in endpoints}
            assert all(ips == list(POOL_ADDRESSES[1:]) for ips in left.values()), left
            for endpoint in endpoints:
                stats = pool.stats().endpoints[endpoint]
                assert (stats.idle, stats.closed) == (3, 1), (endpoint, stats)


@pytest.mark.realserver
async def test_dns_outage_keeps_serving_the_last_good_answer(
    nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    tracer = conpool.Tracer()
    config = conpool.Config(dns_stale_limit=1.0, sweep_interval=0.1)
    async with conpool.Pool(config, resolver=dns_resolver(dnsmasq, 0.3), tracer=tracer) as pool:
        # One connection stays in use throughout; every other request dials.
        kept = await pool.acquire(endpoint)
        assert await exchange(kept) == b"ok\n"
        dnsmasq.stop()
        stopped = time.monotonic()

        async def fresh_request() -> bytes:
            # A connection closed after use: the next request dials, and so
            # looks the name up again whenever its answer expired.
            async with pool.connection(endpoint) as conn:
                body = await exchange(conn)
                await conn.aclose()
            return body

        # Past the TTL, within the stale limit: requests keep working on the old answer.
        served = 0
        while time.monotonic() - stopped < 1.3:
            assert await fresh_request() == b"ok\n"
            served += 1
            await anyio.sleep(0.02)
        stats = pool.stats().endpoints[endpoint]
        assert stats.stale
        assert stats.connect_failures == 0
        assert sorted(stats.addresses) == list(POOL_ADDRESSES)
        assert stats.created == served + 1
        events = kinds(tracer, "resolve.failed", "resolve.stale")
        assert [k for k, _ip, _d in events[:2]] == ["resolve.failed", "resolve.stale"]
        assert events[0][2]  # the resolver's reason
        assert sorted(events[1][2].split()) == list(POOL_ADDRESSES)

        # Past the stale limit a dial fails with the resolver's reason...
        with anyio.fail_after(5):
            while True:
                try:
                    await fresh_request()
                except conpool.ResolveError as exc:
                    error = exc
                    break
                await anyio.sleep(0.05)
        assert error.context == ("resolving pool.test", f"connecting to pool.test:{nginx4.port}")
        # ... while the connection already open still serves.
        assert await exchange(kept) == b"ok\n"
        await pool.release(kept)
        assert await get(pool, endpoint) == b"ok\n"

        # DNS is back: the next dial resolves afresh and the name is no longer
        # stale.  (The first request reuses the idle connection; the second dials.)
        dnsmasq.start()
        # A lookup the sweeper began while DNS was down ends within its 0.3 s
        # timeout (on trio an unanswered UDP query waits it out).
        await anyio.sleep(0.4)
        created = pool.stats().endpoints[endpoint].created
        assert await fresh_request() == b"ok\n"
        assert await fresh_request() == b"ok\n"
        stats = pool.stats().endpoints[endpoint]
        assert stats.created == created + 1
        assert not stats.stale
    assert kinds(tracer, "resolve.complete")[-1][0] == "resolve.complete"


# --------------------------------------------------------------------------
# Failures: retry elsewhere, eject, re-admit


@pytest.mark.realserver
async def test_refusing_address_is_ejected_and_readmitted(
    nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    """One of five addresses refuses: no request fails, the address is ejected,
    comes back after its time, fails again and is ejected for twice as long."""
    dnsmasq.set_records({"pool.test": [*POOL_ADDRESSES, REFUSING]})
    endpoint = conpool.Endpoint("pool.test", nginx4.port)
    tracer = conpool.Tracer()
    config = conpool.Config(
        max_connections_per_endpoint=20,
        eject_after_failures=2,
        eject_time=0.4,
        eject_time_max=10.0,
        connect_retries=2,
        retry_backoff=0.01,
    )
    bodies: list[bytes] = []
    todo = iter(range(200))

    async def client(pool: conpool.Pool) -> None:
        for _ in todo:
            body = await get(pool, endpoint)
            bodies.append(body)

    async with conpool.Pool(config, resolver=dns_resolver(dnsmasq), tracer=tracer) as pool:
        with anyio.fail_after(10):
            # All 16 dial at once, spread over five addresses: a few land on the
            # refusing one, fail and retry elsewhere.
            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(client, pool)
        assert bodies == [b"ok\n"] * 200
        stats = check_consistent(pool).endpoints[endpoint]
        bad = stats.addresses[REFUSING]
        assert bad.ejected and bad.created == 0 and bad.failures >= 2
        assert stats.connect_failures == 0
        assert ejected(pool, endpoint) == {REFUSING}
        assert stats.created == 16 and stats.idle == 16
        assert [(k, ip) for k, ip, _ in kinds(tracer, "address.")] == [("address.eject", REFUSING)]
        assert kinds(tracer, "address.eject")[0][2] == "2 consecutive failures; out for 0.4 s"
        failures = bad.failures

        # Hold the 16 idle connections, so that every acquire below dials
        # (within the limit of 20).
        async with holding(pool, endpoint, 16):
            assert pool.stats().endpoints[endpoint].created == 16

            # While ejected it is never tried, though it holds the fewest connections.
            for _ in range(5):
                async with pool.connection(endpoint) as conn:
                    assert conn.address[0] != REFUSING
                    await conn.aclose()
            assert pool.stats().endpoints[endpoint].addresses[REFUSING].failures == failures

            # After its time it is back in rotation: the next dial tries it
            # first again (it holds the fewest connections) and fails over at
            # once.  A failure or two later (those of attempts that were in
            # flight when it was ejected count too) it is out again, for twice
            # as long.
            await eventually(lambda: not ejected(pool, endpoint), 2.0, what="re-admitted")
            for _ in range(2):
                async with pool.connection(endpoint) as conn:
                    assert await exchange(conn) == b"ok\n"
                    assert conn.address[0] != REFUSING
                    await conn.aclose()
                if ejected(pool, endpoint):
                    break
            stats = pool.stats().endpoints[endpoint]
            assert failures < stats.addresses[REFUSING].failures <= failures + 2
            assert ejected(pool, endpoint) == {REFUSING}
            assert stats.connect_failures == 0
            requests = 200 + (stats.addresses[REFUSING].failures - failures)
    assert [(k, ip, d) for k, ip, d in kinds(tracer, "address.")][1:] == [
        ("address.readmit", REFUSING, "ejection time over"),
        ("address.eject", REFUSING, "2 consecutive failures; out for 0.8 s"),
    ]
    # Every address nginx serves got requests, and they all arrived.
    lines = nginx4.wait_for_log(requests)
    assert len(lines) == requests
    assert {line.server_addr for line in lines} == set(POOL_ADDRESSES)


async def test_a_failed_attempt_moves_the_retry_to_another_address(
    echo_server: EchoServer,
) -> None:
    # Two addresses, one refusing, a single retry and no ejection: every acquire
    # succeeds only if each retry goes to the address not yet tried.
    resolver = conpool.StaticResolver({"two.test": [REFUSING, "127.0.0.1"]})
    endpoint = conpool.Endpoint("two.test", echo_server.port)
    tracer = conpool.Tracer()
    for policy in ("least-connections", "round-robin", "power-of-two"):
        config = conpool.Config(
            connect_retries=1,
            retry_backoff=0.0,
            eject_after_failures=1000,
            balance=policy,
            balance_seed=3,
        )
        async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
            for _ in range(12):
                async with pool.connection(endpoint) as conn:
                    assert conn.address == ("127.0.0.1", echo_server.port)
                    await conn.aclose()
            stats = pool.stats().endpoints[endpoint]
        assert stats.connect_failures == 0, policy
        assert stats.addresses["127.0.0.1"].created == 12
        assert stats.addresses[REFUSING].failures >= 1, policy  # it was tried
    # In the trace, every failed attempt is followed by one to the other address.
    attempts = [(k, ip) for k, ip, _ in kinds(tracer, "connect.started", "connect.failed")]
    for i, (kind, ip) in enumerate(attempts):
        if kind == "connect.failed":
            assert ip == REFUSING
            assert attempts[i + 1] == ("connect.started", "127.0.0.1")


async def test_never_more_than_max_ejected_share(nginx4: NginxServer) -> None:
    # One good address, three refusing; at most half of the four may be out.
    bad = ["127.0.0.15", "127.0.0.16", "127.0.0.17"]
    resolver = conpool.StaticResolver({"mostly-bad.test": ["127.0.0.11", *bad]})
    endpoint = conpool.Endpoint("mostly-bad.test", nginx4.port)
    tracer = conpool.Tracer()
    config = conpool.Config(
        eject_after_failures=1,
        eject_time=30.0,
        max_ejected_share=0.5,
        connect_retries=3,
        retry_backoff=0.0,
    )
    async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
        most = 0
        for _ in range(12):
            async with pool.connection(endpoint) as conn:
                assert await exchange(conn) == b"ok\n"
                await conn.aclose()
            out = ejected(pool, endpoint)
            most = max(most, len(out))
            assert out <= set(bad)
        assert most == 2
        stats = pool.stats().endpoints[endpoint]
        assert stats.connect_failures == 0
        (kept,) = set(bad) - ejected(pool, endpoint)
        # The third failing address stays in rotation and keeps being tried.
        assert stats.addresses[kept].failures > 1
    assert len(kinds(tracer, "address.eject")) == 2


async def test_all_addresses_bad_fails_open() -> None:
    # Every address refuses and may be ejected: the pool still tries them
    # (fail open) instead of claiming the name has no address.
    port = unused_port("127.0.0.15", extra_hosts=["127.0.0.16"])
    resolver = conpool.StaticResolver({"dead.test": ["127.0.0.15", "127.0.0.16"]})
    endpoint = conpool.Endpoint("dead.test", port)
    config = conpool.Config(
        eject_after_failures=1, eject_time=30.0, max_ejected_share=1.0, connect_retries=1,
        retry_backoff=0.0,
    )  # fmt: skip
    async with conpool.Pool(config, resolver=resolver) as pool:
        for round_no in range(3):
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(endpoint)
            exc = info.value
            assert not isinstance(exc, conpool.ResolveError)
            assert exc.attempts == 2, round_no
            assert {e.errno for e in exc.errors if isinstance(e, OSError)} == {errno.ECONNREFUSED}
            assert ejected(pool, endpoint) == {"127.0.0.15", "127.0.0.16"}
        stats = pool.stats().endpoints[endpoint]
    assert stats.connect_failures == 3
    assert {ip: a.failures for ip, a in stats.addresses.items()} == {
        "127.0.0.15": 3,
        "127.0.0.16": 3,
    }


async def test_a_success_readmits_an_ejected_address() -> None:
    # A single address that refuses, then accepts: ejected after its failure,
    # dialled anyway (fail open), and the success brings it back at once.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = listener.getsockname()[1]
        resolver = conpool.StaticResolver({"flaky.test": ["127.0.0.1"]})
        endpoint = conpool.Endpoint("flaky.test", port)
        tracer = conpool.Tracer()
        config = conpool.Config(
            eject_after_failures=1,
            eject_time=60.0,
            eject_time_max=60.0,
            max_ejected_share=1.0,
            connect_retries=0,
        )
        async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
            with pytest.raises(conpool.ConnectError):
                await pool.acquire(endpoint)
            assert ejected(pool, endpoint) == {"127.0.0.1"}
            listener.listen(8)  # the kernel completes handshakes from now on
            conn = await pool.acquire(endpoint)
            assert conn.address == ("127.0.0.1", port)
            assert ejected(pool, endpoint) == set()
            await pool.release(conn)
            a = pool.stats().endpoints[endpoint].addresses["127.0.0.1"]
            assert (a.created, a.failures, a.ejected) == (1, 1, False)
    finally:
        listener.close()
    assert [(k, d) for k, _ip, d in kinds(tracer, "address.")] == [
        ("address.eject", "1 consecutive failures; out for 60 s"),
        ("address.readmit", "connected"),
    ]


# --------------------------------------------------------------------------
# Happy Eyeballs (RFC 8305)


@contextlib.contextmanager
def black_hole(host: str, port: int) -> Iterator[None]:
    """Connects to ``(host, port)`` hang: a listener that never accepts, its
    accept queue filled, so the kernel drops further SYNs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        listener.bind((host, port))
        listener.listen(0)
        for _ in range(16):
            filler = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            filler.setblocking(False)
            filler.connect_ex((host, port))
            _, writable, _ = select.select([], [filler], [], 0.1)
            if not writable:
                break
        else:
            raise AssertionError(f"connects to {host}:{port} kept completing")
        yield


def dual_stack_port() -> int:
    return unused_port("::1", extra_hosts=["127.0.0.1"])


async def race(
    endpoint: conpool.Endpoint, resolver: conpool.Resolver, works: str, tracer: conpool.Tracer
) -> tuple[float, conpool.EndpointStats]:
    """One acquire through a fresh pool; returns how long it took and the stats."""
    async with conpool.Pool(
        conpool.Config(connect_timeout=5.0), resolver=resolver, tracer=tracer
    ) as pool:
        start = time.monotonic()
        with anyio.fail_after(3):
            conn = await pool.acquire(endpoint)
        took = time.monotonic() - start
        assert conn.address == (works, endpoint.port)
        assert await echo(conn, b"hello") == b"hello"
        await pool.release(conn)
        stats = check_consistent(pool).endpoints[endpoint]
    return took, stats


@pytest.mark.parametrize(
    ("hole", "works"), [("::1", "127.0.0.1"), ("127.0.0.1", "::1")], ids=["v6-hole", "v4-hole"]
)
async def test_happy_eyeballs_races_the_other_family(hole: str, works: str) -> None:
    port = dual_stack_port()
    # The black hole is listed first, so it is the first attempt.
    resolver = conpool.StaticResolver({"dual.test": [hole, works]})
    endpoint = conpool.Endpoint("dual.test", port)
    with EchoServer(works, port) as server, black_hole(hole, port):
        # A first race warms the event loop up (uvloop opens one descriptor
        # of its own the first time a socket it polls is closed); the second
        # must leave no descriptor behind: the loser's socket is closed.
        await race(endpoint, resolver, works, conpool.Tracer())
        await eventually(lambda: server.current == 0, what="server side closed")
        baseline = fd_count()
        tracer = conpool.Tracer()
        took, stats = await race(endpoint, resolver, works, tracer)
        await fds_back_to(baseline)
        assert server.accepted == 2
    # The second attempt started after the 250 ms delay, long before the
    # first attempt's 5 s timeout.
    assert 0.24 <= took < 1.5, took
    loser = stats.addresses[hole]
    # Started first and lost: one failure toward ejecting a black-holed family.
    assert (loser.pending, loser.active, loser.created, loser.failures) == (0, 0, 0, 1)
    assert stats.addresses[works].created == 1 and stats.connect_failures == 0
    assert [(k, ip) for k, ip, _ in kinds(tracer, "connect.")] == [
        ("connect.started", hole),
        ("connect.race", works),
        ("connect.started", works),
        ("connect.cancelled", hole),
        ("connect.complete", works),
    ]
    assert kinds(tracer, "connect.race")[0][2] == f"racing {hole}"


async def test_happy_eyeballs_ejects_a_family_that_keeps_losing() -> None:
    # Each race the black hole starts first and loses counts one failure;
    # after eject_after_failures of them it is ejected, and the next dial
    # goes straight to the working family without waiting out the delay.
    port = dual_stack_port()
    resolver = conpool.StaticResolver({"dual.test": ["::1", "127.0.0.1"]})
    endpoint = conpool.Endpoint("dual.test", port)
    config = conpool.Config(
        eject_after_failures=2,
        eject_time=30.0,
        eject_time_max=30.0,
        connect_timeout=5.0,
        max_connection_uses=1,  # every acquire dials
        balance="round-robin",
    )
    with EchoServer("127.0.0.1", port), black_hole("::1", port):
        async with conpool.Pool(config, resolver=resolver) as pool:
            took = []
            for _ in range(3):
                start = time.monotonic()
                with anyio.fail_after(3):
                    async with pool.connection(endpoint) as conn:
                        assert conn.address[0] == "127.0.0.1"
                took.append(time.monotonic() - start)
            stats = check_consistent(pool).endpoints[endpoint]
    assert stats.addresses["::1"].ejected
    assert stats.addresses["::1"].failures == 2
    assert took[0] >= 0.24 and took[1] >= 0.24, took
    assert took[2] < 0.2, took


async def test_happy_eyeballs_a_refusal_starts_the_other_family_at_once() -> None:
    port = dual_stack_port()  # nothing listens on ::1 there: refused
    resolver = conpool.StaticResolver({"dual.test": ["::1", "127.0.0.1"]})
    endpoint = conpool.Endpoint("dual.test", port)
    tracer = conpool.Tracer()
    with EchoServer("127.0.0.1", port):
        async with conpool.Pool(resolver=resolver, tracer=tracer) as pool:
            start = time.monotonic()
            async with pool.connection(endpoint) as conn:
                took = time.monotonic() - start
                assert conn.address == ("127.0.0.1", port)
            stats = pool.stats().endpoints[endpoint]
    assert took < 0.2, took  # no waiting out the 250 ms delay
    assert stats.addresses["::1"].failures == 1 and stats.connect_failures == 0
    assert [(k, ip) for k, ip, _ in kinds(tracer, "connect.")] == [
        ("connect.started", "::1"),
        ("connect.failed", "::1"),
        ("connect.race", "127.0.0.1"),
        ("connect.started", "127.0.0.1"),
        ("connect.complete", "127.0.0.1"),
    ]
