"""Frozen snapshots of the pool's counts, as returned by ``Pool.stats()``."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._budget import BudgetStats
    from ._endpoint import Endpoint
    from ._state import EndpointState, PoolState

__all__ = ["AddressStats", "EndpointStats", "Histogram", "HistogramStats", "PoolStats", "snapshot"]

#: Upper bounds, in seconds, of the wait-time and connect-time histograms:
#: 100 us to 10 s, roughly 1-2.5-5 per decade (Prometheus' default spacing,
#: shifted down because pool waits are short).
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """A cumulative histogram of durations, with fixed buckets."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last is "above every bound"
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def snapshot(self) -> HistogramStats:
        return HistogramStats(BUCKETS, tuple(self.counts), self.sum, self.count)


@dataclass(frozen=True, slots=True)
class HistogramStats:
    """A frozen histogram of durations in seconds.

    :ivar bounds: bucket upper bounds (inclusive), ascending.
    :ivar counts: observations per bucket; one more entry than ``bounds``
        (the last counts observations above the largest bound).
    :ivar sum: total of all observations, in seconds.
    :ivar count: number of observations.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    def cumulative(self) -> tuple[int, ...]:
        """Counts at or below each bound, then the total (Prometheus' ``le``)."""
        out: list[int] = []
        running = 0
        for c in self.counts:
            running += c
            out.append(running)
        return tuple(out)

    def quantile(self, q: float) -> float:
        """An upper bound for quantile ``q`` (0..1): the bound of the bucket it
        falls in (inf when it is above every bound, nan with no data)."""
        if not 0 <= q <= 1:
            raise ValueError(f"q must be within 0..1, got {q!r}")
        if self.count == 0:
            return math.nan
        rank = q * self.count
        for bound, cum in zip((*self.bounds, math.inf), self.cumulative(), strict=True):
            if cum >= rank and cum > 0:
                return bound
        return math.inf


_EMPTY = HistogramStats(BUCKETS, (0,) * (len(BUCKETS) + 1), 0.0, 0)


@dataclass(frozen=True, slots=True)
class AddressStats:
    """One address of an endpoint's name.

    :ivar active: connections to it handed out now.
    :ivar idle: connections to it waiting in the pool.
    :ivar pending: connection attempts to it in progress.
    :ivar created: connections ever established to it.
    :ivar failures: connection attempts to it that failed.
    :ivar ejected: True while failures keep it out of rotation.
    :ivar listed: False once the name's latest answer dropped it (draining).
    """

    active: int
    idle: int
    pending: int
    created: int
    failures: int
    ejected: bool
    listed: bool


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One endpoint.

    :ivar active: connections handed out now.
    :ivar idle: connections waiting in the pool.
    :ivar pending: slots reserved by dials in progress.
    :ivar waiting: tasks waiting for a slot.
    :ivar created: connections ever established.
    :ivar reused: hand-outs of an existing connection.
    :ivar closed: connections closed, for any reason.
    :ivar connect_failures: acquires that failed to connect (after all retries).
    :ivar addresses: per address, keyed by the IP as text.
    :ivar stale: True while the name's answer is an old one kept because
        refreshing it failed.
    :ivar wait_time: how long acquires that found no free connection waited
        for a slot (granted, timed out or cancelled), cumulative: from
        queueing until a release handed them a connection (or a slot was
        freed for them, or they gave up), not counting the moment the event
        loop then takes to resume the task.
    :ivar connect_time: how long successful connects took (TCP and TLS), cumulative.
    :ivar floor: connections the warm floor (``Config.min_idle``) keeps
        now: those open, up to ``min_idle``.
    :ivar refills: connections the floor opened in the background.
    :ivar refill_failures: background dials of the floor that failed
        (connect, TLS or ``on_connect``); never anybody's acquire error.
    """

    active: int
    idle: int
    pending: int
    waiting: int
    created: int
    reused: int
    closed: int
    connect_failures: int
    addresses: Mapping[str, AddressStats]
    stale: bool = False
    wait_time: HistogramStats = _EMPTY
    connect_time: HistogramStats = _EMPTY
    floor: int = 0
    refills: int = 0
    refill_failures: int = 0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The whole pool.

    :ivar endpoints: per endpoint.
    :ivar active: connections handed out now, all endpoints.
    :ivar idle: idle connections, all endpoints.
    :ivar pending: dials in progress.
    :ivar waiting: tasks waiting for a slot.
    :ivar closed: True once the pool was closed.
    :ivar budget: this pool's counts as a participant of its
        :class:`~conpool.RedisBudget`, or None without a budget.
    """

    endpoints: Mapping[Endpoint, EndpointStats]
    active: int
    idle: int
    pending: int
    waiting: int
    closed: bool
    budget: BudgetStats | None = None


for _cls in (AddressStats, EndpointStats, HistogramStats, PoolStats):
    _cls.__module__ = "conpool"


def snapshot(
    state: PoolState[Endpoint, Any],
    now: float,
    stale: frozenset[str] = frozenset(),
    waits: Mapping[EndpointState[Endpoint, Any], Histogram] | None = None,
    connects: Mapping[EndpointState[Endpoint, Any], Histogram] | None = None,
) -> PoolStats:
    """Copy the counts out of the state machine (never a live view)."""
    endpoints: dict[Endpoint, EndpointStats] = {}
    active = idle = pending = 0
    for key, ep in state.endpoints.items():
        addresses = {
            ip: AddressStats(
                active=a.active,
                idle=len(a.idle),
                pending=a.pending,
                created=a.created,
                failures=a.failures,
                ejected=a.ejected(now),
                listed=a.listed,
            )
            for ip, a in ep.addresses.items()
        }
        endpoint = key
        endpoints[endpoint] = EndpointStats(
            active=ep.active,
            idle=ep.idle,
            pending=ep.pending,
            waiting=len(ep.waiters),
            created=ep.created,
            reused=ep.reused,
            closed=ep.closed,
            connect_failures=ep.connect_failures,
            addresses=MappingProxyType(addresses),
            stale=endpoint.host in stale,
            wait_time=waits[ep].snapshot() if waits and ep in waits else _EMPTY,
            connect_time=connects[ep].snapshot() if connects and ep in connects else _EMPTY,
            floor=state.floor_of(ep),
            refills=ep.refills,
            refill_failures=ep.refill_failures,
        )
        active += ep.active
        idle += ep.idle
        pending += ep.pending
    return PoolStats(
        endpoints=MappingProxyType(endpoints),
        active=active,
        idle=idle,
        pending=pending,
        waiting=state.n_waiters,
        closed=state.closed,
    )
