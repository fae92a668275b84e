"""Cancellation fuzzing: thousands of acquires and uses cancelled at random points.

A seeded fuzzer drives 2,000 operations per backend through one pool, over
endpoints chosen so that every await point of an acquire is hit:

* a name looked up by a resolver that sleeps 0-5 ms (cancelled while resolving);
* plain echo by IP and by name, TLS echo (cancelled while holding, mid-send or
  mid-receive, and around release);
* a listener whose backlog is full, so TCP connects hang (cancelled while
  connecting), and a TLS listener that never accepts, so handshakes hang
  (cancelled during the TLS handshake);
* small limits (4 per endpoint, 10 in total, ``acquire_timeout``), so that
  tasks queue (cancelled while waiting for a slot, or just after being
  granted one).

Each operation gets a random deadline, or is cancelled by another task at a
random moment, or raises inside its block, or releases in a cancelled scope.
Throughout, the pool's own events and a monitor check that no limit is ever
exceeded; afterwards the counts add up with nothing active, pending or
waiting, every slot is usable, no task is left behind and the process has
exactly the file descriptors it started with.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter

import anyio
import pytest
import sniffio

import conpool
from helpers_pool import (
    Blackhole,
    check_quiet,
    echo,
    eventually,
    fd_baseline,
    fds_back_to,
)
from servers import EchoServer, TLSEchoServer

pytestmark = pytest.mark.anyio

OPERATIONS = 2_000
WORKERS = 32
PER_ENDPOINT = 4
TOTAL = 10
# Stop starting operations after this long, so a slow machine bounds the
# test's time rather than its operation count (the count is asserted to be
# at least MIN_OPERATIONS).
TIME_BUDGET = 10.0
MIN_OPERATIONS = 500


class SlowResolver:
    """Answers after 0-5 ms, with a TTL so short that most dials look the
    name up again; counts lookups cut short by cancellation."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    async def resolve(self, host: str) -> list[conpool.ResolvedAddress]:
        self.started += 1
        try:
            await anyio.sleep(self.rng.uniform(0, 0.005))
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        self.finished += 1
        return [conpool.ResolvedAddress("127.0.0.1", 0.002)]


class Limits:
    """Every limit, checked at every connect and close the pool reports, and
    by a monitor task in between: never more than PER_ENDPOINT connections
    (pending, active or idle) to one endpoint, nor TOTAL in all."""

    def __init__(self, pool: conpool.Pool) -> None:
        self.pool = pool
        self.open: Counter[str] = Counter()
        self.most_open = 0
        self.most_slots = 0
        self.checks = 0
        self.violations: list[str] = []
        pool.add_hook("connect.complete", self._connected)
        pool.add_hook("conn.close", self._closed)

    def _connected(self, event: conpool.Event) -> None:
        self.open[event.endpoint] += 1
        self.check()

    def _closed(self, event: conpool.Event) -> None:
        self.open[event.endpoint] -= 1

    def check(self) -> None:
        self.checks += 1
        total_open = sum(self.open.values())
        self.most_open = max(self.most_open, total_open)
        if total_open > TOTAL or max(self.open.values(), default=0) > PER_ENDPOINT:
            self.violations.append(f"open connections {dict(self.open)}")
        stats = self.pool.stats()
        slots = 0
        for ep, e in stats.endpoints.items():
            used = e.active + e.idle + e.pending
            slots += used
            if used > PER_ENDPOINT:
                self.violations.append(f"{ep}: {e}")
        self.most_slots = max(self.most_slots, slots)
        if slots > TOTAL:
            self.violations.append(f"{slots} slots in use: {stats}")


def live_tasks() -> int:
    """Tasks alive in this event loop (trio: in the whole task tree)."""
    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

        root = trio.lowlevel.current_root_task()
        assert root is not None
        return count(root)
    return len(asyncio.all_tasks())


class Boom(Exception):
    """Raised inside a connection block on purpose."""


