"""conpool.httpx.Transport through real proxies: tinyproxy (HTTP CONNECT)
and microsocks (SOCKS5 with user/password) to nginx on the four addresses
of ``pool.test`` (dnsmasq), through ``httpx.Client`` from threads; the
source address nginx logs tells which proxy carried each request (see
tests/test_httpx_proxy.py, whose proxies these reuse)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

import conpool
import conpool.httpx
from helpers_pool import check_quiet, fd_count
from servers import LOOPBACK, POOL_ADDRESSES, DnsmasqServer, NginxServer, refused_port
from test_balancing import dns_resolver
from test_httpx_proxy import (
    PASSWORD,
    SOURCE,
    USER,
    BoundTinyproxy,
    clean_proxy_env,
    config,
    proxy_url,
    sources,
)

pytestmark = pytest.mark.realserver

__all__ = ["clean_proxy_env"]  # (the autouse fixture, used here too)


@pytest.mark.parametrize("kind", ["tinyproxy", "microsocks"])
def test_proxy_argument_keeps_the_spread(
    kind: str, tmp_path: Path, nginx4: NginxServer, dnsmasq: DnsmasqServer
) -> None:
    """proxy=: every request goes through the proxy, and the pool still
    spreads its connections over the four addresses of pool.test."""
    with proxy_url(kind, tmp_path, nginx4.port) as url:
        transport = conpool.httpx.Transport(
            config=config(), resolver=dns_resolver(dnsmasq), proxy=url
        )
        assert PASSWORD not in repr(transport)
        with httpx.Client(transport=transport) as client:
            # Eight at once (each waits in nginx): eight connections.
            barrier = threading.Barrier(8)
            errors: list[BaseException] = []

            def one() -> None:
                try:
                    barrier.wait(10)
                    r = client.get(f"http://pool.test:{nginx4.port}/sleep?s=1")
                    assert r.status_code == 200
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            for _ in range(8):
                assert client.get(f"http://pool.test:{nginx4.port}/").text == "ok\n"
            pool = transport.pool
            assert pool.config.proxy == conpool.Proxy.parse(url)
            assert list(transport.pools) == [pool.config.proxy]
            stats = check_quiet(pool).endpoints[conpool.Endpoint("pool.test", nginx4.port)]
            assert set(stats.addresses) == set(POOL_ADDRESSES), stats.addresses
            assert stats.created == 8
    lines = nginx4.wait_for_log(16)
    assert Counter(line.remote_addr for line in lines) == {SOURCE[kind]: 16}
    by_address = Counter(line.server_addr for line in lines)
    assert set(by_address) == set(POOL_ADDRESSES), by_address


@pytest.mark.parametrize("kind", ["tinyproxy", "microsocks"])
def test_proxy_from_the_environment(
    kind: str,
    tmp_path: Path,
    nginx4: NginxServer,
    dnsmasq: DnsmasqServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trust_env: HTTP_PROXY (ALL_PROXY) carries http requests through the
    proxy to the address the pool chose; NO_PROXY entries go directly."""
    with proxy_url(kind, tmp_path, nginx4.port) as url:
        variable = "HTTP_PROXY" if kind == "tinyproxy" else "ALL_PROXY"
        monkeypatch.setenv(variable, url)
        monkeypatch.setenv("NO_PROXY", f".example, {POOL_ADDRESSES[1]}, localhost")
        tracer = conpool.Tracer()
        transport = conpool.httpx.Transport(
            config=config(), resolver=dns_resolver(dnsmasq), tracer=tracer
        )
        with httpx.Client(transport=transport) as client:
            for _ in range(4):
                assert client.get(f"http://pool.test:{nginx4.port}/").text == "ok\n"
            assert sources(nginx4, 4) == {SOURCE[kind]: 4}
            assert client.get(f"http://{POOL_ADDRESSES[1]}:{nginx4.port}/").text == "ok\n"
            lines = nginx4.wait_for_log(5)
            assert (lines[4].remote_addr, lines[4].server_addr) == (LOOPBACK, POOL_ADDRESSES[1])
            client.get(f"http://{POOL_ADDRESSES[2]}:{nginx4.port}/")
            lines = nginx4.wait_for_log(6)
            assert (lines[5].remote_addr, lines[5].server_addr) == (
                SOURCE[kind],
                POOL_ADDRESSES[2],
            )
            proxy = conpool.Proxy.parse(url)
            assert set(transport.pools) == {None, proxy}
            assert transport.pool is transport.pools[None]
            proxied = transport.pools[proxy]
            assert ".example" in proxied.config.no_proxy
            assert PASSWORD not in repr(transport) and PASSWORD not in str(proxied.stats())
        kinds = [e.kind for e in tracer.events()]
        assert kinds.count("proxy.handshake.complete") == 2, kinds
        assert kinds.count("connect.complete") == 3, kinds
        for event in tracer.events():
            assert PASSWORD not in event.detail and USER not in event.detail, event
        # The pools made on first use closed with the client.
        with pytest.raises(httpx.ConnectError, match="closed"):
            transport.handle_request(httpx.Request("GET", f"http://pool.test:{nginx4.port}/"))


