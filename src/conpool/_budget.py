"""``conpool.RedisBudget``: a per-endpoint connection limit shared by a fleet.

This module holds the public face (validation, stats) and imports nothing of
redis-py; the Redis side (:mod:`conpool._budget_redis`) is imported when a
pool with a budget starts, and the decisions live in
:mod:`conpool._budget_core`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ._budget_core import POLICIES, Counters

if TYPE_CHECKING:
    from ._budget_redis import Emit, GiveBack, Membership, Participant
    from ._budget_sync import SyncParticipant

__all__ = ["BudgetStats", "RedisBudget"]

_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class BudgetStats:
    """A frozen snapshot of a budget's counts (one participant's, from
    ``pool.stats().budget``, or every participant's of a :class:`RedisBudget`
    summed, from :meth:`RedisBudget.stats`).

    :ivar granted: leases Redis granted (one per dial).
    :ivar waited: dials that had to wait for the fleet (at its limit).
    :ivar denied: dials refused because Redis was unavailable (fail-closed).
    :ivar timeouts: dials that waited ``acquire_timeout`` in vain.
    :ivar unaccounted: dials made while Redis was unavailable (fail-open);
        Redis is told of their connections when it is back.
    :ivar renewed: lease renewals (one per endpoint and renewal interval).
    :ivar lost: times Redis had forgotten leases this pool held (expired
        while it stalled, or Redis restarted); they were registered again.
    :ivar redis_errors: Redis calls that failed or timed out.
    :ivar given_back: connections closed so that participants below their fair
        share could have them.
    :ivar held: leases held now (connections open or opening).
    :ivar waiting: dials waiting for budget now.
    :ivar available: False while Redis is considered unavailable.
    :ivar participants: pools counted (1 for a pool's own stats).
    """

    granted: int = 0
    waited: int = 0
    denied: int = 0
    timeouts: int = 0
    unaccounted: int = 0
    renewed: int = 0
    lost: int = 0
    redis_errors: int = 0
    given_back: int = 0
    held: int = 0
    waiting: int = 0
    available: bool = True
    participants: int = 0


BudgetStats.__module__ = "conpool"


def _stats_of(counters: Counters, held: int, waiting: int, available: bool) -> BudgetStats:
    return BudgetStats(
        granted=counters.granted,
        waited=counters.waited,
        denied=counters.denied,
        timeouts=counters.timeouts,
        unaccounted=counters.unaccounted,
        renewed=counters.renewed,
        lost=counters.lost,
        redis_errors=counters.redis_errors,
        given_back=counters.given_back,
        held=held,
        waiting=waiting,
        available=available,
        participants=1,
    )


def participant_stats(p: Membership) -> BudgetStats:
    """One participant's :class:`BudgetStats`."""
    with p.mutex:  # (a threaded participant's book changes under its lock)
        keys = list(p.book.keys.values())
        return _stats_of(
            p.book.counters,
            sum(kb.held for kb in keys),
            sum(kb.waiting for kb in keys),
            p.book.available,
        )


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs.

    Works on the text of the netloc, not on parsed host and port, so that
    it holds for the URLs it reports as wrong too (a port out of range)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RedisBudget:
    """A limit on connections per endpoint shared by every pool (in any
    process, on any host) that uses the same Redis and namespace.

    Pass it to :class:`~conpool.Pool` (``Pool(config, budget=budget)``) or
    to :class:`~conpool.SyncPool` (``SyncPool(config, budget=budget)``): the
    same object serves both, and pools of both kinds share its limit; each
    pool that uses it is one participant.  Needs the ``redis`` extra
    (``pip install 'conpool[redis]'``).

    :param url: where Redis is: ``redis://host:port/db``, ``rediss://...``
        (TLS) or ``unix:///path``, as redis-py reads it.
    :param limit: connections (opening, in use or idle) per endpoint
        (``host:port``), summed over every participant; at least 1.
    :param namespace: prefix of the budget's Redis keys; fleets with
        different namespaces do not share a limit.  Non-empty, no spaces or
        braces.
    :param lease_ttl: seconds after which the leases of a participant that
        stopped renewing them (a killed process) return to the fleet; they are
        renewed every ``lease_ttl / 3``.  Greater than 0 and finite.
    :param on_unavailable: when Redis cannot be reached or is slower than
        ``timeout``: ``"fail-open"`` dials within the pool's own limits only
        (and logs), ``"fail-closed"`` fails the dial with
        :class:`~conpool.ConnectError` naming the budget.
    :param timeout: seconds a Redis call may take before Redis counts as
        unavailable; ``None`` for ``min(1.0, lease_ttl / 4)``.  Greater than 0
        and at most ``lease_ttl / 2``.
    :raises ImportError: redis-py is not installed.
    :raises TypeError: an argument of the wrong type.
    :raises ValueError: an argument out of range, or a URL redis-py cannot use.
    """

    def __init__(
        self,
        url: str,
        limit: int,
        *,
        namespace: str = "conpool",
        lease_ttl: float = 10.0,
        on_unavailable: str = "fail-open",
        timeout: float | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__} {url!r}")
        scheme = urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"url must start with redis://, rediss:// or unix://, got {_redact(url)!r}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, got {type(limit).__name__} {limit!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
        if not namespace or any(ch.isspace() or ch in "{}" for ch in namespace):
            raise ValueError(
                f"namespace must be non-empty, without spaces or braces, got {namespace!r}"
            )
        ttl = _seconds("lease_ttl", lease_ttl)
        if not isinstance(on_unavailable, str):
            raise TypeError(f"on_unavailable must be a str, got {type(on_unavailable).__name__}")
        if on_unavailable not in POLICIES:
            raise ValueError(
                f"on_unavailable must be 'fail-open' or 'fail-closed', got {on_unavailable!r}"
            )
        if timeout is None:
            call_timeout = min(1.0, ttl / 4)
        else:
            call_timeout = _seconds("timeout", timeout)
            if call_timeout > ttl / 2:
                raise ValueError(
                    f"timeout must be at most lease_ttl / 2 ({ttl / 2:g} s), got {timeout!r}: "
                    "a renewal that slow would let the leases expire"
                )
        if importlib.util.find_spec("redis") is None:
            raise ImportError("conpool.RedisBudget needs redis-py: pip install 'conpool[redis]'")
        try:
            import redis

            # What the participant's clients will read the URL with (it opens nothing).
            redis.ConnectionPool.from_url(url)
        except ValueError as exc:
            raise ValueError(f"url {_redact(url)!r} is not usable: {exc}") from None
        self.url = url
        self.limit = limit
        self.namespace = namespace
        self.lease_ttl = ttl
        self.on_unavailable = on_unavailable
        self.timeout = call_timeout
        self._participants: list[Membership] = []
        self._retired = Counters()

    @property
    def label(self) -> str:
        """How messages name this budget: its URL (no password) and namespace."""
        return f"redis budget {_redact(self.url)} namespace {self.namespace!r}"

    def _join(self, *, give_back: GiveBack, emit: Emit, library: str) -> Participant:
        """A new participant, for a :class:`~conpool.Pool` that starts (on
        ``library``)."""
        from ._budget_redis import Participant

        participant = Participant(**self._settings(give_back, emit), library=library)
        self._participants.append(participant)
        return participant

    def _join_sync(self, *, give_back: GiveBack, emit: Emit) -> SyncParticipant:
        """A new participant, for a :class:`~conpool.SyncPool` (its threads
        not started yet)."""
        from ._budget_sync import SyncParticipant

        participant = SyncParticipant(**self._settings(give_back, emit))
        self._participants.append(participant)
        return participant

    def _settings(self, give_back: GiveBack, emit: Emit) -> dict[str, Any]:
        return {
            "url": self.url,
            "label": self.label,
            "namespace": self.namespace,
            "limit": self.limit,
            "lease_ttl": self.lease_ttl,
            "timeout": self.timeout,
            "policy": self.on_unavailable,
            "give_back": give_back,
            "emit": emit,
        }

    def _leave(self, participant: Membership) -> None:
        """A pool closed: keep its counts in the totals."""
        if participant in self._participants:
            self._participants.remove(participant)
            mine, total = participant.book.counters, self._retired
            for name in Counters.__slots__:
                setattr(total, name, getattr(total, name) + getattr(mine, name))

    def _forget(self, participant: Membership) -> None:
        """A participant inherited across a fork: not this process's (its
        counts stay the parent's)."""
        if participant in self._participants:
            self._participants.remove(participant)

    def stats(self) -> BudgetStats:
        """Every participant's counts summed (those of closed pools included;
        ``held``, ``waiting`` and ``available`` are of the open ones)."""
        total = dataclasses.replace(self._retired)
        held = waiting = 0
        available = True
        for p in list(self._participants):
            with p.mutex:
                for name in Counters.__slots__:
                    setattr(total, name, getattr(total, name) + getattr(p.book.counters, name))
                for kb in p.book.keys.values():
                    held += kb.held
                    waiting += kb.waiting
                available = available and p.book.available
        stats = _stats_of(total, held, waiting, available)
        return dataclasses.replace(stats, participants=len(self._participants))

    def __repr__(self) -> str:
        return (
            f"<conpool.RedisBudget {_redact(self.url)} namespace={self.namespace!r} "
            f"limit={self.limit} lease_ttl={self.lease_ttl:g} "
            f"on_unavailable={self.on_unavailable!r} participants={len(self._participants)}>"
        )


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return number


RedisBudget.__module__ = "conpool"
