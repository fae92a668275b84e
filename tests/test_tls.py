"""TLS endpoints against a real TLS echo server with trustme certificates."""

from __future__ import annotations

import ssl
import time

import pytest
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute

import conpool
from helpers_pool import (
    MisbehavingServer,
    check_quiet,
    echo,
    eventually,
    socket_inode,
    socket_inodes,
)
from servers import TLSEchoServer

pytestmark = pytest.mark.anyio

LOCALHOST = conpool.StaticResolver({"localhost": ["127.0.0.1"], "pool.test": ["127.0.0.1"]})


def tls_endpoint(
    server: TLSEchoServer, host: str = "localhost", server_name: str | None = None
) -> conpool.Endpoint:
    tls = conpool.TLS(context=server.client_context(), server_name=server_name)
    return conpool.Endpoint(host, server.port, tls=tls)


async def test_tls_round_trip_and_sni(tls_echo_server: TLSEchoServer) -> None:
    ep = tls_endpoint(tls_echo_server)
    async with conpool.Pool(resolver=LOCALHOST) as pool:
        for i in range(3):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"secret %d" % i) == b"secret %d" % i
        s = check_quiet(pool)
        assert (s.endpoints[ep].created, s.endpoints[ep].reused) == (1, 2)
    assert tls_echo_server.server_names == ["localhost"]
    assert tls_echo_server.accepted == 1
    assert tls_echo_server.handshake_failures == 0


async def test_pool_exit_closes_tls_sockets(tls_echo_server: TLSEchoServer) -> None:
    # Closing a TLS connection must not depend on the event loop running on
    # after the pool is gone (a close_notify exchange still in flight).
    ep = tls_endpoint(tls_echo_server)
    async with conpool.Pool(resolver=LOCALHOST) as pool:
        async with pool.connection(ep) as a, pool.connection(ep) as b:
            assert await echo(a, b"a") == b"a"
            assert await echo(b, b"b") == b"b"
            inodes = {socket_inode(a), socket_inode(b)}
    assert not inodes & socket_inodes()


async def test_tls_server_name_override(tls_echo_server: TLSEchoServer) -> None:
    # Dial pool.test, present (and verify) the name "localhost".
    ep = tls_endpoint(tls_echo_server, host="pool.test", server_name="localhost")
    async with conpool.Pool(resolver=LOCALHOST) as pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"x") == b"x"
            assert conn.extra(TLSAttribute.ssl_object).server_hostname == "localhost"
    assert tls_echo_server.server_names == ["localhost"]


async def test_tls_attributes(tls_echo_server: TLSEchoServer) -> None:
    ep = tls_endpoint(tls_echo_server)
    async with conpool.Pool(resolver=LOCALHOST) as pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"attrs") == b"attrs"
            assert conn.extra(TLSAttribute.tls_version) in ("TLSv1.2", "TLSv1.3")
            cipher = conn.extra(TLSAttribute.cipher)
            assert isinstance(cipher, tuple) and len(cipher) == 3
            assert conn.extra(TLSAttribute.server_side) is False
            assert conn.extra(TLSAttribute.alpn_protocol) is None
            cert = conn.extra(TLSAttribute.peer_certificate)
            assert cert is not None
            assert ("DNS", "localhost") in cert["subjectAltName"]
            der = conn.extra(TLSAttribute.peer_certificate_binary)
            assert isinstance(der, bytes) and der
            obj = conn.extra(TLSAttribute.ssl_object)
            assert isinstance(obj, ssl.SSLObject | ssl.SSLSocket)
            assert obj.server_hostname == "localhost"
            peer = ("127.0.0.1", tls_echo_server.port)
            assert conn.extra(SocketAttribute.remote_address) == peer
            assert conn.address == peer


async def test_wrong_host_name_is_not_retried() -> None:
    with TLSEchoServer(names=("other.test",)) as server:
        ep = tls_endpoint(server)
        config = conpool.Config(connect_retries=3, retry_backoff=0.01)
        async with conpool.Pool(config, resolver=LOCALHOST) as pool:
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(ep)
            check_quiet(pool)
        exc = info.value
        assert exc.attempts == 1
        assert isinstance(exc.errors[0], ssl.SSLCertVerificationError)
        first_line, *context = str(exc).split("\n")
        assert "certificate verification failed" in first_line
        assert "localhost" in first_line  # the name that did not match
        assert context == [
            f"  connecting to tcp:127.0.0.1:{server.port}",
            f"  connecting to localhost:{server.port}",
        ]
        assert server.accepted == 1
        await eventually(lambda: server.handshake_failures == 1)


