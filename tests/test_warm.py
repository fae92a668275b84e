"""The warm floor (``Config.min_idle``) and ``pool.prewarm()`` over real
loopback sockets, on every backend: one echo server per address of a name,
so that each connection's address and each server-side close is visible."""

from __future__ import annotations

import itertools
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import conpool
from helpers_pool import check_consistent, echo, eventually, fd_baseline, fds_back_to, fill_backlog
from servers import POOL_ADDRESSES, EchoServer, RedisServer, refused_port, unused_port
from test_proxies import proxy_for

pytestmark = pytest.mark.anyio

NAME = "pool.test"


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    """An echo server on each of 127.0.0.11-14, all on one port."""
    port = unused_port(POOL_ADDRESSES[0], extra_hosts=POOL_ADDRESSES[1:])
    started: list[EchoServer] = []
    try:
        for ip in POOL_ADDRESSES:
            server = EchoServer(ip, port)
            server.start()
            started.append(server)
        yield started
    finally:
        for server in started:
            server.stop()


def resolver(*ips: str) -> conpool.StaticResolver:
    return conpool.StaticResolver({NAME: list(ips or POOL_ADDRESSES)})


def events(tracer: conpool.Tracer, kind: str, detail: str | None = None) -> list[conpool.Event]:
    return [
        e
        for e in tracer.events()
        if e.kind == kind and (detail is None or e.detail.startswith(detail))
    ]


def idle_by_address(pool: conpool.Pool, ep: conpool.Endpoint) -> dict[str, int]:
    return {ip: a.idle for ip, a in pool.stats().endpoints[ep].addresses.items()}


async def test_prewarm_opens_one_idle_connection_per_address(servers: list[EchoServer]) -> None:
    ep = conpool.Endpoint(NAME, servers[0].port)
    config = conpool.Config(min_idle=4)
    async with conpool.Pool(config, resolver=resolver()) as pool:
        assert await pool.prewarm(ep) == 4
        assert idle_by_address(pool, ep) == dict.fromkeys(POOL_ADDRESSES, 1)
        await eventually(lambda: [s.accepted for s in servers] == [1, 1, 1, 1])
        s = check_consistent(pool).endpoints[ep]
        assert (s.idle, s.created, s.floor, s.refills, s.refill_failures) == (4, 4, 4, 0, 0)
        # Already there: nothing more is opened.
        assert await pool.prewarm(ep) == 4
        assert sum(s.accepted for s in servers) == 4
        # They serve requests, first hand-out counted as uses 1.
        async with pool.connection(ep) as conn:
            assert conn.uses == 1
            assert await echo(conn, b"warm") == b"warm"


async def test_prewarm_counts_and_limits(servers: list[EchoServer]) -> None:
    ep = conpool.Endpoint(NAME, servers[0].port)
    config = conpool.Config(max_connections_per_endpoint=3)
    async with conpool.Pool(config, resolver=resolver()) as pool:
        assert await pool.prewarm(ep) == 1  # max(min_idle, 1)
        assert await pool.prewarm(ep, 2) == 2
        assert await pool.prewarm(ep, 10) == 3  # the limit
        assert await pool.prewarm(ep, 0) == 3
        await eventually(lambda: sum(s.accepted for s in servers) == 3, what="3 accepted")
        with pytest.raises(ValueError, match="n must be >= 0"):
            await pool.prewarm(ep, -1)
        with pytest.raises(TypeError, match="n must be an int"):
            await pool.prewarm(ep, 2.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="n must be an int"):
            await pool.prewarm(ep, True)
        with pytest.raises(TypeError, match=r"endpoint must be a conpool\.Endpoint"):
            await pool.prewarm("pool.test:80")  # type: ignore[arg-type]
    with pytest.raises(conpool.PoolClosed):
        await pool.prewarm(ep)


async def test_prewarm_raises_only_if_nothing_opened() -> None:
    port = refused_port("127.0.0.11")
    ep = conpool.Endpoint(NAME, port)
    config = conpool.Config(connect_retries=0)
    async with conpool.Pool(config, resolver=resolver("127.0.0.11")) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.prewarm(ep, 2)
        assert "connecting to tcp:127.0.0.11" in str(info.value)
        s = check_consistent(pool).endpoints[ep]
        assert (s.idle, s.pending, s.connect_failures) == (0, 0, 2)


async def test_prewarm_partial_success_returns_what_is_idle(servers: list[EchoServer]) -> None:
    refused = "127.0.0.15"
    port = servers[0].port
    # Nothing listens on the fifth address's port: refused.
    ep = conpool.Endpoint(NAME, port)
    config = conpool.Config(connect_retries=0, balance="round-robin")
    async with conpool.Pool(config, resolver=resolver(*POOL_ADDRESSES, refused)) as pool:
        assert await pool.prewarm(ep, 5) == 4
        s = check_consistent(pool).endpoints[ep]
        assert s.addresses[refused].failures == 1
        assert (s.idle, s.connect_failures) == (4, 1)


