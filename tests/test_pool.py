"""The pool shell over real loopback sockets: reuse, limits, waiting, errors
of use, statistics and the Connection object, on asyncio, uvloop and trio."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

import conpool
from helpers_pool import (
    StallingResolver,
    check_consistent,
    check_quiet,
    echo,
    eventually,
    socket_inode,
    socket_inodes,
)
from servers import EchoServer

pytestmark = pytest.mark.anyio


def endpoint(server: EchoServer) -> conpool.Endpoint:
    return conpool.Endpoint(server.host, server.port)


def waiting_is(pool: conpool.Pool, n: int) -> Callable[[], bool]:
    return lambda: pool.stats().waiting == n


#: The two ways to get a connection; each has its own short path for waiting.
VIA = ["acquire", "lease"]


async def take_and_give_back(pool: conpool.Pool, ep: conpool.Endpoint, via: str) -> int:
    """Acquire through ``via``, give the connection back; its id."""
    if via == "acquire":
        conn = await pool.acquire(ep)
        await pool.release(conn)
    else:
        async with pool.connection(ep) as conn:
            pass
    return conn.id


# --------------------------------------------------------------------------
# Reuse


async def test_sequential_requests_share_one_socket(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    n = 20
    ids = set()
    async with conpool.Pool() as pool:
        for i in range(n):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"request %d" % i) == b"request %d" % i
                assert conn.uses == i + 1
                ids.add(conn.id)
        stats = check_quiet(pool)
        e = stats.endpoints[ep]
        assert (e.created, e.reused, e.idle, e.closed) == (1, n - 1, 1, 0)
        assert e.addresses["127.0.0.1"].created == 1
    assert len(ids) == 1
    assert echo_server.accepted == 1
    assert len(set(echo_server.peer_ports)) == 1


async def test_concurrency_limit_per_endpoint(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    limit, tasks = 5, 200
    held = peak = done = 0

    async def one(i: int) -> None:
        nonlocal held, peak, done
        async with pool.connection(ep) as conn:
            held += 1
            peak = max(peak, held)
            assert await echo(conn, b"task %d;" % i) == b"task %d;" % i
            held -= 1
        done += 1

    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=limit)) as pool:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(tasks):
                    tg.start_soon(one, i)
        stats = check_quiet(pool)
        e = stats.endpoints[ep]
        assert e.created + e.reused == tasks
        assert 1 <= e.created <= limit
    assert done == tasks
    assert peak == limit  # the limit was reached, so the bound below means something
    assert echo_server.max_concurrent <= limit
    assert echo_server.accepted == e.created


async def test_max_connections_across_two_endpoints() -> None:
    total_limit = 3
    with EchoServer() as a, EchoServer() as b:
        eps = [endpoint(a), endpoint(b)]
        held = peak = 0
        served = [0, 0]

        async def one(i: int) -> None:
            nonlocal held, peak
            which = i % 2
            async with pool.connection(eps[which]) as conn:
                held += 1
                peak = max(peak, held)
                s = pool.stats()
                assert s.active + s.idle + s.pending <= total_limit, s
                assert await echo(conn, b"x%d" % i) == b"x%d" % i
                await anyio.sleep(0.001)
                held -= 1
            served[which] += 1

        config = conpool.Config(max_connections=total_limit, max_connections_per_endpoint=10)
        async with conpool.Pool(config) as pool:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for i in range(60):
                        tg.start_soon(one, i)
            check_quiet(pool)
            s = pool.stats()
            assert s.idle <= total_limit
        assert served == [30, 30]
        assert peak == total_limit
        assert a.accepted + b.accepted >= total_limit


async def test_max_connections_evicts_idle_of_other_endpoint() -> None:
    with EchoServer() as a, EchoServer() as b:
        ep_a, ep_b = endpoint(a), endpoint(b)
        config = conpool.Config(max_connections=1, acquire_timeout=2.0)
        async with conpool.Pool(config) as pool:
            async with pool.connection(ep_a) as conn:
                assert await echo(conn, b"a") == b"a"
            assert pool.stats().endpoints[ep_a].idle == 1
            start = time.monotonic()
            async with pool.connection(ep_b) as conn:
                assert await echo(conn, b"b") == b"b"
            # Made room at once rather than waiting out acquire_timeout.
            assert time.monotonic() - start < 1.0
            stats = check_quiet(pool)
            assert stats.endpoints[ep_a].closed == 1
            assert stats.endpoints[ep_a].idle == 0
            assert stats.endpoints[ep_b].idle == 1
            await eventually(lambda: a.current == 0, what="evicted connection closed")


# --------------------------------------------------------------------------
# Waiting


async def test_waiters_are_served_first_come_first_served(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with pool.connection(ep) as conn:
            order.append(i)
            assert await echo(conn, b"%d" % i) == b"%d" % i

    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        holder = await pool.acquire(ep)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(waiter, i)
                    # Queue them in a known order: the next starts once this one waits.
                    await eventually(waiting_is(pool, i + 1))
                await pool.release(holder)
        check_quiet(pool)
        assert pool.stats().endpoints[ep].created == 1
    assert order == list(range(10))


@pytest.mark.parametrize("via", VIA)
async def test_acquire_timeout_raises_pool_timeout(echo_server: EchoServer, via: str) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=0.1)
    async with conpool.Pool(config) as pool:
        async with pool.connection(ep):
            start = time.monotonic()
            with pytest.raises(conpool.PoolTimeout) as info:
                await take_and_give_back(pool, ep, via)
            elapsed = time.monotonic() - start
            assert 0.09 <= elapsed < 2.0
            waits = pool.stats().endpoints[ep].wait_time
            assert waits.count == 1 and 0.09 <= waits.sum <= elapsed
            assert isinstance(info.value, TimeoutError)
            assert isinstance(info.value, conpool.PoolError)
            assert str(ep) in str(info.value)
            assert "acquire_timeout" in str(info.value)
            stats = check_consistent(pool)
            assert stats.waiting == 0
        check_quiet(pool)


async def test_max_waiters_fails_at_once(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1, max_waiters=2)
    got = 0

    async def wait_one() -> None:
        nonlocal got
        async with pool.connection(ep):
            got += 1

    async with conpool.Pool(config) as pool:
        holder = await pool.acquire(ep)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_one)
                tg.start_soon(wait_one)
                await eventually(lambda: pool.stats().waiting == 2)
                start = time.monotonic()
                with pytest.raises(conpool.PoolTimeout) as info:
                    await pool.acquire(ep)
                assert time.monotonic() - start < 0.5
                assert isinstance(info.value, TimeoutError)
                assert str(ep) in str(info.value)
                assert "max_waiters=2" in str(info.value)
                assert pool.stats().waiting == 2
                await pool.release(holder)
        assert got == 2
        check_quiet(pool)


async def test_max_waiters_zero_never_waits(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1, max_waiters=0)
    async with conpool.Pool(config) as pool:
        async with pool.connection(ep):
            with pytest.raises(conpool.PoolTimeout):
                await pool.acquire(ep)
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"ok") == b"ok"
        check_quiet(pool)


async def test_pool_serves_normally_after_timeouts(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    limit = 2
    config = conpool.Config(max_connections_per_endpoint=limit, acquire_timeout=0.05)
    timeouts = 0

    async def doomed() -> None:
        nonlocal timeouts
        with pytest.raises(conpool.PoolTimeout):
            await pool.acquire(ep)
        timeouts += 1

    async with conpool.Pool(config) as pool:
        held = [await pool.acquire(ep) for _ in range(limit)]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(doomed)
        assert timeouts == 20
        check_consistent(pool)
        assert pool.stats().waiting == 0
        for conn in held:
            await pool.release(conn)
        check_quiet(pool)
        # The limit is whole again: `limit` at once, then many in turn.
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(pool.connection(ep)) for _ in range(limit)]
            for conn in conns:
                assert await echo(conn, b"again") == b"again"
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(_echo_once, pool, ep)
        stats = check_quiet(pool)
        assert stats.endpoints[ep].created == limit


async def _echo_once(pool: conpool.Pool, ep: conpool.Endpoint) -> None:
    async with pool.connection(ep) as conn:
        assert await echo(conn, b"hello") == b"hello"


@pytest.mark.parametrize("via", VIA)
async def test_waiter_woken_by_release(echo_server: EchoServer, via: str) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        holder = await pool.acquire(ep)
        result: list[int] = []

        async def waiter() -> None:
            result.append(await take_and_give_back(pool, ep, via))

        start = time.monotonic()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await eventually(lambda: pool.stats().waiting == 1)
                await anyio.sleep(0.05)
                released = time.monotonic()
                await pool.release(holder)
        assert result == [holder.id]  # the same connection, handed over
        stats = check_quiet(pool)
        assert (stats.endpoints[ep].created, stats.endpoints[ep].reused) == (1, 1)
        # Counted from queueing until the release served it.
        waits = stats.endpoints[ep].wait_time
        assert waits.count == 1 and 0.05 <= waits.sum <= released - start


async def test_waiter_woken_by_closed_connection(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        holder = await pool.acquire(ep)
        result: list[int] = []

        async def waiter() -> None:
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"fresh") == b"fresh"
                result.append(conn.id)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await eventually(lambda: pool.stats().waiting == 1)
                await holder.aclose()
                await pool.release(holder)
        assert len(result) == 1 and result[0] != holder.id
        stats = check_quiet(pool)
        e = stats.endpoints[ep]
        assert (e.created, e.reused, e.closed, e.idle) == (2, 0, 1, 1)
        assert echo_server.accepted == 2


async def test_waiter_woken_by_failed_connect(echo_server: EchoServer) -> None:
    # The first dial fails (the name does not resolve the first time), which
    # frees its slot: the waiter gets the slot, dials, and succeeds.
    resolver = StallingResolver({"pool.test": ["127.0.0.1"]}, delay=0.2)
    resolver.fail_next = 1
    ep = conpool.Endpoint("pool.test", echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=1)
    outcomes: list[str] = []

    async def first() -> None:
        with pytest.raises(conpool.ResolveError):
            await pool.acquire(ep)
        outcomes.append("first failed")

    async def second() -> None:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"second") == b"second"
        outcomes.append("second served")

    async with conpool.Pool(config, resolver=resolver) as pool:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await eventually(lambda: pool.stats().pending == 1)
                tg.start_soon(second)
                await eventually(lambda: pool.stats().waiting == 1)
        stats = check_quiet(pool)
        e = stats.endpoints[ep]
        assert (e.created, e.connect_failures) == (1, 1)
    assert outcomes == ["first failed", "second served"]


# --------------------------------------------------------------------------
# Statistics and repr


async def test_stats_add_up() -> None:
    with EchoServer() as a, EchoServer() as b:
        ep_a, ep_b = endpoint(a), endpoint(b)
        async with conpool.Pool(conpool.Config(max_connections_per_endpoint=3)) as pool:
            empty = pool.stats()
            assert (empty.active, empty.idle, empty.pending, empty.waiting) == (0, 0, 0, 0)
            assert not empty.closed
            a1, a2, a3 = [await pool.acquire(ep_a) for _ in range(3)]
            b1 = await pool.acquire(ep_b)
            await pool.release(a3)
            await pool.release(b1)
            s = check_consistent(pool)
            ea, eb = s.endpoints[ep_a], s.endpoints[ep_b]
            assert (ea.active, ea.idle, ea.created, ea.reused, ea.closed) == (2, 1, 3, 0, 0)
            assert (eb.active, eb.idle, eb.created, eb.reused, eb.closed) == (0, 1, 1, 0, 0)
            addr = ea.addresses["127.0.0.1"]
            assert (addr.active, addr.idle, addr.created, addr.failures) == (2, 1, 3, 0)
            assert not addr.ejected
            assert (s.active, s.idle, s.pending, s.waiting) == (2, 2, 0, 0)

            a3 = await pool.acquire(ep_a)  # reuses the idle one
            s = check_consistent(pool)
            assert (s.endpoints[ep_a].active, s.endpoints[ep_a].reused) == (3, 1)

            async with anyio.create_task_group() as tg:
                tg.start_soon(_echo_once, pool, ep_a)
                await eventually(lambda: pool.stats().waiting == 1)
                s = check_consistent(pool)
                waiting = (s.waiting, s.endpoints[ep_a].waiting, s.endpoints[ep_b].waiting)
                assert waiting == (1, 1, 0)
                await a1.aclose()
                await pool.release(a1)  # closed: frees a slot for the waiter
            s = check_consistent(pool)
            ea = s.endpoints[ep_a]
            assert (ea.active, ea.idle, ea.created, ea.closed, ea.waiting) == (2, 1, 4, 1, 0)
            for conn in (a2, a3):
                await pool.release(conn)
            s = check_quiet(pool)
            assert (s.endpoints[ep_a].idle, s.endpoints[ep_b].idle) == (3, 1)
            # A snapshot is frozen: it does not follow the pool.
            before = pool.stats()
            async with pool.connection(ep_b):
                assert before.endpoints[ep_b].active == 0
                assert pool.stats().endpoints[ep_b].active == 1
            with pytest.raises(AttributeError):
                before.active = 5  # type: ignore[misc]
        after = pool.stats()
        assert after.closed
        assert (after.active, after.idle) == (0, 0)
        assert after.endpoints[ep_a].closed == 4 and after.endpoints[ep_b].closed == 1


async def test_repr(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    pool = conpool.Pool(conpool.Config(max_connections_per_endpoint=4))
    assert "not entered" in repr(pool)
    async with pool:
        conn = await pool.acquire(ep)
        text = repr(pool)
        assert text.startswith("<conpool.Pool open")
        assert "endpoints=1" in text and "active=1" in text and "idle=0" in text
        assert "waiting=0" in text and "4/endpoint" in text
        await pool.release(conn)
        assert "active=0" in repr(pool) and "idle=1" in repr(pool)
        conn_text = repr(conn)
        assert conn_text.startswith("<conpool.Connection")
        assert str(ep) in conn_text and f"#{conn.id}" in conn_text
    assert "closed" in repr(pool)


# --------------------------------------------------------------------------
# Misuse and closing


async def test_acquire_outside_async_with(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    pool = conpool.Pool()
    with pytest.raises(RuntimeError, match="async with"):
        await pool.acquire(ep)
    async with pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"in") == b"in"
    with pytest.raises(conpool.PoolClosed):
        await pool.acquire(ep)
    with pytest.raises(conpool.PoolClosed):
        await pool.acquire(conpool.Endpoint("127.0.0.1", echo_server.port + 1))
    await eventually(lambda: echo_server.current == 0, what="pool exit closed the connection")


async def test_pool_exit_closes_every_socket(echo_server: EchoServer) -> None:
    # Once `async with Pool()` is over, no socket of the pool is open: the
    # event loop may stop right after (asyncio.run), and a socket left to a
    # close callback then leaks until garbage collection.
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        async with AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(pool.connection(ep)) for _ in range(3)]
            for conn in conns:
                assert await echo(conn, b"x") == b"x"
            inodes = {socket_inode(conn) for conn in conns}
        assert inodes <= socket_inodes()
    assert not inodes & socket_inodes()


async def test_acquire_after_aclose(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        async with pool.connection(ep):
            pass
        await pool.aclose()
        await pool.aclose()  # idempotent
        with pytest.raises(conpool.PoolClosed):
            await pool.acquire(ep)
        with pytest.raises(conpool.PoolClosed):
            async with pool.connection(ep):
                pass  # pragma: no cover
        assert pool.stats().closed
        await eventually(lambda: echo_server.current == 0, what="idle connection closed")


@pytest.mark.parametrize("via", VIA)
async def test_aclose_fails_waiters_and_closes_active_on_release(
    echo_server: EchoServer, via: str
) -> None:
    ep = endpoint(echo_server)
    failures: list[BaseException] = []

    async def waiter() -> None:
        try:
            await take_and_give_back(pool, ep, via)
        except conpool.PoolClosed as exc:
            failures.append(exc)

    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        holder = await pool.acquire(ep)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(waiter)
                await eventually(lambda: pool.stats().waiting == 3)
                await pool.aclose()
        assert len(failures) == 3
        # The connection in use still works until it is given back ...
        assert await echo(holder, b"still") == b"still"
        assert echo_server.current == 1
        await pool.release(holder)
        # ... and is closed, not kept, when it is.
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].closed) == (0, 1)
        await eventually(lambda: echo_server.current == 0, what="released connection closed")


class _Unpooled(conpool.Connection):
    """A Connection no pool registered (only a subclass can make one)."""

    def _usable(self, idle: float) -> bool:
        return True

    def _close_now(self) -> None:
        self._closed = True

    def _closer(self) -> Callable[[], None]:
        return lambda: None

    async def send(self, item: bytes) -> None:
        raise NotImplementedError

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise NotImplementedError

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self._closed = True


async def test_release_misuse(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool, conpool.Pool() as other:
        with pytest.raises(TypeError):
            await pool.release(object())  # type: ignore[arg-type]
        async with await anyio.connect_tcp(echo_server.host, echo_server.port) as stream:
            with pytest.raises(TypeError):
                await pool.release(stream)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="does not belong to this pool"):
            await pool.release(_Unpooled(ep, ("127.0.0.1", ep.port)))
        conn = await pool.acquire(ep)
        with pytest.raises(ValueError, match="does not belong to this pool"):
            await other.release(conn)
        await pool.release(conn)
        with pytest.raises(RuntimeError, match="already released"):
            await pool.release(conn)
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].created) == (1, 1)
        async with pool.connection(ep) as again:
            assert again is conn
            assert await echo(again, b"fine") == b"fine"


async def test_exception_in_block_closes_connection(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        with pytest.raises(ZeroDivisionError):
            async with pool.connection(ep) as conn:
                await conn.send(b"half an exchange")
                1 / 0  # noqa: B018
        first = conn.id
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].closed) == (0, 1)
        await eventually(lambda: echo_server.current == 0, what="broken connection closed")
        async with pool.connection(ep) as conn:
            assert conn.id != first
            assert await echo(conn, b"new") == b"new"
        assert pool.stats().endpoints[ep].created == 2


async def test_aclose_in_block_is_not_reused(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"x") == b"x"
            await conn.aclose()
        first = conn.id
        s = check_quiet(pool)
        assert (s.idle, s.endpoints[ep].closed, s.endpoints[ep].reused) == (0, 1, 0)
        async with pool.connection(ep) as conn:
            assert conn.id != first
            assert await echo(conn, b"y") == b"y"
        assert echo_server.accepted == 2


# --------------------------------------------------------------------------
# The Connection object


async def test_connection_attributes(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        before = time.monotonic()
        async with pool.connection(ep) as conn:
            assert isinstance(conn, conpool.Connection)
            assert isinstance(conn, anyio.abc.ByteStream)
            assert conn.endpoint == ep
            assert conn.address == ("127.0.0.1", echo_server.port)
            assert before <= conn.created_at <= time.monotonic()
            assert conn.uses == 1
            assert isinstance(conn.id, int)
            assert conn.extra(SocketAttribute.remote_address) == ("127.0.0.1", echo_server.port)
            assert conn.extra(SocketAttribute.remote_port) == echo_server.port
            local = conn.extra(SocketAttribute.local_address)
            assert isinstance(local, tuple)
            await eventually(lambda: echo_server.accepted == 1)
            assert echo_server.peer_ports == [local[1]]
            first_id, created = conn.id, conn.created_at
        async with pool.connection(ep) as conn:
            assert (conn.id, conn.created_at, conn.uses) == (first_id, created, 2)
        async with pool.connection(conpool.Endpoint("127.0.0.1", echo_server.port)) as conn:
            assert conn.id == first_id  # equal endpoints are the same pool key


@pytest.mark.parametrize("size", [1 << 20])
async def test_large_payload_round_trip(echo_server: EchoServer, size: int) -> None:
    ep = endpoint(echo_server)
    payload = bytes(range(256)) * (size // 256)
    received = bytearray()

    async def send_all(conn: conpool.Connection) -> None:
        view = memoryview(payload)
        for offset in range(0, size, 64 * 1024):
            await conn.send(bytes(view[offset : offset + 64 * 1024]))

    async def receive_all(conn: conpool.Connection) -> None:
        while len(received) < size:
            received.extend(await conn.receive())

    async with conpool.Pool() as pool:
        for _ in range(2):
            received.clear()
            with anyio.fail_after(20):
                async with pool.connection(ep) as conn, anyio.create_task_group() as tg:
                    tg.start_soon(receive_all, conn)
                    await send_all(conn)
            assert bytes(received) == payload
        # One big exchange at a time leaves the connection reusable.
        s = check_quiet(pool)
        assert (s.endpoints[ep].created, s.endpoints[ep].reused) == (1, 1)
