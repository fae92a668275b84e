"""Cancellation at every await point of an acquire leaves the pool whole.

After each scenario: the counts add up with nothing active, pending or
waiting; the next acquire works; ``limit`` connections can be held at once
(no slot leaked); and once the pool is closed the process has exactly the
file descriptors it started with (no socket leaked).
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import anyio
import pytest

import conpool
from helpers_pool import (
    Blackhole,
    StallingResolver,
    check_consistent,
    check_quiet,
    echo,
    eventually,
    fd_baseline,
    fds_back_to,
    open_gate,
)
from servers import EchoServer, TLSEchoServer, refused_port

pytestmark = pytest.mark.anyio


async def assert_recovered(pool: conpool.Pool, ep: conpool.Endpoint, limit: int) -> None:
    """Nothing in flight, and all ``limit`` slots of ``ep`` usable at once."""
    check_quiet(pool)
    with anyio.fail_after(5):
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(pool.connection(ep)) for _ in range(limit)]
            assert len({conn.id for conn in conns}) == limit
            for i, conn in enumerate(conns):
                assert await echo(conn, b"check %d" % i) == b"check %d" % i
            assert pool.stats().endpoints[ep].active == limit
    s = check_quiet(pool)
    assert 1 <= s.endpoints[ep].idle <= limit  # some may be used up (max_connection_uses)


def kinds(tracer: conpool.Tracer) -> list[str]:
    return [event.kind for event in tracer.events()]


# --------------------------------------------------------------------------
# Waiting for a slot


async def test_cancel_while_waiting(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    limit = 2
    base = await fd_baseline()
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=limit)) as pool:
        held = [await pool.acquire(ep) for _ in range(limit)]

        # A deadline.
        with anyio.move_on_after(0.05) as scope:
            await pool.acquire(ep)
        assert scope.cancelled_caught
        assert pool.stats().waiting == 0

        # Cancelled from outside, by another task.
        async with anyio.create_task_group() as tg:
            outer = anyio.CancelScope()

            async def waiter() -> None:
                with outer:
                    await pool.acquire(ep)
                    pytest.fail("acquired while every slot is held")  # pragma: no cover

            tg.start_soon(waiter)
            await eventually(lambda: pool.stats().waiting == 1)
            outer.cancel()
        assert outer.cancelled_caught
        check_consistent(pool)
        assert pool.stats().waiting == 0

        # Cancelled in the instant after the pool handed it a connection: the
        # connection must go back, not vanish with the cancelled task.
        got: list[conpool.Connection] = []
        async with anyio.create_task_group() as tg:
            late = anyio.CancelScope()

            async def granted_then_cancelled() -> None:
                with late:
                    async with pool.connection(ep) as conn:
                        got.append(conn)

            tg.start_soon(granted_then_cancelled)
            await eventually(lambda: pool.stats().waiting == 1)
            await pool.release(held.pop())  # granted to the waiter ...
            late.cancel()  # ... which is cancelled before it runs
        s = check_consistent(pool)
        assert (s.active, s.idle, s.waiting) == (1, 1, 0)

        await pool.release(held.pop())
        await assert_recovered(pool, ep, limit)
        assert pool.stats().endpoints[ep].created == limit
    await fds_back_to(base)


# --------------------------------------------------------------------------
# Connecting


async def test_cancel_while_connecting() -> None:
    limit = 2
    base = await fd_baseline()
    tracer = conpool.Tracer()
    with Blackhole() as hole:
        ep = conpool.Endpoint(hole.host, hole.port)
        config = conpool.Config(max_connections_per_endpoint=limit, connect_timeout=30)
        async with conpool.Pool(config, tracer=tracer) as pool:
            with anyio.move_on_after(0.1) as scope:
                await pool.acquire(ep)
            assert scope.cancelled_caught
            assert "connect.started" in kinds(tracer)
            assert "connect.complete" not in kinds(tracer)

            # Both slots dialling at once, both cancelled from outside.
            async with anyio.create_task_group() as tg:
                for _ in range(limit):
                    tg.start_soon(pool.acquire, ep)
                await eventually(lambda: pool.stats().pending == limit)
                tg.cancel_scope.cancel()

            s = check_quiet(pool)
            e = s.endpoints[ep]
            # Giving up is not a failure of the address or of the endpoint.
            assert (e.created, e.connect_failures) == (0, 0)
            assert e.addresses[hole.host].failures == 0
            assert not e.addresses[hole.host].ejected

            hole.open()
            await assert_recovered(pool, ep, limit)
    await fds_back_to(base)


async def test_cancel_during_retry_backoff() -> None:
    port = refused_port()
    ep = conpool.Endpoint("127.0.0.1", port)
    base = await fd_baseline()
    tracer = conpool.Tracer()
    config = conpool.Config(connect_retries=5, retry_backoff=5.0, retry_backoff_max=5.0)
    async with conpool.Pool(config, tracer=tracer) as pool:
        with anyio.move_on_after(0.2) as scope:
            await pool.acquire(ep)
        assert scope.cancelled_caught
        assert "connect.failed" in kinds(tracer)  # the first attempt was refused
        s = check_quiet(pool)
        assert s.endpoints[ep].connect_failures == 0
    await fds_back_to(base)


async def test_cancel_during_tls_handshake() -> None:
    limit = 2
    base = await fd_baseline()
    tracer = conpool.Tracer()
    # Listening, so TCP connects complete in the kernel, but not accepting:
    # the handshake gets no answer until the gate opens.
    server = TLSEchoServer()
    try:
        tls = conpool.TLS(context=server.client_context())
        ep = conpool.Endpoint("localhost", server.port, tls=tls)
        resolver = conpool.StaticResolver({"localhost": ["127.0.0.1"]})
        config = conpool.Config(max_connections_per_endpoint=limit, connect_timeout=30)
        async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
            with anyio.move_on_after(0.15) as scope:
                await pool.acquire(ep)
            assert scope.cancelled_caught
            assert "connect.started" in kinds(tracer)
            assert not {"connect.complete", "connect.failed"} & set(kinds(tracer))

            async with anyio.create_task_group() as tg:
                for _ in range(limit):
                    tg.start_soon(pool.acquire, ep)
                await eventually(lambda: pool.stats().pending == limit)
                await anyio.sleep(0.05)  # into the handshake
                tg.cancel_scope.cancel()

            s = check_quiet(pool)
            assert s.endpoints[ep].connect_failures == 0
            open_gate(server)
            await assert_recovered(pool, ep, limit)
    finally:
        server.stop()
    await fds_back_to(base)


# --------------------------------------------------------------------------
# Resolving


async def test_cancel_during_resolution(echo_server: EchoServer) -> None:
    limit = 2
    base = await fd_baseline()
    resolver = StallingResolver({"pool.test": ["127.0.0.1"]}, delay=30)
    ep = conpool.Endpoint("pool.test", echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=limit)
    async with conpool.Pool(config, resolver=resolver) as pool:
        with anyio.move_on_after(0.05) as scope:
            await pool.acquire(ep)
        assert scope.cancelled_caught
        assert (resolver.started, resolver.finished) == (1, 0)
        s = check_quiet(pool)
        assert s.endpoints[ep].connect_failures == 0
        assert echo_server.accepted == 0

        resolver.delay = 0
        await assert_recovered(pool, ep, limit)
    await fds_back_to(base)


async def test_cancelled_lookup_does_not_fail_the_task_sharing_it(
    echo_server: EchoServer,
) -> None:
    # Two acquires share one lookup of the name. Cancelling the task whose
    # call started the lookup must not fail the other with an error that
    # nobody raised: the other gets its connection.
    resolver = StallingResolver({"pool.test": ["127.0.0.1"]}, delay=0.2)
    ep = conpool.Endpoint("pool.test", echo_server.port)
    outcome: list[str] = []

    async def second() -> None:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"second") == b"second"
        outcome.append("second ok")

    async with conpool.Pool(resolver=resolver) as pool:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                first = anyio.CancelScope()

                async def first_task() -> None:
                    with first:
                        await pool.acquire(ep)

                tg.start_soon(first_task)
                await eventually(lambda: resolver.started == 1)
                tg.start_soon(second)
                await eventually(lambda: pool.stats().pending == 2)
                first.cancel()
        assert outcome == ["second ok"]
        check_quiet(pool)


# --------------------------------------------------------------------------
# Holding, health checks, releasing


async def test_cancel_while_holding(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    limit = 2
    base = await fd_baseline()
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=limit)) as pool:
        # Cancelled inside the block, between exchanges.
        with anyio.move_on_after(0.05):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"one") == b"one"
                await anyio.sleep_forever()
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].closed) == (0, 1)

        # Cancelled inside receive(): the response may still arrive later.
        with anyio.move_on_after(0.05):
            async with pool.connection(ep) as conn:
                await conn.receive()
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].closed) == (0, 2)

        # Explicit acquire and release, cancelled in between.
        conn = await pool.acquire(ep)
        with anyio.move_on_after(0.05):
            try:
                await conn.send(b"half")
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await pool.release(conn)
        # The pool cannot know the exchange was cut short: it keeps it.
        check_quiet(pool)

        # A task holding a connection, cancelled by another.
        async with anyio.create_task_group() as tg:

            async def hold() -> None:
                async with pool.connection(ep) as conn:
                    assert await echo(conn, b"held") == b"held"
                    await anyio.sleep_forever()

            tg.start_soon(hold)
            await eventually(lambda: pool.stats().active == 1)
            tg.cancel_scope.cancel()
        s = check_quiet(pool)
        await assert_recovered(pool, ep, limit)
    await eventually(lambda: echo_server.current == 0)
    await fds_back_to(base)


async def test_cancel_during_health_check(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    limit = 2
    slow = False
    entered = 0

    async def check(conn: conpool.Connection) -> bool:
        nonlocal entered
        entered += 1
        if slow:
            await anyio.sleep(30)
        return True

    base = await fd_baseline()
    config = conpool.Config(max_connections_per_endpoint=limit, health_check=check)
    async with conpool.Pool(config) as pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"x") == b"x"
        slow = True
        with anyio.move_on_after(0.05) as scope:
            await pool.acquire(ep)
        assert scope.cancelled_caught
        assert entered == 1
        # The check was cut short: the connection's state is unknown, so it
        # is closed rather than reused.
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].closed) == (0, 1)
        await eventually(lambda: echo_server.current == 0)
        slow = False
        await assert_recovered(pool, ep, limit)
    await fds_back_to(base)


async def test_cancel_during_release(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    limit = 2
    base = await fd_baseline()
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=limit)) as pool:
        # release() in a scope that is already cancelled still gives it back.
        conn = await pool.acquire(ep)
        assert await echo(conn, b"x") == b"x"
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.release(conn)
        s = check_quiet(pool)
        assert s.idle == 1

        # Leaving the block in a cancelled scope, without an exception.
        with anyio.CancelScope() as scope:
            async with pool.connection(ep) as again:
                assert again is conn
                assert await echo(again, b"y") == b"y"
                scope.cancel()
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].reused) == (1, 1)

        # The whole task group is cancelled while its tasks release.
        async with anyio.create_task_group() as tg:

            async def use() -> None:
                async with pool.connection(ep) as c:
                    assert await echo(c, b"z") == b"z"

            for _ in range(limit):
                tg.start_soon(use)
            tg.cancel_scope.cancel()
        check_quiet(pool)
        await assert_recovered(pool, ep, limit)
    await fds_back_to(base)


# --------------------------------------------------------------------------
# Everything at once, at random


class _JitterResolver:
    """Answers after a random short delay, with a TTL short enough that the
    pool looks the name up again on many dials."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    async def resolve(self, host: str) -> list[conpool.ResolvedAddress]:
        await anyio.sleep(self.rng.uniform(0, 0.003))
        return [conpool.ResolvedAddress("127.0.0.1", 0.005)]


