"""Trace events in exact order, the ring buffer, and the JSON Lines and Chrome
Trace Event Format exporters, over real loopback sockets on every backend.

Each scenario checks the whole list of events it causes, with the fields that
identify them (endpoint, address, connection id, and the detail where it says
something: a close reason, an address list, a retry delay), so a trace point
that goes missing, moves, or loses a field fails here.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import re
import socket
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import conpool
from helpers_pool import StallingResolver, check_quiet, echo, eventually
from servers import EchoServer, TLSEchoServer, refused_port, unused_port

pytestmark = pytest.mark.anyio

Brief = tuple[str, str, int]  # (kind, address, conn_id)


def brief(events: Sequence[conpool.Event]) -> list[Brief]:
    return [(ev.kind, ev.address, ev.conn_id) for ev in events]


def kinds(events: Sequence[conpool.Event]) -> list[str]:
    return [ev.kind for ev in events]


def since(tracer: conpool.Tracer, mark: int) -> list[conpool.Event]:
    """The events emitted after the tracer held ``mark`` of them."""
    assert tracer.dropped == 0
    return tracer.events()[mark:]


def of_kind(events: Sequence[conpool.Event], kind: str) -> list[conpool.Event]:
    return [ev for ev in events if ev.kind == kind]


def assert_monotonic(events: Sequence[conpool.Event]) -> None:
    stamps = [ev.ts_ns for ev in events]
    assert stamps == sorted(stamps), stamps


async def tls_closed(server: TLSEchoServer) -> None:
    """Wait until the server saw every TLS connection close.

    On asyncio and uvloop, closing an idle TLS connection starts the
    close_notify exchange and leaving the pool does not wait for it to end:
    an event loop that ends right after reports the transport unclosed
    (reported to the lead as a bug).  This lets the exchange finish, so that
    these tests check the trace and nothing else.
    """
    await eventually(lambda: server.current == 0, what="TLS connections closed")
    await anyio.sleep(0.02)  # the client's side sees the server's FIN


def ip_endpoint(server: EchoServer, tls: conpool.TLS | None = None) -> conpool.Endpoint:
    return conpool.Endpoint(server.host, server.port, tls=tls)


# --------------------------------------------------------------------------
# Cold acquire and reuse


async def test_cold_acquire_by_name_then_reuse(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
    ep = conpool.Endpoint("pool.test", echo_server.port)
    async with conpool.Pool(resolver=resolver, tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            first_id = conn.id
            assert await echo(conn, b"one") == b"one"
        cold = tracer.events()
        assert brief(cold) == [
            ("resolve.started", "", 0),
            ("resolve.complete", "", 0),
            ("connect.started", "127.0.0.1", 0),
            ("connect.complete", "127.0.0.1", first_id),
            ("conn.release", "127.0.0.1", first_id),
        ]
        assert {ev.endpoint for ev in cold} == {f"pool.test:{echo_server.port}"}
        assert_monotonic(cold)
        started, resolved, _dial, connected, released = cold
        assert resolved.detail == "127.0.0.1"  # the answer, as text
        assert resolved.duration_ns is not None and resolved.duration_ns >= 0
        assert connected.duration_ns is not None and connected.duration_ns > 0
        # The connect span lies within what happened after the lookup began.
        assert connected.ts_ns - connected.duration_ns >= started.ts_ns
        assert started.duration_ns is None and released.duration_ns is None
        assert all(ev.detail == "" for ev in (started, _dial, connected, released))

        mark = len(tracer)
        async with pool.connection(ep) as conn:
            assert conn.id == first_id
            assert await echo(conn, b"two") == b"two"
        reuse = since(tracer, mark)
        assert brief(reuse) == [
            ("conn.reuse", "127.0.0.1", first_id),
            ("conn.release", "127.0.0.1", first_id),
        ]
        assert all(ev.duration_ns is None for ev in reuse)
        mark = len(tracer)
    closing = since(tracer, mark)
    assert brief(closing) == [("pool.close", "", 0), ("conn.close", "127.0.0.1", first_id)]
    assert closing[1].detail == "pool-closed"
    lived = closing[1].duration_ns
    assert lived is not None and closing[1].ts_ns - lived <= reuse[0].ts_ns


async def test_cold_acquire_of_ip_literal_skips_resolution(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(tracer=tracer) as pool:
        conn = await pool.acquire(ep)
        assert brief(tracer.events()) == [
            ("connect.started", "127.0.0.1", 0),
            ("connect.complete", "127.0.0.1", conn.id),
        ]
        await pool.release(conn)
    assert {ev.endpoint for ev in tracer.events() if ev.kind != "pool.close"} == {str(ep)}


async def test_reuse_handed_to_a_waiter(echo_server: EchoServer) -> None:
    """A connection released while a task waits goes straight to that task:
    that hand-out is a reuse like any other, with its wait time."""
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    got: list[int] = []

    async def waiter() -> None:
        async with pool.connection(ep) as conn:
            got.append(conn.id)
            assert await echo(conn, b"w") == b"w"

    config = conpool.Config(max_connections_per_endpoint=1)
    async with conpool.Pool(config, tracer=tracer) as pool:
        holder = await pool.acquire(ep)
        cid = holder.id
        mark = len(tracer)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await eventually(lambda: pool.stats().waiting == 1)
                await anyio.sleep(0.02)  # a measurable wait
                await pool.release(holder)
        events = since(tracer, mark)
        assert brief(events) == [
            ("acquire.queued", "", 0),
            ("conn.release", "127.0.0.1", cid),
            ("acquire.granted", "", 0),
            ("conn.reuse", "127.0.0.1", cid),
            ("conn.release", "127.0.0.1", cid),
        ]
        granted = events[2]
        assert granted.endpoint == str(ep)
        assert granted.duration_ns is not None
        assert granted.duration_ns >= 15_000_000
        assert granted.ts_ns - granted.duration_ns >= events[0].ts_ns - 1_000_000
        assert got == [cid]
        # The trace agrees with the counters.
        stats = check_quiet(pool)
        assert stats.endpoints[ep].reused == len(of_kind(tracer.events(), "conn.reuse")) == 1


async def test_dial_slot_handed_to_a_waiter(echo_server: EchoServer) -> None:
    """max_connection_uses=1: the holder's release closes its connection
    ("uses"), and the waiter is granted the freed slot and dials."""
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1, max_connection_uses=1)
    ids: list[int] = []

    async def waiter() -> None:
        async with pool.connection(ep) as conn:
            ids.append(conn.id)

    async with conpool.Pool(config, tracer=tracer) as pool:
        holder = await pool.acquire(ep)
        first = holder.id
        mark = len(tracer)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await eventually(lambda: pool.stats().waiting == 1)
                await pool.release(holder)
        events = since(tracer, mark)
    second = ids[0]
    assert second != first
    assert brief(events) == [
        ("acquire.queued", "", 0),
        ("conn.release", "127.0.0.1", first),
        ("conn.expire", "127.0.0.1", first),
        ("conn.close", "127.0.0.1", first),
        ("acquire.granted", "", 0),
        ("connect.started", "127.0.0.1", 0),
        ("connect.complete", "127.0.0.1", second),
        ("conn.release", "127.0.0.1", second),
        ("conn.expire", "127.0.0.1", second),
        ("conn.close", "127.0.0.1", second),
    ]
    assert [ev.detail for ev in events if ev.kind in ("conn.expire", "conn.close")] == ["uses"] * 4


async def test_a_shared_lookup_is_traced_once_with_who_joined_it(echo_server: EchoServer) -> None:
    """Three acquires of two endpoints of one name need its addresses at
    once: one lookup is made, traced once (started, then complete), and each
    acquire that shared it says so (resolve.joined, with its own endpoint)."""
    tracer = conpool.Tracer()
    resolver = StallingResolver({"shared.test": ["127.0.0.1"]}, delay=0.2)
    first = conpool.Endpoint("shared.test", echo_server.port)
    other_port = unused_port()  # never dialled: only its lookup matters
    second = conpool.Endpoint("shared.test", other_port)
    config = conpool.Config(max_connections_per_endpoint=4, connect_retries=0)
    async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
        outcomes: list[str] = []

        async def take(ep: conpool.Endpoint) -> None:
            try:
                async with pool.connection(ep):
                    outcomes.append("ok")
            except conpool.ConnectError:
                outcomes.append("refused")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for ep in (first, first, second):
                    tg.start_soon(take, ep)
                    await anyio.sleep(0.01)  # in this order
        assert sorted(outcomes) == ["ok", "ok", "refused"]
        resolves = [ev for ev in tracer.events() if ev.kind.startswith("resolve.")]
        assert [(ev.kind, ev.endpoint) for ev in resolves] == [
            ("resolve.started", str(first)),
            ("resolve.joined", str(first)),
            ("resolve.joined", str(second)),
            ("resolve.complete", str(first)),
        ]
        assert resolver.calls == 1
        assert resolves[-1].detail == "127.0.0.1"
        # Joining costs no lookup of its own: no duration, no detail.
        assert all(ev.duration_ns is None and ev.detail == "" for ev in resolves[1:3])
        check_quiet(pool)


async def test_a_shared_failed_lookup_is_traced_once() -> None:
    tracer = conpool.Tracer()
    resolver = StallingResolver({"gone.test": ["127.0.0.1"]}, delay=0.2)
    resolver.fail_next = 1
    ep = conpool.Endpoint("gone.test", 80)
    async with conpool.Pool(resolver=resolver, tracer=tracer) as pool:
        errors: list[conpool.ResolveError] = []

        async def take() -> None:
            try:
                await pool.acquire(ep)
            except conpool.ResolveError as exc:
                errors.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(take)
        assert len(errors) == 3
        assert kinds(tracer.events()) == [
            "resolve.started",
            "resolve.joined",
            "resolve.joined",
            "resolve.failed",
            "acquire.failed",
            "acquire.failed",
            "acquire.failed",
        ]
        assert resolver.calls == 1
        check_quiet(pool)


# --------------------------------------------------------------------------
# Expiry, with its reason


def expiry(events: Sequence[conpool.Event], cid: int, reason: str) -> None:
    """``events`` start with conn #cid expiring for ``reason`` and closing."""
    assert brief(events[:2]) == [
        ("conn.expire", "127.0.0.1", cid),
        ("conn.close", "127.0.0.1", cid),
    ], brief(events)
    assert events[0].detail == events[1].detail == reason
    assert events[0].duration_ns is None
    lived = events[1].duration_ns
    assert lived is not None and lived > 0


