"""The warm floor (``Config.min_idle``) in the pure state machine: no event
loop, no sockets, times as plain floats.

Checked exactly: which idle connections the sweep keeps, how many warm dials
:meth:`PoolState.refills` asks for and where, the limits they stay within,
the backoff after failures, prewarm's slot counting, and the accounting of
``on_connect`` failures and of ``reset``'s question (:meth:`would_reuse`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conpool import Config, PoolClosed
from conpool._state import (
    ACTIVE,
    CLOSED,
    DIAL,
    FLOOR_CHECK_INTERVAL,
    IDLE,
    REFILL_BACKOFF_MIN,
    WAIT,
    ConnRecord,
    EndpointState,
    PoolState,
)

IPS = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")


class Handle:
    """The shell's stream, as the machine sees it: usable unless ``dead``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dead = False
        self.asked = 0

    def _usable(self, idle: float) -> bool:
        self.asked += 1
        return not self.dead

    def __repr__(self) -> str:
        return f"<Handle {self.name}>"


def make(*ips: str, **config: Any) -> tuple[PoolState, EndpointState]:
    config.setdefault("balance_seed", 1)
    state = PoolState(Config(**config))
    ep = state.endpoint("a")
    state.set_addresses(ep, list(ips or IPS[:1]))
    return state, ep


def drain(state: PoolState) -> list[tuple[ConnRecord, str]]:
    closed, state.to_close, state.to_wake = state.to_close, [], []
    return closed


def warm_up(state: PoolState, now: float) -> list[ConnRecord]:
    """Start the refills the machine asks for and complete every one."""
    recs = []
    for ep, ip in state.refills(now):
        rec = state.refill_connected(ep, ip, Handle(f"{ip}#{state.next_id + 1}"), now)
        assert rec.state == ACTIVE  # not visible to acquires until ready
        state.warm_ready(rec, now, refill=True)
        recs.append(rec)
    return recs


def due(state: PoolState) -> bool:
    # (A function, so that the type checker does not narrow the flag.)
    return state.refill_due


def dial(state: PoolState, ep: EndpointState, now: float) -> ConnRecord:
    assert state.acquire(ep, now) == DIAL
    ip = state.pick_address(ep, now)
    assert ip is not None
    return state.connected(ep, ip, Handle(f"{ip}#{state.next_id + 1}"), now)


def test_no_floor_no_refills() -> None:
    state, ep = make()
    rec = dial(state, ep, 0.0)
    state.release(rec, 0.0, reusable=False)
    assert not state.refill_due
    assert state.refills(0.0) == []
    assert state.next_deadline() == math.inf


def test_refills_spread_over_the_addresses_and_go_idle() -> None:
    state, ep = make(*IPS, min_idle=4)
    dials = state.refills(0.0)
    assert sorted(ip for _, ip in dials) == sorted(IPS)  # least-connections: one each
    assert (ep.pending, ep.warming, state.total) == (4, 4, 4)
    assert state.refills(0.0) == []  # the dials in progress count towards the floor
    for e, ip in dials:
        rec = state.refill_connected(e, ip, Handle(ip), 0.0)
        state.warm_ready(rec, 0.0, refill=True)
        assert rec.state == IDLE and rec.uses == 0
    assert (ep.idle, ep.pending, ep.warming, ep.refills, ep.created) == (4, 0, 0, 4, 4)
    assert {ip: len(a.idle) for ip, a in ep.addresses.items()} == dict.fromkeys(IPS, 1)
    assert state.floor_of(ep) == 4
    # Handed out for the first time: uses 1, and counted as a reuse.
    got = state.acquire(ep, 1.0)
    assert isinstance(got, ConnRecord) and got.uses == 1 and ep.reused == 1
    assert state.floor_of(ep) == 4  # in use, it still counts
    assert state.refills(1.0) == []


@pytest.mark.parametrize("balance", ["round-robin", "least-connections"])
def test_refills_follow_the_balance_policy(balance: str) -> None:
    state, _ = make(*IPS[:2], min_idle=4, balance=balance)
    assert Counter(ip for _, ip in state.refills(0.0)) == {IPS[0]: 2, IPS[1]: 2}


