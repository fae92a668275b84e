"""Fixtures shared by the whole suite: the async backends and the real servers,
and the tier of every test (see tests/README.md).

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

#: The test tiers, fastest and most isolated first (tests/README.md): each
#: test carries exactly one as a marker, so ``pytest -m scripted`` runs a tier.
TIERS = ("pure", "scripted", "loopback", "realserver", "root")

#: The tier of a file's tests when they carry no tier marker of their own;
#: any other file is "loopback".  A new file may name its tier with
#: ``pytestmark = pytest.mark.<tier>`` instead.
FILE_TIERS = {
    "test_all_attributes.py": "pure",
    "test_balance.py": "pure",
    "test_config.py": "pure",
    "test_dialplan.py": "pure",
    "test_endpoint.py": "pure",
    "test_imports.py": "pure",
    "test_proxy_pure.py": "pure",
    "test_state.py": "pure",
    "test_state_names.py": "pure",
    "test_scripted.py": "scripted",
    "test_scripted_machine.py": "scripted",
    "test_trio_parked.py": "scripted",
    "test_realservers.py": "realserver",
    "test_faults_root.py": "root",
    "test_budget_core.py": "pure",
    "test_state_floor.py": "pure",
    "test_site.py": "realserver",
}

#: Fixtures that start a server from a Debian package: a test using one is of
#: the real-server tier even when its file does not say so.
REAL_SERVER_FIXTURES = frozenset({"nginx", "nginx4", "redis", "dnsmasq"})


def tier_of(item: pytest.Item) -> str:
    """A test's own tier marker (the most demanding, if several), else its
    file's tier."""
    own = {mark.name for mark in item.iter_markers()} & set(TIERS)
    for tier in reversed(TIERS):
        if tier in own:
            return tier
    tier = FILE_TIERS.get(item.path.name, "loopback")
    if tier == "loopback" and REAL_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "realserver"
    return tier


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        item.add_marker(getattr(pytest.mark, tier))
        item.user_properties.append(("tier", tier))


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
