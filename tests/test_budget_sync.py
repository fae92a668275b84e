"""conpool.RedisBudget on SyncPool in one process, against a real
redis-server and a threaded echo server: the same budget as Pool's (shared
with Pool too), its timeouts, what Redis hears, Redis going away and coming
back, first come first served under a full budget, one deadline, and the
threads stopping.  The fleet of real processes is in test_budget_fleet."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import pytest
import redis as redis_py

import conpool
from servers import EchoServer, RedisServer
from test_budget import assert_first_come_first_served, held, script_calls, url

pytestmark = pytest.mark.realserver


@pytest.fixture
def rc(redis: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis(host=redis.host, port=redis.port, decode_responses=True)
    yield client
    client.close()


def eventually(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not true after {within} s")
        time.sleep(0.02)


def budget_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("conpool budget")]


def echo(conn: conpool.SyncConnection) -> None:
    conn.send(b"ping")
    assert conn.receive() == b"ping"


def test_budget_must_be_a_redis_budget() -> None:
    with pytest.raises(TypeError, match=r"budget must be a conpool\.RedisBudget"):
        conpool.SyncPool(budget="redis://x")  # type: ignore[arg-type]


def test_a_sync_pool_and_an_async_pool_share_one_budget_and_give_back(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=4, lease_ttl=5.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    config = conpool.Config(acquire_timeout=10.0)
    tracer = conpool.Tracer()
    with conpool.SyncPool(config, budget=budget, tracer=tracer) as sync_pool:
        conns = [sync_pool.acquire(ep) for _ in range(4)]
        assert held(rc, ep) == 4
        for conn in conns:
            sync_pool.release(conn)
        assert sync_pool.stats().idle == 4

        async def main() -> None:
            # The async pool is the second participant: its share is 2, and
            # the sync pool's idle connections beyond its own close for it.
            async with conpool.Pool(config, budget=budget) as pool:
                got = [await pool.acquire(ep) for _ in range(2)]
                assert budget.stats().participants == 2
                for conn in got:
                    await pool.release(conn)

        anyio.run(main)
        assert echo_server.max_concurrent <= 4
        stats = sync_pool.stats().budget
        assert stats is not None and stats.given_back >= 2 and stats.granted == 4
        closes = [e.detail for e in tracer.events() if e.kind == "conn.close"]
        assert closes.count("budget") >= 2
        kinds = {e.kind for e in tracer.events() if e.kind.startswith("budget.")}
        assert {"budget.granted", "budget.give_back"} <= kinds
    eventually(lambda: held(rc, ep) == 0, what="every lease back")
    assert budget.stats().participants == 0


def test_a_hand_out_never_talks_to_redis_and_a_dial_once(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=10, lease_ttl=60.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with conpool.SyncPool(budget=budget) as pool:
        pool.release(pool.acquire(ep))  # (the first call also loads the script)
        before = script_calls(rc)
        conns = [pool.acquire(ep) for _ in range(5)]
        dialled = script_calls(rc) - before
        for conn in conns:
            pool.release(conn)
        before = script_calls(rc)
        for _ in range(200):
            with pool.connection(ep) as conn:
                echo(conn)
        time.sleep(0.2)  # a flush would have happened by now
        handed_out = script_calls(rc) - before
        assert pool.stats().endpoints[ep].reused == 201
    assert dialled == 4  # one script call per dial (one connection was idle)
    assert handed_out == 0


def test_a_dial_waits_for_budget_then_times_out_naming_it(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=2, lease_ttl=5.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with (
        conpool.SyncPool(budget=budget) as a,
        conpool.SyncPool(conpool.Config(acquire_timeout=0.5), budget=budget) as b,
    ):
        held_by_a = [a.acquire(ep) for _ in range(2)]
        start = time.monotonic()
        with pytest.raises(conpool.PoolTimeout, match=r"no connection budget for 127\.0\.0\.1"):
            b.acquire(ep)
        assert 0.45 <= time.monotonic() - start < 1.5
        stats = b.stats()
        assert stats.budget is not None and stats.budget.timeouts == 1
        assert stats.budget.waited == 1 and stats.budget.waiting == 0
        assert stats.pending == 0 and stats.waiting == 0
        assert stats.endpoints[ep].connect_failures == 0
        # a was asked to give one back: closed when released, not reused.
        a.release(held_by_a[0])
        assert a.stats().active == 1 and a.stats().idle == 0
        conn = b.acquire(ep)
        assert echo_server.max_concurrent <= 2
        b.release(conn)
        a.release(held_by_a[1])


def test_fail_open_dials_within_local_limits_and_converges_when_redis_returns(
    redis: RedisServer,
    rc: redis_py.Redis,
    echo_server: EchoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="conpool")
    budget = conpool.RedisBudget(url(redis), limit=3, lease_ttl=1.0, on_unavailable="fail-open")
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=5, acquire_timeout=5.0)
    with conpool.SyncPool(config, budget=budget) as pool:
        conns = [pool.acquire(ep) for _ in range(2)]
        assert held(rc, ep) == 2
        redis.stop()
        conns += [pool.acquire(ep) for _ in range(3)]  # the pool's own limit, 5
        with pytest.raises(conpool.PoolTimeout, match="no connection to"):
            pool.acquire(ep, timeout=0.3)  # the local limit still holds
        stats = pool.stats().budget
        assert stats is not None and stats.unaccounted == 3 and not stats.available
        unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(unavailable) == 1
        assert "within the pool's own limits" in unavailable[0].getMessage()
        closed = conns.pop()
        closed.close()
        pool.release(closed)  # a close while Redis is away
        redis.start()  # empty: a restart
        eventually(
            lambda: held(rc, ep) == 4 and pool.stats().budget.available,  # type: ignore[union-attr]
            what="Redis hearing of the 4 connections",
        )
        stats = pool.stats().budget
        assert stats is not None and stats.lost >= 1
        assert any("available again" in r.getMessage() for r in caplog.records)
        # Over the fleet's limit now (3): dials wait for budget again.
        with pytest.raises(conpool.PoolTimeout, match="no connection budget"):
            pool.acquire(ep, timeout=0.5)
        for conn in conns:
            conn.close()
            pool.release(conn)
        eventually(lambda: held(rc, ep) == 0, what="every lease handed back")


def test_fail_closed_raises_connect_error_naming_the_budget(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=3, lease_ttl=1.0, on_unavailable="fail-closed")
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with conpool.SyncPool(budget=budget) as pool:
        pool.release(pool.acquire(ep))
        redis.stop()
        conn = pool.acquire(ep)  # an idle one: never asks Redis
        with pytest.raises(conpool.ConnectError) as caught:
            pool.acquire(ep)
        text = str(caught.value)
        assert f"redis budget redis://127.0.0.1:{redis.port}/0" in text
        assert "fail-closed" in text and caught.value.endpoint == ep
        stats = pool.stats()
        assert stats.budget is not None and stats.budget.denied == 1
        assert stats.pending == 0 and stats.active == 1
        redis.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                second = pool.acquire(ep)
                break
            except conpool.ConnectError:
                assert time.monotonic() < deadline, "the budget never came back"
                time.sleep(0.1)
        eventually(lambda: held(rc, ep) == 2, what="Redis counting both")
        pool.release(second)
        pool.release(conn)


def test_leases_are_renewed_by_the_background_thread(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=3, lease_ttl=1.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    with conpool.SyncPool(budget=budget) as pool:
        conn = pool.acquire(ep)
        time.sleep(2.5)  # well past the ttl
        stats = pool.stats().budget
        assert stats is not None and stats.renewed >= 3 and stats.lost == 0
        assert held(rc, ep) == 1
        pool.release(conn)


def test_threads_stop_on_close_and_when_an_unclosed_pool_is_collected(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    before = len(budget_threads())
    budget = conpool.RedisBudget(url(redis), limit=3, lease_ttl=3.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    pool = conpool.SyncPool(budget=budget)
    pool.release(pool.acquire(ep))
    assert len(budget_threads()) == before + 2  # renewals, pub/sub
    pool.close()
    assert len(budget_threads()) == before
    assert budget.stats().participants == 0

    pool = conpool.SyncPool(budget=budget)
    conn = pool.acquire(ep)
    conn.close()  # (an idle socket of a collected pool is not this test's)
    pool.release(conn)
    assert len(budget_threads()) == before + 2
    del pool, conn

    def ended() -> bool:
        # Collected, not freed by reference counting (a pool is in
        # cycles); and collected again on each look, since the sweeper or
        # a budget thread may hold the pool for an instant of its work
        # just when one collection runs, and then nothing would collect it
        # until the interpreter's own next full collection.
        gc.collect()
        return len(budget_threads()) == before

    eventually(ended, what="the threads ending", within=5)
    assert budget.stats().participants == 0


def test_under_a_full_budget_threads_are_served_in_the_order_they_came(
    redis: RedisServer, rc: redis_py.Redis, echo_server: EchoServer
) -> None:
    """As test_budget's test of the same name, with threads: the first dials
    that find the fleet full wait in line with the threads after them, and a
    connection released goes to whoever came first."""
    budget = conpool.RedisBudget(url(redis), limit=2, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    config = conpool.Config(max_connections_per_endpoint=4, acquire_timeout=60.0)
    n, hold, stagger = 16, 0.15, 0.03
    served: list[int] = []
    waits = [0.0] * n
    errors: list[BaseException] = []
    lock = threading.Lock()
    with conpool.SyncPool(config, budget=budget) as pool:

        def task(i: int) -> None:
            try:
                start = time.monotonic()
                with pool.connection(ep) as conn:
                    waits[i] = time.monotonic() - start
                    with lock:
                        served.append(i)
                    echo(conn)
                    time.sleep(hold)
            except BaseException as exc:  # (reported below, in the test's thread)
                errors.append(exc)

        threads = [threading.Thread(target=task, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
            time.sleep(stagger)
        for t in threads:
            t.join(60)
        assert errors == []
        stats = pool.stats()
        assert stats.pending == 0 and stats.waiting == 0 and stats.active == 0
        assert stats.budget is not None and stats.budget.waiting == 0
        assert stats.budget.waited >= 1
    assert echo_server.max_concurrent <= 2
    assert_first_come_first_served(served, waits, hold)
    eventually(lambda: held(rc, ep) == 0, what="every lease back")


def test_acquire_timeout_bounds_the_slot_wait_and_the_budget_wait_together(
    redis: RedisServer, echo_server: EchoServer
) -> None:
    budget = conpool.RedisBudget(url(redis), limit=1, lease_ttl=10.0)
    ep = conpool.Endpoint("127.0.0.1", echo_server.port)
    timeout, hold = 1.5, 1.0
    with EchoServer() as other_server:
        other = conpool.Endpoint("127.0.0.1", other_server.port)
        config = conpool.Config(max_connections=1, acquire_timeout=timeout)
        with (
            conpool.SyncPool(budget=budget) as fleet,
            conpool.SyncPool(config, budget=budget) as pool,
        ):
            taken = fleet.acquire(ep)  # the fleet's one lease of ep

            def timed(timeout: float | None = None) -> float:
                blocker = pool.acquire(other)  # the pool's one slot

                def close_later() -> None:
                    time.sleep(hold)
                    blocker.close()
                    pool.release(blocker)

                closer = threading.Thread(target=close_later)
                closer.start()
                start = time.monotonic()
                try:
                    with pytest.raises(conpool.PoolTimeout, match="no connection budget"):
                        if timeout is None:
                            pool.acquire(ep)
                        else:
                            pool.acquire(ep, timeout=timeout)
                    return time.monotonic() - start
                finally:
                    closer.join(10)

            elapsed = timed()
            per_call = timed(timeout=1.2)
            stats = pool.stats()
            assert stats.budget is not None and stats.budget.timeouts == 2
            assert stats.pending == 0 and stats.waiting == 0
            fleet.release(taken)
    assert timeout - 0.05 <= elapsed < timeout + 0.6, elapsed
    assert 1.2 - 0.05 <= per_call < 1.2 + 0.6, per_call
