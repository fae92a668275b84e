"""How pooled connections end: idle time, lifetime, uses, health checks, and
servers that close or reset idle connections, over real loopback sockets."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

import conpool
from helpers_pool import check_quiet, echo, eventually
from servers import EchoServer

pytestmark = pytest.mark.anyio


def endpoint(server: EchoServer) -> conpool.Endpoint:
    return conpool.Endpoint(server.host, server.port)


async def round_trip(pool: conpool.Pool, ep: conpool.Endpoint, payload: bytes = b"ping") -> int:
    """One exchange on a pooled connection; returns the connection's id."""
    async with pool.connection(ep) as conn:
        assert await echo(conn, payload) == payload
        return conn.id


# --------------------------------------------------------------------------
# Idle time


@pytest.mark.parametrize("sweep_interval", [0.02, None], ids=["sweep=0.02", "sweep=derived"])
async def test_idle_connection_closed_by_sweep(
    echo_server: EchoServer, sweep_interval: float | None
) -> None:
    ep = endpoint(echo_server)
    max_idle = 0.2
    config = conpool.Config(max_idle_time=max_idle, sweep_interval=sweep_interval)
    async with conpool.Pool(config) as pool:
        first = await round_trip(pool, ep)
        released = time.monotonic()
        assert pool.stats().endpoints[ep].idle == 1
        # No acquire in between: only the background sweep can close it.
        # (A derived sweep interval is capped at 1 s.)
        bound = max_idle + (0.5 if sweep_interval else 1.5)
        await eventually(lambda: echo_server.current == 0, bound + 1, what="server saw close")
        closed_after = time.monotonic() - released
        assert max_idle - 0.02 <= closed_after <= bound
        s = check_quiet(pool)
        assert (s.endpoints[ep].idle, s.endpoints[ep].closed) == (0, 1)
        second = await round_trip(pool, ep)
        assert second != first
        assert echo_server.accepted == 2


async def test_idle_connection_reused_within_idle_time(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_idle_time=0.3, sweep_interval=0.02)
    async with conpool.Pool(config) as pool:
        ids = set()
        for _ in range(6):  # 6 * 0.1 s: twice the idle time in all, never idle that long
            ids.add(await round_trip(pool, ep))
            await anyio.sleep(0.1)
        assert len(ids) == 1
        assert echo_server.accepted == 1


async def test_idle_expiry_seen_on_acquire_before_sweep(echo_server: EchoServer) -> None:
    # A sweep that would come too late: the acquire itself must not hand out
    # a connection that has been idle longer than max_idle_time.
    ep = endpoint(echo_server)
    config = conpool.Config(max_idle_time=0.1, sweep_interval=30.0)
    async with conpool.Pool(config) as pool:
        first = await round_trip(pool, ep)
        await anyio.sleep(0.15)
        second = await round_trip(pool, ep)
        assert second != first
        s = check_quiet(pool)
        assert (s.endpoints[ep].created, s.endpoints[ep].closed, s.endpoints[ep].reused) == (
            2,
            1,
            0,
        )
        await eventually(lambda: echo_server.current == 1, what="expired connection closed")


# --------------------------------------------------------------------------
# Lifetime and uses


async def test_lifetime_expiry(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_connection_lifetime=0.3, sweep_interval=0.02)
    async with conpool.Pool(config) as pool:
        first = await round_trip(pool, ep)
        # Kept busy, so idle time never expires it; its age does.
        start = time.monotonic()
        ids = set()
        while time.monotonic() - start < 0.2:
            ids.add(await round_trip(pool, ep))
            await anyio.sleep(0.02)
        assert ids == {first}
        await eventually(lambda: echo_server.current == 0, 2.0, what="old connection closed")
        assert time.monotonic() - start >= 0.25
        s = check_quiet(pool)
        assert (s.endpoints[ep].idle, s.endpoints[ep].closed) == (0, 1)
        assert await round_trip(pool, ep) != first
        assert echo_server.accepted == 2


async def test_lifetime_expired_while_in_use_closes_on_release(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_connection_lifetime=0.1, sweep_interval=0.02)
    async with conpool.Pool(config) as pool:
        async with pool.connection(ep) as conn:
            await anyio.sleep(0.2)  # outlives its lifetime while held: still usable
            assert await echo(conn, b"late") == b"late"
        s = check_quiet(pool)
        assert (s.endpoints[ep].idle, s.endpoints[ep].closed) == (0, 1)
        await eventually(lambda: echo_server.current == 0, what="expired connection closed")


async def test_max_uses(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connection_uses=2)) as pool:
        a = await round_trip(pool, ep)
        assert await round_trip(pool, ep) == a
        # Used twice: closed on its second release, not kept idle.
        s = check_quiet(pool)
        assert (s.endpoints[ep].idle, s.endpoints[ep].closed) == (0, 1)
        await eventually(lambda: echo_server.current == 0, what="used-up connection closed")
        b = await round_trip(pool, ep)
        assert b != a
        assert await round_trip(pool, ep) == b
        c = await round_trip(pool, ep)
        assert c not in (a, b)
        assert echo_server.accepted == 3


# --------------------------------------------------------------------------
# Health checks