async def test_idle_expiry_on_acquire(echo_server: EchoServer) -> None:
    """No sweep runs (sweep_interval=60): the next acquire finds it expired."""
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    config = conpool.Config(max_idle_time=0.05, sweep_interval=60)
    async with conpool.Pool(config, tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            first = conn.id
        await anyio.sleep(0.1)
        assert pool.stats().endpoints[ep].idle == 1  # nobody swept it
        mark = len(tracer)
        async with pool.connection(ep) as conn:
            second = conn.id
            assert await echo(conn, b"x") == b"x"
        events = since(tracer, mark)
    assert second != first
    expiry(events, first, "idle")
    assert events[1].duration_ns is not None and events[1].duration_ns >= 50_000_000
    assert brief(events[2:]) == [
        ("connect.started", "127.0.0.1", 0),
        ("connect.complete", "127.0.0.1", second),
        ("conn.release", "127.0.0.1", second),
    ]


async def test_idle_expiry_by_the_sweeper(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    config = conpool.Config(max_idle_time=0.05, sweep_interval=0.01)
    async with conpool.Pool(config, tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            cid = conn.id
        mark = len(tracer)
        released = tracer.events()[-1]
        assert released.kind == "conn.release"
        await eventually(lambda: len(tracer) >= mark + 2, what="the sweeper closed it")
        await anyio.sleep(0.05)  # nothing else follows
        events = since(tracer, mark)
        expiry(events, cid, "idle")
        assert len(events) == 2
        # (release stamps its event a moment after it starts the idle clock)
        assert events[0].ts_ns - released.ts_ns >= 49_000_000
        stats = check_quiet(pool)
        assert (stats.endpoints[ep].idle, stats.endpoints[ep].closed) == (0, 1)
        await eventually(lambda: echo_server.current == 0, what="server saw the close")


async def test_lifetime_expiry_on_acquire(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    config = conpool.Config(max_connection_lifetime=0.05, sweep_interval=60)
    async with conpool.Pool(config, tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            first = conn.id
        await anyio.sleep(0.1)
        mark = len(tracer)
        async with pool.connection(ep) as conn:
            second = conn.id
        events = since(tracer, mark)
    expiry(events, first, "lifetime")
    assert kinds(events[2:]) == ["connect.started", "connect.complete", "conn.release"]
    assert events[3].conn_id == second


async def test_uses_expiry_on_release(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connection_uses=2), tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            cid = conn.id
        mark = len(tracer)
        async with pool.connection(ep) as conn:
            assert conn.id == cid
        events = since(tracer, mark)
    assert brief(events[:2]) == [
        ("conn.reuse", "127.0.0.1", cid),
        ("conn.release", "127.0.0.1", cid),
    ]
    expiry(events[2:], cid, "uses")
    assert len(events) == 4


async def test_health_expiry_on_acquire(echo_server: EchoServer) -> None:
    checked: list[int] = []

    async def unhealthy(conn: conpool.Connection) -> bool:
        checked.append(conn.id)
        return False

    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(conpool.Config(health_check=unhealthy), tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            first = conn.id
        mark = len(tracer)
        async with pool.connection(ep) as conn:
            second = conn.id
        events = since(tracer, mark)
    assert checked == [first]
    expiry(events, first, "health")
    assert brief(events[2:]) == [
        ("connect.started", "127.0.0.1", 0),
        ("connect.complete", "127.0.0.1", second),
        ("conn.release", "127.0.0.1", second),
    ]


async def test_stale_expiry_on_acquire(echo_server: EchoServer) -> None:
    """The server closed the idle connection: the next acquire notices."""
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(conpool.Config(sweep_interval=60), tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            first = conn.id
            assert await echo(conn, b"hello") == b"hello"  # the server accepted it
        assert echo_server.close_all() == 1
        await eventually(lambda: not conn._usable(1.0), what="the client saw the server's FIN")
        mark = len(tracer)
        async with pool.connection(ep) as fresh:
            second = fresh.id
            assert await echo(fresh, b"again") == b"again"
        events = since(tracer, mark)
    expiry(events, first, "stale")
    assert brief(events[2:]) == [
        ("connect.started", "127.0.0.1", 0),
        ("connect.complete", "127.0.0.1", second),
        ("conn.release", "127.0.0.1", second),
    ]


async def test_drained_expiry_when_the_address_leaves_the_answer(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    resolver = StallingResolver({"pool.test": ["127.0.0.1"]}, ttl=0.05)
    ep = conpool.Endpoint("pool.test", echo_server.port)
    config = conpool.Config(sweep_interval=0.01)
    async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            cid = conn.id
        # The resolver answers without awaiting, so no refresh is half done here.
        mark = len(tracer)
        resolver.table["pool.test"] = ["127.0.0.2"]
        await eventually(
            lambda: any(ev.kind == "conn.close" for ev in since(tracer, mark)),
            what="drained connection closed",
        )
        events = since(tracer, mark)
    assert kinds(events[:2]) == ["resolve.started", "resolve.complete"]
    assert events[1].detail == "127.0.0.2"
    assert all(ev.endpoint == str(ep) for ev in events[:4])
    expiry(events[2:4], cid, "drained")


# --------------------------------------------------------------------------
# Failures


async def test_refused_connect_with_retries() -> None:
    tracer = conpool.Tracer()
    port = refused_port()
    ep = conpool.Endpoint("127.0.0.1", port)
    config = conpool.Config(connect_retries=2, retry_backoff=0.02, retry_backoff_max=0.05)
    async with conpool.Pool(config, tracer=tracer) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        stats = check_quiet(pool)
    events = tracer.events()
    assert events.pop().kind == "pool.close"
    attempt = [("connect.started", "127.0.0.1", 0), ("connect.failed", "127.0.0.1", 0)]
    retry = [("connect.retry", "127.0.0.1", 0)]
    assert brief(events) == [
        *attempt,
        *retry,
        *attempt,
        *retry,
        *attempt,
        ("acquire.failed", "", 0),
    ]
    assert {ev.endpoint for ev in events} == {f"127.0.0.1:{port}"}
    assert_monotonic(events)
    for failed in of_kind(events, "connect.failed"):
        assert failed.detail == "[Errno 111] Connection refused"  # same words on every backend
        assert failed.duration_ns is not None and failed.duration_ns >= 0
    # Each retry says which attempt comes next and after what delay, and the
    # next attempt really starts that much later.
    for n, i in enumerate((2, 5), start=1):
        retry_ev, next_start = events[i], events[i + 1]
        m = re.fullmatch(r"attempt (\d+) of 3 in (\d+\.\d{3}) s", retry_ev.detail)
        assert m is not None, retry_ev.detail
        assert int(m[1]) == n + 1
        delay = float(m[2])
        assert 0 <= delay <= min(0.05, 0.02 * 2 ** (n - 1)) + 0.0005
        assert next_start.ts_ns - retry_ev.ts_ns >= (delay - 0.001) * 1e9
    failed = events[-1]
    assert failed.detail == str(info.value)
    assert failed.detail.splitlines() == [
        "[Errno 111] Connection refused",
        f"  connecting to tcp:127.0.0.1:{port}",
        f"  connecting to 127.0.0.1:{port}",
        "  after 2 retry attempts (3 attempts in all)",
    ]
    e = stats.endpoints[ep]
    assert (e.connect_failures, e.addresses["127.0.0.1"].failures) == (1, 3)


async def test_tls_handshake_complete(tls_echo_server: TLSEchoServer) -> None:
    tracer = conpool.Tracer()
    ep = ip_endpoint(tls_echo_server, conpool.TLS(tls_echo_server.client_context()))
    async with conpool.Pool(tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            cid = conn.id
            assert await echo(conn, b"secret") == b"secret"
        events = tracer.events()
    await tls_closed(tls_echo_server)
    assert brief(events) == [
        ("connect.started", "127.0.0.1", 0),
        ("tls.complete", "127.0.0.1", 0),
        ("connect.complete", "127.0.0.1", cid),
        ("conn.release", "127.0.0.1", cid),
    ]
    tls, connected = events[1], events[2]
    assert tls.duration_ns is not None and connected.duration_ns is not None
    assert 0 < tls.duration_ns <= connected.duration_ns
    # The handshake span ends within the connect span.
    assert connected.ts_ns - connected.duration_ns <= tls.ts_ns - tls.duration_ns
    assert tls.ts_ns <= connected.ts_ns


async def test_tls_failure_is_not_retried(tls_echo_server: TLSEchoServer) -> None:
    """The default context does not trust the test CA: the handshake fails,
    and a certificate error is not retried."""
    tracer = conpool.Tracer()
    ep = ip_endpoint(tls_echo_server, conpool.TLS())
    async with conpool.Pool(conpool.Config(connect_retries=3), tracer=tracer) as pool:
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        events = tracer.events()
        check_quiet(pool)
    assert brief(events) == [
        ("connect.started", "127.0.0.1", 0),
        ("tls.failed", "127.0.0.1", 0),
        ("connect.failed", "127.0.0.1", 0),
        ("acquire.failed", "", 0),
    ]
    tls, connect, acquire = events[1:]
    assert "certificate verification failed" in tls.detail
    assert connect.detail == tls.detail
    assert acquire.detail == str(info.value)
    assert acquire.detail.startswith(tls.detail + "\n")
    # tls.failed ends the handshake span, as tls.complete does.
    assert tls.duration_ns is not None, "tls.failed carries no duration"
    assert connect.duration_ns is not None
    assert 0 <= tls.duration_ns <= connect.duration_ns


async def test_timeout_while_waiting(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    config = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=0.05)
    async with conpool.Pool(config, tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            mark = len(tracer)
            with pytest.raises(conpool.PoolTimeout):
                await pool.acquire(ep)
            events = since(tracer, mark)
            cid = conn.id
        after = since(tracer, mark + len(events))
        stats = check_quiet(pool)
    assert brief(events) == [("acquire.queued", "", 0), ("acquire.timeout", "", 0)]
    assert {ev.endpoint for ev in events} == {str(ep)}
    assert brief(after) == [("conn.release", "127.0.0.1", cid)]
    assert stats.endpoints[ep].wait_time.count == 1
    # A wait that timed out is a wait span too: acquire.timeout ends it.
    queued, timeout = events
    assert timeout.duration_ns is not None, "acquire.timeout carries no duration"
    assert timeout.duration_ns >= 45_000_000
    assert timeout.ts_ns - timeout.duration_ns >= queued.ts_ns - 1_000_000


@contextmanager
def refusing(host: str, port: int) -> Iterator[None]:
    """``host:port`` refuses connections (bound, never listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        yield
    finally:
        sock.close()


async def test_address_ejection_and_readmission() -> None:
    """pool.test is 127.0.0.2 (refusing) and 127.0.0.1 (serving)."""
    port = unused_port("127.0.0.1", extra_hosts=["127.0.0.2"])
    tracer = conpool.Tracer()
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.2", "127.0.0.1"]})
    config = conpool.Config(
        balance="round-robin", eject_after_failures=1, eject_time=0.05, retry_backoff=0
    )
    ep = conpool.Endpoint("pool.test", port)
    with EchoServer("127.0.0.1", port), refusing("127.0.0.2", port):
        async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
            first = await pool.acquire(ep)
            cold = tracer.events()
            ejected = pool.stats().endpoints[ep].addresses["127.0.0.2"].ejected
            await anyio.sleep(0.08)
            mark = len(tracer)
            second = await pool.acquire(ep)  # a new dial: the first is still held
            again = since(tracer, mark)
            ids = first.id, second.id
            await pool.release(first)
            await pool.release(second)
            check_quiet(pool)
    assert ejected
    assert brief(cold) == [
        ("resolve.started", "", 0),
        ("resolve.complete", "", 0),
        ("connect.started", "127.0.0.2", 0),
        ("connect.failed", "127.0.0.2", 0),
        ("address.eject", "127.0.0.2", 0),
        ("connect.retry", "127.0.0.2", 0),
        ("connect.started", "127.0.0.1", 0),
        ("connect.complete", "127.0.0.1", ids[0]),
    ]
    assert cold[4].detail == "1 consecutive failures; out for 0.05 s"
    assert brief(again) == [
        ("address.readmit", "127.0.0.2", 0),
        ("connect.started", "127.0.0.2", 0),
        ("connect.failed", "127.0.0.2", 0),
        ("address.eject", "127.0.0.2", 0),
        ("connect.retry", "127.0.0.2", 0),
        ("connect.started", "127.0.0.1", 0),
        ("connect.complete", "127.0.0.1", ids[1]),
    ]
    assert again[0].detail == "ejection time over"
    assert again[3].detail == "1 consecutive failures; out for 0.1 s"  # doubled
    assert {ev.endpoint for ev in tracer.events() if ev.kind != "pool.close"} == {str(ep)}


# --------------------------------------------------------------------------
# No payload in any event or export


async def test_payload_bytes_never_appear_in_events(
    echo_server: EchoServer, tls_echo_server: TLSEchoServer, tmp_path: Path
) -> None:
    marker = f"conpool-payload-{uuid.uuid4().hex}"
    payload = marker.encode()
    tracer = conpool.Tracer()
    seen: list[conpool.Event] = []
    plain = ip_endpoint(echo_server)
    tls = ip_endpoint(tls_echo_server, conpool.TLS(tls_echo_server.client_context()))
    config = conpool.Config(max_connection_uses=2)
    async with conpool.Pool(config, tracer=tracer) as pool:
        pool.add_hook("*", seen.append)
        for ep in (plain, tls, plain, tls, plain):
            async with pool.connection(ep) as conn:
                assert await echo(conn, payload) == payload
        with pytest.raises(ZeroDivisionError):
            async with pool.connection(plain) as conn:
                assert await echo(conn, payload) == payload
                raise ZeroDivisionError(marker)  # an error of the user's, not the pool's
    await tls_closed(tls_echo_server)
    events = tracer.events()
    assert len(events) > 20 and seen == events
    for ev in events:
        for value in (ev.kind, ev.endpoint, ev.address, ev.detail, ev.conn_id, ev.duration_ns):
            assert marker not in str(value), ev
    tracer.write_jsonl(tmp_path / "trace.jsonl")
    tracer.write_chrome_trace(tmp_path / "trace.json")
    for name in ("trace.jsonl", "trace.json"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert marker not in text
        assert payload.hex() not in text


# --------------------------------------------------------------------------
# The ring buffer


def test_ring_buffer_keeps_the_newest_and_counts_the_dropped() -> None:
    tracer = conpool.Tracer(capacity=8)
    assert (len(tracer), tracer.dropped, tracer.events()) == (0, 0, [])
    for i in range(5):
        tracer.emit(f"test.{i}", ts_ns=i)
    assert (len(tracer), tracer.dropped) == (5, 0)
    assert kinds(tracer.events()) == [f"test.{i}" for i in range(5)]
    for i in range(5, 20):
        tracer.emit(f"test.{i}", "pool.test:80", "127.0.0.1", i, i * 10, f"detail {i}", ts_ns=i)
    events = tracer.events()
    assert (len(tracer), tracer.dropped) == (8, 12)
    assert [ev.ts_ns for ev in events] == list(range(12, 20))
    assert events[0] == conpool.Event(
        12, "test.12", "pool.test:80", "127.0.0.1", 12, 120, "detail 12"
    )
    assert events[-1].kind == "test.19"
    assert repr(tracer) == "<conpool.Tracer 8/8 events, 12 dropped>"
    tracer.clear()
    assert (len(tracer), tracer.dropped, tracer.events()) == (0, 0, [])
    tracer.emit("after.clear")
    (only,) = tracer.events()
    assert only.kind == "after.clear"
    assert abs(only.ts_ns - time.monotonic_ns()) < 5e9  # stamped with the monotonic clock


def test_ring_buffer_of_one() -> None:
    tracer = conpool.Tracer(capacity=1)
    for i in range(3):
        tracer.emit("x", conn_id=i)
    assert [ev.conn_id for ev in tracer.events()] == [2]
    assert tracer.dropped == 2


def test_rows_since_reads_exactly_the_new_events_across_the_wrap() -> None:
    tracer = conpool.Tracer(capacity=4)
    assert (tracer.emitted, list(tracer.rows_since(0))) == (0, [])
    for i in range(3):
        tracer.emit(f"a.{i}", "ep", "127.0.0.1", i, None, "", ts_ns=i)
    rows = list(tracer.rows_since(0))
    assert rows == [(i, f"a.{i}", "ep", "127.0.0.1", i, None, "") for i in range(3)]
    position = tracer.emitted
    assert position == 3
    # Three more: the ring (capacity 4) wraps, nothing unread is overwritten.
    for i in range(3, 6):
        tracer.emit(f"a.{i}", conn_id=i, ts_ns=i)
    assert [r[4] for r in tracer.rows_since(position)] == [3, 4, 5]
    assert list(tracer.rows_since(tracer.emitted)) == []
    assert (tracer.emitted, tracer.dropped) == (6, 2)
    # From an old position: only what the ring still holds, the newest 4;
    # the reader counts what it missed with dropped.
    assert [r[4] for r in tracer.rows_since(1)] == [2, 3, 4, 5]
    assert max(0, tracer.dropped - 1) == 1
    # Ten more with the reader at 6: seven of them were overwritten unread.
    for i in range(6, 16):
        tracer.emit("b", conn_id=i, ts_ns=i)
    assert [r[4] for r in tracer.rows_since(6)] == [12, 13, 14, 15]
    assert (tracer.dropped, max(0, tracer.dropped - 6)) == (12, 6)
    # The rows are what events() gives, field by field.
    assert [conpool.Event(r[0], r[1], str(r[2]), *r[3:]) for r in tracer.rows_since(0)] == (
        tracer.events()
    )


def test_rows_since_validates_its_position() -> None:
    tracer = conpool.Tracer(capacity=4)
    tracer.emit("x")
    tracer.emit("y")
    for bad in (-1, 3):
        with pytest.raises(ValueError, match=f"between 0 and emitted=2, got {bad}"):
            tracer.rows_since(bad)
    for wrong in (1.0, "1", True, None):
        with pytest.raises(TypeError, match="position must be an int"):
            tracer.rows_since(wrong)  # type: ignore[arg-type]
    tracer.clear()
    with pytest.raises(ValueError, match="emitted=0"):
        tracer.rows_since(2)  # a position from before clear()


async def test_rows_since_of_pool_records_match_events(echo_server: EchoServer) -> None:
    """The pool's cheapest events (stored by record) read back as rows."""
    tracer = conpool.Tracer(capacity=64)
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(tracer=tracer) as pool:
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"x") == b"x"
        position = tracer.emitted
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"y") == b"y"
        rows = list(tracer.rows_since(position))
        assert [(r[1], r[2], r[3]) for r in rows] == [
            ("conn.reuse", ep, "127.0.0.1"),
            ("conn.release", ep, "127.0.0.1"),
        ]
        assert [r[0] for r in rows] == [ev.ts_ns for ev in tracer.events()[position:]]


async def test_ring_buffer_overflow_on_a_real_pool(echo_server: EchoServer) -> None:
    """A small tracer on a busy pool holds exactly the newest events."""
    tracer = conpool.Tracer(capacity=8)
    everything: list[conpool.Event] = []
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connection_uses=3), tracer=tracer) as pool:
        pool.add_hook("*", everything.append)
        for i in range(10):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"%d" % i) == b"%d" % i
    assert len(everything) > 20
    assert tracer.events() == everything[-8:]
    assert tracer.dropped == len(everything) - 8


async def test_a_tracer_alone_keeps_what_a_hook_would_see(echo_server: EchoServer) -> None:
    """With a tracer and no hook, reuse and release take the tracer's fast
    path (the connection record stands for its fields, the time is the
    pool's float clock reading); the events read back are the ones the
    dispatch through hooks stores, and still in time order."""
    ep = ip_endpoint(echo_server)

    async def run(tracer: conpool.Tracer, hook: bool) -> None:
        async with conpool.Pool(conpool.Config(max_connection_uses=3), tracer=tracer) as pool:
            if hook:
                pool.add_hook("conn.close", lambda ev: None)
            for i in range(10):
                async with pool.connection(ep) as conn:
                    assert await echo(conn, b"%d" % i) == b"%d" % i

    fast, slow = conpool.Tracer(capacity=16), conpool.Tracer(capacity=16)
    await run(fast, hook=False)
    await run(slow, hook=True)

    def fields(tracer: conpool.Tracer) -> list[tuple[object, ...]]:
        return [
            (ev.kind, ev.endpoint, ev.address, ev.conn_id, ev.duration_ns is None, ev.detail)
            for ev in tracer.events()
        ]

    assert fields(fast) == fields(slow)
    assert fast.dropped == slow.dropped > 0
    assert "conn.reuse" in kinds(fast.events())
    assert all(isinstance(ev.ts_ns, int) for ev in fast.events())
    assert_monotonic(fast.events())
    # The whole history, ring or not, is in time order too.
    everything = conpool.Tracer()
    await run(everything, hook=False)
    assert_monotonic(everything.events())
    assert everything.events()[0].ts_ns <= time.monotonic_ns()


async def test_a_tracer_keeps_no_connection_alive(echo_server: EchoServer) -> None:
    """The ring may hold connection records for a while, never the
    connections: once the pool closed them, they can be collected."""
    tracer = conpool.Tracer()
    refs: list[weakref.ref[conpool.Connection]] = []
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(tracer=tracer) as pool:
        for i in range(3):
            async with pool.connection(ep) as conn:
                refs.append(weakref.ref(conn))
                assert await echo(conn, b"%d" % i) == b"%d" % i
        del conn
    gc.collect()
    assert kinds(tracer.events()).count("conn.reuse") == 2
    assert [r() for r in refs] == [None, None, None]


@pytest.mark.parametrize(
    ("capacity", "error"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), (8.0, TypeError), ("8", TypeError)],
)
def test_tracer_validates_capacity(capacity: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="capacity"):
        conpool.Tracer(capacity)


def test_tracer_default_capacity_and_pool_argument() -> None:
    assert conpool.Tracer().capacity == 65536
    with pytest.raises(TypeError, match="tracer"):
        conpool.Pool(tracer=object())  # type: ignore[arg-type]


def test_event_is_frozen() -> None:
    ev = conpool.Event(1, "conn.close", "a:1", "127.0.0.1", 3, 4, "idle")
    with pytest.raises(AttributeError):
        ev.kind = "other"  # type: ignore[misc]
    assert conpool.Event.__module__ == conpool.Tracer.__module__ == "conpool"


# --------------------------------------------------------------------------
# JSON Lines


async def test_jsonl_round_trip(echo_server: EchoServer, tmp_path: Path) -> None:
    tracer = conpool.Tracer()
    ep = ip_endpoint(echo_server)
    async with conpool.Pool(conpool.Config(max_connection_uses=2), tracer=tracer) as pool:
        for _ in range(3):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"j") == b"j"
    path = tmp_path / "events.jsonl"
    tracer.write_jsonl(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    events = tracer.events()
    assert len(lines) == len(events) > 5
    decoded = [json.loads(line) for line in lines]
    fields = ["ts_ns", "kind", "endpoint", "address", "conn_id", "duration_ns", "detail"]
    assert all(list(obj) == fields for obj in decoded)
    assert [conpool.Event(**obj) for obj in decoded] == events


def test_jsonl_of_an_empty_tracer(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    conpool.Tracer().write_jsonl(path)
    assert path.read_text(encoding="utf-8") == ""


# --------------------------------------------------------------------------
# Chrome Trace Event Format

_METADATA = {
    "process_name": "name",
    "process_labels": "labels",
    "process_sort_index": "sort_index",
    "thread_name": "name",
    "thread_sort_index": "sort_index",
}
_EPS_US = 1e-3  # timestamps are microseconds derived from nanoseconds


def validate_chrome_trace(trace: Any) -> list[dict[str, Any]]:
    """Check ``trace`` against the Trace Event Format's rules (the JSON
    Object Format); returns its non-metadata events.

    * every event has ``name``, ``ph``, ``pid``; every non-metadata event
      ``ts`` and ``tid``; numbers where numbers belong;
    * ``X`` (complete) events have a non-negative ``dur``, and complete events
      on one (pid, tid) never overlap (Perfetto draws them as one track);
    * ``i`` instants have a scope ``s`` of ``g``, ``p`` or ``t``;
    * ``M`` metadata events are one of the documented names with their arg;
    * timestamps never go backwards on a track;
    * every process and every thread that has events is named.
    """
    assert isinstance(trace, dict), type(trace)
    assert trace.get("displayTimeUnit", "ms") in ("ms", "ns")
    events = trace["traceEvents"]
    assert isinstance(events, list) and events
    named_pids: set[int] = set()
    named_threads: set[tuple[int, int]] = set()
    timed: list[dict[str, Any]] = []
    for ev in events:
        assert isinstance(ev, dict), ev
        assert isinstance(ev.get("name"), str) and ev["name"], ev
        assert isinstance(ev.get("pid"), int), ev
        assert "args" not in ev or isinstance(ev["args"], dict), ev
        ph = ev.get("ph")
        if ph == "M":
            assert ev["name"] in _METADATA, ev
            assert _METADATA[ev["name"]] in ev["args"], ev
            if ev["name"].startswith("thread_"):
                assert isinstance(ev.get("tid"), int), ev
                named_threads.add((ev["pid"], ev["tid"]))
            elif ev["name"] == "process_name":
                named_pids.add(ev["pid"])
            continue
        assert isinstance(ev.get("tid"), int), ev
        assert isinstance(ev.get("ts"), int | float) and not isinstance(ev["ts"], bool), ev
        assert math.isfinite(ev["ts"]) and ev["ts"] >= 0, ev
        if ph == "X":
            dur = ev.get("dur")
            assert isinstance(dur, int | float) and math.isfinite(dur) and dur >= 0, ev
        elif ph == "i":
            assert ev.get("s", "t") in ("g", "p", "t"), ev
        else:
            raise AssertionError(f"unexpected phase {ph!r}: {ev}")
        timed.append(ev)
    tracks: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for ev in timed:
        tracks[ev["pid"], ev["tid"]].append(ev)
    for track, on_track in tracks.items():
        stamps = [ev["ts"] for ev in on_track]
        assert stamps == sorted(stamps), f"timestamps go backwards on {track}"
        spans = sorted((ev for ev in on_track if ev["ph"] == "X"), key=lambda ev: ev["ts"])
        for a, b in itertools.pairwise(spans):
            assert b["ts"] >= a["ts"] + a["dur"] - _EPS_US, f"overlap on {track}: {a} / {b}"
        assert track[0] in named_pids, f"process {track[0]} has no process_name"
        assert track in named_threads, f"thread {track} has no thread_name"
    return timed


def process_names(trace: dict[str, Any]) -> dict[int, str]:
    return {
        ev["pid"]: ev["args"]["name"]
        for ev in trace["traceEvents"]
        if ev["ph"] == "M" and ev["name"] == "process_name"
    }


async def test_chrome_trace_of_a_concurrent_run(echo_server: EchoServer, tmp_path: Path) -> None:
    tracer = conpool.Tracer()
    resolver = conpool.StaticResolver({"pool.test": ["127.0.0.1"]})
    ep = conpool.Endpoint("pool.test", echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=4, max_connection_uses=5)
    done = 0

    async def client(task: int) -> None:
        nonlocal done
        for i in range(21):  # 168 requests: not a multiple of 5, so some stay open
            async with pool.connection(ep) as conn:
                msg = b"%d/%d;" % (task, i)
                assert await echo(conn, msg) == msg
            done += 1

    async with conpool.Pool(config, resolver=resolver, tracer=tracer) as pool:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for task in range(8):
                    tg.start_soon(client, task)
        # While connections are still open, the trace validates too.
        open_trace = json.loads(json.dumps(tracer.chrome_trace()))
        validate_chrome_trace(open_trace)
        still_open = {
            ev["args"]["conn_id"]
            for ev in open_trace["traceEvents"]
            if ev["name"].endswith("(open)")
        }
        assert still_open and len(still_open) == pool.stats().idle
        stats = check_quiet(pool)
    assert done == 168
    path = tmp_path / "trace.json"
    tracer.write_chrome_trace(path)
    trace = json.loads(path.read_text(encoding="utf-8"))  # well-formed JSON
    timed = validate_chrome_trace(trace)
    names = process_names(trace)
    events = tracer.events()
    t0_ns = min(ev.ts_ns - (ev.duration_ns or 0) for ev in events)

    # One span per connection, on its address's process, from the start of
    # its connect to its close, named with the close reason.
    created = of_kind(events, "connect.complete")
    closed = {ev.conn_id: ev for ev in of_kind(events, "conn.close")}
    e = stats.endpoints[ep]
    assert len(created) == e.created == len(closed) > 4  # churn happened
    assert {ev.conn_id for ev in created} == set(closed)
    conn_spans = [ev for ev in timed if ev["ph"] == "X" and ev.get("cat") == "connection"]
    assert len(conn_spans) == len(created)
    by_id = {span["args"]["conn_id"]: span for span in conn_spans}
    for began in created:
        span = by_id[began.conn_id]
        end = closed[began.conn_id]
        assert began.duration_ns is not None
        assert names[span["pid"]] == f"address {began.address}"
        assert span["name"] == f"conn #{began.conn_id} ({end.detail})"
        start_us = (began.ts_ns - began.duration_ns - t0_ns) / 1000
        end_us = (end.ts_ns - t0_ns) / 1000
        assert span["ts"] == pytest.approx(start_us, abs=_EPS_US)
        assert span["ts"] + span["dur"] == pytest.approx(end_us, abs=_EPS_US)
    reasons = {ev.detail for ev in closed.values()}
    assert reasons == {"uses", "pool-closed"}

    # Every acquire wait is a span on the "acquire waits" process.
    waits = [ev for ev in timed if ev["ph"] == "X" and names[ev["pid"]] == "acquire waits"]
    assert len(waits) == len(of_kind(events, "acquire.granted")) == e.wait_time.count > 0
    # Every event is in the trace: spans for what has a duration, instants
    # for the rest (connect.complete and conn.close are both).
    instants = [ev for ev in timed if ev["ph"] == "i"]
    assert len(instants) == sum(
        1 for ev in events if ev.duration_ns is None or ev.kind == "conn.close"
    )
    assert {ev["name"] for ev in instants} >= {"connect.started", "conn.release", "conn.close"}
    assert "resolve.complete" in {ev["name"] for ev in timed if ev["ph"] == "X"}


def test_chrome_trace_lanes_never_overlap() -> None:
    """Connections to one address that overlap in time land on different
    lanes; one that starts after another ended reuses its lane."""
    tracer = conpool.Tracer()
    ms = 1_000_000

    def conn(cid: int, start: int, end: int) -> None:
        tracer.emit("connect.complete", "a:1", "10.0.0.1", cid, 1 * ms, "", ts_ns=start + ms)
        tracer.emit("conn.close", "a:1", "10.0.0.1", cid, end - start, "idle", ts_ns=end)

    # Emitted in time order, as the pool does: ends 10, 30, 40, 60 ms.
    tracer.emit("connect.complete", "a:1", "10.0.0.1", 1, ms, "", ts_ns=1 * ms)
    tracer.emit("connect.complete", "a:1", "10.0.0.1", 2, ms, "", ts_ns=6 * ms)
    tracer.emit("conn.close", "a:1", "10.0.0.1", 1, 10 * ms, "idle", ts_ns=10 * ms)
    tracer.emit("connect.complete", "a:1", "10.0.0.1", 3, ms, "", ts_ns=21 * ms)
    tracer.emit("conn.close", "a:1", "10.0.0.1", 2, 25 * ms, "idle", ts_ns=30 * ms)
    tracer.emit("conn.close", "a:1", "10.0.0.1", 3, 20 * ms, "uses", ts_ns=40 * ms)
    conn(4, 41 * ms, 60 * ms)
    trace = tracer.chrome_trace()
    timed = validate_chrome_trace(trace)
    spans = {ev["args"]["conn_id"]: ev for ev in timed if ev.get("cat") == "connection"}
    assert set(spans) == {1, 2, 3, 4}
    assert spans[1]["tid"] != spans[2]["tid"]  # overlapping: 0-10 and 5-30
    assert spans[3]["tid"] != spans[2]["tid"]  # overlapping: 20-40 and 5-30
    assert spans[4]["tid"] in (spans[1]["tid"], spans[3]["tid"])  # lane reused
    assert [spans[i]["ts"] for i in (1, 2, 3, 4)] == [0, 5000, 20000, 41000]
    assert [spans[i]["dur"] for i in (1, 2, 3, 4)] == [10000, 25000, 20000, 19000]
    assert json.loads(json.dumps(trace)) == trace


def test_chrome_trace_of_an_empty_tracer() -> None:
    trace = conpool.Tracer().chrome_trace()
    assert trace["traceEvents"] == []
    json.dumps(trace)
