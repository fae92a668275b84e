"""The scenario matrix of ``conpool stress``.

Each scenario is data: which server it talks to, with which pool
configuration, how its clients pace themselves and what happens to the
servers while it runs.  :mod:`conpool.stress.runner` runs one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .servers import STRESS_ADDRESSES

__all__ = ["Action", "Scenario", "all_scenarios", "register", "scenario_names", "select"]


@dataclass(frozen=True)
class Action:
    """Something done to the servers at ``at`` (a fraction of the duration)."""

    at: float
    op: str  # "down" or "up"
    address: str

    @property
    def label(self) -> str:
        return f"{self.address} {'down' if self.op == 'down' else 'back up'}"


@dataclass(frozen=True)
class Scenario:
    """One run of the pool under load.

    :ivar name: the identifier used by ``--scenarios``.
    :ivar group: scenarios that are compared with each other.
    :ivar port: which embedded server: ``echo``, ``http``, ``http_idle``,
        ``tls``, ``slow`` or ``uneven`` (latency proxies) or ``target`` (``--target``).
    :ivar protocol: what the clients speak; ``None`` means the ``--protocol``
        of the target.
    :ivar config: keyword arguments of :class:`conpool.Config`.
    :ivar think: each client sleeps uniformly in this range (s) between requests.
    :ivar burst: ``(period, active)``: clients send only during the first
        ``active`` seconds of every ``period`` and wait out the rest, so the
        pool sees a gap of ``period - active`` with nothing in use.
    :ivar actions: what happens to the servers during the run.
    :ivar embedded_only: needs the embedded servers (not possible with ``--target``).
    :ivar expected_errors: why failed requests are expected in this scenario
        (empty: none are).
    :ivar driver: how a client makes one request: a name in
        :data:`conpool.stress.runner.DRIVERS` (``"pool"``: ``pool.connection()``
        and the protocol's exchange).
    """

    name: str
    title: str
    group: str
    description: str
    port: str
    protocol: str | None
    config: dict[str, Any]
    think: tuple[float, float] = (0.0, 0.0)
    burst: tuple[float, float] | None = None
    actions: tuple[Action, ...] = ()
    embedded_only: bool = False
    notes: tuple[str, ...] = field(default=())
    expected_errors: str = ""
    driver: str = "pool"


LIMITS = (1, 4, 16, 64)
POLICIES = ("least-connections", "round-robin", "power-of-two")
DOWN_ADDRESS = STRESS_ADDRESSES[2]
SLOW_ADDRESS = STRESS_ADDRESSES[3]
SLOW_DELAY = 0.020
IDLE_CLOSE = 0.15
#: What the ``uneven`` proxies add on each of the four addresses (s).
UNEVEN_DELAYS = (0.0, 0.001, 0.002, 0.004)


Provider = Callable[[float, bool], list[Scenario]]
_PROVIDERS: list[Provider] = []


def register(provider: Provider) -> Provider:
    """Add scenarios to the matrix: ``provider(duration, target)`` returns them
    (run after the built-in ones, in registration order).  Usable as a decorator.

    :raises TypeError: ``provider`` is not callable.
    """
    if not callable(provider):
        raise TypeError(f"a scenario provider must be callable, got {provider!r}")
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)
    return provider


def all_scenarios(duration: float, *, target: bool = False) -> list[Scenario]:
    """Every scenario, in the order they run: the built-in ones, then those of
    every :func:`register` ed provider.

    :param duration: seconds each scenario runs (some settings scale with it).
    :param target: the servers are a real ``--target``: scenarios that need
        to control the servers are left out.
    :raises ValueError: two scenarios have the same name.
    """
    out = _builtin(duration, target=target)
    for provider in _PROVIDERS:
        out.extend(provider(duration, target))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"scenario names must be unique: {', '.join(dupes)}")
    return out


def _builtin(duration: float, *, target: bool) -> list[Scenario]:
    load = "echo" if not target else None
    web = "http" if not target else None
    port = "target" if target else None
    out: list[Scenario] = [
        Scenario(
            name=f"limit-{limit}",
            title=f"Per-endpoint limit {limit}",
            group="limits",
            description=(
                "Every client hammers one endpoint"
                + (" (the target: a single address)" if target else " (four addresses)")
                + f"; the pool may hold at most {limit} connection"
                + ("" if limit == 1 else "s")
                + " to it, so the other clients queue for a free one."
            ),
            port=port or "echo",
            protocol=load,
            config={"max_connections_per_endpoint": limit},
        )
        for limit in LIMITS
    ]
    delays = ", ".join(f"{d * 1000:g}" for d in UNEVEN_DELAYS)
    behind = "the target" if target else "the HTTP server"
    out.extend(
        Scenario(
            name=f"balance-{policy}",
            title=f"Balancing: {policy}",
            group="balance",
            description=(
                f"Config.balance={policy!r} chooses among the four addresses of one name, each "
                f"a latency proxy in front of {behind} adding {delays} ms in turn, so that "
                "where the policy sends connections shows in the share of requests and in "
                "the latency; connections are recycled after 50 uses so the policy keeps "
                "choosing throughout the run."
            ),
            port="uneven",
            protocol=web,
            config={
                "max_connections_per_endpoint": 16,
                "balance": policy,
                "max_connection_uses": 50,
                "balance_seed": 1,
            },
        )
        for policy in POLICIES
    )
    out.append(
        Scenario(
            name="churn",
            title="Churn: short idle timeout and max uses",
            group="churn",
            description=(
                "Connections are closed after 5 uses or 5 ms idle, and clients send in bursts "
                "(75 ms on, 50 ms off) over at most 4 connections: the pool keeps opening "
                "connections and retiring them, for both reasons."
            ),
            port=port or "http",
            protocol=web,
            # Few connections, so that each gets its 5 uses within one burst
            # even when a starved machine serves only a few dozen requests a
            # burst (with 16, a connection went idle before its tenth use and
            # no connection was ever retired for uses).
            config={
                "max_connections_per_endpoint": 4,
                "max_idle_time": 0.005,
                "max_connection_uses": 5,
            },
            burst=(0.125, 0.075),
        )
    )
    if not target:
        out.append(
            Scenario(
                name="address-down",
                title=f"One address down mid-run ({DOWN_ADDRESS})",
                group="failure",
                description=(
                    f"At 30 % of the run every server on {DOWN_ADDRESS} stops listening and "
                    "resets its connections; at 65 % it comes back. Connect retries and "
                    "ejection steer new connections to the other addresses; connections live "
                    f"at most {duration * 0.25:.2g} s so traffic returns to {DOWN_ADDRESS}."
                ),
                port="http",
                protocol="http",
                config={
                    "max_connections_per_endpoint": 16,
                    "max_connection_lifetime": max(duration * 0.25, 0.05),
                    "connect_timeout": 1.0,
                    "connect_retries": 3,
                    "retry_backoff": 0.005,
                    "retry_backoff_max": 0.05,
                    "eject_after_failures": 2,
                    "eject_time": max(duration * 0.05, 0.05),
                    "eject_time_max": max(duration * 0.2, 0.1),
                },
                actions=(Action(0.30, "down", DOWN_ADDRESS), Action(0.65, "up", DOWN_ADDRESS)),
                embedded_only=True,
                expected_errors=(
                    f"{DOWN_ADDRESS} is taken down on purpose: requests in flight on its "
                    "connections when they are reset fail (the pool cannot retry a request "
                    "it did not send)"
                ),
            )
        )
    out.append(
        Scenario(
            name="slow-address",
            title=f"One address {SLOW_DELAY * 1000:g} ms slower ({SLOW_ADDRESS})",
            group="failure",
            description=(
                "Every address goes through a small latency-injecting TCP proxy"
                + (" in front of the target" if target else "")
                + f"; the one on {SLOW_ADDRESS} holds each answer {SLOW_DELAY * 1000:g} ms. "
                "Least-connections reuse prefers the address with the fewest connections in use."
            ),
            port="slow",
            protocol=load,
            config={"max_connections_per_endpoint": 16},
        )
    )
    out.append(
        Scenario(
            name="plain",
            title="Plain TCP (baseline for TLS)",
            group="tls",
            description=(
                "The target over plain TCP, connections recycled every 100 uses."
                if target
                else "Echo over plain TCP, connections recycled every 100 uses: the baseline "
                "the TLS scenario is compared with."
            ),
            port=port or "echo",
            protocol=load,
            config={"max_connections_per_endpoint": 16, "max_connection_uses": 100},
        )
    )
    if not target:
        out.append(
            Scenario(
                name="tls",
                title="TLS",
                group="tls",
                description=(
                    "The same echo load over TLS (certificate for the stress name from a "
                    "throw-away CA), connections recycled every 100 uses so handshakes show."
                ),
                port="tls",
                protocol="echo",
                config={"max_connections_per_endpoint": 16, "max_connection_uses": 100},
                embedded_only=True,
            )
        )
        out.append(
            Scenario(
                name="server-idle-close",
                title=f"Server closes idle connections after {IDLE_CLOSE * 1000:g} ms",
                group="failure",
                description=(
                    f"The HTTP server closes a connection idle for {IDLE_CLOSE * 1000:g} ms "
                    "while the pool would keep it 60 s. Clients send in bursts of 50 ms every "
                    "250 ms, so between bursts the server closes every pooled connection: the "
                    "pool must notice (closed: stale) instead of handing them out."
                ),
                port="http_idle",
                protocol="http",
                config={"max_connections_per_endpoint": 16, "max_idle_time": 60.0},
                burst=(0.250, 0.050),
                embedded_only=True,
            )
        )
    return out


def scenario_names(*, target: bool = False) -> list[str]:
    return [s.name for s in all_scenarios(1.0, target=target)]


def select(scenarios: list[Scenario], patterns: list[str]) -> list[Scenario]:
    """The scenarios matching any of ``patterns`` (names or shell globs,
    e.g. ``limit-*``), in run order.

    :raises ValueError: a pattern matches no scenario.
    """
    chosen: set[str] = set()
    for pattern in patterns:
        matched = [s.name for s in scenarios if fnmatch.fnmatchcase(s.name, pattern)]
        if not matched:
            names = ", ".join(s.name for s in scenarios)
            raise ValueError(f"no scenario matches {pattern!r} (choose from: {names})")
        chosen.update(matched)
    return [s for s in scenarios if s.name in chosen]