async def test_health_check_false_replaces_connection(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    checked: list[int] = []
    verdict = True

    async def check(conn: conpool.Connection) -> bool:
        checked.append(conn.id)
        await anyio.lowlevel.checkpoint()
        return verdict

    async with conpool.Pool(conpool.Config(health_check=check)) as pool:
        first = await round_trip(pool, ep)
        assert checked == []  # a fresh connection is not checked
        assert await round_trip(pool, ep) == first
        assert checked == [first]
        verdict = False
        second = await round_trip(pool, ep)
        assert second != first
        assert checked == [first, first]  # the failed one only; the new one is fresh
        s = check_quiet(pool)
        e = s.endpoints[ep]
        assert (e.created, e.closed, e.idle) == (2, 1, 1)
        await eventually(lambda: echo_server.current == 1, what="unhealthy connection closed")


@pytest.mark.parametrize("failure", ["raises", "returns-none", "breaks-connection"])
async def test_health_check_failure_modes(echo_server: EchoServer, failure: str) -> None:
    ep = endpoint(echo_server)
    calls = 0

    async def check(conn: conpool.Connection) -> bool:
        nonlocal calls
        calls += 1
        if failure == "raises":
            raise RuntimeError("probe failed")
        if failure == "returns-none":
            return None  # type: ignore[return-value]  # not True: not healthy
        await conn.aclose()
        return True  # says yes, but closed the connection

    async with conpool.Pool(conpool.Config(health_check=check)) as pool:
        first = await round_trip(pool, ep)
        second = await round_trip(pool, ep)  # never an error for the caller
        assert second != first
        assert calls == 1
        s = check_quiet(pool)
        assert (s.endpoints[ep].created, s.endpoints[ep].closed) == (2, 1)


async def test_health_check_passes_exchange_on_connection(echo_server: EchoServer) -> None:
    # A check that does real I/O on the connection and leaves it clean.
    ep = endpoint(echo_server)

    async def ping(conn: conpool.Connection) -> bool:
        return await echo(conn, b"PING") == b"PING"

    async with conpool.Pool(conpool.Config(health_check=ping)) as pool:
        ids = {await round_trip(pool, ep, b"data %d" % i) for i in range(5)}
        assert len(ids) == 1
        assert pool.stats().endpoints[ep].reused == 4


# --------------------------------------------------------------------------
# Servers that close idle connections


async def test_server_idle_timeout_is_invisible() -> None:
    with EchoServer(close_idle_after=0.1) as server:
        ep = endpoint(server)
        async with conpool.Pool() as pool:
            ids = []
            for i in range(3):
                ids.append(await round_trip(pool, ep, b"req %d" % i))
                await eventually(lambda: server.current == 0, what="server closed idle conn")
                await anyio.sleep(0.02)
            assert len(set(ids)) == 3  # each time a fresh connection, silently
            assert server.idle_closed == 3
            s = check_quiet(pool)
            assert s.endpoints[ep].created == 3


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_server_closing_idle_connections_is_invisible(
    echo_server: EchoServer, reset: bool
) -> None:
    ep = endpoint(echo_server)
    limit = 3
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=limit)) as pool:
        # Fill the pool with `limit` idle connections.
        async with anyio.create_task_group() as tg:
            for _ in range(limit):
                tg.start_soon(_hold_briefly, pool, ep)
        assert pool.stats().endpoints[ep].idle == limit
        await eventually(lambda: echo_server.current == limit)
        assert echo_server.close_all(reset=reset) == limit
        await anyio.sleep(0.05)  # the loop sees the FIN / RST
        for i in range(2 * limit):
            await round_trip(pool, ep, b"after %d" % i)
        s = check_quiet(pool)
        assert s.endpoints[ep].closed == limit
        assert echo_server.accepted == limit + 1


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
async def test_server_close_detected_without_loop_iteration(
    echo_server: EchoServer, reset: bool
) -> None:
    # The server's FIN (or RST) is already in our kernel when the next acquire
    # runs, but the event loop has not had a chance to process it: the pool
    # must still notice (the kernel knows), as httpcore does by polling the
    # socket before reuse, rather than hand out a dead connection.
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        first = await round_trip(pool, ep)
        await eventually(lambda: echo_server.current == 1)
        echo_server.close_all(reset=reset)  # blocks until the server closed it
        time.sleep(0.02)  # noqa: ASYNC251  # deliberately without yielding to the loop
        second = await round_trip(pool, ep, b"after close")
        assert second != first
        s = check_quiet(pool)
        assert (s.endpoints[ep].created, s.endpoints[ep].closed) == (2, 1)


async def _hold_briefly(pool: conpool.Pool, ep: conpool.Endpoint) -> None:
    async with pool.connection(ep) as conn:
        assert await echo(conn, b"warm") == b"warm"
        await anyio.sleep(0.02)


async def test_server_reset_while_many_idle_under_load(echo_server: EchoServer) -> None:
    # Repeated server-side resets while tasks keep using the pool: every
    # request either succeeds on a fresh connection or on a live idle one.
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=4)) as pool:
        for _round in range(3):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(_hold_briefly, pool, ep)
            echo_server.close_all(reset=True)
            await anyio.sleep(0.05)
        for _ in range(4):
            await round_trip(pool, ep)
        check_quiet(pool)