def test_floor_keeps_idle_connections_past_their_idle_time() -> None:
    state, ep = make(min_idle=2, max_idle_time=1.0, max_connection_lifetime=100.0)
    recs = [dial(state, ep, 0.0) for _ in range(3)]
    for i, rec in enumerate(recs):
        state.release(rec, float(i) / 10, reusable=True)
    state.sweep(5.0)
    # The oldest goes (above the floor); the two at the floor stay, renewed.
    assert drain(state) == [(recs[0], "idle")]
    assert [r.state for r in recs] == [CLOSED, IDLE, IDLE]
    assert recs[1].last_used == recs[2].last_used == 5.0
    assert recs[1].expires == 6.0
    assert state.next_deadline() <= 6.0
    # Still reusable after ten times their idle time.
    state.sweep(10.0)
    assert drain(state) == []
    assert state.acquire(ep, 10.5) in recs[1:]


def test_floor_connections_past_their_idle_time_are_reused_before_the_sweep() -> None:
    # A starved event loop runs the sweep late: an acquire that comes first
    # reuses what the floor keeps instead of closing it for idle time.
    state, ep = make(min_idle=2, max_idle_time=1.0, max_connection_lifetime=100.0)
    recs = [dial(state, ep, 0.0) for _ in range(3)]
    for rec in recs:
        state.release(rec, 0.0, reusable=True)
    # Three open, one above the floor: the first acquire finds the most
    # recently used past its idle time and closes it; then two are open and
    # the other two are kept although no sweep renewed them.
    got = [state.acquire(ep, 5.0), state.acquire(ep, 5.0)]
    assert drain(state) == [(recs[2], "idle")]
    assert sorted(r.id for r in got if isinstance(r, ConnRecord)) == [recs[0].id, recs[1].id]
    assert ep.reused == 2
    # Past its lifetime, the floor does not keep it.
    state.release(recs[0], 5.0, reusable=True)
    assert state.acquire(ep, 200.0) is DIAL
    assert drain(state) == [(recs[0], "lifetime")]


def test_floor_does_not_keep_what_outlived_its_lifetime_or_its_address() -> None:
    state, ep = make(*IPS[:2], min_idle=2, max_idle_time=1.0, max_connection_lifetime=10.0)
    a, b = dial(state, ep, 0.0), dial(state, ep, 0.0)
    state.release(a, 0.0, reusable=True)
    state.release(b, 0.0, reusable=True)
    state.sweep(10.0)
    assert sorted(r.id for r, why in drain(state) if why == "lifetime") == [a.id, b.id]
    # Replaced at once (the floor is short), on both addresses.
    assert state.refill_due
    assert sorted(ip for _, ip in state.refills(10.0)) == sorted(IPS[:2])


def test_retirements_make_the_floor_due() -> None:
    state, ep = make(min_idle=1, max_connection_uses=1)
    warm_up(state, 0.0)
    rec = state.acquire(ep, 1.0)
    assert isinstance(rec, ConnRecord)
    assert not due(state)  # an acquire alone costs nothing; the sweep sees it
    state.release(rec, 1.0, reusable=True)  # used up
    assert drain(state) == [(rec, "uses")]
    assert due(state)
    assert len(warm_up(state, 1.0)) == 1
    assert ep.idle == 1
    # A health check that fails, and a close by the user or an error.
    for how in ("health", "error"):
        rec = state.acquire(ep, 2.0)
        assert isinstance(rec, ConnRecord)
        if how == "health":
            state.discard(rec, "health")
        else:
            state.release(rec, 2.0, reusable=False)
        assert state.refill_due
        assert len(warm_up(state, 2.0)) == 1


def test_sweep_replaces_idle_connections_the_peer_closed() -> None:
    state, ep = make(*IPS, min_idle=4)
    recs = warm_up(state, 0.0)
    state.sweep(0.0)
    drain(state)
    dead = recs[1]
    assert isinstance(dead.conn, Handle)
    dead.conn.dead = True
    state.sweep(FLOOR_CHECK_INTERVAL / 2)
    assert drain(state) == []  # not looked at more often than the interval
    state.sweep(FLOOR_CHECK_INTERVAL)
    assert drain(state) == [(dead, "stale")]
    assert state.refill_due
    # The replacement goes where the dead one was: the address with fewest.
    assert state.refills(FLOOR_CHECK_INTERVAL) == [(ep, dead.addr.ip)]


def test_next_deadline_includes_the_floor_check() -> None:
    state, _ = make(min_idle=1)
    assert state.next_deadline() == -math.inf  # never checked yet
    state.sweep(3.0)
    assert state.next_deadline() == 3.0 + FLOOR_CHECK_INTERVAL