@pytest.mark.parametrize("seed", [20240, 7])
async def test_random_cancellations(echo_server: EchoServer, seed: int) -> None:
    rng = random.Random(seed)
    by_ip = conpool.Endpoint(echo_server.host, echo_server.port)
    by_name = conpool.Endpoint("pool.test", echo_server.port)
    limit = 3

    async def check(conn: conpool.Connection) -> bool:
        await anyio.sleep(rng.uniform(0, 0.001))
        return rng.random() > 0.1

    config = conpool.Config(
        max_connections_per_endpoint=limit,
        max_connections=2 * limit,
        max_idle_time=0.05,
        max_connection_uses=7,
        health_check=check,
        sweep_interval=0.01,
    )
    outcomes = {"done": 0, "cancelled": 0}
    base = await fd_baseline()

    async def worker(n: int) -> None:
        for i in range(15):
            ep = by_ip if rng.random() < 0.5 else by_name
            # Mostly a deadline that cuts somewhere into the acquire, the
            # check or the echo; one in five none, so that some operations
            # run to their end however starved the machine is (a loaded
            # machine can take longer than 30 ms for every one of them).
            deadline = rng.uniform(0, 0.03) if rng.random() < 0.8 else 30.0
            with anyio.move_on_after(deadline) as scope:
                async with pool.connection(ep) as conn:
                    payload = b"%d.%d" % (n, i)
                    assert await echo(conn, payload) == payload
                    await anyio.sleep(rng.uniform(0, 0.004))
            outcomes["cancelled" if scope.cancelled_caught else "done"] += 1

    async with conpool.Pool(config, resolver=_JitterResolver(rng)) as pool:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(worker, n)
        assert outcomes["done"] + outcomes["cancelled"] == 300
        assert outcomes["done"] > 0 and outcomes["cancelled"] > 0, outcomes
        check_quiet(pool)
        for ep in (by_ip, by_name):
            await assert_recovered(pool, ep, limit)
    await eventually(lambda: echo_server.current == 0)
    await fds_back_to(base)