async def test_fuzz_cancellation(echo_server: EchoServer, anyio_backend_name: str) -> None:
    seed = 0xC0FFEE
    rng = random.Random(seed)
    base_fds = await fd_baseline()
    base_tasks = live_tasks()
    resolver = SlowResolver(rng)
    tls_server = TLSEchoServer()
    tls_server.start()
    # Listening, never accepting: TCP connects complete in the kernel (until
    # its backlog fills), then the TLS handshake waits for an answer.
    tls_stall = TLSEchoServer(backlog=512)
    ctx = tls_server.client_context()
    stall_ctx = ssl.create_default_context()
    tls_stall.ca.configure_trust(stall_ctx)
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    queued = Counter[str]()
    unexpected: list[BaseException] = []
    config = conpool.Config(
        max_connections_per_endpoint=PER_ENDPOINT,
        max_connections=TOTAL,
        acquire_timeout=0.1,
        connect_timeout=0.05,
        connect_retries=1,
        retry_backoff=0.001,
        retry_backoff_max=0.002,
        max_idle_time=0.2,
        max_connection_uses=20,
        sweep_interval=0.01,
    )
    try:
        with Blackhole() as hole:
            endpoints: dict[str, conpool.Endpoint] = {
                "ip": conpool.Endpoint(echo_server.host, echo_server.port),
                "name": conpool.Endpoint("fuzz.test", echo_server.port),
                "tls": conpool.Endpoint("localhost", tls_server.port, tls=conpool.TLS(ctx)),
                "connect-hang": conpool.Endpoint(hole.host, hole.port),
                "tls-hang": conpool.Endpoint(
                    "localhost", tls_stall.port, tls=conpool.TLS(stall_ctx)
                ),
            }
            # Mostly endpoints that answer, so that holding and releasing
            # are cancelled as often as connecting.
            weights = {"ip": 4, "name": 4, "tls": 3, "connect-hang": 1, "tls-hang": 1}
            names = list(weights)
            cum = list(weights.values())

            async with conpool.Pool(config, resolver=resolver) as pool:
                limits = Limits(pool)
                pool.add_hook("acquire.*", lambda e: queued.update([e.kind]))
                started = 0
                deadline = time.monotonic() + TIME_BUDGET

                async def hold_and_use(conn: conpool.Connection, n: int) -> None:
                    payload = b"op %d" % n
                    step = rng.random()
                    if step < 0.3:
                        await conn.send(payload)  # cancelled before reading the answer
                        await conn.receive()
                    else:
                        assert await echo(conn, payload) == payload
                    if rng.random() < 0.3:
                        await anyio.sleep(rng.uniform(0, 0.004))

                async def operation(n: int, kind: str, ep: conpool.Endpoint) -> None:
                    """One acquire and use, ended in one of several ways."""
                    mode = rng.choices(
                        ["deadline", "outside", "raise", "release-cancelled", "plain"],
                        [5, 2, 1, 1, 1],
                    )[0]
                    kinds[f"{kind}/{mode}"] += 1
                    delay = rng.uniform(0, 0.03)
                    try:
                        if mode == "deadline":
                            with anyio.move_on_after(delay) as scope:
                                async with pool.connection(ep) as conn:
                                    await hold_and_use(conn, n)
                            outcomes["cancelled" if scope.cancelled_caught else "done"] += 1
                        elif mode == "outside":
                            # Cancelled by another task, whatever it is doing.
                            failed: list[Exception] = []
                            async with anyio.create_task_group() as tg:
                                scope = anyio.CancelScope()

                                async def victim() -> None:
                                    with scope:
                                        try:
                                            async with pool.connection(ep) as conn:
                                                await hold_and_use(conn, n)
                                        except Exception as exc:
                                            # Classified below, as in the
                                            # other modes (a loaded machine
                                            # can run out acquire_timeout
                                            # before the cancel comes).
                                            failed.append(exc)

                                tg.start_soon(victim)
                                await anyio.sleep(delay)
                                scope.cancel()
                            if failed:
                                raise failed[0]
                            outcomes["cancelled" if scope.cancelled_caught else "done"] += 1
                        elif mode == "raise":
                            with anyio.move_on_after(delay) as scope:
                                async with pool.connection(ep) as conn:
                                    await hold_and_use(conn, n)
                                    raise Boom
                            outcomes["cancelled"] += 1
                        elif mode == "release-cancelled":
                            # Explicit acquire; the release happens in a
                            # scope that is already cancelled.
                            with anyio.move_on_after(delay) as scope:
                                conn = await pool.acquire(ep)
                                try:
                                    await hold_and_use(conn, n)
                                finally:
                                    with anyio.CancelScope() as late:
                                        late.cancel()
                                        await pool.release(conn)
                            outcomes["cancelled" if scope.cancelled_caught else "done"] += 1
                        else:
                            async with pool.connection(ep) as conn:
                                await hold_and_use(conn, n)
                            outcomes["done"] += 1
                    except Boom:
                        outcomes["raised"] += 1
                    except conpool.PoolTimeout:
                        outcomes["pool-timeout"] += 1
                    except conpool.ConnectError:
                        outcomes["connect-error"] += 1
                    except Exception as exc:
                        unexpected.append(exc)

                async def worker() -> None:
                    nonlocal started
                    while started < OPERATIONS and time.monotonic() < deadline:
                        n = started
                        started += 1
                        kind = rng.choices(names, cum)[0]
                        await operation(n, kind, endpoints[kind])

                async def monitor(stop: anyio.Event) -> None:
                    while not stop.is_set():
                        limits.check()
                        await anyio.sleep(0.001)

                with anyio.fail_after(TIME_BUDGET + 20):
                    async with anyio.create_task_group() as outer:
                        stop = anyio.Event()
                        outer.start_soon(monitor, stop)
                        async with anyio.create_task_group() as tg:
                            for _ in range(WORKERS):
                                tg.start_soon(worker)
                        stop.set()

                assert not unexpected, unexpected[:5]
                assert not limits.violations, limits.violations[:5]
                assert sum(outcomes.values()) == started >= MIN_OPERATIONS, outcomes
                # Every await point was cut short at least once.
                assert resolver.cancelled > 0  # resolving
                waited_out = (
                    queued["acquire.queued"] - queued["acquire.granted"] - queued["acquire.timeout"]
                )
                assert waited_out > 0, queued  # waiting for a slot (or just granted one)
                for kind in ("connect-hang", "tls-hang"):  # connecting, handshaking
                    assert kinds[f"{kind}/deadline"] + kinds[f"{kind}/outside"] > 0, kinds
                assert outcomes["cancelled"] > OPERATIONS // 10 or started < OPERATIONS
                assert outcomes["done"] > 0 and outcomes["raised"] > 0, outcomes

                # The pool is whole: nothing in flight, counts add up ...
                stats = check_quiet(pool)
                for ep_stats in stats.endpoints.values():
                    assert ep_stats.created - ep_stats.closed == ep_stats.idle
                    assert ep_stats.idle == sum(a.idle for a in ep_stats.addresses.values())
                assert stats.idle == sum(e.idle for e in stats.endpoints.values())
                # ... and every slot of the endpoints that answer is usable.
                with anyio.fail_after(5):
                    for kind in ("ip", "name", "tls"):
                        ep = endpoints[kind]
                        conns = [await pool.acquire(ep) for _ in range(PER_ENDPOINT)]
                        for i, conn in enumerate(conns):
                            assert await echo(conn, b"check %d" % i) == b"check %d" % i
                        for conn in conns:
                            await pool.release(conn)
                check_quiet(pool)
                report = (
                    f"\n{anyio_backend_name}: {started} operations, {dict(outcomes)}; "
                    f"lookups cancelled {resolver.cancelled}/{resolver.started}, "
                    f"waits cut short {waited_out}/{queued['acquire.queued']}, "
                    f"most open {limits.most_open}, most slots {limits.most_slots}, "
                    f"{limits.checks} limit checks"
                )
    finally:
        tls_server.stop()
        tls_stall.stop()
    # No task left behind: only those alive before the pool existed.
    await eventually(lambda: live_tasks() == base_tasks, what="tasks back to the baseline")
    await eventually(lambda: echo_server.current == 0, what="echo connections closed")
    await fds_back_to(base_fds)
    print(report)
