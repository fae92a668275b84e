"""conpool.httpx.AsyncTransport through real proxies: tinyproxy (HTTP
CONNECT) and microsocks (SOCKS5 with user/password) to nginx on the four
addresses of ``pool.test`` (dnsmasq), through ``httpx.AsyncClient``, on
asyncio, uvloop and trio.

Each proxy binds its outgoing connections to an address of its own
(tinyproxy ``Bind``, microsocks ``-b``), so nginx's log tells, for every
request, which proxy carried it (``remote_addr``; direct requests come from
127.0.0.1) and which target address the pool chose (``server_addr``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

import conpool
import conpool.httpx
from helpers_pool import fd_baseline, fds_back_to
from servers import (
    LOOPBACK,
    POOL_ADDRESSES,
    DnsmasqServer,
    MicrosocksServer,
    NginxServer,
    TinyproxyServer,
    refused_port,
)
from test_balancing import dns_resolver

pytestmark = [pytest.mark.anyio, pytest.mark.realserver]

USER, PASSWORD = "pooluser", "s3cret-pw"

#: The source address of each proxy's connections to the target, as nginx logs it.
SOURCE = {"tinyproxy": "127.0.0.2", "microsocks": "127.0.0.3"}

PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class BoundTinyproxy(TinyproxyServer):
    def argv(self) -> list[str]:
        argv = super().argv()
        with self.conf_path.open("a") as conf:
            conf.write(f"Bind {SOURCE['tinyproxy']}\n")
        return argv


class BoundMicrosocks(MicrosocksServer):
    def argv(self) -> list[str]:
        return [*super().argv(), "-b", SOURCE["microsocks"]]


@contextlib.contextmanager
def proxy_url(kind: str, directory: Path, port: int) -> Iterator[str]:
    """Start the proxy *kind* (allowed to reach *port*); yield its URL."""
    if kind == "tinyproxy":
        with BoundTinyproxy(directory / kind, connect_ports=[port]) as tiny:
            yield tiny.url()
    else:
        with BoundMicrosocks(directory / kind, username=USER, password=PASSWORD) as micro:
            yield micro.url(username=USER, password=PASSWORD)


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable of the machine's own leaks into a test."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


def sources(nginx: NginxServer, n: int) -> Counter[str]:
    """Which source address each of the first *n* requests came from."""
    return Counter(line.remote_addr for line in nginx.wait_for_log(n))


def config(**kwargs: object) -> conpool.Config:
    return conpool.Config(max_connections_per_endpoint=8, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["tinyproxy", "microsocks"])
async def test_proxy_argument_keeps_the_spread(
    kind: str, tmp_path: Path, nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    """proxy=: every request goes through the proxy, and the pool still
    spreads the connections over the four addresses of pool.test."""
    with proxy_url(kind, tmp_path, nginx4.port) as url:
        transport = conpool.httpx.AsyncTransport(
            config=config(), resolver=dns_resolver(dnsmasq), proxy=url
        )
        assert PASSWORD not in repr(transport)
        async with httpx.AsyncClient(transport=transport) as client:
            # Eight at once (each waits in nginx): eight connections.
            gate = anyio.Event()

            async def one() -> None:
                await gate.wait()
                r = await client.get(f"http://pool.test:{nginx4.port}/sleep?s=1")
                assert r.status_code == 200

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(one)
                    gate.set()
            for _ in range(8):
                r = await client.get(f"http://pool.test:{nginx4.port}/")
                assert r.text == "ok\n"
            pool = transport.pool
            assert pool.config.proxy == conpool.Proxy.parse(url)
            assert list(transport.pools) == [pool.config.proxy]
            stats = pool.stats().endpoints[conpool.Endpoint("pool.test", nginx4.port)]
            assert set(stats.addresses) == set(POOL_ADDRESSES), stats.addresses
    lines = nginx4.wait_for_log(16)
    assert Counter(line.remote_addr for line in lines) == {SOURCE[kind]: 16}
    by_address = Counter(line.server_addr for line in lines)
    assert set(by_address) == set(POOL_ADDRESSES), by_address


@pytest.mark.parametrize("kind", ["tinyproxy", "microsocks"])
async def test_proxy_from_the_environment(
    kind: str,
    tmp_path: Path,
    nginx4: NginxServer,
    dnsmasq: DnsmasqServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trust_env: HTTP_PROXY (and ALL_PROXY) carries http requests through
    the proxy, to the address the pool chose; NO_PROXY entries (a
    ``.suffix`` and an IP) go directly, to the direct pool."""
    with proxy_url(kind, tmp_path, nginx4.port) as url:
        variable = "HTTP_PROXY" if kind == "tinyproxy" else "ALL_PROXY"
        monkeypatch.setenv(variable, url)
        monkeypatch.setenv("NO_PROXY", f".example, {POOL_ADDRESSES[1]}, localhost")
        tracer = conpool.Tracer()
        transport = conpool.httpx.AsyncTransport(
            config=config(), resolver=dns_resolver(dnsmasq), tracer=tracer
        )
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(4):
                r = await client.get(f"http://pool.test:{nginx4.port}/")
                assert r.text == "ok\n"
            assert sources(nginx4, 4) == {SOURCE[kind]: 4}
            # The IP in NO_PROXY: direct.
            r = await client.get(f"http://{POOL_ADDRESSES[1]}:{nginx4.port}/")
            assert r.text == "ok\n"
            lines = nginx4.wait_for_log(5)
            assert (lines[4].remote_addr, lines[4].server_addr) == (LOOPBACK, POOL_ADDRESSES[1])
            # Another IP: through the proxy.
            r = await client.get(f"http://{POOL_ADDRESSES[2]}:{nginx4.port}/")
            lines = nginx4.wait_for_log(6)
            assert (lines[5].remote_addr, lines[5].server_addr) == (
                SOURCE[kind],
                POOL_ADDRESSES[2],
            )
            proxy = conpool.Proxy.parse(url)
            assert set(transport.pools) == {None, proxy}
            assert transport.pool is transport.pools[None]
            proxied = transport.pools[proxy]
            assert proxied.config.proxy == proxy
            assert ".example" in proxied.config.no_proxy
            assert PASSWORD not in repr(transport) and PASSWORD not in repr(proxied.config)
            assert PASSWORD not in str(proxied.stats())
        # Both pools trace to the transport's tracer; the proxied connects
        # show their handshake, the direct one none; no credentials anywhere.
        kinds = [e.kind for e in tracer.events()]
        assert kinds.count("proxy.handshake.complete") == 2, kinds
        assert kinds.count("connect.complete") == 3, kinds
        for event in tracer.events():
            assert PASSWORD not in event.detail and USER not in event.detail, event
        # The pools made on first use close with the transport.
        with pytest.raises(httpx.ConnectError, match="closed"):
            await transport.handle_async_request(
                httpx.Request("GET", f"http://pool.test:{nginx4.port}/")
            )


