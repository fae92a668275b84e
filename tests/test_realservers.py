"""The pool against real nginx and redis-server: reuse, limits and stale connections,
seen from the server's side (nginx's access log, redis's ``CLIENT LIST``).

The clients are the ones from examples/ (the h11 GET and the RESP command), so
these tests also show the examples hold up against servers that close connections.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

import conpool
from servers import NginxServer, RedisServer

pytestmark = [pytest.mark.realserver, pytest.mark.anyio]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"conpool_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Response = tuple[int, list[tuple[bytes, bytes]], bytes]
get: Callable[[conpool.Pool, conpool.Endpoint, str], Awaitable[Response]]
get = load_example("http11").get
redis_ping = load_example("redis_ping")
command: Callable[..., Coroutine[Any, Any, object]] = redis_ping.command

# TCP states as /proc/net/tcp writes them.
TCP_ESTABLISHED = "01"
TCP_CLOSE_WAIT = "08"
TCP_LAST_ACK = "09"
SERVER_CLOSED = {TCP_CLOSE_WAIT, TCP_LAST_ACK, None}


def tcp_state(local_port: int, remote_port: int) -> str | None:
    """The kernel's state of our IPv4 socket from *local_port* to *remote_port*, if any."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if (
            int(local.split(":")[1], 16) == local_port
            and int(remote.split(":")[1], 16) == remote_port
        ):
            return state
    return None


def closes(tracer: conpool.Tracer, reason: str) -> int:
    """How many connections the pool closed for *reason* (the trace event's detail)."""
    return sum(1 for e in tracer.events() if e.kind == "conn.close" and e.detail == reason)


def limit(n: int) -> conpool.Config:
    return conpool.Config(max_connections_per_endpoint=n)


# -- nginx ---------------------------------------------------------------------------


async def test_sequential_gets_reuse_one_connection(nginx: NginxServer) -> None:
    endpoint = conpool.Endpoint(nginx.host, nginx.port)
    async with conpool.Pool(limit(1)) as pool:
        for _ in range(50):
            status, _headers, body = await get(pool, endpoint, "/")
            assert (status, body) == (200, b"ok\n")
        stats = pool.stats().endpoints[endpoint]
    assert (stats.created, stats.reused) == (1, 49)
    lines = nginx.wait_for_log(50)
    # One nginx connection carried all fifty requests, numbered 1..50 by nginx itself.
    assert len({line.conn for line in lines}) == 1
    assert [line.req for line in lines] == list(range(1, 51))


async def test_concurrent_gets_stay_within_the_limit(nginx: NginxServer) -> None:
    endpoint = conpool.Endpoint(nginx.host, nginx.port)
    statuses: list[int] = []

    async def client(pool: conpool.Pool) -> None:
        for _ in range(10):
            status, _headers, _body = await get(pool, endpoint, "/")
            statuses.append(status)

    async with conpool.Pool(limit(4)) as pool:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(client, pool)
        stats = pool.stats().endpoints[endpoint]
    assert statuses == [200] * 160
    lines = nginx.wait_for_log(160)
    assert len(lines) == 160
    connections = {line.conn for line in lines}
    assert len(connections) == stats.created <= 4
    assert stats.created + stats.reused == 160


async def test_keepalive_requests_closes_and_the_pool_redials(tmp_path: Path) -> None:
    with NginxServer(tmp_path / "nginx", keepalive_requests=5) as nginx:
        endpoint = conpool.Endpoint(nginx.host, nginx.port)
        tracer = conpool.Tracer()
        async with conpool.Pool(limit(1), tracer=tracer) as pool:
            for i in range(1, 21):
                status, headers, _body = await get(pool, endpoint, "/")
                assert status == 200
                # nginx announces the end on the 5th response of each connection.
                closing = (b"connection", b"close") in headers
                assert closing == (i % 5 == 0), (i, headers)
            stats = pool.stats().endpoints[endpoint]
        lines = nginx.wait_for_log(20)
    # The client closed each announced connection and the pool dialled a fresh one.
    assert (stats.created, stats.reused, stats.closed) == (4, 16, 4)
    closed = [e.detail for e in tracer.events() if e.kind == "conn.close"]
    assert len(closed) == 4 and "stale" not in closed  # closed by the client, not found dead
    assert [line.req for line in lines] == [1, 2, 3, 4, 5] * 4
    assert len({line.conn for line in lines}) == 4