def test_no_proxy_suffix_goes_direct_and_a_proxy_that_is_down(
    nginx4: NginxServer, dnsmasq: DnsmasqServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://{USER}:{PASSWORD}@127.0.0.1:{refused_port()}")
    monkeypatch.setenv("no_proxy", ".test")
    transport = conpool.httpx.Transport(config=config(), resolver=dns_resolver(dnsmasq))
    with httpx.Client(transport=transport) as client:
        assert client.get(f"http://pool.test:{nginx4.port}/").text == "ok\n"
        assert list(transport.pools) == [None]
        with pytest.raises(httpx.ConnectError) as caught:
            client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/")
        text = str(caught.value)
        assert "127.0.0.1" in text and PASSWORD not in text and USER not in text, text
    assert sources(nginx4, 1) == {LOOPBACK: 1}


def test_https_proxy_variable_is_for_https_only(
    tmp_path: Path, nginx4: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BoundTinyproxy(tmp_path / "tiny", connect_ports=[nginx4.port]) as tiny:
        monkeypatch.setenv("HTTPS_PROXY", tiny.url())
        transport = conpool.httpx.Transport()
        with httpx.Client(transport=transport) as client:
            assert client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/").text == "ok\n"
            assert sources(nginx4, 1) == {LOOPBACK: 1}
            with pytest.raises(httpx.HTTPError):
                client.get(f"https://{POOL_ADDRESSES[0]}:{nginx4.port}/")
            assert set(transport.pools) == {None, conpool.Proxy.parse(tiny.url())}
        assert f"CONNECT {POOL_ADDRESSES[0]}:{nginx4.port}" in tiny.logs()


def test_trust_env_false_and_proxy_argument(
    tmp_path: Path, nginx4: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BoundTinyproxy(tmp_path / "tiny", connect_ports=[nginx4.port]) as tiny:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{refused_port()}")
        monkeypatch.setenv("NO_PROXY", "*")
        ignoring = conpool.httpx.Transport(trust_env=False)
        with httpx.Client(transport=ignoring) as client:
            assert client.get(f"http://{POOL_ADDRESSES[0]}:{nginx4.port}/").text == "ok\n"
            assert list(ignoring.pools) == [None]
        # An explicit proxy= ignores the environment, NO_PROXY included.
        explicit = conpool.httpx.Transport(proxy=conpool.Proxy.parse(tiny.url()))
        with httpx.Client(transport=explicit) as client:
            assert client.get(f"http://{POOL_ADDRESSES[3]}:{nginx4.port}/").text == "ok\n"
    assert sources(nginx4, 2) == {LOOPBACK: 1, SOURCE["tinyproxy"]: 1}


def test_shared_pool_refuses_proxy_and_argument_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with conpool.SyncPool() as pool:
        with pytest.raises(ValueError, match="shared pool"):
            conpool.httpx.Transport(pool, proxy="http://127.0.0.1:3128")
    with pytest.raises(TypeError, match="proxy must be"):
        conpool.httpx.Transport(proxy=3128)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trust_env must be a bool"):
        conpool.httpx.Transport(trust_env="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError) as caught:
        conpool.httpx.Transport(proxy=f"ftp://{USER}:{PASSWORD}@127.0.0.1:21")
    assert PASSWORD not in str(caught.value)
    monkeypatch.setenv("HTTPS_PROXY", f"gopher://{USER}:{PASSWORD}@127.0.0.1:70")
    with pytest.raises(ValueError, match="HTTPS_PROXY") as caught:
        conpool.httpx.Transport()
    assert PASSWORD not in str(caught.value)
    conpool.httpx.Transport(trust_env=False)


def test_first_requests_at_once_make_one_pool_per_proxy_and_leak_nothing(
    tmp_path: Path, nginx4: NginxServer, dnsmasq: DnsmasqServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads' first requests through the same proxy from the
    environment, at once: one pool for them; after the client closes, the
    descriptors are back and every pool is closed."""
    baseline = fd_count()
    with BoundTinyproxy(tmp_path / "tiny", connect_ports=[nginx4.port]) as tiny:
        monkeypatch.setenv("HTTP_PROXY", tiny.url())
        transport = conpool.httpx.Transport(config=config(), resolver=dns_resolver(dnsmasq))
        with httpx.Client(transport=transport) as client:
            barrier = threading.Barrier(8)
            done: list[int] = []

            def one() -> None:
                barrier.wait(10)
                r = client.get(f"http://pool.test:{nginx4.port}/sleep?s=0.5")
                assert r.text == "ok\n"
                done.append(1)

            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(done) == 8
            proxy = conpool.Proxy.parse(tiny.url())
            assert set(transport.pools) == {None, proxy}
            stats = check_quiet(transport.pools[proxy]).endpoints[
                conpool.Endpoint("pool.test", nginx4.port)
            ]
            assert stats.created == 8, stats
        for pool in transport.pools.values():
            with pytest.raises(conpool.PoolClosed):
                pool.acquire(conpool.Endpoint("pool.test", nginx4.port))
    assert sources(nginx4, 8) == {SOURCE["tinyproxy"]: 8}
    deadline = time.monotonic() + 10
    while fd_count() > baseline:
        assert time.monotonic() < deadline, (fd_count(), baseline)
        time.sleep(0.05)


def test_https_through_an_https_proxy(tmp_path: Path) -> None:
    """httpx.Client to nginx over TLS, through tinyproxy behind TLS: the
    request's TLS runs inside the proxy's (TLS in TLS on blocking sockets),
    verified by name, the connection reused; an 8 MiB body crosses many
    records of both layers intact."""
    import ssl

    import trustme

    from servers import TinyproxyServer, TLSTerminator
    from test_httpx import tls_nginx

    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with (
        tls_nginx(tmp_path, ca, "pool.test") as server,
        TinyproxyServer(
            tmp_path / "tiny",
            connect_ports=[server.tls_port or 0],
            username=USER,
            password=PASSWORD,
        ) as tiny,
        TLSTerminator((tiny.host, tiny.port)) as front,
    ):
        proxy = conpool.Proxy.parse(
            f"https://{USER}:{PASSWORD}@127.0.0.1:{front.port}",
            tls_context=front.client_context(),
        )
        transport = conpool.httpx.Transport(
            resolver=conpool.StaticResolver({"pool.test": [LOOPBACK]}),
            verify=context,
            proxy=proxy,
        )
        with httpx.Client(transport=transport) as client:
            for _ in range(3):
                assert client.get(f"https://pool.test:{server.tls_port}/").text == "ok\n"
            big = client.get(f"https://pool.test:{server.tls_port}/big")
            assert big.content == server.big_file.read_bytes()
            (ep,) = check_quiet(transport.pool).endpoints.values()
            assert (ep.created, ep.reused) == (1, 3)
        assert front.accepted == 1
        assert f"CONNECT {LOOPBACK}:{server.tls_port}" in tiny.logs()
