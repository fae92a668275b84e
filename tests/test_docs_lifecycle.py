"""docs/lifecycle.md's examples run as written: the on_connect and reset
functions against a real redis-server with a password, the socket options
read back from the pooled socket, and the Unix endpoint spellings."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conpool
from servers import RedisServer, socket_directory

pytestmark = [pytest.mark.realserver, pytest.mark.anyio]

DOC = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"


def example(containing: str) -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if containing in b]
    return code


def run(code: str, **names: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {"conpool": conpool, **names}
    exec(compile(code, str(DOC), "exec"), scope)  # the page's own example
    return scope


@pytest.fixture
def redis_s3cret() -> Iterator[RedisServer]:
    with (
        socket_directory() as directory,
        RedisServer(directory / "redis", password="s3cret") as server,
    ):
        yield server


async def test_the_on_connect_and_reset_examples(redis_s3cret: RedisServer) -> None:
    login = run(example("async def login"))["login"]
    back_to_db_2 = run(example("async def back_to_db_2"))["back_to_db_2"]
    ep = conpool.Endpoint(redis_s3cret.host, redis_s3cret.port)
    config = conpool.Config(on_connect=login, reset=back_to_db_2)
    async with conpool.Pool(config) as pool:
        for _ in range(2):
            async with pool.connection(ep) as conn:
                await conn.send(b"CLIENT GETNAME\r\n")
                assert await conn.receive() == b"$%d\r\napi-%d\r\n" % (
                    len(b"api-%d" % conn.id),
                    conn.id,
                )
        assert pool.stats().endpoints[ep].created == 1


async def test_the_on_connect_example_against_another_password() -> None:
    login = run(example("async def login"))["login"]
    with (
        socket_directory() as directory,
        RedisServer(directory / "redis", password="another") as server,
    ):
        ep = conpool.Endpoint(server.host, server.port)
        async with conpool.Pool(conpool.Config(on_connect=login)) as pool:
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(ep)
        assert "redis said" in str(info.value) and "running on_connect" in str(info.value)
        assert isinstance(info.value.errors[0], RuntimeError)


async def test_the_socket_options_example() -> None:
    scope = run(example("socket_options=["), socket=socket)
    config: conpool.Config = scope["config"]
    assert config.local_address == "10.0.0.5"
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in config.socket_options


def test_the_unix_examples() -> None:
    scope = run(example("Endpoint.unix("), context=None)
    assert scope["redis"] == scope["same"]
    assert str(scope["docker"]) == "unix:/run/docker-tls.sock"
    assert scope["docker"].server_name == "docker.internal"


async def test_the_floor_example() -> None:
    code = example("min_idle=4")
    assert "prewarm" in code
    config_line = code.splitlines()[0]
    config = run(config_line)["config"]
    assert (config.min_idle, config.max_idle_time) == (4, 30.0)