async def test_keepalive_requests_under_concurrency(tmp_path: Path) -> None:
    with NginxServer(tmp_path / "nginx", keepalive_requests=5) as nginx:
        endpoint = conpool.Endpoint(nginx.host, nginx.port)
        statuses: list[int] = []

        async def client(pool: conpool.Pool) -> None:
            for _ in range(10):
                status, _headers, _body = await get(pool, endpoint, "/")
                statuses.append(status)

        async with conpool.Pool(limit(2)) as pool:
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(client, pool)
            stats = pool.stats().endpoints[endpoint]
        lines = nginx.wait_for_log(40)
    assert statuses == [200] * 40  # no user-visible error
    per_conn: dict[int, list[int]] = {}
    for line in lines:
        per_conn.setdefault(line.conn, []).append(line.req)
    assert len(per_conn) == stats.created
    for reqs in per_conn.values():
        assert reqs == list(range(1, len(reqs) + 1)) and len(reqs) <= 5
    # Connections that reached nginx's limit were closed; the rest are idle in the pool.
    assert sum(len(reqs) == 5 for reqs in per_conn.values()) == stats.closed >= 6
    assert stats.idle == stats.created - stats.closed <= 2
    assert stats.connect_failures == 0


async def test_server_idle_timeout_is_detected(tmp_path: Path) -> None:
    with NginxServer(tmp_path / "nginx", keepalive_timeout=1.0) as nginx:
        endpoint = conpool.Endpoint(nginx.host, nginx.port)
        tracer = conpool.Tracer()
        async with conpool.Pool(tracer=tracer) as pool:
            status, _headers, _body = await get(pool, endpoint, "/")
            assert status == 200
            (first,) = nginx.wait_for_log(1)
            assert tcp_state(first.remote_port, nginx.port) == TCP_ESTABLISHED
            # Idle in the pool for 1.5 s: nginx's 1 s keepalive_timeout closes it, and
            # our side of the socket is left half-closed (CLOSE_WAIT) or, if the
            # client already reacted, closing (LAST_ACK) or gone.
            await anyio.sleep(1.5)
            for _ in range(60):  # up to 3 s more: a loaded machine may run nginx's timer late
                if tcp_state(first.remote_port, nginx.port) in SERVER_CLOSED:
                    break
                await anyio.sleep(0.05)
            assert tcp_state(first.remote_port, nginx.port) in SERVER_CLOSED
            assert pool.stats().endpoints[endpoint].idle == 1  # still in the pool

            status, _headers, body = await get(pool, endpoint, "/")
            assert (status, body) == (200, b"ok\n")
            stats = pool.stats().endpoints[endpoint]
        first, second = nginx.wait_for_log(2)
    # The pool saw the dead connection before handing it out and dialled a new one.
    assert closes(tracer, "stale") == 1
    assert (stats.created, stats.reused, stats.closed) == (2, 0, 1)
    assert second.conn != first.conn and second.req == 1


# -- redis ---------------------------------------------------------------------------


async def test_redis_concurrent_pings_within_the_limit(redis: RedisServer) -> None:
    endpoint = conpool.Endpoint(*redis.address)
    replies: list[object] = []

    async def client(pool: conpool.Pool) -> None:
        replies.extend([await command(pool, endpoint, "PING") for _ in range(10)])

    async with conpool.Pool(limit(5)) as pool:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(client, pool)
        client_list = await command(pool, endpoint, "CLIENT", "LIST")
        stats = pool.stats().endpoints[endpoint]
    assert replies == ["PONG"] * 200
    assert isinstance(client_list, bytes)
    clients = client_list.decode().splitlines()
    # Every client redis knows is one of the pool's, and there are at most five.
    assert 1 <= len(clients) == stats.created <= 5, clients
    assert stats.created + stats.reused == 201


async def test_redis_killed_connections_are_detected(redis: RedisServer) -> None:
    endpoint = conpool.Endpoint(*redis.address)
    tracer = conpool.Tracer()
    async with conpool.Pool(limit(5), tracer=tracer) as pool:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(command, pool, endpoint, "PING")
        idle = pool.stats().endpoints[endpoint].idle
        assert idle >= 1

        # From outside the pool, drop every other client: the pool's idle connections.
        async with await anyio.connect_tcp(*redis.address) as admin:
            await admin.send(b"CLIENT KILL TYPE normal SKIPME yes\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += await admin.receive()
        assert reply == f":{idle}\r\n".encode()

        assert await command(pool, endpoint, "PING") == "PONG"
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(command, pool, endpoint, "PING")
        stats = pool.stats().endpoints[endpoint]
    # Every killed connection was found dead in the pool, none was handed out.
    assert closes(tracer, "stale") == idle
    assert stats.closed == idle
    assert stats.connect_failures == 0
