"""Leak detection: a connection acquired and never released is reported and
its slot reclaimed; one held too long is logged with the stack that took it."""

from __future__ import annotations

import gc
import logging

import anyio
import pytest

import conpool
from helpers_pool import check_quiet, echo, eventually
from servers import EchoServer

pytestmark = pytest.mark.anyio


async def _leak(pool: conpool.Pool, ep: conpool.Endpoint) -> int:
    """Acquire, use, and drop a connection without releasing it."""
    conn = await pool.acquire(ep)
    assert await echo(conn, b"leak") == b"leak"
    return conn.id


async def test_a_dropped_connection_is_reported_closed_and_its_slot_reclaimed(
    echo_server: EchoServer,
) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    tracer = conpool.Tracer()
    config = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=2.0)
    async with conpool.Pool(config, tracer=tracer) as pool:
        with pytest.warns(ResourceWarning, match="garbage-collected without being released") as w:
            leaked_id = await _leak(pool, ep)
            gc.collect()
            await eventually(lambda: pool.stats().endpoints[ep].active == 0)
        assert any("set Config.leak_warning_after" in str(x.message) for x in w)
        # The only slot is free again: the next acquire dials at once.
        with anyio.fail_after(1):
            async with pool.connection(ep) as conn:
                assert conn.id != leaked_id
                assert await echo(conn, b"after") == b"after"
        s = check_quiet(pool).endpoints[ep]
        assert (s.created, s.closed) == (2, 1)
    closes = [e for e in tracer.events() if e.kind == "conn.close" and e.conn_id == leaked_id]
    assert [e.detail for e in closes] == ["leaked"]
    assert any(e.kind == "conn.leaked" and e.conn_id == leaked_id for e in tracer.events())
    await eventually(lambda: echo_server.current == 0)  # the server saw it closed


async def test_released_connections_are_never_reported(echo_server: EchoServer) -> None:
    # filterwarnings=error: any ResourceWarning here fails the test.
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    async with conpool.Pool() as pool:
        for _ in range(20):
            async with pool.connection(ep) as conn:
                await echo(conn, b"ok")
            conn2 = await pool.acquire(ep)
            await pool.release(conn2)
        del conn, conn2
        gc.collect()
        await anyio.sleep(0.01)
        assert check_quiet(pool).endpoints[ep].idle == 1


async def test_double_release_is_refused(echo_server: EchoServer) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    async with conpool.Pool() as pool:
        conn = await pool.acquire(ep)
        await pool.release(conn)
        with pytest.raises(RuntimeError, match="already released"):
            await pool.release(conn)
        check_quiet(pool)


async def test_held_too_long_is_logged_with_the_acquiring_stack(
    echo_server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="conpool")
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    config = conpool.Config(leak_warning_after=0.05, sweep_interval=0.01)
    async with conpool.Pool(config) as pool:
        conn = await pool.acquire(ep)  # this line is the site in the log
        await eventually(lambda: any("held for" in r.getMessage() for r in caplog.records))
        await anyio.sleep(0.05)  # later sweeps do not repeat it
        await pool.release(conn)
        # A fresh hand-out held briefly is not reported.
        async with pool.connection(ep) as conn:
            await echo(conn, b"quick")
        await anyio.sleep(0.05)
    held = [r for r in caplog.records if "held for" in r.getMessage()]
    assert len(held) == 1
    text = held[0].getMessage()
    assert f"connection #{conn.id} to {ep}" in text
    assert "leak_warning_after=0.05 s" in text
    assert "test_held_too_long_is_logged_with_the_acquiring_stack" in text
    assert "conn = await pool.acquire(ep)" in text


def test_leak_warning_after_is_validated() -> None:
    with pytest.raises(ValueError, match="leak_warning_after"):
        conpool.Config(leak_warning_after=0)
    with pytest.raises(TypeError, match="leak_warning_after"):
        conpool.Config(leak_warning_after="1")  # type: ignore[arg-type]
    assert conpool.Config(leak_warning_after=None).leak_warning_after is None


async def test_the_warning_names_where_it_was_acquired_when_sites_are_recorded(
    echo_server: EchoServer,
) -> None:
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    config = conpool.Config(leak_warning_after=60.0)
    async with conpool.Pool(config) as pool:
        with pytest.warns(ResourceWarning) as caught:
            await _leak(pool, ep)
            gc.collect()
            await eventually(lambda: pool.stats().endpoints[ep].active == 0)
    (warning,) = [w for w in caught if "garbage-collected" in str(w.message)]
    text = str(warning.message)
    assert f"to {ep} via {echo_server.host}" in text
    assert "acquired at:" in text and "conn = await pool.acquire(ep)" in text
