"""The programs in examples/ run as a newcomer would run them, and their functions work.

Each example runs as a subprocess (``sys.executable``) against a server from a fixture,
on every backend, and must exit 0 with output that shows the work was done; the
nginx and redis servers confirm it from their side.  The examples' functions are
also loaded with importlib and called inside the test's own event loop.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import anyio
import pytest

import conpool
from servers import EchoServer, NginxServer, RedisServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BACKENDS = ["asyncio", "uvloop", "trio"]


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"conpool_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


echo = load_example("echo")
http11 = load_example("http11")
redis_ping = load_example("redis_ping")


def run_example(name: str, *args: str) -> str:
    """Run an example to completion; return its stdout after checking it succeeded quietly."""
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr == "", result.stderr  # no traceback, no warning, no leaked socket
    return result.stdout


def counts(line_start: str, output: str) -> dict[str, int]:
    """The ``key=number`` pairs of the first output line starting with *line_start*."""
    for line in output.splitlines():
        if line.startswith(line_start):
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    raise AssertionError(f"no line starting with {line_start!r} in:\n{output}")


def redis_get(server: RedisServer, key: str) -> bytes:
    """GET *key* on a connection of our own, not through any pool."""
    with socket.create_connection(server.address, timeout=2) as sock:
        sock.sendall(f"GET {key}\r\n".encode())
        reply = b""
        while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 2:
            chunk = sock.recv(4096)
            assert chunk, reply
            reply += chunk
    return reply


# -- as subprocesses ---------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_echo_example_serves_itself(backend: str) -> None:
    out = run_example("echo", "--backend", backend)
    stats = counts("127.0.0.1:", out)
    assert "100 echoes" in out
    assert 1 <= stats["created"] <= 5  # Config(max_connections_per_endpoint=5)
    assert stats["created"] + stats["reused"] == 100
    per_address = counts("  127.0.0.1:", out)
    assert per_address == {"created": stats["created"], "idle": stats["created"], "failures": 0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_echo_example_against_a_server(backend: str, echo_server: EchoServer) -> None:
    out = run_example("echo", "--port", str(echo_server.port), "--backend", backend)
    stats = counts(f"127.0.0.1:{echo_server.port}:", out)
    assert stats["created"] + stats["reused"] == 100
    # The server saw exactly the connections the pool says it made: the rest were reuse.
    assert echo_server.accepted == stats["created"] <= 5
    assert echo_server.errors == []


@pytest.mark.realserver
@pytest.mark.parametrize("backend", BACKENDS)
def test_http11_example(backend: str, nginx: NginxServer) -> None:
    out = run_example("http11", nginx.url("/"), "-n", "20", "-c", "4", "--backend", backend)
    assert "status 200: 20 responses" in out
    assert "status" not in out.replace("status 200: 20 responses", "")  # no other status
    stats = counts(f"127.0.0.1:{nginx.port}:", out)
    assert stats["created"] + stats["reused"] == 20
    lines = nginx.wait_for_log(20)
    assert len(lines) == 20
    connections = {line.conn for line in lines}
    # Four tasks never need more than four connections; nginx numbers its requests
    # per connection, so req=2 and beyond prove the reuse from the server's side.
    assert len(connections) == stats["created"] <= 4
    assert max(line.req for line in lines) >= 2
    for conn in connections:
        reqs = sorted(line.req for line in lines if line.conn == conn)
        assert reqs == list(range(1, len(reqs) + 1))


@pytest.mark.realserver
@pytest.mark.parametrize("backend", BACKENDS)
def test_httpx_balanced_example(backend: str) -> None:
    out = run_example("httpx_balanced", "-n", "400", "-c", "64", "--backend", backend)
    assert "400 requests from 64 tasks" in out
    shares = re.findall(r"(127\.0\.0\.1[1-4]):\s+(\d+) requests", out)
    assert len(shares) == 4, out
    assert sum(int(n) for _, n in shares) == 400, out
    for _, n in shares:
        assert 80 <= int(n) <= 120, out  # 25 % +- 5 %
    reused = int(re.search(r"reused=(\d+)", out)[1])  # type: ignore[index]
    assert reused > 0, out


@pytest.mark.parametrize("backend", BACKENDS)
def test_redis_example(backend: str, redis: RedisServer) -> None:
    out = run_example("redis_ping", "--port", str(redis.port), "--backend", backend)
    assert "PING -> PONG" in out
    assert "SET greeting -> OK" in out
    assert "GET greeting -> b'hello'" in out
    assert "100 concurrent PINGs -> 100 PONG" in out
    stats = counts(f"127.0.0.1:{redis.port}:", out)
    assert 1 <= stats["created"] <= 5
    assert stats["created"] + stats["reused"] == 103
    assert redis_get(redis, "greeting") == b"$5\r\nhello\r\n"  # the SET really happened


# -- the functions, in this process --------------------------------------------------


@pytest.mark.anyio
async def test_echo_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    await echo.main("127.0.0.1", None)  # starts, uses and stops its own listener
    out = capsys.readouterr().out
    assert "100 echoes" in out
    assert counts("  127.0.0.1:", out)["failures"] == 0


@pytest.mark.anyio
async def test_echo_run(echo_server: EchoServer) -> None:
    stats: conpool.PoolStats = await echo.run(
        conpool.Endpoint(*echo_server.address), tasks=3, each=7
    )
    (ep,) = stats.endpoints.values()
    assert ep.created + ep.reused == 21
    assert ep.created == echo_server.accepted <= 3
    assert ep.idle == ep.created  # every connection came back to the pool


@pytest.mark.anyio
@pytest.mark.realserver
async def test_http11_get(nginx: NginxServer) -> None:
    endpoint = conpool.Endpoint(nginx.host, nginx.port)
    async with conpool.Pool() as pool:
        for _ in range(3):
            status, headers, body = await http11.get(pool, endpoint, "/")
            assert (status, body) == (200, b"ok\n")
            assert (b"content-length", b"3") in headers
        status, _headers, body = await http11.get(pool, endpoint, "/?q=1")
        assert (status, body) == (200, b"ok\n")
        stats = pool.stats().endpoints[endpoint]
    assert (stats.created, stats.reused, stats.closed) == (1, 3, 0)
    lines = nginx.wait_for_log(4)
    assert [(line.conn, line.req) for line in lines] == [(lines[0].conn, n) for n in (1, 2, 3, 4)]


@pytest.mark.anyio
@pytest.mark.realserver
async def test_redis_command(redis: RedisServer) -> None:
    endpoint = conpool.Endpoint(*redis.address)
    command = redis_ping.command
    async with conpool.Pool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        assert await command(pool, endpoint, "PING") == "PONG"
        assert await command(pool, endpoint, "SET", "k", b"v\r\nwith crlf") == "OK"
        assert await command(pool, endpoint, "GET", "k") == b"v\r\nwith crlf"
        assert await command(pool, endpoint, "GET", "missing") is None
        assert await command(pool, endpoint, "INCR", "n") == 1
        assert await command(pool, endpoint, "RPUSH", "l", "a", "b") == 2
        assert await command(pool, endpoint, "LRANGE", "l", "0", "-1") == [b"a", b"b"]
        with pytest.raises(redis_ping.RedisError, match="WRONGTYPE"):
            await command(pool, endpoint, "INCR", "l")
        # An error reply is a whole reply: the connection stays in step and is reused.
        assert await command(pool, endpoint, "PING") == "PONG"
        stats = pool.stats().endpoints[endpoint]
    assert (stats.created, stats.reused, stats.closed) == (1, 8, 0)


@pytest.mark.anyio
@pytest.mark.realserver
async def test_redis_main_in_process(
    redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with anyio.fail_after(10):
        await redis_ping.main(*redis.address)
    out = capsys.readouterr().out
    assert "100 concurrent PINGs -> 100 PONG" in out
