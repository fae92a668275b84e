"""conpool.SyncPool: ``fresh=True`` (never an idle connection), and TLS to
the target inside an ``https://`` proxy's TLS (tinyproxy behind a TLS
terminator), over real loopback servers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import conpool
from helpers_pool import check_quiet
from servers import LOOPBACK, EchoServer, TinyproxyServer, TLSEchoServer, TLSTerminator
from test_proxies import PASSWORD, USER, handshake_events, no_secret_anywhere
from test_sync import echo

pytestmark = pytest.mark.realserver


def test_fresh_dials_a_new_connection_while_one_is_idle(echo_server: EchoServer) -> None:
    endpoint = conpool.Endpoint(echo_server.host, echo_server.port)
    with conpool.SyncPool() as pool:
        with pool.connection(endpoint) as conn:
            first = conn.id
            assert echo(conn, b"one") == b"one"
        with pool.connection(endpoint, fresh=True) as conn:
            assert conn.id != first and conn.uses == 1
            assert echo(conn, b"two") == b"two"
        stats = check_quiet(pool).endpoints[endpoint]
        # Both are idle now: fresh does not close the idle one it skipped
        # while the limit leaves room.
        assert (stats.created, stats.reused, stats.idle) == (2, 0, 2)
        conn = pool.acquire(endpoint)
        assert conn.uses == 2
        pool.release(conn)
    assert len(echo_server.peers) == 2


def test_fresh_at_the_limit_closes_the_oldest_idle(echo_server: EchoServer) -> None:
    endpoint = conpool.Endpoint(echo_server.host, echo_server.port)
    with conpool.SyncPool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        with pool.connection(endpoint) as conn:
            first = conn.id
        with pool.connection(endpoint, fresh=True) as conn:
            assert conn.id != first
            assert echo(conn, b"x") == b"x"
        stats = check_quiet(pool).endpoints[endpoint]
        assert (stats.created, stats.closed, stats.idle) == (2, 1, 1)


def test_fresh_waits_for_a_slot_and_never_takes_the_released_connection(
    echo_server: EchoServer,
) -> None:
    """At the limit with every connection in use, a fresh acquire waits;
    the connection released to it is closed and a new one dialled in its slot."""
    endpoint = conpool.Endpoint(echo_server.host, echo_server.port)
    with conpool.SyncPool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        held = pool.acquire(endpoint)
        got: list[conpool.SyncConnection] = []

        def fresh() -> None:
            c = pool.acquire(endpoint, fresh=True, timeout=10)
            got.append(c)

        t = threading.Thread(target=fresh)
        t.start()
        deadline = 100
        while pool.stats().waiting == 0 and deadline:
            threading.Event().wait(0.02)
            deadline -= 1
        assert pool.stats().waiting == 1
        old_id = held.id
        pool.release(held)
        t.join(10)
        assert len(got) == 1 and got[0].id != old_id and got[0].uses == 1
        assert echo(got[0], b"new") == b"new"
        pool.release(got[0])
        stats = check_quiet(pool).endpoints[endpoint]
        assert (stats.created, stats.closed) == (2, 1)


def test_fresh_times_out_and_validates(echo_server: EchoServer) -> None:
    endpoint = conpool.Endpoint(echo_server.host, echo_server.port)
    with conpool.SyncPool(conpool.Config(max_connections_per_endpoint=1)) as pool:
        held = pool.acquire(endpoint)
        with pytest.raises(conpool.PoolTimeout, match=r"timeout=0\.1 s"):
            pool.acquire(endpoint, fresh=True, timeout=0.1)
        pool.release(held)
        with pytest.raises(TypeError, match="fresh must be a bool"):
            pool.acquire(endpoint, fresh=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="fresh must be a bool"):
            with pool.connection(endpoint, fresh="yes"):  # type: ignore[arg-type]
                pass
        with pytest.raises(TypeError, match="Endpoint"):
            pool.acquire("x", fresh=True)  # type: ignore[arg-type]
        check_quiet(pool)
    with pytest.raises(conpool.PoolClosed):
        pool.acquire(endpoint, fresh=True)


# --------------------------------------------------------------------------
# https:// proxies: TLS to the proxy, then TLS to the target inside it


@contextlib.contextmanager
def https_proxy(tmp_path: Path, port: int) -> Iterator[TLSTerminator]:
    with contextlib.ExitStack() as stack:
        tiny = stack.enter_context(
            TinyproxyServer(
                tmp_path / "tiny", connect_ports=[port], username=USER, password=PASSWORD
            )
        )
        front = stack.enter_context(TLSTerminator((tiny.host, tiny.port)))
        yield front


@pytest.mark.parametrize("target_tls", [False, True], ids=["plain", "tls"])
def test_https_proxy(target_tls: bool, tmp_path: Path) -> None:
    """The threaded shell through tinyproxy behind TLS: the proxy's
    certificate verified, CONNECT with Basic auth inside that TLS, and for
    a TLS target a second TLS session inside the tunnel (SNI by name),
    reused, with 1 MiB each way to cross many TLS records of both layers."""
    with contextlib.ExitStack() as stack:
        if target_tls:
            server: EchoServer = stack.enter_context(TLSEchoServer(names=("tls.test",)))
        else:
            server = stack.enter_context(EchoServer())
        front = stack.enter_context(https_proxy(tmp_path, server.port))
        proxy = conpool.Proxy.parse(
            f"https://{USER}:{PASSWORD}@127.0.0.1:{front.port}",
            tls_context=front.client_context(),
        )
        tls = None
        if isinstance(server, TLSEchoServer):
            tls = conpool.TLS(context=server.client_context())
        endpoint = conpool.Endpoint("tls.test", server.port, tls=tls)
        resolver = conpool.StaticResolver({"tls.test": [LOOPBACK]})
        tracer = conpool.Tracer()
        big = bytes(range(256)) * 4096
        with conpool.SyncPool(
            conpool.Config(proxy=proxy), resolver=resolver, tracer=tracer
        ) as pool:
            for payload in (b"twice wrapped", big):
                with pool.connection(endpoint) as conn:
                    conn.settimeout(10)
                    assert echo(conn, payload) == payload
                    if target_tls:
                        tls_object = conn.ssl_object
                        assert tls_object is not None and tls_object.version() is not None
                    else:
                        assert conn.ssl_object is None
            assert check_quiet(pool).endpoints[endpoint].created == 1
        if isinstance(server, TLSEchoServer):
            assert server.server_names == ["tls.test"]
        assert front.accepted == 1
    expected = ["connect.started", "proxy.handshake.started", "proxy.handshake.complete"]
    expected += ["tls.complete"] if target_tls else []
    assert handshake_events(tracer) == [*expected, "connect.complete"]
    no_secret_anywhere(tracer)


def test_https_proxy_tls_target_with_the_wrong_name(tmp_path: Path) -> None:
    """The target's certificate is checked inside the tunnel: a name it
    does not carry fails the connect with ssl's own words."""
    with (
        TLSEchoServer(names=("other.test",)) as server,
        https_proxy(tmp_path, server.port) as front,
    ):
        proxy = conpool.Proxy.parse(
            f"https://{USER}:{PASSWORD}@127.0.0.1:{front.port}",
            tls_context=front.client_context(),
        )
        endpoint = conpool.Endpoint(
            "tls.test", server.port, tls=conpool.TLS(context=server.client_context())
        )
        resolver = conpool.StaticResolver({"tls.test": [LOOPBACK]})
        config = conpool.Config(proxy=proxy, connect_retries=0)
        with conpool.SyncPool(config, resolver=resolver) as pool:
            with pytest.raises(conpool.ConnectError) as caught:
                pool.acquire(endpoint)
            text = str(caught.value)
            assert "certificate" in text.lower() and "tls.test" in text, text
            assert PASSWORD not in text
            check_quiet(pool)


