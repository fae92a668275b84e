"""Cancellation anywhere in the lifecycle hooks: hundreds of acquires,
releases and prewarms cut short at random while ``on_connect`` and ``reset``
talk to the server and the warm floor refills in the background.

Afterwards nothing is in use, dialling or waiting, the counts add up, every
connection the pool kept answers (no half-initialised or half-reset one was
kept), no task is left behind and the process has the file descriptors it
started with.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import anyio
import pytest

import conpool
from helpers_pool import check_consistent, check_quiet, echo, eventually, fd_baseline, fds_back_to
from servers import EchoServer
from test_fuzz_cancel import live_tasks

pytestmark = pytest.mark.anyio

OPERATIONS = 400
WORKERS = 16
TIME_BUDGET = 6.0


async def test_cancelled_hooks_and_refills_leave_the_pool_whole(echo_server: EchoServer) -> None:
    rng = random.Random(0x11FE)
    base_fds = await fd_baseline()
    base_tasks = live_tasks()
    ep = conpool.Endpoint(echo_server.host, echo_server.port)
    calls: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()

    async def on_connect(conn: conpool.Connection) -> None:
        calls["on_connect"] += 1
        await anyio.sleep(rng.uniform(0, 0.004))
        assert await echo(conn, b"hello") == b"hello"

    async def reset(conn: conpool.Connection) -> bool:
        calls["reset"] += 1
        await anyio.sleep(rng.uniform(0, 0.004))
        if rng.random() < 0.1:
            return False
        return await echo(conn, b"reset") == b"reset"

    config = conpool.Config(
        min_idle=2,
        max_connections_per_endpoint=4,
        max_idle_time=0.05,
        max_connection_uses=5,
        on_connect=on_connect,
        reset=reset,
    )
    async with conpool.Pool(config) as pool:
        started = 0
        deadline = time.monotonic() + TIME_BUDGET

        async def operation(n: int) -> None:
            # Mostly a deadline that cuts somewhere into the hooks; one in
            # five none, so that every hook also runs to its end however
            # loaded the machine is.
            delay = rng.uniform(0, 0.012) if rng.random() < 0.8 else 30.0
            mode = rng.choices(["lease", "explicit", "prewarm"], [6, 3, 1])[0]
            with anyio.move_on_after(delay) as scope:
                try:
                    if mode == "lease":
                        async with pool.connection(ep) as conn:
                            assert await echo(conn, b"op %d" % n) == b"op %d" % n
                    elif mode == "explicit":
                        conn = await pool.acquire(ep)
                        try:
                            assert await echo(conn, b"op %d" % n) == b"op %d" % n
                        finally:
                            await pool.release(conn)  # cancelled mid-reset, often
                    else:
                        await pool.prewarm(ep, rng.randint(1, 4))
                except conpool.ConnectError:
                    outcomes["connect-error"] += 1
                    return
            outcomes[f"{mode}/{'cancelled' if scope.cancelled_caught else 'done'}"] += 1

        async def worker() -> None:
            nonlocal started
            while started < OPERATIONS and time.monotonic() < deadline:
                started += 1
                await operation(started)

        with anyio.fail_after(TIME_BUDGET + 20):
            async with anyio.create_task_group() as tg:
                for _ in range(WORKERS):
                    tg.start_soon(worker)
        assert started >= 100, started
        assert outcomes["connect-error"] == 0, outcomes
        cancelled = sum(v for k, v in outcomes.items() if k.endswith("cancelled"))
        assert cancelled > started // 10, outcomes
        assert calls["on_connect"] > 0 and calls["reset"] > 0, (calls, outcomes)
        # Quiet: the floor's dials land, and then nothing is in flight.  (The
        # last releases may retire connections -- used up, or reset said
        # no -- and the floor's refill starts in the background a moment
        # later, a long moment on a loaded machine: in between nothing is in
        # flight yet the floor is short, so the floor is part of the wait.)
        await eventually(
            lambda: (lambda s: (s.active, s.pending, s.waiting) == (0, 0, 0) and s.idle >= 2)(
                pool.stats()
            ),
            5.0,
            what="the pool quiet, the floor refilled",
        )
        stats = check_quiet(pool).endpoints[ep]
        assert stats.idle >= 2  # the floor
        # Every connection kept answers, in step: initialised, never half reset.
        conns = [await pool.acquire(ep) for _ in range(4)]
        for i, conn in enumerate(conns):
            assert await echo(conn, b"check %d" % i) == b"check %d" % i
        for conn in conns:
            await pool.release(conn)
        check_consistent(pool)
    await eventually(lambda: live_tasks() == base_tasks, what="tasks back to the baseline")
    await eventually(lambda: echo_server.current == 0, what="echo connections closed")
    await fds_back_to(base_fds)
