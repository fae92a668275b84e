"""The fleet budget's decisions: no I/O, no clock, no event loop.

A *participant* (one :class:`~conpool.Pool` with a budget) holds *leases*,
one per connection it has open or is opening, counted per budget key (an
endpoint's ``host:port``: the server's limit is per server, whatever the TLS
settings).  Redis keeps every participant's count; this module keeps ours
and decides:

* how many leases we really hold (``held``: the truth Redis is told);
* the fair share of a key, and whether a grant is fair (:func:`may_grant`,
  the rule the acquire script applies inside Redis, mirrored here so that it
  is written down and tested in one place);
* how many connections to give back while others starve
  (:func:`give_back_count`);
* what a Redis failure means (``fail-open``: dial within the local limits;
  ``fail-closed``: refuse), and when to try Redis again;
* when a lease was lost (Redis forgot us while we held connections).

Every message to Redis *sets* our count to the truth instead of adding or
subtracting, so a message lost to a timeout, a cancellation or an outage is
corrected by the next one, and the fleet's accounting converges back to the
truth by itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = [
    "FAIL_CLOSED",
    "FAIL_OPEN",
    "POLICIES",
    "BudgetBook",
    "Counters",
    "GaveUp",
    "KeyBook",
    "Lease",
    "Snapshot",
    "fair_floor",
    "give_back_count",
    "may_grant",
    "parse_reply",
]

FAIL_OPEN = "fail-open"
FAIL_CLOSED = "fail-closed"
#: The values accepted by ``RedisBudget(on_unavailable=...)``.
POLICIES: tuple[str, ...] = (FAIL_OPEN, FAIL_CLOSED)


def fair_floor(limit: int, participants: int) -> int:
    """Each participant's guaranteed share of ``limit``: at least one.

    The floor, not the ceiling: with 20 connections among 8 participants
    each is owed 2, and the 4 left over go to whoever asks first while nobody
    is below 2.  (Owing the ceiling, 3, would leave a participant holding 2
    waiting forever behind six that hold 3.)
    """
    return max(1, limit // max(1, participants))


def _participants(counts: Mapping[str, int], waiting: Iterable[str], me: str) -> int:
    members = {p for p, c in counts.items() if c > 0}
    members.update(waiting)
    members.add(me)
    return len(members)


def may_grant(
    limit: int, counts: Mapping[str, int], waiting: Iterable[str], me: str, mine: int
) -> bool:
    """May ``me``, holding ``mine`` leases, get one more?

    Only while the fleet is below ``limit``, and, when ``me`` already has its
    fair share, only while no other participant waits below its own (so a
    share freed for a starving participant is not taken back by the one that
    gave it).  ``counts`` is every participant's count as Redis has it;
    ours is ``mine``, whatever Redis remembered.
    """
    waiting = list(waiting)
    total = sum(c for p, c in counts.items() if p != me) + mine
    if total + 1 > limit:
        return False
    floor = fair_floor(limit, _participants(counts, waiting, me))
    if mine < floor:
        return True
    return not any(w != me and counts.get(w, 0) < floor for w in waiting)


def give_back_count(
    limit: int,
    counts: Mapping[str, int],
    waiting: Iterable[str],
    me: str,
    mine: int,
    retiring: int = 0,
) -> int:
    """How many connections ``me`` should give back now.

    None unless another participant waits below its fair share and the free
    room does not cover it.  Then each participant above its share gives back
    its part of the shortfall (shared among those above, rounded up), never
    going below its share; ``retiring`` are connections already on their way
    out.  Several holders may round up at once: a participant can get a
    connection more than it needs, which it gives back later in the same way.
    """
    waiting = list(waiting)
    counts = {**counts, me: mine}
    floor = fair_floor(limit, _participants(counts, waiting, me))
    starved = [w for w in set(waiting) if w != me and counts.get(w, 0) < floor]
    if not starved:
        return 0
    excess = mine - retiring - floor
    if excess <= 0:
        return 0
    free = max(0, limit - sum(counts.values()))
    deficit = sum(floor - counts.get(w, 0) for w in starved) - free - retiring
    if deficit <= 0:
        return 0
    above = sum(1 for p, c in counts.items() if c > floor and p not in starved)
    return min(excess, math.ceil(deficit / max(1, above)))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the sync script saw in Redis, after its own update.

    :ivar granted: the acquire asked for was granted.
    :ivar before: our count as Redis remembered it before the update.
    :ivar counts: every participant's count (ours as we set it).
    :ivar waiting: participants waiting for a lease of the key.
    """

    granted: bool
    before: int
    counts: Mapping[str, int]
    waiting: frozenset[str]


