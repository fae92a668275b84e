"""The fleet budget's decisions, without Redis or an event loop."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conpool._budget_core import (
    FAIL_CLOSED,
    FAIL_OPEN,
    BudgetBook,
    KeyBook,
    Snapshot,
    fair_floor,
    give_back_count,
    may_grant,
    parse_reply,
)


def test_fair_floor() -> None:
    assert fair_floor(20, 8) == 2
    assert fair_floor(20, 1) == 20
    assert fair_floor(20, 0) == 20
    assert fair_floor(3, 8) == 1  # never 0: everyone is owed one


def test_grant_below_limit_when_nobody_waits() -> None:
    assert may_grant(20, {"a": 19}, [], "a", 19)
    assert not may_grant(20, {"a": 20}, [], "a", 20)
    assert not may_grant(20, {"a": 10, "b": 10}, [], "a", 10)


def test_grant_uses_our_truth_not_what_redis_remembers() -> None:
    # Redis still has 20 for us, but we closed 5 meanwhile.
    assert may_grant(20, {"a": 20}, [], "a", 15)


def test_no_grant_above_share_while_another_starves() -> None:
    # a holds 15, b 0 and waits: a's freed lease must go to b.
    assert not may_grant(20, {"a": 15, "c": 4}, ["b"], "a", 15)
    assert may_grant(20, {"a": 15, "c": 4}, ["b"], "b", 0)


def test_leftover_goes_to_whoever_asks_once_nobody_starves() -> None:
    # 8 participants at 2 each (the floor): 4 left, nobody starves.
    counts = {f"p{i}": 2 for i in range(8)}
    assert may_grant(20, counts, list(counts), "p0", 2)


def test_give_back_none_without_starving_waiters() -> None:
    assert give_back_count(20, {"a": 20}, [], "a", 20) == 0
    # b waits but is at its floor already.
    assert give_back_count(20, {"a": 10, "b": 10}, ["b"], "a", 10) == 0


def test_give_back_down_to_the_share() -> None:
    # a holds all 20, b waits with none: share 10; a gives back 10.
    assert give_back_count(20, {"a": 20}, ["b"], "a", 20) == 10


def test_give_back_counts_free_room_and_retiring() -> None:
    # 2 free already: only 8 more needed.
    assert give_back_count(20, {"a": 18}, ["b"], "a", 18) == 8
    # 5 already on their way out.
    assert give_back_count(20, {"a": 20}, ["b"], "a", 20, retiring=5) == 5


def test_give_back_shared_among_holders_above_share() -> None:
    # a and c hold 10 each, b waits: share 6; deficit 6, 3 each.
    counts = {"a": 10, "c": 10}
    assert give_back_count(20, counts, ["b"], "a", 10) == 3
    assert give_back_count(20, counts, ["b"], "c", 10) == 3


def test_waiter_never_gives_back_for_itself() -> None:
    assert give_back_count(20, {"a": 20}, ["a"], "a", 20) == 0


def test_parse_reply() -> None:
    snap = parse_reply([1, 3, 2, "a", 4, b"b", 2, "c"])
    assert snap == Snapshot(True, 3, {"a": 4, "b": 2}, frozenset({"c"}))
    with pytest.raises(ValueError, match="unexpected reply"):
        parse_reply("OK")


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 40),
    n=st.integers(1, 10),
    order=st.lists(st.integers(0, 9), min_size=1, max_size=300),
)
def test_fleet_never_exceeds_limit_and_nobody_starves(limit: int, n: int, order: list[int]) -> None:
    """Participants that always want more, asking in any order, with the
    give-back applied after every step: the total never exceeds the limit,
    and once the order settles every participant holds its floor."""
    names = [f"p{i}" for i in range(n)]
    counts = dict.fromkeys(names, 0)
    waiting: set[str] = set()

    def step(p: str) -> None:
        if may_grant(limit, counts, waiting, p, counts[p]):
            counts[p] += 1
            waiting.discard(p)
        else:
            waiting.add(p)
        assert sum(counts.values()) <= limit
        for q in names:
            k = give_back_count(limit, counts, waiting, q, counts[q])
            assert 0 <= k <= counts[q]
            counts[q] -= k

    for i in order:
        step(names[i % n])
    # Then everyone asks in turn until nothing changes.
    for _ in range(4 * limit + 10):
        for p in names:
            step(p)
    floor = fair_floor(limit, n)
    if limit >= n:
        assert all(c >= floor for c in counts.values()), (counts, floor)
    assert sum(counts.values()) <= limit


def _dirty(kb: KeyBook) -> bool:
    # (A function, not the property inline: mypy would narrow the property
    # across the assertions and call the later ones unreachable.)
    return kb.dirty


def _book(policy: str = FAIL_OPEN) -> BudgetBook:
    return BudgetBook("me", 20, policy, retry_after=1.0)


def test_book_grant_release_and_dirty() -> None:
    book = _book()
    kb = book.book("h:1")
    kb.waiting = 1
    mine, still = book.acquire_args(kb)
    assert (mine, still) == (0, False)
    lease = book.answered(kb, Snapshot(True, 0, {"me": 1}, frozenset()), mine, acquire=True)
    assert lease is not None and lease.accounted
    kb.waiting = 0
    assert kb.held == 1 and kb.reported == 1 and not _dirty(kb)
    assert book.release(lease) is kb
    assert kb.held == 0 and _dirty(kb)
    assert book.release(lease) is None  # once only
    assert book.counters.granted == 1


def test_book_denied_registers_waiting() -> None:
    book = _book()
    kb = book.book("h:1")
    kb.waiting = 1
    lease = book.answered(kb, Snapshot(False, 0, {"x": 20}, frozenset({"me"})), 0, acquire=True)
    assert lease is None and kb.registered
    kb.waiting = 0
    assert _dirty(kb)  # Redis still lists us as waiting: the flush says we stopped


def test_book_lost_lease() -> None:
    book = _book()
    kb = book.book("h:1")
    kb.held = 3
    book.answered(kb, Snapshot(False, 0, {}, frozenset()), 3, acquire=False)
    assert book.counters.lost == 0  # never registered before: not a loss
    book.answered(kb, Snapshot(False, 0, {"me": 3}, frozenset()), 3, acquire=False)
    assert book.counters.lost == 1


def test_book_outage_window_and_policy() -> None:
    book = _book(FAIL_CLOSED)
    assert book.should_try(0.0)
    assert book.failed(10.0, "refused") is True
    assert book.failed(10.5, "refused") is False  # the same outage
    assert not book.should_try(10.9)
    assert book.should_try(11.5)
    assert book.succeeded() is True
    assert book.succeeded() is False
    assert book.counters.redis_errors == 2


def test_book_unaccounted_then_resync() -> None:
    book = _book(FAIL_OPEN)
    kb = book.book("h:1")
    lease = book.grant_unaccounted(kb)
    assert not lease.accounted and kb.held == 1 and _dirty(kb)
    book.answered(kb, Snapshot(False, 0, {"me": 1}, frozenset()), 1, acquire=False)
    assert not _dirty(kb)
    assert book.counters.unaccounted == 1


def test_book_unsure_call_resyncs() -> None:
    book = _book()
    kb = book.book("h:1")
    assert not _dirty(kb)
    book.unsure(kb)
    assert _dirty(kb)


def test_book_giving_back_accounting() -> None:
    book = _book()
    kb = book.book("h:1")
    kb.held = 20
    n = book.give_back(kb, Snapshot(False, 20, {"me": 20}, frozenset({"other"})))
    assert n == 10
    kb.retiring += n
    # The pool closed 4 idle ones at once (their releases count down) and
    # marked 6 in use.
    for _ in range(4):
        lease = book.grant_unaccounted(kb)
        book.release(lease)
    book.giving_back(kb, n, 10)
    assert book.counters.given_back == 10


def test_book_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError, match="policy"):
        BudgetBook("me", 1, "maybe", 1.0)
