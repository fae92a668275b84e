"""The state machine's budget waiters (dials waiting for a fleet budget's
lease), driven directly: first come, first served with the endpoint's other
waiters, no slot held while waiting, every way a wait ends."""

from __future__ import annotations

import pytest

from conpool import PoolClosed
from conpool._state import DIAL, WAIT, ConnRecord, EndpointState, PoolState, Waiter
from test_state import complete, drain, endpoint, make, wait

pytestmark = pytest.mark.pure


def budget_waiter(state: PoolState, ep: EndpointState, now: float, name: str) -> Waiter:
    """A dial of ``ep`` that must wait for the fleet: it got a slot, then
    the budget said wait."""
    assert state.acquire(ep, now) == DIAL
    return state.wait_budget(ep, name, now)


def test_a_release_goes_to_the_dial_that_waits_for_budget_before_later_waiters() -> None:
    state, _ = make(max_connections_per_endpoint=2)
    ep = endpoint(state, "a")
    assert state.acquire(ep, 0.0) == DIAL
    held = complete(state, ep, 0.0)
    early = budget_waiter(state, ep, 1.0, "early")
    # The waiting dial holds no slot...
    assert ep.pending == 0 and state.total == 1 and state.n_waiters == 1
    # ...yet the next task queues behind it rather than dialling in that
    # slot: it would only queue for the lease too.
    late = wait(state, ep, 2.0, "late")
    assert list(ep.waiters) == [early, late]
    state.release(held, 3.0, reusable=True)
    _, woken = drain(state)
    assert woken == [early] and early.grant is held
    # The shell withdraws the wait: the record is the dial's now, and the
    # slot it no longer needs is free for the waiter behind it.
    assert state.budget_over(early) is held
    _, woken = drain(state)
    assert woken == [late] and late.grant is DIAL
    assert ep.pending == 1 and state.total == 2 and state.n_waiters == 0


def test_budget_waiters_keep_their_order_before_the_other_waiters() -> None:
    state, _ = make(max_connections_per_endpoint=5)
    ep = endpoint(state, "a")
    assert state.acquire(ep, 0.0) == DIAL
    held = complete(state, ep, 0.0)
    # Two dials in flight; the first waits for the lease, a task queues,
    # then the second dial waits for the lease too: it got its slot before
    # the task queued, so it stands before it.
    assert state.acquire(ep, 1.0) == DIAL
    assert state.acquire(ep, 1.1) == DIAL
    first = state.wait_budget(ep, "first", 1.0)
    plain = wait(state, ep, 2.0, "plain")
    second = state.wait_budget(ep, "second", 1.1)
    assert list(ep.waiters) == [first, second, plain]
    assert ep.pending == 0 and state.total == 1
    assert state.budget_over(first) == DIAL  # the fleet granted the first
    assert list(ep.waiters) == [second, plain] and ep.pending == 1
    _, woken = drain(state)
    assert woken == []  # the plain waiter still waits behind the second
    state.release(held, 3.0, reusable=True)
    _, woken = drain(state)
    assert woken == [second]


def test_budget_waiters_are_in_the_order_their_dials_began() -> None:
    state, _ = make(max_connections_per_endpoint=5)
    ep = endpoint(state, "a")
    assert state.acquire(ep, 0.0) == DIAL
    assert state.acquire(ep, 0.1) == DIAL
    # The later dial came to wait first (it queued behind the earlier one,
    # which was still asking the fleet).
    later = state.wait_budget(ep, "later", 0.1)
    earlier = state.wait_budget(ep, "earlier", 0.0)
    assert list(ep.waiters) == [earlier, later]


def test_a_dial_waiting_for_budget_leaves_its_slot_to_another_endpoint() -> None:
    state, _ = make(max_connections=1)
    a, b = endpoint(state, "a"), endpoint(state, "b")
    assert state.acquire(a, 0.0) == DIAL
    other = wait(state, b, 0.5, "b")
    w = state.wait_budget(a, "a", 0.0)
    _, woken = drain(state)
    # b's waiter dials in the room a's dial cannot use.
    assert woken == [other] and other.grant is DIAL and state.total == 1
    # The lease comes, but the total limit is full: a's task waits as an
    # ordinary waiter, first in line (its lease goes back).
    assert state.budget_over(w) == WAIT
    assert not w.budget and w.grant is None and list(a.waiters) == [w]
    assert state.n_waiters == 1
    rec = complete(state, b, 1.0)
    state.release(rec, 2.0, reusable=True)  # evicted for a's waiter
    closed, woken = drain(state)
    assert [r for r, why in closed] == [rec] and woken == [w] and w.grant is DIAL


def test_cancelling_a_budget_waiter_lets_the_waiters_behind_it_dial() -> None:
    state, _ = make(max_connections_per_endpoint=2)
    ep = endpoint(state, "a")
    w = budget_waiter(state, ep, 0.0, "dial")
    late = wait(state, ep, 1.0, "late")
    assert drain(state)[1] == []
    state.cancel(w, 2.0)
    _, woken = drain(state)
    assert woken == [late] and late.grant is DIAL
    assert state.n_waiters == 0 and ep.pending == 1 and state.total == 1


def test_cancelling_a_budget_waiter_served_a_connection_passes_it_on() -> None:
    state, _ = make(max_connections_per_endpoint=2)
    ep = endpoint(state, "a")
    assert state.acquire(ep, 0.0) == DIAL
    held = complete(state, ep, 0.0)
    w = budget_waiter(state, ep, 1.0, "dial")
    late = wait(state, ep, 1.5, "late")
    state.release(held, 2.0, reusable=True)
    assert drain(state)[1] == [w]
    state.cancel(w, 2.5)  # cancelled before it took the record
    _, woken = drain(state)
    assert woken == [late] and late.grant is held
    assert isinstance(late.grant, ConnRecord) and held.uses == 2


def test_a_close_wakes_budget_waiters_and_ends_their_wait() -> None:
    state, _ = make()
    ep = endpoint(state, "a")
    w = budget_waiter(state, ep, 0.0, "dial")
    state.close()
    _, woken = drain(state)
    assert woken == [w] and w.grant is None
    with pytest.raises(PoolClosed):
        state.budget_over(w)
    assert state.n_waiters == 0 and state.total == 0
