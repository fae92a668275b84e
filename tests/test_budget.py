"""conpool.RedisBudget in one process, against a real redis-server: pools
sharing a limit, the give-back of idle connections, timeouts, what Redis
hears (and does not hear), and Redis going away and coming back.

Every test runs on asyncio, uvloop and trio (redis-py's sync client in
worker threads there).  The fleet of real processes is in test_budget_fleet.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import anyio
import pytest
import redis as redis_py

import conpool
from conpool._budget_redis import redis_keys
from servers import EchoServer, RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.realserver]


def url(server: RedisServer) -> str:
    return f"redis://{server.host}:{server.port}/0"


@pytest.fixture
def rc(redis: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis(host=redis.host, port=redis.port, decode_responses=True)
    yield client
    client.close()


def held(rc: redis_py.Redis, endpoint: conpool.Endpoint, namespace: str = "conpool") -> int:
    """Leases of ``endpoint`` Redis counts, all participants (expired ones
    included until a script prunes them)."""
    counts = rc.hgetall(redis_keys(namespace, str(endpoint))[0])
    return sum(int(c) for c in counts.values())


def script_calls(rc: redis_py.Redis) -> int:
    stats = rc.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def eventually(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Poll ``check`` (a Redis query, or the pool's stats: nothing to wait on)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not true after {within} s")
        await anyio.sleep(0.02)


# -- validation --------------------------------------------------------------


def test_validation() -> None:
    ok = "redis://127.0.0.1:6379/0"
    with pytest.raises(TypeError, match="url must be a str"):
        conpool.RedisBudget(b"redis://x", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"url must start with redis://"):
        conpool.RedisBudget("http://127.0.0.1", 1)
    with pytest.raises(TypeError, match="limit must be an int"):
        conpool.RedisBudget(ok, True)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        conpool.RedisBudget(ok, 0)
    with pytest.raises(ValueError, match="namespace"):
        conpool.RedisBudget(ok, 1, namespace="")
    with pytest.raises(ValueError, match="namespace"):
        conpool.RedisBudget(ok, 1, namespace="a b")
    with pytest.raises(ValueError, match="lease_ttl"):
        conpool.RedisBudget(ok, 1, lease_ttl=0)
    with pytest.raises(ValueError, match="lease_ttl"):
        conpool.RedisBudget(ok, 1, lease_ttl=float("nan"))
    with pytest.raises(TypeError, match="lease_ttl"):
        conpool.RedisBudget(ok, 1, lease_ttl="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_unavailable must be 'fail-open' or 'fail-closed'"):
        conpool.RedisBudget(ok, 1, on_unavailable="fail-maybe")
    with pytest.raises(ValueError, match="timeout must be at most lease_ttl / 2"):
        conpool.RedisBudget(ok, 1, lease_ttl=1.0, timeout=0.6)
    with pytest.raises(ValueError, match=r"url 'redis://:\*\*\*@h:99999999/0' is not usable: Port"):
        conpool.RedisBudget("redis://:secret@h:99999999/0", 1)
    with pytest.raises(ValueError, match=r"must start with redis://.*, got 'http://:\*\*\*@h:x/'"):
        conpool.RedisBudget("http://:secret@h:x/", 1)
    with pytest.raises(ValueError, match="is not usable: Invalid value for 'socket_timeout'"):
        conpool.RedisBudget("redis://h:1/0?socket_timeout=soon", 1)
    with pytest.raises(TypeError, match=r"budget must be a conpool\.RedisBudget"):
        conpool.Pool(budget="redis://x")  # type: ignore[arg-type]
    budget = conpool.RedisBudget("redis://:secret@127.0.0.1:6379/0", 5)
    assert "secret" not in repr(budget) and "secret" not in budget.label
    assert budget.timeout == 1.0
    assert conpool.RedisBudget(ok, 1, lease_ttl=1.0).timeout == 0.25


def test_import_conpool_does_not_import_redis() -> None:
    code = "import sys, conpool; assert 'redis' not in sys.modules, 'redis imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- sharing the limit -----------------------------------------------------------


async def test_two_pools_share_the_limit_and_idle_connections_are_given_back(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=4, lease_ttl=5.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    tracer = conpool.Tracer()
    config = conpool.Config(acquire_timeout=10.0)
    async with (
        conpool.Pool(config, budget=budget, tracer=tracer) as a,
        conpool.Pool(config, budget=budget) as b,
    ):
        conns = [await a.acquire(ep) for _ in range(4)]
        assert held(rc, ep) == 4
        for conn in conns:
            await a.release(conn)
        assert a.stats().idle == 4
        # b is one of two participants: its share is 2.  a's idle
        # connections beyond its share close for it.
        got = [await b.acquire(ep) for _ in range(2)]
        assert echo_server.max_concurrent <= 4
        stats_a = a.stats().budget
        assert stats_a is not None and stats_a.given_back >= 2
        assert b.stats().budget is not None
        assert b.stats().budget.waited >= 1  # type: ignore[union-attr]
        closes = [e for e in tracer.events() if e.kind == "conn.close"]
        assert [e.detail for e in closes] == ["budget"] * len(closes) and len(closes) >= 2
        kinds = [e.kind for e in tracer.events() if e.kind.startswith("budget.")]
        assert "budget.give_back" in kinds and "budget.granted" in kinds
        for conn in got:
            await b.release(conn)
    # Both pools closed: every lease went back.
    assert held(rc, ep) == 0
    total = budget.stats()
    assert total.participants == 0 and total.granted >= 6 and total.given_back >= 2


async def test_a_dial_waits_for_budget_then_times_out_naming_it(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=2, lease_ttl=5.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    async with (
        conpool.Pool(budget=budget) as a,
        conpool.Pool(conpool.Config(acquire_timeout=0.5), budget=budget) as b,
    ):
        held_by_a = [await a.acquire(ep) for _ in range(2)]
        with pytest.raises(conpool.PoolTimeout, match=r"no connection budget for 127\.0\.0\.1"):
            await b.acquire(ep)
        stats = b.stats()
        assert stats.budget is not None and stats.budget.timeouts == 1
        # The dial's slot went back: not a connect failure, nothing pending.
        assert stats.pending == 0 and stats.endpoints[ep].connect_failures == 0
        # a was asked to give one back: it closes when released, not reused.
        await a.release(held_by_a[0])
        assert a.stats().active == 1 and a.stats().idle == 0
        conn = await b.acquire(ep)
        assert echo_server.max_concurrent <= 2
        await b.release(conn)
        await a.release(held_by_a[1])


async def test_a_hand_out_never_talks_to_redis_and_a_dial_once(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    # A long ttl: no renewal falls into the counted window.
    budget = conpool.RedisBudget(url(redis), limit=10, lease_ttl=60.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    async with conpool.Pool(budget=budget) as pool:
        # (The first call also loads the script: EVALSHA, NOSCRIPT, EVAL.)
        await pool.release(await pool.acquire(ep))
        before = script_calls(rc)
        conns = [await pool.acquire(ep) for _ in range(5)]
        dialled = script_calls(rc) - before
        for conn in conns:
            await pool.release(conn)
        before = script_calls(rc)
        for _ in range(200):
            conn = await pool.acquire(ep)
            await conn.send(b"x")
            assert await conn.receive() == b"x"
            await pool.release(conn)
        await anyio.sleep(0.2)  # a flush would have happened by now
        handed_out = script_calls(rc) - before
        assert pool.stats().endpoints[ep].reused == 201
    assert dialled == 4  # one script call per dial (one connection was idle)
    assert handed_out == 0


async def test_closes_are_batched_into_at_most_one_call_each(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=10, lease_ttl=60.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    async with conpool.Pool(budget=budget) as pool:
        conns = [await pool.acquire(ep) for _ in range(8)]
        before = script_calls(rc)
        for conn in conns:
            await conn.aclose()
            await pool.release(conn)
        await eventually(lambda: held(rc, ep) == 0, what="the closes flushed")
        calls = script_calls(rc) - before
    assert 1 <= calls <= 8


# -- Redis unavailable ---------------------------------------------------------------


async def test_fail_open_dials_within_local_limits_and_converges_when_redis_returns(
    redis: RedisServer,
    rc: redis_py.Redis,
    echo_server: EchoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conpool")
    budget = conpool.RedisBudget(url(redis), limit=3, lease_ttl=1.0, on_unavailable="fail-open")
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=5, acquire_timeout=5.0)
    async with conpool.Pool(config, budget=budget) as pool:
        conns = [await pool.acquire(ep) for _ in range(2)]
        assert held(rc, ep) == 2
        redis.stop()
        # Redis is gone: dials go on, within the pool's own limit (5), not
        # the fleet's (3), and the outage is logged once.
        conns += [await pool.acquire(ep) for _ in range(3)]
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.3):
                await pool.acquire(ep)  # the local limit still holds
        stats = pool.stats().budget
        assert stats is not None and stats.unaccounted == 3 and not stats.available
        assert stats.redis_errors >= 1
        unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(unavailable) == 1
        assert "within the pool's own limits" in unavailable[0].getMessage()
        closed = conns.pop()
        await closed.aclose()
        await pool.release(closed)  # a close while Redis is away
        # Redis returns (empty: a restart): the pool tells it the truth.
        redis.start()
        await eventually(
            lambda: held(rc, ep) == 4 and pool.stats().budget.available,  # type: ignore[union-attr]
            what="Redis hearing of the 4 connections",
        )
        stats = pool.stats().budget
        assert stats is not None and stats.available and stats.lost >= 1
        assert any("available again" in r.getMessage() for r in caplog.records)
        # Over the fleet's limit now (3): dials wait for budget again.
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.5):
                await pool.acquire(ep)
        stats = pool.stats().budget
        assert stats is not None and stats.waited == 1 and stats.unaccounted == 3
        for conn in conns:
            await conn.aclose()
            await pool.release(conn)
        await eventually(lambda: held(rc, ep) == 0, what="every lease handed back")


async def test_fail_closed_raises_connect_error_naming_the_budget(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=3, lease_ttl=1.0, on_unavailable="fail-closed")
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    async with conpool.Pool(budget=budget) as pool:
        conn = await pool.acquire(ep)
        await pool.release(conn)
        redis.stop()
        # An idle connection is still handed out: that never asks Redis.
        conn = await pool.acquire(ep)
        with pytest.raises(conpool.ConnectError) as caught:
            await pool.acquire(ep)
        text = str(caught.value)
        assert f"redis budget redis://127.0.0.1:{redis.port}/0" in text
        assert "fail-closed" in text and caught.value.endpoint == ep
        stats = pool.stats()
        assert stats.budget is not None and stats.budget.denied == 1
        assert stats.pending == 0 and stats.active == 1
        redis.start()
        # Back within the retry interval (a third of the ttl at most 1 s).
        with anyio.fail_after(10):
            while True:
                try:
                    second = await pool.acquire(ep)
                    break
                except conpool.ConnectError:
                    await anyio.sleep(0.1)
        await eventually(lambda: held(rc, ep) == 2, what="Redis counting both")
        await pool.release(second)
        await pool.release(conn)


async def test_leases_are_renewed_and_expire_without_renewal(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=3, lease_ttl=1.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    async with conpool.Pool(budget=budget) as pool:
        conn = await pool.acquire(ep)
        # Well past the ttl: the renewals keep the lease.
        await anyio.sleep(2.5)
        exp_key = redis_keys("conpool", str(ep))[1]
        entries: list[tuple[str, float]] = rc.zrange(exp_key, 0, -1, withscores=True)  # type: ignore[assignment]
        seconds, micros = rc.time()
        assert max(score for _, score in entries) > seconds * 1000 + micros / 1000
        stats = pool.stats().budget
        assert stats is not None and stats.renewed >= 3 and stats.lost == 0
        assert held(rc, ep) == 1
        await pool.release(conn)


async def test_the_same_budget_on_two_namespaces_does_not_share(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    one = conpool.RedisBudget(url(redis), limit=1, namespace="one")
    two = conpool.RedisBudget(url(redis), limit=1, namespace="two")
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    async with conpool.Pool(budget=one) as a, conpool.Pool(budget=two) as b:
        ca, cb = await a.acquire(ep), await b.acquire(ep)
        assert held(rc, ep, "one") == 1 and held(rc, ep, "two") == 1
        await a.release(ca)
        await b.release(cb)


def test_stats_start_empty() -> None:
    budget = conpool.RedisBudget("redis://127.0.0.1:1/0", 1)
    assert budget.stats() == conpool.BudgetStats(participants=0)
    assert time.monotonic() > 0


async def test_cancelling_a_dial_waiting_for_budget_leaves_everything_consistent(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=1, lease_ttl=5.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    wait_key = redis_keys("conpool", str(ep))[2]
    async with conpool.Pool(budget=budget) as a, conpool.Pool(budget=budget) as b:
        conn = await a.acquire(ep)
        with anyio.move_on_after(0.5) as scope:
            await b.acquire(ep)
        assert scope.cancelled_caught
        stats = b.stats()
        assert stats.pending == 0 and stats.active == 0
        assert stats.budget is not None and stats.budget.waiting == 0
        # b no longer counts as waiting in Redis either.
        await eventually(lambda: rc.zcard(wait_key) == 0, what="b's wait unregistered")
        await a.release(conn)
        assert held(rc, ep) == 1  # a keeps its idle connection: nobody waits now


async def test_a_pool_exited_in_a_cancelled_scope_still_leaves_cleanly(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    """Leaving the pool awaits Redis (the last flush): in a cancelled scope
    it still returns the leases, stops its background tasks and leaves the
    budget (it used to raise 'Attempted to exit a cancel scope that isn't
    the current task's', its task group never exited)."""
    budget = conpool.RedisBudget(url(redis), limit=5, lease_ttl=5.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with anyio.CancelScope() as outer:
        async with conpool.Pool(budget=budget) as pool:
            await pool.release(await pool.acquire(ep))
            assert held(rc, ep) == 1
            outer.cancel()
    # (Whether the exit still raised Cancelled at a checkpoint of its own
    # depends on the backend; what matters is below.)
    assert budget.stats().participants == 0
    assert pool.stats().active == pool.stats().idle == 0
    assert held(rc, ep) == 0  # the closed connection's lease went back at the exit


async def test_a_pool_entered_in_a_cancelled_scope_leaves_nothing_behind(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    """Entering awaits the budget's start: cancelled there, the pool's task
    group is exited and the budget does not count the pool."""
    budget = conpool.RedisBudget(url(redis), limit=5, lease_ttl=5.0)
    pool = conpool.Pool(budget=budget)
    with anyio.CancelScope() as outer:
        outer.cancel()
        async with pool:
            raise AssertionError("entered a pool in a cancelled scope")
    assert outer.cancelled_caught
    assert budget.stats().participants == 0


# -- waking the dials that wait for budget ------------------------------------------------

#: What "at once" means on a loaded machine: well under the participant's
#: poll interval (min(lease_ttl / 4, 0.5) = 0.5 s with the default ttl),
#: which is all a missed wake-up would leave.
PROMPT = 0.25


def _asker(
    pool: conpool.Pool, ep: conpool.Endpoint, served: list[float], both: anyio.Event
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A task body asking ``pool`` for ``ep``: it records when it got a
    connection, echoes through it and releases it."""

    async def ask() -> None:
        conn = await pool.acquire(ep)
        served.append(time.monotonic())
        if len(served) == 2:
            both.set()
        await conn.send(b"ping")
        assert await conn.receive() == b"ping"
        await pool.release(conn)

    return ask