async def test_no_proxy_suffix_goes_direct(
    nginx4: NginxServer, dnsmasq: DnsmasqServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``.test`` suffix in NO_PROXY: pool.test is dialled directly, though
    HTTP_PROXY names a proxy that is down."""
    monkeypatch.setenv("HTTP_PROXY", f"http://{USER}:{PASSWORD}@127.0.0.1:{refused_port()}")
    monkeypatch.setenv("no_proxy", ".test")
    transport = conpool.httpx.AsyncTransport(config=config(), resolver=dns_resolver(dnsmasq))
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.get(f"http://pool.test:{nginx4.port}/")
        assert r.text == "ok\n"
        assert list(transport.pools) == [None]
        # Not in NO_PROXY: through the proxy that is down, named without
        # its credentials.
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/")
        text = str(caught.value)
        assert "127.0.0.1" in text and PASSWORD not in text and USER not in text, text
    assert sources(nginx4, 1) == {LOOPBACK: 1}


async def test_https_proxy_variable_is_for_https_only(
    tmp_path: Path, nginx4: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY applies to https URLs only: an http request goes direct.
    (The TLS connection through it fails at the certificate, which nginx's
    is not trusted for: what matters is that tinyproxy was asked.)"""
    with BoundTinyproxy(tmp_path / "tiny", connect_ports=[nginx4.port]) as tiny:
        monkeypatch.setenv("HTTPS_PROXY", tiny.url())
        transport = conpool.httpx.AsyncTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/")
            assert r.text == "ok\n"
            assert sources(nginx4, 1) == {LOOPBACK: 1}
            # https through the proxy: the tunnel is made (nginx's plain port
            # answers no TLS, so the handshake fails), and tinyproxy logs it.
            with pytest.raises(httpx.HTTPError):
                await client.get(
                    f"https://{POOL_ADDRESSES[0]}:{nginx4.port}/", timeout=httpx.Timeout(5.0)
                )
            assert set(transport.pools) == {None, conpool.Proxy.parse(tiny.url())}
        assert f"CONNECT {POOL_ADDRESSES[0]}:{nginx4.port}" in tiny.logs()


async def test_trust_env_false_ignores_the_environment(
    tmp_path: Path, nginx4: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BoundTinyproxy(tmp_path / "tiny", connect_ports=[nginx4.port]) as tiny:
        monkeypatch.setenv("HTTP_PROXY", tiny.url())
        monkeypatch.setenv("ALL_PROXY", tiny.url())
        transport = conpool.httpx.AsyncTransport(trust_env=False)
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                r = await client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/")
                assert r.text == "ok\n"
            assert list(transport.pools) == [None]
        # With trust_env (the default), the same environment is used.
        async with httpx.AsyncClient(transport=conpool.httpx.AsyncTransport()) as client:
            r = await client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/")
            assert r.text == "ok\n"
        assert sources(nginx4, 4) == {LOOPBACK: 3, SOURCE["tinyproxy"]: 1}
        assert f"CONNECT {POOL_ADDRESSES[0]}:{nginx4.port}" in tiny.logs()


async def test_proxy_argument_beats_the_environment(
    tmp_path: Path, nginx4: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in httpx, an explicit proxy= ignores the environment (NO_PROXY included)."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{refused_port()}")
    monkeypatch.setenv("NO_PROXY", "*")
    with BoundTinyproxy(tmp_path / "tiny", connect_ports=[nginx4.port]) as tiny:
        transport = conpool.httpx.AsyncTransport(proxy=conpool.Proxy.parse(tiny.url()))
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"http://{POOL_ADDRESSES[3]}:{nginx4.port}/")
            assert r.text == "ok\n"
    assert sources(nginx4, 1) == {SOURCE["tinyproxy"]: 1}


async def test_shared_pool_refuses_proxy_and_ignores_the_environment(
    nginx4: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared pool's own Config.proxy decides: proxy= is refused, and the
    environment is not applied to it."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{refused_port()}")
    async with conpool.Pool() as pool:
        with pytest.raises(ValueError, match="shared pool"):
            conpool.httpx.AsyncTransport(pool, proxy="http://127.0.0.1:3128")
        transport = conpool.httpx.AsyncTransport(pool)
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/")
            assert r.text == "ok\n"
    assert sources(nginx4, 1) == {LOOPBACK: 1}


def test_argument_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="proxy must be"):
        conpool.httpx.AsyncTransport(proxy=3128)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trust_env must be a bool"):
        conpool.httpx.AsyncTransport(trust_env="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError) as caught:
        conpool.httpx.AsyncTransport(proxy=f"ftp://{USER}:{PASSWORD}@127.0.0.1:21")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ValueError, match="not both"):
        conpool.httpx.AsyncTransport(
            config=conpool.Config(proxy=conpool.Proxy.parse("http://127.0.0.1:3128")),
            proxy="socks5://127.0.0.1:1080",
        )
    monkeypatch.setenv("HTTPS_PROXY", f"gopher://{USER}:{PASSWORD}@127.0.0.1:70")
    with pytest.raises(ValueError, match="HTTPS_PROXY") as caught:
        conpool.httpx.AsyncTransport()
    assert PASSWORD not in str(caught.value)
    # Not read with trust_env=False, nor with an explicit proxy.
    conpool.httpx.AsyncTransport(trust_env=False)
    conpool.httpx.AsyncTransport(proxy="http://127.0.0.1:3128")