# --------------------------------------------------------------------------
# The connection's fast paths keep their checks


def test_settimeout_is_kept_and_reset_on_release(echo_server: EchoServer) -> None:
    endpoint = conpool.Endpoint(echo_server.host, echo_server.port)
    with conpool.SyncPool() as pool:
        with pool.connection(endpoint) as conn:
            conn.settimeout(2.5)
            conn.settimeout(2.5)  # (the same: no system call, still 2.5)
            assert conn.socket.gettimeout() == 2.5
            conn.settimeout(3)
            assert conn.socket.gettimeout() == 3.0
            for bad in (-1, float("nan"), True, "1"):
                with pytest.raises(ValueError, match="seconds"):
                    conn.settimeout(bad)  # type: ignore[arg-type]
            assert conn.socket.gettimeout() == 3.0
            assert echo(conn, b"timed") == b"timed"
        with pool.connection(endpoint) as conn:
            assert conn.uses == 2
            assert conn.socket.gettimeout() is None
            conn.settimeout(None)
            assert echo(conn, b"blocking") == b"blocking"
        check_quiet(pool)


def test_receive_rejects_bad_sizes_without_breaking(echo_server: EchoServer) -> None:
    endpoint = conpool.Endpoint(echo_server.host, echo_server.port)

    class Size(int):
        pass

    with conpool.SyncPool() as pool:
        with pool.connection(endpoint) as conn:
            for bad in (0, -5, True, 2.0, "9"):
                with pytest.raises(ValueError, match="max_bytes"):
                    conn.receive(bad)  # type: ignore[arg-type]
            conn.send(b"sub")
            assert conn.receive(Size(3)) == b"sub"  # an int subclass is an int
        stats = check_quiet(pool).endpoints[endpoint]
        assert (stats.idle, stats.closed) == (1, 0)
        conn = pool.acquire(endpoint)
        pool.release(conn)
        with pytest.raises(RuntimeError, match="released"):
            conn.receive()
        with pytest.raises(RuntimeError, match="released"):
            conn.send(b"x")
        conn = pool.acquire(endpoint)
        conn.close()
        with pytest.raises(OSError, match="closed"):
            conn.send(b"x")
        with pytest.raises(OSError, match="closed"):
            conn.receive()
        pool.release(conn)
        check_quiet(pool)