async def test_dials_waiting_for_budget_take_a_connection_that_comes_back_idle_at_once(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=1, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    tracer = conpool.Tracer()
    async with (
        conpool.Pool(conpool.Config(acquire_timeout=10.0), budget=budget, tracer=tracer) as a,
        conpool.Pool(budget=budget),
        anyio.create_task_group() as tg,
    ):
        held_by_a = await a.acquire(ep)  # the fleet's one connection
        served: list[float] = []
        both = anyio.Event()
        ask = _asker(a, ep, served, both)
        tg.start_soon(ask)
        tg.start_soon(ask)
        await eventually(
            lambda: a.stats().budget.waiting == 2,  # type: ignore[union-attr]
            what="both dials waiting for budget",
        )
        await anyio.sleep(0.1)  # settled: one asked Redis and waits, one queued behind it
        released = time.monotonic()
        await a.release(held_by_a)
        with anyio.fail_after(5):
            await both.wait()
        late = [round(t - released, 3) for t in served]
        assert max(late) < PROMPT, f"served {late} s after the release"
        # Both were served by the connection a gave back: no dial, no lease more.
        stats = a.stats()
        assert stats.endpoints[ep].created == 1 and stats.pending == 0
        assert stats.budget is not None and stats.budget.waiting == 0
        assert held(rc, ep) == 1
        kinds = [e.kind for e in tracer.events() if e.kind.startswith("budget.")]
        # The second dial's wait behind the first is traced, and so is each
        # wait's end without a lease.
        assert kinds.count("budget.queued") >= 1, kinds
        assert kinds.count("budget.gave_up") >= 2, kinds
        gave_up = [e for e in tracer.events() if e.kind == "budget.gave_up"]
        assert all(e.duration_ns is not None and e.duration_ns > 0 for e in gave_up)


async def test_dials_waiting_for_budget_are_woken_when_a_lease_frees_locally(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=1, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    async with (
        conpool.Pool(conpool.Config(acquire_timeout=10.0), budget=budget) as a,
        conpool.Pool(budget=budget),
        anyio.create_task_group() as tg,
    ):
        held_by_a = await a.acquire(ep)
        served: list[float] = []
        both = anyio.Event()
        ask = _asker(a, ep, served, both)
        tg.start_soon(ask)
        tg.start_soon(ask)
        await eventually(
            lambda: a.stats().budget.waiting == 2,  # type: ignore[union-attr]
            what="both dials waiting for budget",
        )
        await anyio.sleep(0.1)
        # The connection closes: its lease returns locally (after the close
        # grace, 50 ms); the first dial takes it, the second then the
        # connection the first gives back.
        released = time.monotonic()
        await held_by_a.aclose()
        await a.release(held_by_a)
        with anyio.fail_after(5):
            await both.wait()
        late = [round(t - released, 3) for t in served]
        assert max(late) < PROMPT + 0.05, f"served {late} s after the close"
        stats = a.stats()
        assert stats.endpoints[ep].created == 2 and stats.pending == 0
        assert echo_server.max_concurrent <= 1


# -- first come, first served and one deadline under a full budget -----------------


def assert_first_come_first_served(served: list[int], waits: list[float], hold: float) -> None:
    """Tasks numbered in the order they came were ``served`` in that order,
    each having waited ``waits[i]``, holding their connection ``hold`` s."""
    # Nobody overtaken by more than one task (two woken in one scheduler
    # pass, or two threads, may resume either way round).
    overtaken = {i: served.index(i) - i for i in range(len(served))}
    assert max(overtaken.values()) <= 1, f"served in the order {served}"
    # No starvation: the first tasks to wait for budget are served within a
    # few holds, not after everyone who came later (about n / 2 holds).
    assert max(waits[:5]) < 4 * hold, f"waits {[round(w, 3) for w in waits]}"


async def test_under_a_full_budget_tasks_are_served_in_the_order_they_came(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    """The fleet's limit (2) is below the pool's own (4): the first dials
    that find the fleet full wait for budget, the tasks after them for a
    slot.  Connections released meanwhile go to whoever came first, the
    dials waiting for budget included (they used to wait seconds while
    later tasks took every connection that came back)."""
    budget = conpool.RedisBudget(url(redis), limit=2, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=4, acquire_timeout=60.0)
    # Tasks come faster (one per stagger) than two connections serve them
    # (one per hold / 2): a line forms.
    n, hold, stagger = 16, 0.15, 0.03
    served: list[int] = []
    waits = [0.0] * n

    async def task(i: int) -> None:
        start = time.monotonic()
        conn = await pool.acquire(ep)
        waits[i] = time.monotonic() - start
        served.append(i)
        await conn.send(b"x")
        assert await conn.receive() == b"x"
        await anyio.sleep(hold)
        await pool.release(conn)

    async with conpool.Pool(config, budget=budget) as pool:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(task, i)
                    await anyio.sleep(stagger)
        stats = pool.stats()
        assert stats.pending == 0 and stats.waiting == 0 and stats.active == 0
        assert stats.budget is not None and stats.budget.waiting == 0
        assert stats.budget.waited >= 1  # the fleet was full
    assert echo_server.max_concurrent <= 2
    assert_first_come_first_served(served, waits, hold)
    assert held(rc, ep) == 0


async def test_acquire_timeout_bounds_the_slot_wait_and_the_budget_wait_together(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    """A task waits for a slot (max_connections, held by a connection to
    another server) for most of its acquire_timeout, then its dial finds
    the fleet full: it times out at acquire_timeout from its start, not a
    whole acquire_timeout later."""
    budget = conpool.RedisBudget(url(redis), limit=1, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    timeout, hold = 1.5, 1.0
    with EchoServer() as other_server:
        other = conpool.Endpoint("127.0.0.1", other_server.port)
        config = conpool.Config(max_connections=1, acquire_timeout=timeout)
        async with (
            conpool.Pool(budget=budget) as fleet,
            conpool.Pool(config, budget=budget) as pool,
            anyio.create_task_group() as tg,
        ):
            taken = await fleet.acquire(ep)  # the fleet's one lease of ep
            blocker = await pool.acquire(other)  # the pool's one slot

            async def close_later() -> None:
                await anyio.sleep(hold)
                await blocker.aclose()
                await pool.release(blocker)

            tg.start_soon(close_later)
            start = time.monotonic()
            with pytest.raises(conpool.PoolTimeout, match=r"budget .* acquire_timeout=1.5 s"):
                await pool.acquire(ep)
            elapsed = time.monotonic() - start
            stats = pool.stats()
            assert stats.budget is not None and stats.budget.timeouts == 1
            assert stats.pending == 0 and stats.waiting == 0
            # Per call too: timeout= bounds both waits the same way.
            blocker = await pool.acquire(other)
            tg.start_soon(close_later)
            start = time.monotonic()
            with pytest.raises(conpool.PoolTimeout, match=r"no connection budget .* timeout=1.2 s"):
                await pool.acquire(ep, timeout=1.2)
            per_call = time.monotonic() - start
            await fleet.release(taken)
    # Generous slack for a loaded machine, well short of the two waits'
    # sum (2.5 s and 2.2 s).
    assert timeout - 0.05 <= elapsed < timeout + 0.6, elapsed
    assert 1.2 - 0.05 <= per_call < 1.2 + 0.6, per_call
