"""Fixtures shared by the whole suite: the async backends and the real servers.

Server helpers live in ``servers.py``; tests that need an unusual server (a second
dnsmasq, nginx with TLS) build one from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import (
    POOL_ADDRESSES,
    DnsmasqServer,
    EchoServer,
    NginxServer,
    RedisServer,
    TLSEchoServer,
)


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Run every ``@pytest.mark.anyio`` test on asyncio, asyncio+uvloop and trio."""
    return request.param


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    """A threaded TCP echo server on 127.0.0.1."""
    with EchoServer() as server:
        yield server


@pytest.fixture
def tls_echo_server() -> Iterator[TLSEchoServer]:
    """A threaded TLS echo server on 127.0.0.1, certificate for pool.test, localhost, 127.0.0.1."""
    with TLSEchoServer() as server:
        yield server


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxServer]:
    """nginx answering ``200 ok`` with keep-alive on 127.0.0.1."""
    with NginxServer(tmp_path / "nginx") as server:
        yield server


@pytest.fixture
def nginx4(tmp_path: Path) -> Iterator[NginxServer]:
    """nginx on one port of 127.0.0.11, .12, .13 and .14 (the addresses of pool.test)."""
    with NginxServer(tmp_path / "nginx4", addresses=POOL_ADDRESSES) as server:
        yield server


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server on 127.0.0.1."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[DnsmasqServer]:
    """dnsmasq on 127.0.0.1 answering pool.test with 127.0.0.11-14, TTL 1."""
    with DnsmasqServer(tmp_path / "dnsmasq") as server:
        yield server
