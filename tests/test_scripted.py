"""The real pool shell on the scripted backend (tests/scripted.py): in-memory
connections whose addresses accept, refuse or hang on cue, and a virtual
clock, so every timing rule of the dial path is checked exactly and at once.

Covered: a dial, retries with the backoff inside its full-jitter window,
Happy Eyeballs with RFC 8305's timings (the second family starts after
``happy_eyeballs_delay``; a failure starts it at once; the loser is
cancelled and closed, and counts as a failure), cancellation at every step of
the dial path, a name's new answer draining the addresses that left it (on
every endpoint of the name), idle expiry and ``acquire_timeout`` on time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable

import anyio
import pytest

import conpool
from scripted import Network, Plan, ScriptedConnection, ScriptedResolver, run, scripted_pool

V4A, V4B, V4C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
V6A = "fd00::1"
NAME = "svc.test"
EP = conpool.Endpoint(NAME, 80)


def quiet(pool: conpool.Pool, network: Network) -> conpool.PoolStats:
    """Nothing in flight, and the pool's open connections are the network's."""
    s = pool.stats()
    assert (s.pending, s.waiting) == (0, 0), s
    opened = len(network.open_wires())
    assert s.active + s.idle == opened, (s, opened)
    assert len(net_unclosed := network.unclosed()) == opened, net_unclosed  # no attempt left
    return s


async def echo(conn: conpool.Connection, data: bytes) -> bytes:
    await conn.send(data)
    return await conn.receive()


# -- a dial ------------------------------------------------------------------------------


def test_a_dial_resolves_then_connects_and_reuses() -> None:
    async def main() -> None:
        net = Network()
        resolver = ScriptedResolver({NAME: [V4A]}, delay=0.05)
        net.set(V4A, "accept", after=0.02)
        tracer = conpool.Tracer()
        async with scripted_pool(net, resolver=resolver, tracer=tracer) as pool:
            async with pool.connection(EP) as conn:
                assert anyio.current_time() == pytest.approx(0.07)
                assert await echo(conn, b"ping") == b"ping"
                first = conn.id
            async with pool.connection(EP) as conn:
                assert conn.id == first
            assert [e.kind for e in tracer.events()] == [
                "resolve.started",
                "resolve.complete",
                "connect.started",
                "connect.complete",
                "conn.release",
                "conn.reuse",
                "conn.release",
            ]
            assert len(net.attempts) == 1 and resolver.lookups == [(NAME, 0.0)]
            assert quiet(pool, net).idle == 1
        assert net.open_wires() == []

    run(main)


# -- retries and backoff -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_retries_wait_a_backoff_inside_the_full_jitter_window(seed: int) -> None:
    base, cap = 0.1, 0.3

    async def main() -> None:
        net = Network()
        net.then(V4A, Plan("refuse", 0.01), Plan("refuse", 0.01), Plan("refuse", 0.01))
        config = conpool.Config(
            connect_retries=3, retry_backoff=base, retry_backoff_max=cap, balance_seed=seed
        )
        tracer = conpool.Tracer()
        resolver = ScriptedResolver({NAME: [V4A]})
        async with scripted_pool(net, config, resolver=resolver, tracer=tracer) as pool:
            async with pool.connection(EP) as conn:
                assert await echo(conn, b"x") == b"x"
            attempts = net.to(V4A)
            assert [a.result for a in attempts] == ["refused"] * 3 + ["connected"]
            # Each retry starts a backoff after the failure it follows:
            # uniform in [0, min(cap, base * 2**(k-1))], drawn in order from
            # the pool's generator (seeded by balance_seed).
            replay = random.Random(seed)
            for k in range(1, 4):
                gap = attempts[k].started - (attempts[k - 1].ended or math.nan)
                window = min(cap, base * 2 ** (k - 1))
                assert 0.0 <= gap <= window + 1e-9
                assert gap == pytest.approx(replay.uniform(0.0, window))
            retries = [e.detail for e in tracer.events() if e.kind == "connect.retry"]
            assert [d.split(" in ")[0] for d in retries] == [
                "attempt 2 of 4",
                "attempt 3 of 4",
                "attempt 4 of 4",
            ]
            quiet(pool, net)

    run(main)


def test_a_dial_gives_up_after_its_retries_and_frees_its_slot() -> None:
    async def main() -> None:
        net = Network()
        net.set(V4A, "refuse", after=0.01)
        config = conpool.Config(connect_retries=2, retry_backoff=0.05, balance_seed=0)
        resolver = ScriptedResolver({NAME: [V4A]})
        async with scripted_pool(net, config, resolver=resolver) as pool:
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(EP)
            assert len(net.attempts) == 3
            assert "after 2 retry attempts (3 attempts in all)" in str(info.value)
            assert len(info.value.errors) == 3
            s = quiet(pool, net)
            assert s.endpoints[EP].connect_failures == 1

    run(main)


def test_a_tls_failure_is_not_retried() -> None:
    async def main() -> None:
        net = Network()
        net.set(V4A, "tls")
        resolver = ScriptedResolver({NAME: [V4A]})
        async with scripted_pool(net, resolver=resolver) as pool:
            with pytest.raises(conpool.ConnectError):
                await pool.acquire(EP)
            assert len(net.attempts) == 1
            quiet(pool, net)

    run(main)


def test_a_connect_timeout_is_a_retryable_failure_on_time() -> None:
    async def main() -> None:
        net = Network()
        net.then(V4A, Plan("hang"))
        config = conpool.Config(connect_timeout=2.0, connect_retries=1, retry_backoff=0.0)
        resolver = ScriptedResolver({NAME: [V4A]})
        async with scripted_pool(net, config, resolver=resolver) as pool:
            async with pool.connection(EP):
                assert anyio.current_time() == pytest.approx(2.0)
            first, second = net.attempts
            assert first.result == "cancelled" and first.ended == pytest.approx(2.0)
            assert second.started == pytest.approx(2.0) and second.result == "connected"

    run(main)


# -- Happy Eyeballs (RFC 8305, section 5) -------------------------------------------------


def eyeballs(delay: float) -> conpool.Config:
    return conpool.Config(happy_eyeballs_delay=delay, connect_retries=0, balance_seed=0)


def test_the_second_family_starts_after_the_delay_and_the_slow_loser_is_closed() -> None:
    async def main() -> None:
        net = Network()
        net.set(V6A, "accept", after=1.0)  # slow, not dead
        net.set(V4A, "accept", after=0.05)
        resolver = ScriptedResolver({NAME: [V6A, V4A]})
        tracer = conpool.Tracer()
        async with scripted_pool(net, eyeballs(0.3), resolver=resolver, tracer=tracer) as pool:
            async with pool.connection(EP) as conn:
                assert conn.address[0] == V4A
                assert anyio.current_time() == pytest.approx(0.35)
            v6, v4 = net.to(V6A)[0], net.to(V4A)[0]
            assert v6.started == 0.0
            assert v4.started == pytest.approx(0.3)  # the Connection Attempt Delay
            assert v6.result == "cancelled" and v6.ended == pytest.approx(0.35)
            assert v6.wire.closed and not v4.wire.closed  # the loser's socket closed
            race = [e for e in tracer.events() if e.kind.startswith("connect.")]
            assert [(e.kind, e.address) for e in race] == [
                ("connect.started", V6A),
                ("connect.race", V4A),
                ("connect.started", V4A),
                ("connect.cancelled", V6A),
                ("connect.complete", V4A),
            ]
            assert race[3].detail == "lost the Happy Eyeballs race"
            s = quiet(pool, net)
            # The loser counts as its address's failure (a black-holed
            # family gets ejected instead of costing the delay every time).
            assert s.endpoints[EP].addresses[V6A].failures == 1
            assert s.endpoints[EP].addresses[V4A].failures == 0
            assert len(net.open_wires()) == 1

    run(main)


def test_a_black_holed_family_is_ejected_after_losing_a_few_races() -> None:
    async def main() -> None:
        net = Network()
        net.set(V6A, "hang")
        net.set(V4A, "accept", after=0.01)
        resolver = ScriptedResolver({NAME: [V6A, V4A]})
        config = conpool.Config(
            happy_eyeballs_delay=0.3, eject_after_failures=2, eject_time=30.0, balance_seed=0
        )
        tracer = conpool.Tracer()
        async with scripted_pool(net, config, resolver=resolver, tracer=tracer) as pool:
            for _ in range(2):
                start = anyio.current_time()
                conn = await pool.acquire(EP)
                assert conn.address[0] == V4A
                assert anyio.current_time() - start == pytest.approx(0.31)  # the delay, each time
                await conn.aclose()  # (so that the next acquire dials)
                await pool.release(conn)
            assert [e.address for e in tracer.events() if e.kind == "address.eject"] == [V6A]
            # Ejected: the next dial goes to IPv4 at once, without a race.
            start = anyio.current_time()
            conn = await pool.acquire(EP)
            assert conn.address[0] == V4A
            assert anyio.current_time() - start == pytest.approx(0.01)
            assert [a.ip for a in net.attempts[-1:]] == [V4A] and len(net.to(V6A)) == 2
            await pool.release(conn)
            quiet(pool, net)

    run(main)


def test_a_failure_starts_the_other_family_at_once() -> None:
    async def main() -> None:
        net = Network()
        net.set(V6A, "refuse", after=0.02)
        net.set(V4A, "accept", after=0.05)
        resolver = ScriptedResolver({NAME: [V6A, V4A]})
        async with scripted_pool(net, eyeballs(0.3), resolver=resolver) as pool:
            async with pool.connection(EP) as conn:
                assert conn.address[0] == V4A
                assert anyio.current_time() == pytest.approx(0.07)
            assert net.to(V4A)[0].started == pytest.approx(0.02)  # not 0.3
            quiet(pool, net)

    run(main)


def test_a_fast_first_family_never_starts_the_second() -> None:
    async def main() -> None:
        net = Network()
        net.set(V6A, "accept", after=0.1)
        resolver = ScriptedResolver({NAME: [V6A, V4A]})
        async with scripted_pool(net, eyeballs(0.3), resolver=resolver) as pool:
            async with pool.connection(EP) as conn:
                assert conn.address[0] == V6A
            assert [a.ip for a in net.attempts] == [V6A]
            assert quiet(pool, net).endpoints[EP].addresses[V6A].failures == 0

    run(main)


def test_one_family_never_races() -> None:
    async def main() -> None:
        net = Network()
        net.set(V4A, "accept", after=1.0)
        resolver = ScriptedResolver({NAME: [V4A, V4B]})
        async with scripted_pool(net, eyeballs(0.3), resolver=resolver) as pool:
            async with pool.connection(EP) as conn:
                assert conn.address[0] == V4A
                assert anyio.current_time() == pytest.approx(1.0)
            assert [a.ip for a in net.attempts] == [V4A]

    run(main)


def test_both_families_failing_is_one_round_and_one_error_each() -> None:
    async def main() -> None:
        net = Network()
        net.set(V6A, "refuse", after=0.01)
        net.set(V4A, "refuse", after=0.01)
        resolver = ScriptedResolver({NAME: [V6A, V4A]})
        async with scripted_pool(net, eyeballs(0.3), resolver=resolver) as pool:
            with pytest.raises(conpool.ConnectError) as info:
                await pool.acquire(EP)
            assert len(info.value.errors) == 2
            assert anyio.current_time() == pytest.approx(0.02)
            quiet(pool, net)

    run(main)


# -- cancellation at every step of the dial path ------------------------------------------

# The dial of this scenario, in virtual time: the lookup until 0.1; the IPv6
# attempt from 0.1 (it hangs until connect_timeout, 1.1); the IPv4 attempt
# from 0.4 (happy_eyeballs_delay), refused at 0.5; the round ends at 1.1;
# the backoff (seeded: 0.062 s); round two, which connects 0.2 s after it
# starts.
STEPS = {
    "in the lookup": 0.05,
    "in the first attempt": 0.2,
    "in the race, both attempts running": 0.45,
    "in the race, one attempt left": 0.8,
    "in the backoff": 1.12,
    "in the second round": 1.25,
}


@pytest.mark.parametrize("at", list(STEPS.values()), ids=list(STEPS))
def test_a_cancelled_dial_leaves_the_pool_consistent(at: float) -> None:
    async def main() -> None:
        net = Network()
        net.set(V6A, "accept", after=0.2)
        net.set(V4A, "accept", after=0.2)
        net.then(V6A, Plan("hang"))
        net.then(V4A, Plan("refuse", 0.1))
        resolver = ScriptedResolver({NAME: [V6A, V4A]}, delay=0.1)
        config = conpool.Config(
            happy_eyeballs_delay=0.3,
            connect_timeout=1.0,
            connect_retries=1,
            retry_backoff=0.1,
            retry_backoff_max=0.1,
            balance_seed=5,
            max_connections_per_endpoint=1,
        )
        async with scripted_pool(net, config, resolver=resolver) as pool:
            with anyio.move_on_after(at) as scope:
                await pool.acquire(EP)
            assert scope.cancelled_caught, "the dial ended before the cancellation"
            s = quiet(pool, net)
            assert (s.active, s.idle) == (0, 0)
            assert all(a.ended is not None for a in net.attempts)  # none left running
            # Every slot is usable again (the limit is 1).
            async with pool.connection(EP) as conn:
                assert await echo(conn, b"after") == b"after"
            quiet(pool, net)
        assert net.unclosed() == []  # every attempt's socket, and the pool's

    run(main)


def test_the_cancellation_scenario_reaches_every_step() -> None:
    """(So that the steps above are what they say: an uncancelled run goes
    through all of them, in this order.)"""

    async def main() -> None:
        net = Network()
        net.set(V6A, "accept", after=0.2)
        net.set(V4A, "accept", after=0.2)
        net.then(V6A, Plan("hang"))
        net.then(V4A, Plan("refuse", 0.1))
        resolver = ScriptedResolver({NAME: [V6A, V4A]}, delay=0.1)
        config = conpool.Config(
            happy_eyeballs_delay=0.3,
            connect_timeout=1.0,
            connect_retries=1,
            retry_backoff=0.1,
            retry_backoff_max=0.1,
            balance_seed=5,
        )
        async with scripted_pool(net, config, resolver=resolver) as pool:
            await pool.release(await pool.acquire(EP))
            v6, v4, second = net.attempts[:3]
            assert v6.ip == V6A and (v6.started, v6.ended) == pytest.approx((0.1, 1.1))
            assert v4.ip == V4A and (v4.started, v4.ended) == pytest.approx((0.4, 0.5))
            assert 1.1 < second.started < 1.2 + 1e-9  # after a backoff of at most 0.1
            assert STEPS["in the backoff"] < second.started < STEPS["in the second round"]
            assert second.ended is not None and STEPS["in the second round"] < second.ended

    run(main)


def test_a_cancelled_waiter_passes_its_grant_on() -> None:
    async def main() -> None:
        net = Network()
        resolver = ScriptedResolver({NAME: [V4A]})
        config = conpool.Config(max_connections_per_endpoint=1)
        async with scripted_pool(net, config, resolver=resolver) as pool:
            holder = await pool.acquire(EP)
            got: list[conpool.Connection] = []

            async def wait_for_it() -> None:
                got.append(await pool.acquire(EP))

            first = anyio.CancelScope()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_under, first, wait_for_it)
                tg.start_soon(wait_for_it)
                await anyio.sleep(1.0)
                assert pool.stats().waiting == 2
                # The first waiter is cancelled, then served before it runs
                # (in one step of the loop): what it was given goes on.
                first.cancel()
                await pool.release(holder)
            assert first.cancelled_caught
            assert len(got) == 1 and got[0] is holder  # the second one got it
            await pool.release(got[0])
            quiet(pool, net)

    run(main)


async def _under(scope: anyio.CancelScope, fn: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await fn()


# -- names: refresh and draining ----------------------------------------------------------


def test_a_new_answer_drains_the_addresses_that_left_on_every_endpoint() -> None:
    async def main() -> None:
        net = Network()
        resolver = ScriptedResolver({NAME: [V4A]}, ttl=5.0)
        plain, other = conpool.Endpoint(NAME, 80), conpool.Endpoint(NAME, 8080)
        tracer = conpool.Tracer()
        async with scripted_pool(net, resolver=resolver, tracer=tracer) as pool:
            held = await pool.acquire(plain)
            await pool.release(await pool.acquire(other))  # idle on V4A
            resolver.table[NAME] = [V4B, V4C]
            await anyio.sleep(4.0)
            assert pool.stats().idle == 1  # the answer is still fresh
            await anyio.sleep(2.5)  # expired at 5: the sweeper looked it up
            assert [h for h, _ in resolver.lookups] == [NAME, NAME]
            s = pool.stats()
            assert s.idle == 0  # drained, without any acquire
            for ep in (plain, other):
                assert {V4B, V4C} <= set(s.endpoints[ep].addresses)
            # Unlisted: kept only while it holds a connection (the one in use).
            assert s.endpoints[plain].addresses[V4A].listed is False
            assert V4A not in s.endpoints[other].addresses
            drained = [e for e in tracer.events() if e.kind == "conn.close"]
            assert [e.detail for e in drained] == ["drained"]
            await pool.release(held)  # the one in use closes when it comes back
            assert pool.stats().active == 0 and pool.stats().idle == 0
            async with pool.connection(other) as conn:
                assert conn.address[0] in (V4B, V4C)
            assert V4A not in pool.stats().endpoints[plain].addresses
            quiet(pool, net)

    run(main)


def test_a_failed_refresh_keeps_serving_the_old_answer() -> None:
    async def main() -> None:
        net = Network()
        resolver = ScriptedResolver({NAME: [V4A]}, ttl=2.0)
        async with scripted_pool(net, resolver=resolver) as pool:
            await pool.release(await pool.acquire(EP))
            resolver.fail_next = 10
            await anyio.sleep(3.5)
            s = pool.stats()
            assert s.endpoints[EP].stale and s.idle == 1
            async with pool.connection(EP) as conn:
                assert conn.address[0] == V4A
            quiet(pool, net)

    run(main)


# -- time: idle expiry and acquire_timeout ------------------------------------------------


def test_an_idle_connection_closes_on_time() -> None:
    async def main() -> None:
        net = Network()
        resolver = ScriptedResolver({NAME: [V4A]})
        tracer = conpool.Tracer()
        config = conpool.Config(max_idle_time=3.0)
        async with scripted_pool(net, config, resolver=resolver, tracer=tracer) as pool:
            await pool.release(await pool.acquire(EP))
            await anyio.sleep(2.9)
            assert pool.stats().idle == 1
            await anyio.sleep(0.2)
            assert pool.stats().idle == 0
            assert net.open_wires() == []

    run(main)


def test_a_peer_that_hung_up_while_idle_is_not_handed_out() -> None:
    async def main() -> None:
        net = Network()
        resolver = ScriptedResolver({NAME: [V4A]})
        async with scripted_pool(net, resolver=resolver) as pool:
            await pool.release(await pool.acquire(EP))
            net.wires[0].hang_up()
            async with pool.connection(EP) as conn:
                assert isinstance(conn, ScriptedConnection) and conn.wire is net.wires[1]
            quiet(pool, net)

    run(main)


def test_acquire_timeout_fires_on_time() -> None:
    async def main() -> None:
        net = Network()
        resolver = ScriptedResolver({NAME: [V4A]})
        config = conpool.Config(max_connections_per_endpoint=1, acquire_timeout=0.75)
        async with scripted_pool(net, config, resolver=resolver) as pool:
            holder = await pool.acquire(EP)
            start = anyio.current_time()
            with pytest.raises(conpool.PoolTimeout):
                await pool.acquire(EP)
            assert anyio.current_time() - start == pytest.approx(0.75)
            await pool.release(holder)
            quiet(pool, net)

    run(main)