async def test_proxy_from_the_environment_needs_the_client_entered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{refused_port()}")
    transport = conpool.httpx.AsyncTransport()
    with pytest.raises(httpx.ConnectError, match="not entered"):
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:9/"))


async def test_first_requests_at_once_make_one_pool_per_proxy_and_leak_nothing(
    tmp_path: Path, nginx4: NginxServer, dnsmasq: DnsmasqServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight first requests through the same proxy from the environment, at
    once: one pool is made for them; some are cancelled mid-way; after the
    client closes, every descriptor is back and every pool closed."""
    baseline = await fd_baseline()
    with BoundTinyproxy(tmp_path / "tiny", connect_ports=[nginx4.port]) as tiny:
        monkeypatch.setenv("HTTP_PROXY", tiny.url())
        transport = conpool.httpx.AsyncTransport(config=config(), resolver=dns_resolver(dnsmasq))
        done = 0
        async with httpx.AsyncClient(transport=transport) as client:

            async def one(path: str) -> None:
                nonlocal done
                r = await client.get(f"http://pool.test:{nginx4.port}{path}")
                assert r.text == "ok\n"
                done += 1

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(6):
                        tg.start_soon(one, "/sleep?s=0.5")
                    async with anyio.create_task_group() as doomed:
                        for _ in range(2):
                            doomed.start_soon(one, "/sleep?s=10")
                        await anyio.sleep(0.2)
                        doomed.cancel_scope.cancel()
            assert done == 6
            assert set(transport.pools) == {None, conpool.Proxy.parse(tiny.url())}
            proxied = transport.pools[conpool.Proxy.parse(tiny.url())]
            stats = proxied.stats().endpoints[conpool.Endpoint("pool.test", nginx4.port)]
            assert (stats.active, stats.pending) == (0, 0), stats
            assert 6 <= stats.created <= 8, stats
        for pool in transport.pools.values():
            with pytest.raises(conpool.PoolClosed):
                await pool.acquire(conpool.Endpoint("pool.test", nginx4.port))
    assert Counter(line.remote_addr for line in nginx4.wait_for_log(6)) == {SOURCE["tinyproxy"]: 6}
    await fds_back_to(baseline, within=10.0)