async def test_server_name_mismatch_rejected(tls_echo_server: TLSEchoServer) -> None:
    ep = tls_endpoint(tls_echo_server, server_name="elsewhere.test")
    config = conpool.Config(connect_retries=3, retry_backoff=0.01)
    async with conpool.Pool(config, resolver=LOCALHOST) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
    assert info.value.attempts == 1
    assert "certificate verification failed" in str(info.value)
    assert tls_echo_server.server_names == ["elsewhere.test"]


async def test_default_context_rejects_private_ca(tls_echo_server: TLSEchoServer) -> None:
    ep = conpool.Endpoint("localhost", tls_echo_server.port, tls=conpool.TLS())
    config = conpool.Config(connect_retries=2, retry_backoff=0.01)
    async with conpool.Pool(config, resolver=LOCALHOST) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        check_quiet(pool)
    exc = info.value
    assert exc.attempts == 1
    assert isinstance(exc.errors[0], ssl.SSLCertVerificationError)
    assert str(exc).startswith("TLS certificate verification failed")


async def test_plaintext_and_tls_never_share(tls_echo_server: TLSEchoServer) -> None:
    port = tls_echo_server.port
    secure = tls_endpoint(tls_echo_server, host="127.0.0.1")
    plain = conpool.Endpoint("127.0.0.1", port)
    assert secure != plain and hash(secure) != hash(plain)
    async with conpool.Pool() as pool:
        async with pool.connection(secure) as conn:
            assert await echo(conn, b"tls") == b"tls"
            tls_id = conn.id
        assert pool.stats().endpoints[secure].idle == 1
        # The idle TLS connection must not be handed out for the plaintext key.
        async with pool.connection(plain) as conn:
            assert conn.id != tls_id
            assert conn.extra(TLSAttribute.tls_version, None) is None
            await conn.aclose()  # speaking plaintext to a TLS server is pointless
        async with pool.connection(secure) as conn:
            assert conn.id == tls_id
            assert await echo(conn, b"again") == b"again"
        s = check_quiet(pool)
        assert (s.endpoints[secure].created, s.endpoints[secure].reused) == (1, 1)
        assert (s.endpoints[plain].created, s.endpoints[plain].reused) == (1, 0)
    # The server's accept thread counts the plaintext connection when it gets
    # to it (it needs the GIL the client was holding): wait for it, and then
    # for nothing more.
    await eventually(lambda: tls_echo_server.accepted >= 2, what="the server accepted both")
    assert tls_echo_server.accepted == 2


async def test_tls_contexts_are_part_of_the_key(tls_echo_server: TLSEchoServer) -> None:
    # Two different context objects: two keys, no sharing.
    a = tls_endpoint(tls_echo_server)
    b = tls_endpoint(tls_echo_server)
    assert a != b
    async with conpool.Pool(resolver=LOCALHOST) as pool:
        for ep in (a, b, a, b):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"k") == b"k"
        s = check_quiet(pool)
        assert s.endpoints[a].created == 1 and s.endpoints[b].created == 1
    assert tls_echo_server.accepted == 2


@pytest.mark.parametrize("mode", ["garbage", "close"])
async def test_server_not_speaking_tls(mode: str) -> None:
    with MisbehavingServer(mode) as server:
        tls = conpool.TLS(context=ssl.create_default_context())
        ep = conpool.Endpoint("localhost", server.port, tls=tls)
        config = conpool.Config(connect_timeout=2.0, connect_retries=1, retry_backoff=0.01)
        async with conpool.Pool(config, resolver=LOCALHOST) as pool:
            start = time.monotonic()
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(ep)
            assert time.monotonic() - start < 1.5  # an answer, not a timeout
            check_quiet(pool)
        exc = info.value
        first_line, *context = str(exc).split("\n")
        # Whatever the backend, a ConnectError that says what happened.
        words = ("tls", "closed", "reset", "eof")
        assert any(word in first_line.lower() for word in words), first_line
        assert f"  connecting to localhost:{server.port}" in context
        if mode == "garbage":
            # Not TLS at all: retrying cannot help.
            assert exc.attempts == 1
            assert isinstance(exc.errors[0], ssl.SSLError)


async def test_tls_handshake_timeout() -> None:
    with MisbehavingServer("silent") as server:
        tls = conpool.TLS(context=ssl.create_default_context())
        ep = conpool.Endpoint("localhost", server.port, tls=tls)
        config = conpool.Config(connect_timeout=0.2, connect_retries=0)
        async with conpool.Pool(config, resolver=LOCALHOST) as pool:
            start = time.monotonic()
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(ep)
            assert 0.19 <= time.monotonic() - start < 1.5
            check_quiet(pool)
        assert str(info.value).startswith("TLS handshake timed out after 0.2 s\n")
        assert server.accepted == 1