async def test_floor_survives_idle_expiry(servers: list[EchoServer]) -> None:
    ep = conpool.Endpoint(NAME, servers[0].port)
    tracer = conpool.Tracer()
    config = conpool.Config(min_idle=4, max_idle_time=0.2)
    async with conpool.Pool(config, resolver=resolver(), tracer=tracer) as pool:
        assert await pool.prewarm(ep) == 4
        await anyio.sleep(1.0)  # five idle times of no traffic
        assert idle_by_address(pool, ep) == dict.fromkeys(POOL_ADDRESSES, 1)
        assert events(tracer, "conn.close") == []
        assert [s.current for s in servers] == [1, 1, 1, 1]
        assert sum(s.accepted for s in servers) == 4
        # A fifth connection, above the floor, still expires; connections
        # in use count towards the floor, so using them dials nothing more.
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(hold, pool, ep, 0.3)
        assert pool.stats().endpoints[ep].idle == 5
        assert pool.stats().endpoints[ep].created == 5
        await eventually(lambda: pool.stats().endpoints[ep].idle == 4, 3.0, what="back to 4")
        assert [e.detail for e in events(tracer, "conn.close")] == ["idle"]


async def hold(pool: conpool.Pool, ep: conpool.Endpoint, seconds: float) -> None:
    async with pool.connection(ep) as conn:
        await anyio.sleep(seconds)
        assert await echo(conn, b"x") == b"x"


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_floor_is_back_within_a_second_after_the_server_closes_everything(
    servers: list[EchoServer], reset: bool
) -> None:
    ep = conpool.Endpoint(NAME, servers[0].port)
    tracer = conpool.Tracer()
    config = conpool.Config(min_idle=4)
    async with conpool.Pool(config, resolver=resolver(), tracer=tracer) as pool:
        await pool.prewarm(ep)
        await eventually(lambda: [s.current for s in servers] == [1, 1, 1, 1], what="accepted")
        for server in servers:
            assert server.close_all(reset=reset) == 1
        killed = time.monotonic()
        await eventually(
            lambda: (
                pool.stats().endpoints[ep].refills >= 4 and pool.stats().endpoints[ep].idle == 4
            ),
            3.0,
            what="the floor refilled",
        )
        took = time.monotonic() - killed
        assert took < 1.0, f"the floor took {took:.2f} s to come back"
        assert idle_by_address(pool, ep) == dict.fromkeys(POOL_ADDRESSES, 1)
        await eventually(lambda: [s.accepted for s in servers] == [2, 2, 2, 2])
        await eventually(lambda: [s.current for s in servers] == [1, 1, 1, 1])
        assert sorted(e.detail for e in events(tracer, "conn.close")) == ["stale"] * 4
        assert len(events(tracer, "connect.complete", "refill")) == 4
        # And they serve.
        for _ in range(4):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"again") == b"again"


async def test_floor_replaces_connections_retired_by_uses_and_health(
    servers: list[EchoServer],
) -> None:
    ep = conpool.Endpoint(NAME, servers[0].port)
    verdicts = [False]

    async def check(conn: conpool.Connection) -> bool:
        return verdicts.pop() if verdicts else True

    config = conpool.Config(min_idle=2, max_connection_uses=1, health_check=check)
    async with conpool.Pool(config, resolver=resolver()) as pool:
        await pool.prewarm(ep)
        for _ in range(3):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"x") == b"x"
            # Used once: closed on release, then replaced in the background.
            await eventually(lambda: pool.stats().endpoints[ep].idle == 2, 3.0, what="refilled")
        s = check_consistent(pool).endpoints[ep]
        # 2 prewarmed; the health check failed one (replaced), each of the
        # three uses retired one (replaced).
        assert s.refills == 4
        assert (s.created, s.idle, s.refill_failures) == (6, 2, 0)


async def test_a_refusing_address_is_backed_off_not_hammered(servers: list[EchoServer]) -> None:
    refused = "127.0.0.15"
    port = servers[0].port
    ep = conpool.Endpoint(NAME, port)
    tracer = conpool.Tracer()
    config = conpool.Config(min_idle=5, eject_after_failures=3, eject_time=30.0)
    async with conpool.Pool(
        config, resolver=resolver(*POOL_ADDRESSES, refused), tracer=tracer
    ) as pool:
        # A request first: the endpoint is one the pool serves.
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"first") == b"first"
        await anyio.sleep(2.0)
        attempts = Counter(e.address for e in events(tracer, "connect.started"))
        s = check_consistent(pool).endpoints[ep]
        # Three refusals ejected it; the floor went to the other four.
        assert attempts[refused] == 3, attempts
        assert s.addresses[refused].ejected
        assert s.idle == 5
        assert s.refill_failures == 3
        assert s.connect_failures == 0  # nobody's acquire failed
        failed = events(tracer, "connect.failed")
        assert len(failed) == 3 and all(e.detail.startswith("refill: ") for e in failed)
        # The refused dials backed off: they are spread out, not back to back.
        times = [e.ts_ns for e in failed]
        assert all(b - a >= 0.02e9 for a, b in itertools.pairwise(times))


