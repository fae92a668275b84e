"""Per-call options of ``acquire()`` and ``connection()``: ``timeout=``,
``connect_timeout=`` and ``fresh=True``, on asyncio, uvloop and trio."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import anyio
import pytest

import conpool
from helpers_pool import check_consistent, check_quiet, echo, eventually
from servers import EchoServer

pytestmark = pytest.mark.anyio


def endpoint(server: EchoServer) -> conpool.Endpoint:
    return conpool.Endpoint(server.host, server.port)


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, int]]:
    """A TCP listener that accepts (in the kernel's backlog) and never speaks:
    a TLS handshake against it stalls until the client gives up."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()
    finally:
        sock.close()


# --------------------------------------------------------------------------
# timeout=


@pytest.mark.parametrize("via", ["acquire", "lease"])
async def test_timeout_overrides_no_acquire_timeout(echo_server: EchoServer, via: str) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1)
    async with conpool.Pool(config) as pool:
        held = await pool.acquire(ep)
        start = time.monotonic()
        with pytest.raises(conpool.PoolTimeout, match=r"within timeout=0\.2 s"):
            if via == "acquire":
                await pool.acquire(ep, timeout=0.2)
            else:
                async with pool.connection(ep, timeout=0.2):
                    pass
        assert 0.15 <= time.monotonic() - start < 5.0
        assert pool.stats().waiting == 0
        await pool.release(held)
        check_quiet(pool)


async def test_timeout_none_overrides_config(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=0.05)
    async with conpool.Pool(config) as pool:
        held = await pool.acquire(ep)

        async def give_back_later() -> None:
            await anyio.sleep(0.3)
            await pool.release(held)

        async with anyio.create_task_group() as tg:
            tg.start_soon(give_back_later)
            conn = await pool.acquire(ep, timeout=None)
        assert conn is held
        await pool.release(conn)
        # Without the option the config's timeout still applies.
        held = await pool.acquire(ep)
        with pytest.raises(conpool.PoolTimeout, match=r"acquire_timeout=0\.05 s"):
            await pool.acquire(ep)
        await pool.release(held)
        check_quiet(pool)


async def test_timeout_zero_fails_at_once_when_full(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        async with pool.connection(ep):
            with pytest.raises(conpool.PoolTimeout):
                await pool.acquire(ep, timeout=0)
        # A free connection is handed out whatever the timeout.
        async with pool.connection(ep, timeout=0) as conn:
            assert await echo(conn, b"x") == b"x"
        check_quiet(pool)


# --------------------------------------------------------------------------
# connect_timeout=


async def test_connect_timeout_per_call(silent_listener: tuple[str, int]) -> None:
    host, port = silent_listener
    tls = conpool.TLS(ssl.create_default_context(), server_name="pool.test")
    ep = conpool.Endpoint(host, port, tls=tls)
    config = conpool.Config(connect_timeout=30.0, connect_retries=0)
    async with conpool.Pool(config) as pool:
        start = time.monotonic()
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep, connect_timeout=0.3)
        assert 0.25 <= time.monotonic() - start < 10.0
        assert "0.3" in str(info.value)
        with pytest.raises(conpool.ConnectError):
            async with pool.connection(ep, connect_timeout=0.2):
                pass
        check_quiet(pool)


# --------------------------------------------------------------------------
# fresh=True


