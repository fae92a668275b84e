"""The state machine's decisions beside the connections, driven directly (no
event loop, no sockets, no clock): its answers are distinct values, a name's
new answer spreads to every endpoint of the name, which names the sweep looks
up again, how many endpoints it remembers, which close reasons are expiry,
and the balancing policies Config accepts."""

from __future__ import annotations

from typing import Any

import pytest

from conpool import Config
from conpool._balance import POLICIES
from conpool._config import BALANCE_POLICIES
from conpool._records import Answer, RecordState
from conpool._state import (
    ACTIVE,
    CLOSED,
    DIAL,
    EXPIRY_REASONS,
    IDLE,
    MAX_ENDPOINTS,
    WAIT,
    EndpointState,
    PoolState,
    is_expiry,
)

IP1, IP2, IP3 = "192.0.2.1", "192.0.2.2", "192.0.2.3"


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name

    def _usable(self, idle: float) -> bool:
        return True


def make(**config: Any) -> PoolState:
    return PoolState(Config(**config))


def open_one(state: PoolState, ep: EndpointState, now: float = 0.0) -> Any:
    assert state.acquire(ep, now) is DIAL
    ip = state.pick_address(ep, now)
    assert ip is not None
    return state.connected(ep, ip, Conn(f"{ep.key}@{ip}"), now)


def test_the_answers_are_distinct_values() -> None:
    """No answer equals another, nor a record state (they were colliding
    ints once: DIAL == ACTIVE, WAIT == CLOSED)."""
    values: list[object] = [DIAL, WAIT, IDLE, ACTIVE, CLOSED]
    assert len({id(v) for v in values}) == 5
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            assert a != b
    assert isinstance(DIAL, Answer) and isinstance(IDLE, RecordState)


def test_a_new_answer_spreads_to_every_endpoint_of_the_name() -> None:
    state = make()
    http = state.endpoint("http://pool.test", "pool.test")
    https = state.endpoint("https://pool.test", "pool.test")
    other = state.endpoint("http://other.test", "other.test")
    literal = state.endpoint("http://192.0.2.9")
    state.set_addresses(literal, ["192.0.2.9"])
    state.answer("pool.test", [IP1, IP2])
    assert [a.ip for a in http.listed] == [IP1, IP2]
    assert [a.ip for a in https.listed] == [IP1, IP2]
    assert other.listed == [] and [a.ip for a in literal.listed] == ["192.0.2.9"]
    # An address that leaves the answer drains on every endpoint of the name.
    rec = open_one(state, https)
    state.release(rec, 1.0, reusable=True)
    assert rec.state is IDLE
    gone = rec.addr.ip
    state.answer("pool.test", [ip for ip in (IP1, IP2, IP3) if ip != gone])
    assert rec.state is CLOSED
    assert state.to_close == [(rec, "drained")]
    assert gone not in [a.ip for a in http.listed] + [a.ip for a in https.listed]
    assert state.by_name.keys() == {"pool.test", "other.test"}


def test_the_sweep_refreshes_names_that_hold_connections_once_at_a_time() -> None:
    state = make()
    held = state.endpoint("http://held.test", "held.test")
    state.answer("held.test", [IP1])
    unused = state.endpoint("http://unused.test", "unused.test")
    state.answer("unused.test", [IP2])
    literal = state.endpoint("http://192.0.2.9")
    state.set_addresses(literal, ["192.0.2.9"])
    open_one(state, held)
    open_one(state, literal)
    asked: list[str] = []

    def expired(name: str) -> None:
        asked.append(name)
        return None

    assert state.refresh_due(expired) == [held]  # not unused, not the literal
    assert asked == ["held.test"]
    # In progress: not asked for again until done.
    assert state.refresh_due(expired) == []
    state.refresh_done("held.test")
    assert state.refresh_due(expired) == [held]
    assert unused.listed and unused.total == 0


def test_the_sweep_spreads_a_fresh_answer_instead_of_refreshing() -> None:
    state = make()
    a = state.endpoint("http://pool.test", "pool.test")
    b = state.endpoint("https://pool.test", "pool.test")
    state.answer("pool.test", [IP1])
    open_one(state, b)
    # Endpoint a fetched a new answer (the cache has it, fresh): b follows,
    # and nothing needs a lookup.
    assert state.refresh_due(lambda name: (IP2, IP3)) == []
    assert [x.ip for x in a.listed] == [IP2, IP3]
    assert [x.ip for x in b.listed] == [IP2, IP3]
    assert state.refreshing == set()


def test_the_endpoint_bound_forgets_unused_ones_oldest_first() -> None:
    state = make()
    assert state.forget_unused.__defaults__ == (MAX_ENDPOINTS,)
    eps = [state.endpoint(f"k{i}", f"n{i % 2}.test") for i in range(5)]
    for i, ep in enumerate(eps):
        state.answer(ep.name or "", [f"192.0.2.{i + 1}"])
    busy = open_one(state, eps[0])
    forgotten = state.forget_unused(keep=2)
    # Three over the bound; the busy one stays however old.
    assert forgotten == eps[1:4]
    assert list(state.endpoints) == ["k0", "k4"]
    assert all(ep.owner is None for ep in forgotten) and eps[0].owner is state
    assert {ep.key for ep in state.by_name["n0.test"]} == {"k0", "k4"}
    assert "n1.test" not in state.by_name
    assert busy.ep is eps[0]


def test_which_close_reasons_are_expiry() -> None:
    assert EXPIRY_REASONS == {"idle", "lifetime", "uses", "health", "stale", "drained"}
    for reason in EXPIRY_REASONS:
        assert is_expiry(reason)
    for reason in ("error", "closed", "evicted", "leaked", "pool-closed"):
        assert not is_expiry(reason)


def test_the_policies_are_read_only_and_config_accepts_exactly_them() -> None:
    with pytest.raises(TypeError):
        POLICIES["mine"] = POLICIES["round-robin"]  # type: ignore[index]
    assert BALANCE_POLICIES == tuple(POLICIES)
    for name in POLICIES:
        assert Config(balance=name).balance == name
    with pytest.raises(ValueError, match="balance must be one of"):
        Config(balance="random")