def test_connections_in_use_count_towards_the_floor() -> None:
    state, ep = make(min_idle=3, max_idle_time=1.0)
    held = [dial(state, ep, 0.0) for _ in range(2)]
    dials = state.refills(0.0)
    assert len(dials) == 1  # two in use and one more make three
    assert ep.total == 3
    ((e, ip),) = dials
    state.warm_ready(state.refill_connected(e, ip, Handle("w"), 0.0), 0.0, refill=True)
    # A fourth, while all three others are in use.
    taken = state.acquire(ep, 0.0)
    assert isinstance(taken, ConnRecord)
    held += [taken, dial(state, ep, 0.0)]
    assert (ep.open, ep.idle) == (4, 0)
    for rec in held:
        state.release(rec, 0.5, reusable=True)
    assert state.refills(0.5) == []
    # Four open, above the floor: one closes for idle time, three stay.
    state.sweep(5.0)
    assert [why for _, why in drain(state)] == ["idle"]
    assert (ep.open, ep.idle, state.floor_of(ep)) == (3, 3, 3)


def test_refills_stay_within_every_limit() -> None:
    state = PoolState(Config(min_idle=3, max_connections=4))
    a, b = state.endpoint("a"), state.endpoint("b")
    state.set_addresses(a, [IPS[0]])
    state.set_addresses(b, [IPS[1]])
    dials = state.refills(0.0)
    assert Counter(e.key for e, _ in dials) == {"a": 3, "b": 1}  # four in all
    assert state.total == 4


def test_refills_respect_max_connections_and_its_waiters() -> None:
    state = PoolState(Config(min_idle=2, max_connections=3))
    a, b = state.endpoint("a"), state.endpoint("b")
    state.set_addresses(a, [IPS[0]])
    state.set_addresses(b, [IPS[1]])
    dials = state.refills(0.0)
    # Three slots in all: the first endpoint gets two, the second one.
    assert Counter(e.key for e, _ in dials) == {"a": 2, "b": 1}
    assert state.total == 3
    for e, ip in dials:
        state.warm_ready(state.refill_connected(e, ip, Handle(ip), 0.0), 0.0, refill=True)
    # A task of a third endpoint waits for room: no refill takes it.
    c = state.endpoint("c")
    state.set_addresses(c, [IPS[2]])
    assert state.acquire(c, 1.0) == DIAL  # evicts the LRU idle one
    closed = drain(state)
    assert [why for _, why in closed] == ["evicted"]
    short = closed[0][0].ep
    assert state.refills(1.0) == []  # no room under max_connections
    assert short.idle == 1


def test_refills_wait_while_tasks_wait() -> None:
    state, ep = make(min_idle=1, max_connections_per_endpoint=1)
    rec = dial(state, ep, 0.0)
    assert state.acquire(ep, 0.0) == WAIT
    w = state.enqueue(ep, "w", 0.0)
    assert w is not None
    state.release(rec, 0.0, reusable=False)
    # The freed slot went to the waiter as a dial, not to a refill.
    assert w.grant == DIAL
    assert state.refills(0.0) == []