async def test_refill_failures_never_reach_an_acquire() -> None:
    with EchoServer("127.0.0.11") as server:
        ep = conpool.Endpoint(NAME, server.port)
        config = conpool.Config(min_idle=3, max_connections_per_endpoint=3)
        async with conpool.Pool(config, resolver=resolver("127.0.0.11")) as pool:
            await pool.prewarm(ep)
            server.stop()  # refusals from now on
            await anyio.sleep(0.8)
            s = check_consistent(pool).endpoints[ep]
            assert s.refill_failures >= 1
            assert s.idle == 0
            # Backing off: at most a handful of dials in 0.8 s.
            assert s.refill_failures <= 8, s
            with pytest.raises(conpool.ConnectError):
                async with pool.connection(ep):
                    pass  # pragma: no cover


async def test_floor_on_an_ip_endpoint_with_prewarm_and_close(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    async with conpool.Pool(conpool.Config(min_idle=2, max_idle_time=0.1)) as pool:
        assert await pool.prewarm(ep) == 2
        await anyio.sleep(0.4)
        assert pool.stats().endpoints[ep].idle == 2
    # Closing the pool closes the floor too, and stops refilling it.
    await eventually(lambda: echo_server.current == 0, what="closed with the pool")
    assert echo_server.accepted == 2


async def test_cancelled_prewarm_and_hanging_refills_leave_nothing_behind() -> None:
    baseline = await fd_baseline()
    listener = socket.socket()
    listener.bind(("127.0.0.11", 0))
    listener.listen(0)  # never accepts: once its queue is full, connects hang
    port = listener.getsockname()[1]
    stuck = fill_backlog("127.0.0.11", port)
    try:
        ep = conpool.Endpoint(NAME, port)
        config = conpool.Config(min_idle=3, connect_timeout=30.0)
        started = time.monotonic()
        async with conpool.Pool(config, resolver=resolver("127.0.0.11")) as pool:
            with anyio.move_on_after(0.3) as scope:
                await pool.prewarm(ep)
            assert scope.cancelled_caught
            s = check_consistent(pool).endpoints[ep]
            assert s.pending == 0  # the cancelled dials gave their slots back
            # The floor's own dials start, and hang.
            await eventually(
                lambda: pool.stats().endpoints[ep].pending == 3, 3.0, what="refills in flight"
            )
        # Leaving the pool cancels them: at once, not after connect_timeout.
        assert time.monotonic() - started < 5.0
        s = pool.stats().endpoints[ep]
        assert (s.pending, s.active, s.idle, s.refill_failures) == (0, 0, 0, 0)
    finally:
        for sock in stuck:
            sock.close()
        listener.close()
    await fds_back_to(baseline)


@pytest.mark.realserver
async def test_prewarm_and_refills_go_through_the_proxy(
    tmp_path: Path, echo_server: EchoServer
) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    tracer = conpool.Tracer()
    with proxy_for("microsocks", tmp_path, [echo_server.port]) as proxy:
        config = conpool.Config(proxy=proxy, min_idle=2)
        async with conpool.Pool(config, tracer=tracer) as pool:
            assert await pool.prewarm(ep) == 2
            await eventually(lambda: echo_server.current == 2, what="both through the proxy")
            echo_server.close_all()
            await eventually(
                lambda: (
                    pool.stats().endpoints[ep].refills == 2 and pool.stats().endpoints[ep].idle == 2
                ),
                3.0,
                what="the floor refilled",
            )
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"via the proxy") == b"via the proxy"
    handshakes = [e for e in tracer.events() if e.kind == "proxy.handshake.complete"]
    assert len(handshakes) == 4  # two prewarmed, two refills: every one through it
    assert echo_server.accepted == 4


@pytest.mark.realserver
async def test_the_floor_stays_within_the_fleet_budget(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    budget = conpool.RedisBudget(f"redis://{redis.host}:{redis.port}/0", limit=2)
    config = conpool.Config(min_idle=3, connect_timeout=0.3, acquire_timeout=0.3)
    tracer = conpool.Tracer()
    async with conpool.Pool(config, budget=budget, tracer=tracer) as pool:
        # The floor wants three; the fleet allows two: prewarm opens two and
        # says so, without an error (the budget is not a connect failure).
        assert await pool.prewarm(ep, 3) == 2
        await anyio.sleep(1.0)
        s = check_consistent(pool)
        e = s.endpoints[ep]
        assert (e.idle, e.created, e.connect_failures) == (2, 2, 0)
        assert s.budget is not None and s.budget.held == 2
        # The refills asked the budget, were refused, and backed off.
        refused = [
            ev for ev in tracer.events() if ev.kind == "connect.failed" and "refill" in ev.detail
        ]
        assert 1 <= len(refused) <= 6, [ev.detail for ev in refused]
        assert e.refill_failures == len(refused)
        assert all(a.failures == 0 for a in e.addresses.values())  # not the address's fault
        await eventually(lambda: echo_server.current == 2, what="two open, server side")
