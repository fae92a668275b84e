"""The state machine's budget waiters (dials waiting for a fleet budget's
lease), driven directly: first come, first served with the endpoint's other
waiters, no slot held while waiting, every way a wait ends."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

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
    # The record is the dial's, and the slot it no longer needs is free for
    # the waiter behind it at once.
    assert woken == [early, late] and early.grant is held and late.grant is DIAL
    assert ep.pending == 1 and state.total == 2 and state.n_waiters == 0
    # The shell withdraws the wait: the record is what it hands out.
    assert state.budget_over(early) is held
    assert drain(state) == ([], [])


def one_held_two_dialling(per: int) -> tuple[PoolState, EndpointState, ConnRecord]:
    """A pool with one connection in use and two dials in flight (begun at
    1.0 and 1.1)."""
    state, _ = make(max_connections_per_endpoint=per)
    ep = endpoint(state, "a")
    assert state.acquire(ep, 0.0) == DIAL
    held = complete(state, ep, 0.0)
    assert state.acquire(ep, 1.0) == DIAL
    assert state.acquire(ep, 1.1) == DIAL
    return state, ep, held


def test_budget_waiters_keep_their_order_before_the_other_waiters() -> None:
    # The first dial waits for the lease, a task queues, then the second
    # dial waits for the lease too: it got its slot before the task queued,
    # so it stands before it.
    state, ep, held = one_held_two_dialling(5)
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
    assert woken == [second, plain]  # the plain one dials in the room left
    assert second.grant is held and plain.grant is DIAL


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
    later = wait(state, ep, 1.6, "later")
    state.release(held, 2.0, reusable=True)
    assert drain(state)[1] == [w, late] and late.grant is DIAL  # (the room w left)
    state.cancel(w, 2.5)  # cancelled before it took the record
    _, woken = drain(state)
    assert woken == [later] and later.grant is held
    assert isinstance(later.grant, ConnRecord) and held.uses == 2


def test_a_lease_for_a_dial_served_meanwhile_goes_to_the_next_dial_waiting() -> None:
    state, ep, held = one_held_two_dialling(3)
    first = state.wait_budget(ep, "first", 1.0)
    second = state.wait_budget(ep, "second", 1.1)
    state.release(held, 2.0, reusable=True)
    assert drain(state)[1] == [first] and first.grant is held
    # The fleet granted the first a lease meanwhile: the second takes it,
    # with a slot, instead of asking the fleet.
    assert state.budget_over(first) is held
    assert state.pass_lease(ep) is second
    assert drain(state)[1] == [second] and second.grant is DIAL
    assert ep.pending == 1 and state.n_waiters == 0
    assert state.budget_over(second) == DIAL
    assert state.pass_lease(ep) is None  # nobody else waits for budget
    # A dial passed a lease and then cancelled gives its slot back.
    assert state.acquire(ep, 3.0) == DIAL
    third = state.wait_budget(ep, "third", 3.0)
    assert state.pass_lease(ep) is third and ep.pending == 2
    state.cancel(third, 3.5)
    assert ep.pending == 1 and state.total == 2


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


# -- random interleavings ------------------------------------------------------------


@settings(max_examples=200, stateful_step_count=40, deadline=None)
class BudgetMachine(RuleBasedStateMachine):
    """Acquires, dials that must wait for the fleet, leases granted, releases
    and cancellations in any order: the accounting holds, budget waiters
    stand first in the order their dials began, and no waiter waits for a
    slot the limits have room for."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.dials: list[EndpointState] = []  # slots held for a dial
        self.held: list[ConnRecord] = []
        self.plain: list[Waiter] = []
        self.budget: list[Waiter] = []

    @initialize(per=st.integers(1, 3), total=st.one_of(st.none(), st.integers(1, 4)))
    def setup(self, per: int, total: int | None) -> None:
        self.state, _ = make(max_connections_per_endpoint=per, max_connections=total)
        self.eps = [endpoint(self.state, k) for k in ("a", "b")]

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def settle(self) -> None:
        _, woken = drain(self.state)
        for w in woken:
            if w in self.plain:
                self.plain.remove(w)
                if w.grant is DIAL:
                    self.dials.append(w.ep)
                else:
                    assert isinstance(w.grant, ConnRecord)
                    self.held.append(w.grant)
            else:
                # Served a connection, or passed another dial's lease.
                assert w in self.budget and (isinstance(w.grant, ConnRecord) or w.grant is DIAL)

    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        ep = data.draw(st.sampled_from(self.eps))
        got = self.state.acquire(ep, self.tick())
        if got is DIAL:
            self.dials.append(ep)
        elif got is WAIT:
            w = self.state.enqueue(ep, "task", self.now)
            assert w is not None
            self.plain.append(w)
        else:
            assert isinstance(got, ConnRecord)
            self.held.append(got)
        self.settle()

    @precondition(lambda self: self.dials)
    @rule(data=st.data(), waits=st.booleans())
    def dial(self, data: st.DataObject, waits: bool) -> None:
        ep = data.draw(st.sampled_from(self.dials))
        self.dials.remove(ep)
        if waits:
            # It began a little while ago (another dial may have begun later).
            since = self.now - data.draw(st.sampled_from([0.0, 0.5, 1.5]))
            self.budget.append(self.state.wait_budget(ep, "dial", since))
        else:
            self.held.append(complete(self.state, ep, self.tick()))
        self.settle()

    @precondition(lambda self: self.budget)
    @rule(data=st.data(), granted=st.booleans())
    def budget_over(self, data: st.DataObject, granted: bool) -> None:
        w = data.draw(st.sampled_from(self.budget))
        self.budget.remove(w)
        got = self.state.budget_over(w)
        if got is DIAL:
            self.dials.append(w.ep)
        elif got is WAIT:
            self.plain.append(w)
        else:
            assert isinstance(got, ConnRecord) and got is w.grant
            self.held.append(got)
            if granted:
                # The fleet granted a lease as well: the next dial waiting
                # for budget takes it, if there is one and room.
                taker = self.state.pass_lease(w.ep)
                if taker is not None:
                    assert taker in self.budget and taker.grant is DIAL
        self.settle()

    @precondition(lambda self: self.held)
    @rule(data=st.data(), reusable=st.booleans())
    def release(self, data: st.DataObject, reusable: bool) -> None:
        rec = data.draw(st.sampled_from(self.held))
        self.held.remove(rec)
        self.state.release(rec, self.tick(), reusable)
        self.settle()

    @precondition(lambda self: self.plain or self.budget)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        w = data.draw(st.sampled_from(self.plain + self.budget))
        (self.plain if w in self.plain else self.budget).remove(w)
        self.state.cancel(w, self.tick())
        self.settle()

    @invariant()
    def accounting(self) -> None:
        state = self.state
        if not hasattr(self, "state"):
            return
        for ep in self.eps:
            passed = sum(1 for w in self.budget if w.ep is ep and w.grant is DIAL)
            assert ep.pending == self.dials.count(ep) + passed
            served = sum(1 for w in self.budget if w.ep is ep and isinstance(w.grant, ConnRecord))
            assert ep.open == ep.idle + served + sum(1 for r in self.held if r.ep is ep)
            assert ep.total <= state.per_endpoint
        assert state.total == sum(ep.total for ep in self.eps)
        assert state.max_total is None or state.total <= state.max_total
        queued = [w for w in self.plain + self.budget if w.grant is None]
        assert state.n_waiters == len(queued) == sum(len(ep.waiters) for ep in self.eps)

    @invariant()
    def budget_waiters_first_in_order(self) -> None:
        if not hasattr(self, "state"):
            return
        for ep in self.eps:
            kinds = [w.budget for w in ep.waiters]
            assert kinds == sorted(kinds, reverse=True), kinds
            sinces = [w.since for w in ep.waiters if w.budget]
            assert sinces == sorted(sinces)

    @invariant()
    def nobody_waits_for_room_there_is(self) -> None:
        if not hasattr(self, "state"):
            return
        state = self.state
        room = state.max_total is None or state.total < state.max_total
        for ep in self.eps:
            first = next(iter(ep.waiters), None)
            if first is not None and not first.budget:
                assert not (room and ep.total < state.per_endpoint), (ep, list(ep.waiters))


TestBudgetMachine = BudgetMachine.TestCase
