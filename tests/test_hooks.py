"""User hooks on pool events: patterns, removal, the connection shortcuts,
hooks that raise (disabled, logged, harmless), and the logging exporter,
over real loopback sockets on every backend."""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid

import anyio
import pytest

import conpool
from helpers_pool import check_quiet, echo
from servers import EchoServer, refused_port

pytestmark = pytest.mark.anyio


def endpoint(server: EchoServer) -> conpool.Endpoint:
    return conpool.Endpoint(server.host, server.port)


async def requests(pool: conpool.Pool, ep: conpool.Endpoint, n: int) -> None:
    for i in range(n):
        async with pool.connection(ep) as conn:
            assert await echo(conn, b"req %d" % i) == b"req %d" % i


async def contended(pool: conpool.Pool, ep: conpool.Endpoint, tasks: int, each: int) -> None:
    """``tasks`` tasks doing ``each`` requests at once, holding each
    connection for a moment so that some of them wait."""

    async def client() -> None:
        for i in range(each):
            async with pool.connection(ep) as conn:
                assert await echo(conn, b"c%d" % i) == b"c%d" % i
                await anyio.sleep(0.002)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(client)


# --------------------------------------------------------------------------
# Patterns


async def test_hook_patterns(echo_server: EchoServer) -> None:
    tracer = conpool.Tracer()
    every: list[conpool.Event] = []
    connect: list[conpool.Event] = []
    conn: list[conpool.Event] = []
    closes: list[conpool.Event] = []
    nothing: list[conpool.Event] = []
    ep = endpoint(echo_server)
    refused = conpool.Endpoint("127.0.0.1", refused_port())
    config = conpool.Config(max_connection_uses=2, connect_retries=1, retry_backoff=0)
    async with conpool.Pool(config, tracer=tracer) as pool:
        pool.add_hook("*", every.append)
        pool.add_hook("connect.*", connect.append)
        pool.add_hook("conn.*", conn.append)
        pool.add_hook("conn.close", closes.append)
        pool.add_hook("connect", nothing.append)  # an exact kind no event has
        pool.add_hook("conn.close.*", nothing.append)
        await requests(pool, ep, 5)
        with pytest.raises(conpool.ConnectError):
            await pool.acquire(refused)
    events = tracer.events()
    assert every == events
    seen = {ev.kind for ev in events}
    assert seen >= {"connect.started", "connect.complete", "connect.failed", "connect.retry"}
    assert seen >= {"conn.reuse", "conn.release", "conn.expire", "conn.close", "acquire.failed"}
    assert connect == [ev for ev in events if ev.kind.startswith("connect.")]
    # "conn.*" is the conn scope only: connect.* events are another scope.
    assert conn == [ev for ev in events if ev.kind.split(".")[0] == "conn"]
    assert closes == [ev for ev in events if ev.kind == "conn.close"]
    assert [ev.detail for ev in closes] == ["uses", "uses", "pool-closed"]
    assert nothing == []


async def test_hooks_receive_event_objects(echo_server: EchoServer) -> None:
    got: list[object] = []
    ep = endpoint(echo_server)
    async with conpool.Pool() as pool:
        pool.add_hook("*", got.append)
        await requests(pool, ep, 2)
    assert len(got) >= 5
    for ev in got:
        assert isinstance(ev, conpool.Event)
        assert type(ev.ts_ns) is int and ev.ts_ns > 0
        assert type(ev.kind) is str and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", ev.kind), ev
        assert type(ev.endpoint) is str  # text, never the Endpoint object
        assert type(ev.address) is str and type(ev.conn_id) is int and type(ev.detail) is str
        assert ev.duration_ns is None or type(ev.duration_ns) is int
        with pytest.raises(dataclasses.FrozenInstanceError):
            ev.detail = "changed"  # type: ignore[misc]
        assert ev.endpoint == ("" if ev.kind == "pool.close" else str(ep))