async def test_fresh_never_reuses_the_idle_connection(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        async with pool.connection(ep) as first:
            assert await echo(first, b"a") == b"a"
        async with pool.connection(ep, fresh=True) as second:
            assert second is not first
            assert await echo(second, b"b") == b"b"
        conn = await pool.acquire(ep, fresh=True)
        assert conn is not first and conn is not second
        await pool.release(conn)
        await eventually(lambda: echo_server.accepted == 3)
        stats = check_quiet(pool)
        assert stats.endpoints[ep].idle == 3


async def test_fresh_at_the_limit_closes_an_idle_one(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        old = await pool.acquire(ep)
        await pool.release(old)
        new = await pool.acquire(ep, fresh=True)
        assert new is not old
        assert old.closed
        assert await echo(new, b"z") == b"z"
        await pool.release(new)
        stats = check_quiet(pool)
        assert stats.endpoints[ep].closed == 1


async def test_fresh_waits_for_a_slot_and_dials(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        held = await pool.acquire(ep)
        got: list[conpool.Connection] = []

        async def fresh_one() -> None:
            got.append(await pool.acquire(ep, fresh=True, timeout=10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(fresh_one)
            await eventually(lambda: pool.stats().waiting == 1)
            # Released for reuse, but the waiter asked for a new one.
            await pool.release(held)
        assert got[0] is not held
        assert held.closed
        assert await echo(got[0], b"q") == b"q"
        await pool.release(got[0])
        check_quiet(pool)


async def test_fresh_cancelled_while_waiting_leaks_nothing(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        held = await pool.acquire(ep)
        with anyio.move_on_after(0.1):
            await pool.acquire(ep, fresh=True)
        check_consistent(pool)
        assert pool.stats().waiting == 0
        await pool.release(held)
        async with pool.connection(ep) as conn:
            assert conn is held
        check_quiet(pool)


# --------------------------------------------------------------------------
# Validation: on every call, whether or not a connection is free


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
        ({"timeout": True}, TypeError, "timeout"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout"),
        ({"connect_timeout": -2.0}, ValueError, "connect_timeout"),
        ({"connect_timeout": b"1"}, TypeError, "connect_timeout"),
        ({"fresh": 1}, TypeError, "fresh"),
        ({"fresh": "yes"}, TypeError, "fresh"),
        ({"timout": 1.0}, TypeError, "unexpected keyword argument 'timout'"),
    ],
)
async def test_bad_options_are_refused(
    echo_server: EchoServer, options: dict[str, object], error: type[Exception], name: str
) -> None:
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        async with pool.connection(ep):
            pass  # one idle connection: the check must not depend on it
        with pytest.raises(error, match=name):
            await pool.acquire(ep, **options)  # type: ignore[arg-type]
        with pytest.raises(error, match=name):
            async with pool.connection(ep, **options):  # type: ignore[arg-type]
                pass
        check_quiet(pool)


async def test_options_repeated_and_changed_are_each_applied(echo_server: EchoServer) -> None:
    """The pool keeps the last timeouts it checked (by identity, for the
    httpx transport's every request): the same objects again, and then
    others, each get their own checks and their own limits."""
    ep = endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1)
    async with conpool.Pool(config) as pool:
        held = await pool.acquire(ep)
        first = 0.05
        for seconds, shown in [(first, "0.05"), (first, "0.05"), (0.1, "0.1"), (first, "0.05")]:
            with pytest.raises(conpool.PoolTimeout, match=rf"within timeout={shown} s"):
                await pool.acquire(ep, timeout=seconds, connect_timeout=5.0)
        # A bad value right after a good one is still refused, and so is
        # True after 1 (equal, not the same).
        with pytest.raises(ValueError, match="connect_timeout"):
            await pool.acquire(ep, timeout=first, connect_timeout=0)
        await pool.release(held)
        one = 1
        async with pool.connection(ep, timeout=one):
            pass
        with pytest.raises(TypeError, match="timeout"):
            await pool.acquire(ep, timeout=True)
        check_quiet(pool)


async def test_options_lease_runs_the_reset_hook(echo_server: EchoServer) -> None:
    """A lease with options on a pool with Config.reset resets on exit as
    the plain lease does."""
    resets: list[int] = []

    async def reset(conn: conpool.Connection) -> bool:
        resets.append(conn.id)
        return True

    ep = endpoint(echo_server)
    async with conpool.Pool(conpool.Config(reset=reset)) as pool:
        async with pool.connection(ep, timeout=5) as conn:
            assert await echo(conn, b"r") == b"r"
        async with pool.connection(ep) as again:
            assert again is conn
        assert resets == [conn.id, conn.id]
        check_quiet(pool)
