"""``Config.on_connect`` and ``Config.reset`` against a real redis-server, over
TCP and over its Unix socket, on every backend: AUTH and SELECT on each new
connection, names that CLIENT LIST shows, a wrong password's story, and a
reset that runs before every reuse."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSAttribute

import conpool
from helpers_pool import check_consistent, check_quiet, echo, eventually
from servers import RedisServer, TLSEchoServer, socket_directory

pytestmark = [pytest.mark.realserver, pytest.mark.anyio]

PASSWORD = "s3cret-pw"
ORDER = ("connect.complete", "on_connect.failed", "conn.close", "acquire.failed")


@pytest.fixture
def redis_auth() -> Iterator[RedisServer]:
    """redis-server with ``--requirepass`` on TCP and on a Unix socket."""
    with socket_directory() as directory:
        server = RedisServer(directory / "redis", password=PASSWORD, unix_socket=directory / "r.s")
        with server:
            yield server


def endpoint(redis: RedisServer, transport: str) -> conpool.Endpoint:
    if transport == "unix":
        assert redis.unix_socket is not None
        return conpool.Endpoint.unix(str(redis.unix_socket))
    return conpool.Endpoint(redis.host, redis.port)


async def resp(conn: conpool.Connection, *args: str) -> object:
    """One RESP command on ``conn``; its reply (an error reply as RedisReplyError)."""
    parts = [a.encode() for a in args]
    request = f"*{len(parts)}\r\n".encode() + b"".join(
        b"$%d\r\n%s\r\n" % (len(p), p) for p in parts
    )
    await conn.send(request)
    return await read_reply(BufferedByteReceiveStream(conn))


class RedisReplyError(Exception):
    pass


async def read_reply(stream: BufferedByteReceiveStream) -> object:
    line = await stream.receive_until(b"\r\n", 1 << 16)
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else (await stream.receive_exactly(size + 2))[:-2]
    if kind == b"*":
        return [await read_reply(stream) for _ in range(int(rest))]
    raise ValueError(f"not a RESP reply: {line!r}")


def raw(redis: RedisServer, *args: str, db: int = 0) -> bytes:
    """A command on a fresh, authenticated TCP connection of the test's own,
    in database ``db``: its raw reply (AUTH's, SELECT's and QUIT's stripped)."""

    def encode(*parts: str) -> bytes:
        return f"*{len(parts)}\r\n".encode() + b"".join(
            b"$%d\r\n%s\r\n" % (len(p.encode()), p.encode()) for p in parts
        )

    ok = b"+OK\r\n"
    # QUIT makes the server close, which ends the read.
    request = encode("AUTH", PASSWORD) + encode("SELECT", str(db)) + encode(*args) + encode("QUIT")
    reply = redis.command(request, 1 << 24)
    assert reply.startswith(ok + ok) and reply.endswith(ok), reply
    return reply[2 * len(ok) : -len(ok)]


def connections_received(redis: RedisServer) -> int:
    match = re.search(rb"total_connections_received:(\d+)", raw(redis, "INFO", "stats"))
    assert match is not None
    return int(match[1])


def client_names(redis: RedisServer) -> list[str]:
    listing = raw(redis, "CLIENT", "LIST").decode()
    return sorted(m for m in re.findall(r" name=(\S*)", listing) if m)


def authenticate(
    db: int = 2, name_prefix: str = "conpool"
) -> Callable[[conpool.Connection], Awaitable[None]]:
    async def on_connect(conn: conpool.Connection) -> None:
        assert await resp(conn, "AUTH", PASSWORD) == "OK"
        assert await resp(conn, "SELECT", str(db)) == "OK"
        assert await resp(conn, "CLIENT", "SETNAME", f"{name_prefix}-{conn.id}") == "OK"

    return on_connect


@asynccontextmanager
async def pool_with(
    config: conpool.Config, tracer: conpool.Tracer | None = None
) -> AsyncIterator[conpool.Pool]:
    async with conpool.Pool(config, tracer=tracer) as pool:
        yield pool


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_on_connect_authenticates_selects_and_names(
    redis_auth: RedisServer, transport: str
) -> None:
    ep = endpoint(redis_auth, transport)
    tracer = conpool.Tracer()
    config = conpool.Config(on_connect=authenticate(), max_connections_per_endpoint=3)
    async with pool_with(config, tracer) as pool:

        async def set_key(i: int) -> None:
            async with pool.connection(ep) as conn:
                assert await resp(conn, "SET", f"key{i}", f"value{i}") == "OK"
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(set_key, i)
        s = check_consistent(pool).endpoints[ep]
        assert s.created == 3
        ids = sorted(e.conn_id for e in tracer.events() if e.kind == "on_connect.complete")
        assert len(ids) == 3
        # The server names every connection as on_connect named it.
        assert client_names(redis_auth) == sorted(f"conpool-{i}" for i in ids)
        # The keys went to database 2, not 0.
        assert raw(redis_auth, "GET", "key5", db=2) == b"$6\r\nvalue5\r\n"
        assert raw(redis_auth, "GET", "key5") == b"$-1\r\n"
        async with pool.connection(ep) as conn:
            assert await resp(conn, "GET", "key0") == b"value0"
        if transport == "unix":
            assert list(s.addresses) == [str(redis_auth.unix_socket)]
    # Trace order for one connection: connected, then initialised.
    first = ids[0]
    kinds = [e.kind for e in tracer.events() if e.conn_id == first]
    assert kinds.index("connect.complete") < kinds.index("on_connect.complete")


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_wrong_password_fails_once_with_the_story(
    redis_auth: RedisServer, transport: str
) -> None:
    ep = endpoint(redis_auth, transport)

    async def wrong(conn: conpool.Connection) -> None:
        await resp(conn, "AUTH", "not-the-password")

    tracer = conpool.Tracer()
    config = conpool.Config(on_connect=wrong, connect_retries=3, eject_after_failures=1)
    before = connections_received(redis_auth)
    async with pool_with(config, tracer) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            async with pool.connection(ep):
                pass  # pragma: no cover
        error = info.value
        text = str(error)
        lines = text.splitlines()
        assert "WRONGPASS" in lines[0]
        where = f"unix:{redis_auth.unix_socket}" if transport == "unix" else f"tcp:{ep.host}:"
        assert lines[1] == "  running on_connect"
        assert lines[2].startswith(f"  connecting to {where}")
        assert lines[3] == f"  connecting to {ep}"
        assert "retry" not in text  # not retried
        assert error.attempts == 1
        assert isinstance(error.errors[0], RedisReplyError)
        assert isinstance(error.__cause__, RedisReplyError)
        s = check_consistent(pool).endpoints[ep]
        (address,) = s.addresses.values()
        # Counted as the acquire's failure, not the address's: not ejected.
        assert (s.connect_failures, s.created, s.closed, s.active, s.idle) == (1, 1, 1, 0, 0)
        assert (address.failures, address.ejected) == (0, False)
        kinds = [e.kind for e in tracer.events()]
        assert kinds.count("connect.started") == 1
        assert kinds.count("on_connect.failed") == 1
        closes = [e.detail for e in tracer.events() if e.kind == "conn.close"]
        assert closes == ["on_connect"]
        # In the order it happened: connected, the hook failed, closed, the acquire failed.
        assert [k for k in kinds if k in ORDER] == list(ORDER)
    # Exactly one connection reached the server (and one for INFO itself).
    assert connections_received(redis_auth) - before == 2


async def test_on_connect_that_closes_the_connection_fails_the_acquire(
    redis: RedisServer,
) -> None:
    ep = conpool.Endpoint(redis.host, redis.port)

    async def closes(conn: conpool.Connection) -> None:
        await conn.aclose()

    async with pool_with(conpool.Config(on_connect=closes)) as pool:
        with pytest.raises(conpool.ConnectError, match="on_connect closed the connection"):
            await pool.acquire(ep)
        check_consistent(pool)


async def test_on_connect_cancelled_closes_the_connection(redis: RedisServer) -> None:
    ep = conpool.Endpoint(redis.host, redis.port)
    started = anyio.Event()

    async def slow(conn: conpool.Connection) -> None:
        started.set()
        await anyio.sleep(30)

    async with pool_with(conpool.Config(on_connect=slow)) as pool:
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.acquire, ep)
                await started.wait()
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        s = check_consistent(pool).endpoints[ep]
        assert (s.active, s.idle, s.pending, s.closed) == (0, 0, 0, 1)