def parse_reply(reply: object) -> Snapshot:
    """Decode the sync script's flat reply:
    ``[granted, before, n, p1, c1, ..., pn, cn, w1, w2, ...]``."""
    if not isinstance(reply, list | tuple) or len(reply) < 3:
        raise ValueError(f"unexpected reply from the budget script: {reply!r}")
    items = [x.decode() if isinstance(x, bytes) else x for x in reply]
    granted, before, n = int(items[0]), int(items[1]), int(items[2])
    pairs = items[3 : 3 + 2 * n]
    counts = {str(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    waiting = frozenset(str(w) for w in items[3 + 2 * n :])
    return Snapshot(bool(granted), before, counts, waiting)


class GaveUp(Exception):
    """A wait for budget ended because the caller's ``give_up()`` said so
    (the pool has an idle connection for it by now)."""


class Lease:
    """One connection's claim on a key's budget: what ``acquire`` returns
    and ``release`` takes back (once)."""

    __slots__ = ("accounted", "key", "released")

    def __init__(self, key: str, accounted: bool) -> None:
        self.key = key
        # False for a lease granted while Redis was unavailable (fail-open):
        # Redis learns of it when it is back.
        self.accounted = accounted
        self.released = False

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        how = "" if self.accounted else ", unaccounted"
        return f"<budget lease {self.key} {state}{how}>"


class KeyBook:
    """Our side of one key: leases held, tasks waiting, what Redis knows."""

    __slots__ = (
        "endpoints",
        "held",
        "key",
        "registered",
        "reported",
        "retiring",
        "stale",
        "waiting",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.held = 0  # leases we hold: the truth
        # Our count as Redis last confirmed it, and whether it may have
        # changed since without our knowing (a call that failed or was
        # cancelled after it was sent: a resync settles it).
        self.reported = 0
        self.stale = False
        # Whether Redis lists us among the key's waiters (as far as we know).
        self.registered = False
        self.waiting = 0  # local tasks waiting for a lease of this key
        self.retiring = 0  # connections asked to close for the fleet, not closed yet
        # The pool's endpoint objects with this key (the give-back closes
        # their connections); the book never looks inside them.
        self.endpoints: list[Endpoint] = []

    @property
    def dirty(self) -> bool:
        """Redis may not have the truth: the next flush tells it."""
        return self.stale or self.reported != self.held or self.registered != (self.waiting > 0)

    def __repr__(self) -> str:
        return (
            f"<KeyBook {self.key} held={self.held} reported={self.reported} "
            f"waiting={self.waiting} retiring={self.retiring}>"
        )


@dataclass(slots=True)
class Counters:
    """The budget's running counts (see :class:`conpool.BudgetStats`)."""

    granted: int = 0
    waited: int = 0
    denied: int = 0
    timeouts: int = 0
    unaccounted: int = 0
    renewed: int = 0
    lost: int = 0
    redis_errors: int = 0
    given_back: int = 0


class BudgetBook:
    """Every decision of one participant, fed with the time by the shell.

    :param limit: connections per key across the fleet.
    :param policy: :data:`FAIL_OPEN` or :data:`FAIL_CLOSED`.
    :param retry_after: seconds to leave Redis alone after a failure before
        the next attempt (meanwhile dials follow the policy at once instead
        of each paying the timeout).
    """

    def __init__(self, me: str, limit: int, policy: str, retry_after: float) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.me = me
        self.limit = limit
        self.policy = policy
        self.retry_after = retry_after
        self.keys: dict[str, KeyBook] = {}
        self.counters = Counters()
        self.available = True
        self.retry_at = -math.inf
        self.last_error = ""

    def book(self, key: str) -> KeyBook:
        kb = self.keys.get(key)
        if kb is None:
            kb = self.keys[key] = KeyBook(key)
        return kb

    # -- Redis health ----------------------------------------------------------

    def should_try(self, now: float) -> bool:
        """Ask Redis now?  Not while a recent failure is fresh."""
        return self.available or now >= self.retry_at

    def failed(self, now: float, error: str) -> bool:
        """A Redis call failed.  Returns True when this starts an outage
        (the shell logs it once, not at every dial)."""
        self.counters.redis_errors += 1
        self.last_error = error
        self.retry_at = now + self.retry_after
        started = self.available
        self.available = False
        return started

    def succeeded(self) -> bool:
        """A Redis call worked.  Returns True when this ends an outage."""
        ended = not self.available
        self.available = True
        return ended

    # -- acquiring -------------------------------------------------------------

    def acquire_args(self, kb: KeyBook) -> tuple[int, bool]:
        """``(mine, still_waiting)`` for an acquire sent now: our truth, and
        whether other local tasks wait for the key besides this one."""
        return kb.held, kb.waiting > 1

    def answered(self, kb: KeyBook, snap: Snapshot, sent: int, acquire: bool) -> Lease | None:
        """Record a sync's reply (``sent``: the count it carried).

        Returns the lease for a granted acquire, else None.
        """
        if kb.reported > 0 and snap.before == 0:
            # Redis forgot us while we held leases: expired (we were stalled
            # past lease_ttl) or lost by a restart.  This sync re-registered us.
            self.counters.lost += 1
        lease = None
        if acquire and snap.granted:
            kb.held += 1
            self.counters.granted += 1
            lease = Lease(kb.key, True)
            sent += 1
        kb.reported = sent
        kb.stale = False
        kb.registered = self.me in snap.waiting
        return lease

    def unsure(self, kb: KeyBook) -> None:
        """A call about ``kb`` failed or was cancelled once sent: Redis may or
        may not have applied it."""
        kb.stale = True

    def grant_unaccounted(self, kb: KeyBook) -> Lease:
        """Fail-open: a lease Redis does not know of yet."""
        kb.held += 1
        self.counters.unaccounted += 1
        return Lease(kb.key, False)

    def refuse(self) -> None:
        """Fail-closed: a dial refused because Redis is unavailable."""
        self.counters.denied += 1

    # -- releasing -------------------------------------------------------------

    def release(self, lease: Lease) -> KeyBook | None:
        """A connection closed (or its dial failed).  Returns the key's book,
        now to be flushed, or None for a lease already released."""
        if lease.released:
            return None
        lease.released = True
        kb = self.keys[lease.key]
        kb.held -= 1
        if kb.retiring:
            kb.retiring -= 1
        return kb

    def to_flush(self) -> list[KeyBook]:
        """Keys whose count Redis may not have right."""
        return [kb for kb in self.keys.values() if kb.dirty]

    def to_renew(self) -> list[KeyBook]:
        """Keys whose lease (or waiting registration) needs renewing."""
        return [kb for kb in self.keys.values() if kb.held or kb.waiting or kb.dirty]

    # -- fairness ----------------------------------------------------------------

    def give_back(self, kb: KeyBook, snap: Snapshot) -> int:
        """How many of the key's connections to give back after a sync."""
        return give_back_count(self.limit, snap.counts, snap.waiting, self.me, kb.held, kb.retiring)

    def giving_back(self, kb: KeyBook, asked: int, done: int) -> None:
        """The pool closed or marked ``done`` of the ``asked`` connections;
        those it only marked close on release (each release counts down).
        ``done`` includes those closed at once, whose releases already
        counted down ``retiring``; the shell raised it by ``asked`` first."""
        kb.retiring = max(0, kb.retiring - (asked - done))
        self.counters.given_back += done