async def test_remove_hook(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    got: list[str] = []

    def hook(event: conpool.Event) -> None:
        got.append(event.kind)

    async with conpool.Pool() as pool:
        pool.add_hook("conn.*", hook)
        pool.add_hook("connect.complete", hook)  # one function under two patterns
        await requests(pool, ep, 2)
        assert got == ["connect.complete", "conn.release", "conn.reuse", "conn.release"]
        pool.remove_hook(hook)  # every registration of it
        await requests(pool, ep, 2)
        assert len(got) == 4
        with pytest.raises(ValueError, match="not registered"):
            pool.remove_hook(hook)
        # With no hook and no tracer, trace points are switched off entirely.
        assert pool._trace is None
        pool.add_hook("conn.reuse", hook)
        await requests(pool, ep, 1)
        assert got[4:] == ["conn.reuse"]


# --------------------------------------------------------------------------
# The connection shortcuts


async def test_connection_shortcuts(echo_server: EchoServer) -> None:
    ep = endpoint(echo_server)
    created: list[conpool.Event] = []
    reused: list[conpool.Event] = []
    closed: list[conpool.Event] = []
    ids: list[int] = []
    async with conpool.Pool(conpool.Config(max_connection_uses=2)) as pool:

        @pool.on_connection_created
        def on_created(event: conpool.Event) -> None:
            created.append(event)

        assert pool.on_connection_reused(reused.append) == reused.append
        pool.on_connection_closed(closed.append)
        assert callable(on_created)  # the decorator gives the function back
        for i in range(3):
            async with pool.connection(ep) as conn:
                ids.append(conn.id)
                assert await echo(conn, b"%d" % i) == b"%d" % i
        assert ids == [1, 1, 2]
        stats = check_quiet(pool)
        assert len(created) == stats.endpoints[ep].created == 2
        assert len(reused) == stats.endpoints[ep].reused == 1
    assert [(ev.kind, ev.conn_id, ev.address) for ev in created] == [
        ("connect.complete", 1, "127.0.0.1"),
        ("connect.complete", 2, "127.0.0.1"),
    ]
    assert all(ev.duration_ns is not None and ev.duration_ns > 0 for ev in created)
    assert [(ev.kind, ev.conn_id) for ev in reused] == [("conn.reuse", 1)]
    assert [(ev.kind, ev.conn_id, ev.detail) for ev in closed] == [
        ("conn.close", 1, "uses"),
        ("conn.close", 2, "pool-closed"),
    ]
    assert all(ev.endpoint == str(ep) for ev in created + reused + closed)


async def test_reused_hook_sees_every_reuse(echo_server: EchoServer) -> None:
    """Under contention a released connection often goes straight to a
    waiting task; that is a reuse too, and stats() counts it as one."""
    ep = endpoint(echo_server)
    reused: list[conpool.Event] = []
    created: list[conpool.Event] = []
    closed: list[conpool.Event] = []
    config = conpool.Config(max_connections_per_endpoint=2, max_connection_uses=4)
    async with conpool.Pool(config) as pool:
        pool.on_connection_reused(reused.append)
        pool.on_connection_created(created.append)
        pool.on_connection_closed(closed.append)
        await contended(pool, ep, tasks=6, each=5)
        stats = check_quiet(pool).endpoints[ep]
    assert stats.created + stats.reused == 30
    assert stats.waiting == 0
    assert len(created) == stats.created
    assert len([ev for ev in closed if ev.detail != "pool-closed"]) == stats.closed
    assert len(closed) == stats.created  # the rest closed with the pool
    assert len(reused) == stats.reused


# --------------------------------------------------------------------------
# Hooks that raise


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "pattern",
    ["*", "connect.started", "connect.complete", "conn.reuse", "conn.release", "conn.close"],
)
async def test_raising_hook_is_disabled_and_logged(
    echo_server: EchoServer, caplog: pytest.LogCaptureFixture, pattern: str
) -> None:
    caplog.set_level(logging.WARNING, logger="conpool")
    ep = endpoint(echo_server)
    tracer = conpool.Tracer()
    calls: list[conpool.Event] = []
    after: list[conpool.Event] = []

    def broken(event: conpool.Event) -> None:
        calls.append(event)
        raise Boom(f"broken hook on {event.kind}")

    config = conpool.Config(max_connections_per_endpoint=1, max_connection_uses=3)
    async with conpool.Pool(config, tracer=tracer) as pool:
        pool.add_hook(pattern, broken)
        pool.add_hook("*", after.append)  # registered after the broken one
        await requests(pool, ep, 4)
        await contended(pool, ep, tasks=3, each=3)
        stats = check_quiet(pool).endpoints[ep]
    assert stats.created + stats.reused == 13
    # Called once, then never again.
    assert len(calls) == 1
    failed_on = calls[0].kind
    # Logged once on the conpool logger, with the hook's exception.
    records = [r for r in caplog.records if r.name == "conpool"]
    assert len(records) == 1
    record = records[0]
    assert record.levelno >= logging.WARNING
    assert repr(broken) in record.getMessage() and failed_on in record.getMessage()
    assert "disabled" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
    # The disabling is an event of its own, seen by the tracer and the other hooks.
    events = tracer.events()
    disabled = [ev for ev in events if ev.kind == "hook.disabled"]
    assert len(disabled) == 1 and disabled[0].detail == repr(broken)
    # The other hook saw every event (the one the broken hook failed on too).
    assert len(after) == len(events) and set(after) == set(events)
    i = events.index(calls[0])
    assert events[i + 1].kind == "hook.disabled"


