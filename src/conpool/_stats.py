"""Frozen snapshots of the pool's counts, as returned by ``Pool.stats()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._endpoint import Endpoint
    from ._state import PoolState

__all__ = ["AddressStats", "EndpointStats", "PoolStats", "snapshot"]


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


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The whole pool.

    :ivar endpoints: per endpoint.
    :ivar active: connections handed out now, all endpoints.
    :ivar idle: idle connections, all endpoints.
    :ivar pending: dials in progress.
    :ivar waiting: tasks waiting for a slot.
    :ivar closed: True once the pool was closed.
    """

    endpoints: Mapping[Endpoint, EndpointStats]
    active: int
    idle: int
    pending: int
    waiting: int
    closed: bool


for _cls in (AddressStats, EndpointStats, PoolStats):
    _cls.__module__ = "conpool"


def snapshot(state: PoolState, now: float, stale: frozenset[str] = frozenset()) -> PoolStats:
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
        endpoint: Endpoint = key  # type: ignore[assignment]
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
        )
        active += ep.active
        idle += ep.idle
        pending += ep.pending
    return PoolStats(
        endpoints=MappingProxyType(endpoints),
        active=active,
        idle=idle,
        pending=pending,
        waiting=len(state.waiters),
        closed=state.closed,
    )