async def test_prewarm_and_refills_run_on_connect(redis_auth: RedisServer) -> None:
    ep = endpoint(redis_auth, "tcp")
    config = conpool.Config(on_connect=authenticate(name_prefix="warm"), min_idle=2)
    async with pool_with(config) as pool:
        assert await pool.prewarm(ep) == 2
        assert len(client_names(redis_auth)) == 2
        # The server drops every client: the floor comes back, initialised.
        raw(redis_auth, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await eventually(
            lambda: (
                pool.stats().endpoints[ep].refills == 2 and pool.stats().endpoints[ep].idle == 2
            ),
            3.0,
            what="the floor refilled",
        )
        assert len(client_names(redis_auth)) == 2
        async with pool.connection(ep) as conn:
            assert await resp(conn, "PING") == "PONG"  # authenticated


async def test_a_failing_on_connect_backs_off_the_floor(redis: RedisServer) -> None:
    ep = conpool.Endpoint(redis.host, redis.port)
    calls = 0

    async def failing(conn: conpool.Connection) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("configuration error")

    tracer = conpool.Tracer()
    config = conpool.Config(on_connect=failing, min_idle=1, retry_backoff=0.2)
    async with pool_with(config, tracer) as pool:
        with pytest.raises(conpool.ConnectError, match="configuration error"):
            await pool.prewarm(ep)
        await anyio.sleep(1.0)
        s = check_consistent(pool).endpoints[ep]
        # Refills tried, failed, backed off: a few, not hundreds.
        assert 1 <= s.refill_failures <= 6, s
        assert s.refill_failures == calls - 1
        failed = [e for e in tracer.events() if e.kind == "on_connect.failed"]
        assert sum(e.detail.startswith("refill: ") for e in failed) == s.refill_failures


# -- reset ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_reset_runs_before_every_reuse(redis_auth: RedisServer, transport: str) -> None:
    ep = endpoint(redis_auth, transport)
    resets: list[int] = []

    async def reset(conn: conpool.Connection) -> bool:
        # Back to database 2 whatever the last user selected.
        resets.append(conn.id)
        return await resp(conn, "SELECT", "2") == "OK"

    tracer = conpool.Tracer()
    config = conpool.Config(on_connect=authenticate(), reset=reset)
    async with pool_with(config, tracer) as pool:
        async with pool.connection(ep) as conn:
            assert await resp(conn, "SELECT", "5") == "OK"
            assert await resp(conn, "SET", "where", "five") == "OK"
        async with pool.connection(ep) as conn:
            assert await resp(conn, "SET", "where", "two") == "OK"
        again = await pool.acquire(ep)
        await pool.release(again)
        assert resets == [again.id] * 3
        assert pool.stats().endpoints[ep].created == 1
        assert [e.kind for e in tracer.events()].count("reset.complete") == 3
    assert raw(redis_auth, "GET", "where", db=2) == b"$3\r\ntwo\r\n"
    assert raw(redis_auth, "GET", "where", db=5) == b"$4\r\nfive\r\n"


@pytest.mark.parametrize("verdict", ["false", "raises", "none"])
async def test_reset_failure_closes_instead_of_reusing(redis: RedisServer, verdict: str) -> None:
    ep = conpool.Endpoint(redis.host, redis.port)

    async def reset(conn: conpool.Connection) -> bool:
        if verdict == "raises":
            raise RuntimeError("dirty")
        return None if verdict == "none" else False  # type: ignore[return-value]

    tracer = conpool.Tracer()
    async with pool_with(conpool.Config(reset=reset), tracer) as pool:
        ids = []
        for _ in range(3):
            async with pool.connection(ep) as conn:
                assert await resp(conn, "PING") == "PONG"
                ids.append(conn.id)
        assert len(set(ids)) == 3
        s = check_consistent(pool).endpoints[ep]
        assert (s.created, s.closed, s.idle) == (3, 3, 0)
        assert [e.detail for e in tracer.events() if e.kind == "conn.close"] == ["reset"] * 3
        assert [e.kind for e in tracer.events()].count("reset.failed") == 3


async def test_reset_is_skipped_when_the_connection_closes_anyway(redis: RedisServer) -> None:
    ep = conpool.Endpoint(redis.host, redis.port)
    calls = 0

    async def reset(conn: conpool.Connection) -> bool:
        nonlocal calls
        calls += 1
        return True

    config = conpool.Config(reset=reset, max_connection_uses=2)
    async with pool_with(config) as pool:
        for _ in range(2):
            async with pool.connection(ep) as conn:
                assert await resp(conn, "PING") == "PONG"
        assert calls == 1  # the second release used it up: closed, not reset
        with pytest.raises(RuntimeError, match="boom"):
            async with pool.connection(ep) as conn:
                raise RuntimeError("boom")
        assert calls == 1  # an exception closes it: not reset either
        conn = await pool.acquire(ep)
        await conn.aclose()
        await pool.release(conn)
        assert calls == 1
        check_consistent(pool)


async def test_reset_cancelled_closes_the_connection(redis: RedisServer) -> None:
    ep = conpool.Endpoint(redis.host, redis.port)

    async def slow(conn: conpool.Connection) -> bool:
        await anyio.sleep(30)
        return True  # pragma: no cover

    async with pool_with(conpool.Config(reset=slow)) as pool:
        conn = await pool.acquire(ep)
        with anyio.move_on_after(0.1):
            await pool.release(conn)
        s = check_consistent(pool).endpoints[ep]
        assert (s.active, s.idle, s.closed) == (0, 0, 1)


# -- over TLS ---------------------------------------------------------------------


async def test_on_connect_and_reset_over_tls(tls_echo_server: TLSEchoServer) -> None:
    context = tls_echo_server.client_context()
    ep = conpool.Endpoint("localhost", tls_echo_server.port, tls=conpool.TLS(context))
    seen: list[str] = []

    async def greet(conn: conpool.Connection) -> None:
        # Runs on the TLS stream: the handshake is done.
        assert conn.extra(TLSAttribute.tls_version) is not None
        seen.append("on_connect")
        assert await echo(conn, b"HELLO") == b"HELLO"

    async def reset(conn: conpool.Connection) -> bool:
        seen.append("reset")
        return await echo(conn, b"RESET") == b"RESET"

    tracer = conpool.Tracer()
    async with pool_with(conpool.Config(on_connect=greet, reset=reset), tracer) as pool:
        for i in range(3):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"req %d" % i) == b"req %d" % i
        assert seen == ["on_connect", "reset", "reset", "reset"]
        assert check_consistent(pool).endpoints[ep].created == 1
    kinds = [e.kind for e in tracer.events()]
    assert kinds.index("tls.complete") < kinds.index("on_connect.complete")
    assert kinds.count("reset.complete") == 3


async def test_on_connect_failing_over_tls_tells_the_story(
    tls_echo_server: TLSEchoServer,
) -> None:
    context = tls_echo_server.client_context()
    ep = conpool.Endpoint("localhost", tls_echo_server.port, tls=conpool.TLS(context))

    async def refuse(conn: conpool.Connection) -> None:
        raise PermissionError("the greeting was refused")

    async with pool_with(conpool.Config(on_connect=refuse)) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        assert str(info.value).splitlines() == [
            "the greeting was refused",
            "  running on_connect",
            f"  connecting to tcp:127.0.0.1:{tls_echo_server.port}",
            f"  connecting to {ep}",
        ]
        assert isinstance(info.value.errors[0], PermissionError)
        check_quiet(pool)