async def test_hooks_see_events_in_order_when_one_is_disabled(echo_server: EchoServer) -> None:
    """The event a hook failed on comes before the hook.disabled it caused,
    for the tracer and for every other hook alike."""
    tracer = conpool.Tracer()
    after: list[conpool.Event] = []

    def broken(event: conpool.Event) -> None:
        raise Boom(event.kind)

    async with conpool.Pool(tracer=tracer) as pool:
        pool.add_hook("*", broken)
        pool.add_hook("*", after.append)
        await requests(pool, endpoint(echo_server), 2)
    events = tracer.events()
    assert [ev.kind for ev in events[:2]] == ["connect.started", "hook.disabled"]
    assert [ev.kind for ev in after[:2]] == ["connect.started", "hook.disabled"]
    assert after == events
    stamps = [ev.ts_ns for ev in after]
    assert stamps == sorted(stamps)


async def test_hook_raising_on_the_refused_path(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises on connect.failed does not change the error the
    caller gets, nor the retries."""
    caplog.set_level(logging.WARNING, logger="conpool")
    tracer = conpool.Tracer()
    port = refused_port()
    ep = conpool.Endpoint("127.0.0.1", port)

    def broken(event: conpool.Event) -> None:
        raise Boom("no")

    config = conpool.Config(connect_retries=2, retry_backoff=0)
    async with conpool.Pool(config, tracer=tracer) as pool:
        pool.add_hook("connect.failed", broken)
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
        check_quiet(pool)
    assert len(info.value.errors) == 3
    assert not any(isinstance(e, Boom) for e in info.value.errors)
    assert [ev.kind for ev in tracer.events()].count("connect.failed") == 3
    assert len([r for r in caplog.records if r.name == "conpool"]) == 1


# --------------------------------------------------------------------------
# LogExporter


async def test_log_exporter_logs_every_event_at_debug(
    echo_server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="conpool")
    marker = f"conpool-payload-{uuid.uuid4().hex}"
    tracer = conpool.Tracer()
    ep = endpoint(echo_server)
    async with conpool.Pool(tracer=tracer) as pool:
        pool.add_hook("*", conpool.LogExporter())
        for _ in range(2):
            async with pool.connection(ep) as conn:
                assert await echo(conn, marker.encode()) == marker.encode()
    records = [r for r in caplog.records if r.name == "conpool"]
    events = tracer.events()
    assert len(records) == len(events) > 4
    assert all(r.levelno == logging.DEBUG for r in records)
    lines = [r.getMessage() for r in records]
    for line, ev in zip(lines, events, strict=True):
        assert line.startswith(ev.kind), (line, ev)
    connected = lines[[ev.kind for ev in events].index("connect.complete")]
    assert re.fullmatch(
        rf"connect\.complete {re.escape(str(ep))} via 127\.0\.0\.1 conn #1 \d+\.\d{{3}} ms",
        connected,
    ), connected
    assert marker not in caplog.text


async def test_log_exporter_writes_the_stacked_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="conpool")
    port = refused_port()
    ep = conpool.Endpoint("127.0.0.1", port)
    config = conpool.Config(connect_retries=1, retry_backoff=0)
    async with conpool.Pool(config) as pool:
        pool.add_hook("*", conpool.LogExporter())
        with pytest.raises(conpool.ConnectError) as info:
            await pool.acquire(ep)
    failed = [r for r in caplog.records if r.getMessage().startswith("acquire.failed")]
    assert len(failed) == 1
    record = failed[0]
    assert record.name == "conpool" and record.levelno == logging.DEBUG
    text = record.getMessage()
    assert text == f"acquire.failed {ep}: {info.value}"
    assert text.splitlines()[1:] == [
        f"  connecting to tcp:127.0.0.1:{port}",
        f"  connecting to 127.0.0.1:{port}",
        "  after 1 retry attempt (2 attempts in all)",
    ]
    attempts = [r.getMessage() for r in caplog.records if "connect.failed" in r.getMessage()]
    assert len(attempts) == 2
    assert all(a.endswith(": [Errno 111] Connection refused") for a in attempts)


async def test_log_exporter_options(
    echo_server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    mine = logging.getLogger("conpool.test.mine")
    caplog.set_level(logging.INFO, logger="conpool.test.mine")
    caplog.set_level(logging.INFO, logger="conpool")
    ep = endpoint(echo_server)
    quiet = conpool.LogExporter()  # DEBUG: below the conpool logger's level now
    loud = conpool.LogExporter(logger=mine, level=logging.INFO)
    assert repr(loud) == "LogExporter(logger='conpool.test.mine', level=20)"
    async with conpool.Pool() as pool:
        pool.add_hook("*", quiet)
        pool.add_hook("conn.*", loud)
        await requests(pool, ep, 2)
    records = [r for r in caplog.records if r.name.startswith("conpool")]
    assert records and all(r.name == "conpool.test.mine" for r in records)
    assert all(r.levelno == logging.INFO for r in records)
    assert [r.getMessage().split()[0] for r in records] == [
        "conn.release",
        "conn.reuse",
        "conn.release",
        "conn.close",
    ]


# --------------------------------------------------------------------------
# Registering bad hooks


def noop(event: conpool.Event) -> None:
    pass


async def async_hook(event: conpool.Event) -> None:
    pass


@pytest.mark.parametrize(
    ("pattern", "hook"),
    [
        ("", noop),
        (None, noop),
        (b"conn.*", noop),
        ("*", None),
        ("*", 42),
        ("*", "conn.close"),
        # An async function's coroutine would never be awaited: nothing would run.
        ("*", async_hook),
    ],
)
def test_add_hook_rejects_bad_hooks(pattern: object, hook: object) -> None:
    pool = conpool.Pool()
    with pytest.raises(TypeError):
        pool.add_hook(pattern, hook)  # type: ignore[arg-type]
    assert len(pool._hooks) == 0 and pool._trace is None


@pytest.mark.parametrize(
    "shortcut", ["on_connection_created", "on_connection_reused", "on_connection_closed"]
)
@pytest.mark.parametrize("hook", [None, 3, async_hook])
def test_shortcuts_reject_bad_hooks(shortcut: str, hook: object) -> None:
    pool = conpool.Pool()
    with pytest.raises(TypeError):
        getattr(pool, shortcut)(hook)
    assert len(pool._hooks) == 0