def test_refill_failures_back_off_exponentially_capped_and_reset_on_success() -> None:
    state, ep = make(min_idle=1, retry_backoff=0.1, retry_backoff_max=1.0)
    now = 0.0
    delays = []
    for _ in range(8):
        dials = state.refills(now)
        assert len(dials) == 1
        e, ip = dials[0]
        state.refill_failed(e, ip, now)
        assert (ep.pending, ep.warming, state.total) == (0, 0, 0)
        delay = ep.refill_after - now
        delays.append(delay)
        assert state.refills(now) == []  # backing off
        assert state.refills(now + delay * 0.999) == []
        assert state.next_deadline() <= ep.refill_after
        now += delay
    for n, delay in enumerate(delays, start=1):
        ceiling = min(1.0, 0.1 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert ep.refill_failures == 8 and ep.refills == 0
    assert ep.connect_failures == 0  # nobody's acquire failed
    assert ep.addresses[IPS[0]].failures == 8  # but the address did
    # A success (any dial) starts the backoff over.
    warm_up(state, now)
    assert (ep.refill_streak, ep.refill_after, ep.idle) == (0, -math.inf, 1)


def test_refill_backoff_has_a_floor_even_with_retry_backoff_zero() -> None:
    state, ep = make(min_idle=1, retry_backoff=0, retry_backoff_max=0)
    ((e, ip),) = state.refills(0.0)
    state.refill_failed(e, ip, 0.0)
    assert REFILL_BACKOFF_MIN / 2 <= ep.refill_after <= REFILL_BACKOFF_MIN


def test_a_refusing_address_is_ejected_and_the_floor_moves_to_the_others() -> None:
    state, ep = make(*IPS, min_idle=4, eject_after_failures=3, eject_time=30.0)
    refused = IPS[2]
    attempts: Counter[str] = Counter()
    now = 0.0
    for _ in range(20):
        for e, ip in state.refills(now):
            attempts[ip] += 1
            if ip == refused:
                state.refill_failed(e, ip, now)
            else:
                state.warm_ready(state.refill_connected(e, ip, Handle(ip), now), now, refill=True)
        now += 1.0
    assert ep.idle == 4
    assert attempts[refused] == 3  # ejected after three, then left alone
    assert ep.addresses[refused].ejected(now)
    assert sum(attempts.values()) == 3 + 4


def test_no_refills_without_addresses_or_after_close() -> None:
    state = PoolState(Config(min_idle=2))
    ep = state.endpoint("a")  # not resolved yet
    assert state.refills(0.0) == []
    assert ep.pending == 0 and state.total == 0
    state.set_addresses(ep, [IPS[0]])
    state.close()
    assert state.refills(0.0) == []


def test_a_warm_connection_ready_after_close_is_closed() -> None:
    state, ep = make(min_idle=1)
    ((e, ip),) = state.refills(0.0)
    state.close()
    rec = state.refill_connected(e, ip, Handle(ip), 0.0)
    state.warm_ready(rec, 0.0, refill=True)
    assert drain(state) == [(rec, "pool-closed")]
    assert (ep.open, ep.pending, ep.warming, state.total) == (0, 0, 0, 0)


def test_a_warm_connection_goes_to_a_waiter() -> None:
    state, ep = make(min_idle=2, max_connections_per_endpoint=2)
    held = dial(state, ep, 0.0)
    ((e, ip),) = state.refills(0.0)
    assert ep.total == 2
    assert state.acquire(ep, 0.0) == WAIT
    w = state.enqueue(ep, "w", 0.0)
    assert w is not None
    rec = state.refill_connected(e, ip, Handle(ip), 0.5)
    state.warm_ready(rec, 0.5, refill=True)
    assert w.grant is rec and rec.uses == 1 and w.waited == 0.5
    assert held.state == ACTIVE


def test_warm_abandoned_frees_the_slot() -> None:
    state, ep = make(min_idle=2)
    dials = state.refills(0.0)
    for e, ip in dials:
        state.warm_abandoned(e, ip)
    assert (ep.pending, ep.warming, state.total, ep.refill_failures) == (0, 0, 0, 0)
    assert ep.addresses[IPS[0]].pending == 0
    assert len(state.refills(0.0)) == 2  # no backoff: nothing failed


# -- prewarm ------------------------------------------------------------------------


def test_reserve_warm_counts_what_is_idle_and_warming() -> None:
    state, ep = make(max_connections_per_endpoint=5)
    assert state.reserve_warm(ep, 3) == 3
    assert (ep.pending, ep.warming, state.total) == (3, 3, 3)
    assert state.reserve_warm(ep, 3) == 0  # three already on their way
    assert state.reserve_warm(ep, 10) == 2  # the limit
    for _ in range(5):
        ip = state.pick_address(ep, 0.0)
        assert ip is not None
        state.warm_ready(state.connected(ep, ip, Handle(ip), 0.0), 0.0)
    assert (ep.idle, ep.warming, ep.refills) == (5, 0, 0)  # a prewarm is not a refill
    assert state.reserve_warm(ep, 5) == 0


def test_reserve_warm_failed_counts_a_connect_failure() -> None:
    state, ep = make()
    assert state.reserve_warm(ep, 2) == 2
    state.warm_abandoned(ep, None, failed=True)
    state.warm_abandoned(ep, None)
    assert (ep.pending, ep.warming, state.total, ep.connect_failures) == (0, 0, 0, 1)


def test_reserve_warm_within_max_connections_and_not_when_closed() -> None:
    state = PoolState(Config(max_connections=2))
    ep = state.endpoint("a")
    state.set_addresses(ep, [IPS[0]])
    assert state.reserve_warm(ep, 5) == 2
    state.close()
    with pytest.raises(PoolClosed):
        state.reserve_warm(ep, 1)


# -- on_connect and reset --------------------------------------------------------------


def test_init_failed_closes_and_counts_but_spares_the_address() -> None:
    state, ep = make(min_idle=0)
    rec = dial(state, ep, 0.0)
    state.init_failed(rec, 0.0)
    assert drain(state) == [(rec, "on_connect")]
    addr = ep.addresses[IPS[0]]
    assert (ep.open, ep.connect_failures, state.total) == (0, 1, 0)
    assert (addr.failures, addr.consecutive_failures, addr.ejected(0.0)) == (0, 0, False)


def test_init_failed_on_a_refill_backs_off() -> None:
    state, ep = make(min_idle=1)
    ((e, ip),) = state.refills(0.0)
    rec = state.refill_connected(e, ip, Handle(ip), 0.0)
    state.init_failed(rec, 0.0, warm=True, background=True)
    assert drain(state) == [(rec, "on_connect")]
    assert (ep.warming, ep.refill_failures, ep.connect_failures, ep.refills) == (0, 1, 0, 0)
    assert state.refills(0.0) == []
    assert ep.refill_after > 0.0


def test_would_reuse() -> None:
    state, ep = make(max_connection_uses=2, max_connection_lifetime=10.0)
    rec = dial(state, ep, 0.0)
    assert state.would_reuse(rec, 1.0)
    assert not state.would_reuse(rec, 10.0)  # its lifetime is over
    rec.uses = 2
    assert not state.would_reuse(rec, 1.0)  # used up
    rec.uses = 1
    state.set_addresses(ep, [IPS[1]])
    assert not state.would_reuse(rec, 1.0)  # its address left the answer
    state.set_addresses(ep, [IPS[0]])
    state.close()
    assert not state.would_reuse(rec, 1.0)


# -- random interleavings ----------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    min_idle=st.integers(1, 4),
    per_endpoint=st.integers(4, 6),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["acquire", "release", "kill", "tick", "fail", "refill"]),
            st.integers(0, 3),
        ),
        max_size=60,
    ),
)
def test_floor_invariants(min_idle: int, per_endpoint: int, steps: list[tuple[str, int]]) -> None:
    """Whatever happens, the counts add up, every limit holds, and once the
    refills it asked for complete, a quiet endpoint sits at its floor."""
    state, ep = make(
        *IPS,
        min_idle=min_idle,
        max_connections_per_endpoint=per_endpoint,
        max_idle_time=1.0,
        max_connection_lifetime=5.0,
    )
    now = 0.0
    held: list[ConnRecord] = []
    pending: list[tuple[EndpointState, str]] = []
    recs: list[ConnRecord] = []
    for action, n in steps:
        if action == "acquire":
            got = state.acquire(ep, now)
            if isinstance(got, ConnRecord):
                held.append(got)
            elif got == DIAL:
                held.append(dial_reserved(state, ep, now))
            drain(state)
        elif action == "release" and held:
            rec = held.pop(n % len(held))
            state.release(rec, now, reusable=n != 0)
        elif action == "kill" and state.lru:
            rec = list(state.lru)[n % len(state.lru)]
            assert isinstance(rec.conn, Handle)
            rec.conn.dead = True
        elif action == "tick":
            now += 0.1 * (n + 1)
            state.sweep(now)
        elif action == "fail" and pending:
            e, ip = pending.pop(0)
            state.refill_failed(e, ip, now)
        elif action == "refill" and pending:
            e, ip = pending.pop(0)
            rec = state.refill_connected(e, ip, Handle(ip), now)
            recs.append(rec)
            state.warm_ready(rec, now, refill=True)
        if state.refill_due:
            pending += state.refills(now)
        drain(state)
        assert ep.total <= per_endpoint
        assert ep.warming == len(pending)
        assert ep.pending == len(pending)
        assert ep.idle == len(state.lru) == sum(len(a.idle) for a in ep.addresses.values())
        assert ep.active == len(held)
        assert state.total == ep.total
    # Quiet now: give everything back, let the backoff pass, complete every
    # refill asked for, until nothing more is asked.
    for rec in held:
        state.release(rec, now, reusable=True)
    for _ in range(50):
        now += 10.0
        state.sweep(now)
        pending += state.refills(now)
        drain(state)
        if not pending:
            break
        while pending:
            e, ip = pending.pop()
            state.warm_ready(state.refill_connected(e, ip, Handle(ip), now), now, refill=True)
    assert ep.idle == min_idle
    assert all(isinstance(r.conn, Handle) and not r.conn.dead for r in state.lru)


def dial_reserved(state: PoolState, ep: EndpointState, now: float) -> ConnRecord:
    ip = state.pick_address(ep, now)
    assert ip is not None
    return state.connected(ep, ip, Handle(ip), now)
