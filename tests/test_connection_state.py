"""What a protocol layer keeps on a pooled connection and reads from it:
``user_data`` (per-connection state across hand-outs) and the read-only
``closed``, on asyncio, uvloop and trio, plain TCP and TLS."""

from __future__ import annotations

import pytest

import conpool
from helpers_pool import check_quiet, echo
from servers import EchoServer, TLSEchoServer

pytestmark = pytest.mark.anyio


def _endpoint(
    echo_server: EchoServer, tls_echo_server: TLSEchoServer, tls: bool
) -> conpool.Endpoint:
    if tls:
        return conpool.Endpoint(
            "127.0.0.1",
            tls_echo_server.port,
            tls=conpool.TLS(context=tls_echo_server.client_context()),
        )
    return conpool.Endpoint(echo_server.host, echo_server.port)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_user_data_lives_as_long_as_the_connection(
    echo_server: EchoServer, tls_echo_server: TLSEchoServer, tls: bool
) -> None:
    ep = _endpoint(echo_server, tls_echo_server, tls)
    async with conpool.Pool() as pool:
        async with pool.connection(ep) as conn:
            assert conn.user_data == {}
            conn.user_data["state"] = "ready"
            assert await echo(conn, b"x") == b"x"
        async with pool.connection(ep) as again:
            assert again is conn
            assert again.user_data == {"state": "ready"}
            assert again.user_data is conn.user_data
        # A new connection starts with its own, empty dict.
        async with pool.connection(ep, fresh=True) as other:
            assert other is not conn
            assert other.user_data == {}
        check_quiet(pool)


def is_closed(conn: conpool.Connection) -> bool:
    # (A call, so that mypy does not narrow conn.closed across the await.)
    return conn.closed


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_closed_is_read_only_and_follows_aclose(
    echo_server: EchoServer, tls_echo_server: TLSEchoServer, tls: bool
) -> None:
    ep = _endpoint(echo_server, tls_echo_server, tls)
    async with conpool.Pool() as pool:
        conn = await pool.acquire(ep)
        assert is_closed(conn) is False
        with pytest.raises(AttributeError):
            conn.closed = True  # type: ignore[misc]
        assert is_closed(conn) is False
        await conn.aclose()
        assert is_closed(conn) is True
        await pool.release(conn)
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.closed) == (1, 1)


async def test_closed_when_the_pool_closes_it(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    async with conpool.Pool() as pool:
        async with pool.connection(ep) as conn:
            pass
        assert conn.closed is False
        await pool.aclose()
        assert conn.closed is True
