"""The pool's state machine: every decision, no I/O, no clock, no event loop.

The async shell (:mod:`conpool._pool`) feeds this machine events -- a task
wants a connection, a dial succeeded or failed, a connection came back, time
passed -- together with the current time, and reads back what to do:

* a return value for the caller that made the call (a connection record to
  hand out, :data:`DIAL` to open a new one, :data:`WAIT` to park);
* :attr:`PoolState.to_close`: records the shell must close, with the reason;
* :attr:`PoolState.to_wake`: waiters the machine has served (each waiter's
  ``grant`` says with what: a record, or :data:`DIAL`).

Nothing in a transition awaits, so each one is atomic on the event loop and no
lock is needed.  The shell drains ``to_close`` and ``to_wake`` after every call.

Beside the connections, the machine decides which names to look up again and
spreads each new answer to every endpoint of the name (:meth:`PoolState.answer`,
:meth:`PoolState.refresh_due`), bounds the endpoints it remembers
(:data:`MAX_ENDPOINTS`) and says which close reasons are expiry
(:func:`is_expiry`).  How one dial proceeds (retries, backoff, Happy Eyeballs)
is decided in :mod:`conpool._dialplan`, as pure as this.

Accounting.  Every connection the pool is responsible for is in exactly one
of three states, counted per address, per endpoint and in total:
*pending* (a slot reserved for a dial in progress; per address only once the
dial has picked its address), *active* (handed out) and *idle*.  The limits
bound ``pending + active + idle``.

The warm floor (``Config.min_idle``).  Every endpoint the machine knows keeps
at least ``min_idle`` connections open, so that while nobody uses them that
many sit idle and ready (asyncpg's ``min_size``; HikariCP's ``minimumIdle``
for a pool at rest).  Connections in use count towards it: taking an idle
one to use it dials nothing, so a busy pool does not grow beyond its load.
While an endpoint has no more than ``min_idle`` connections open, its idle
ones are not closed for idle time; whenever it has fewer (a connection
retired for its lifetime, its uses, a failed health check or the peer's
close) the machine says which *warm dials* to start and to which address
(:meth:`PoolState.refills`, spread by the balance policy).  A warm dial
holds a slot like any other; when it succeeds the connection goes idle (or
to a waiter), when it fails the endpoint backs off exponentially before the
next one.  Failures of warm dials are never anybody's acquire error.
"""

from __future__ import annotations

import heapq
import math
import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Generic

from ._balance import POLICIES
from ._config import Config
from ._errors import PoolClosed
from ._records import (
    ACTIVE,
    CLOSED,
    DIAL,
    IDLE,
    WAIT,
    AddressState,
    Answer,
    C,
    ConnRecord,
    EndpointState,
    K,
    Pooled,
    RecordState,
    Waiter,
)

__all__ = [
    "ACTIVE",
    "CLOSED",
    "DIAL",
    "EXPIRY_REASONS",
    "IDLE",
    "MAX_ENDPOINTS",
    "WAIT",
    "AddressState",
    "Answer",
    "ConnRecord",
    "EndpointState",
    "PoolState",
    "Pooled",
    "RecordState",
    "Waiter",
    "is_expiry",
]


#: How often, at most, the sweep looks at the idle connections of a pool with
#: a warm floor (and at the floor itself): a peer's close of an idle
#: connection is then noticed, and the connection replaced, within this.
FLOOR_CHECK_INTERVAL: Final = 0.25

#: The smallest base delay of the warm floor's backoff: background dials are
#: never made in a tight loop, even with ``retry_backoff=0``.
REFILL_BACKOFF_MIN: Final = 0.05

#: Endpoints remembered at most: beyond, those with nothing open are
#: forgotten, oldest first, so a pool that talks to ever new hosts stays bounded.
MAX_ENDPOINTS: Final = 10_000

#: Close reasons that mean "expired" (traced as ``conn.expire`` too), as
#: opposed to failed (error, leaked), made room for another (evicted) or
#: closed on purpose (closed, pool-closed).
EXPIRY_REASONS: Final = frozenset({"idle", "lifetime", "uses", "health", "stale", "drained"})

# The use count of a record that closes on release for a fleet budget (shed).
_SHED: Final = sys.maxsize


def is_expiry(reason: str) -> bool:
    """Whether a connection closed for ``reason`` expired (rather than failed
    or was closed on purpose)."""
    return reason in EXPIRY_REASONS


class PoolState(Generic[K, C]):
    """The synchronous, I/O-free pool.

    :param config: limits and lifetimes.

    Before handing out an idle connection, the machine asks it
    ``conn._usable(idle_seconds)`` (see :class:`Pooled`): the only thing it
    ever asks of a connection, called directly because the reuse path of
    every request runs it.
    """

    # Slots: on CPython 3.11 an instance dict of more than 30 attributes
    # loses its inline values, and no attribute read or method call on the
    # machine is specialized then (see conpool._shell.Shell); the
    # ``__dict__`` keeps an attribute added later working.
    __slots__ = (
        "__dict__",
        "ages",
        "by_name",
        "closed",
        "config",
        "endpoints",
        "jitter",
        "levels",
        "live",
        "lru",
        "max_idle",
        "max_lifetime",
        "max_total",
        "max_uses",
        "max_waiters",
        "min_idle",
        "n_waiters",
        "next_check",
        "next_id",
        "on_event",
        "per_endpoint",
        "policy",
        "refill_due",
        "refill_wake",
        "refreshing",
        "rng",
        "sweeping",
        "to_close",
        "to_wake",
        "total",
        "uses_cap",
        "waiters",
    )

    def __init__(self, config: Config) -> None:
        self.config = config
        self.per_endpoint = config.max_connections_per_endpoint
        self.max_total = config.max_connections
        self.max_idle = config.max_idle_time
        self.max_lifetime = config.max_connection_lifetime
        self.max_uses = config.max_connection_uses
        # The same as a number to compare with, so that release compares once.
        self.uses_cap = sys.maxsize if self.max_uses is None else self.max_uses
        self.max_waiters = config.max_waiters
        self.policy = POLICIES[config.balance]
        # least-connections balances requests, not only connections: see
        # _level_up.
        self.levels = config.balance == "least-connections"
        self.rng = random.Random(config.balance_seed)
        self.endpoints: dict[K, EndpointState[K, C]] = {}
        # The endpoints of each name (another port, TLS or not: one answer).
        self.by_name: dict[str, dict[EndpointState[K, C], None]] = {}
        # Names being looked up again by the sweep (see refresh_due).
        self.refreshing: set[str] = set()
        self.total = 0  # pending + active + idle, all endpoints
        self.closed = False
        self.next_id = 0
        # How many tasks wait, all endpoints.
        self.n_waiters = 0
        # Every waiter, oldest first, for first-come-first-served across
        # endpoints when the total limit is what blocks them; kept only when
        # there is a total limit (otherwise each endpoint's queue suffices).
        self.waiters: OrderedDict[Waiter[K, C], None] = OrderedDict()
        # Every idle record, least recently used first: the expiry sweep and
        # the eviction for max_connections both start from the front.
        self.lru: OrderedDict[ConnRecord[K, C], None] = OrderedDict()
        # Every open record, a heap ordered by the end of its lifetime (with
        # lifetime_jitter, creation order is not that order), for lifetime
        # expiry; closed records are dropped lazily (see _compact_ages).
        self.ages: list[ConnRecord[K, C]] = []
        self.jitter = config.lifetime_jitter
        self.live = 0
        # True while a sweep closes idle records: it compacts ``ages`` once
        # when done, instead of at every halving on the way.
        self.sweeping = False
        self.to_close: list[tuple[ConnRecord[K, C], str]] = []
        self.to_wake: list[Waiter[K, C]] = []
        # The warm floor (see the module's docstring).  refill_due: something
        # may have left an endpoint short, so the shell should ask refills();
        # next_check: when the sweep next looks at idle connections and the
        # floor; refill_wake: the earliest end of a refill backoff.
        self.min_idle = config.min_idle
        self.refill_due = False
        self.next_check = -math.inf
        self.refill_wake = math.inf
        # Told of what no return value carries (an address ejected or
        # re-admitted): ``on_event(kind, ep, ip, detail)``; rare, so no list.
        self.on_event: Callable[[str, EndpointState[K, C], str, str], None] | None = None

    # -- endpoints and addresses ---------------------------------------------

    def endpoint(self, key: K, name: str | None = None) -> EndpointState[K, C]:
        """The state of ``key``, made on first use.

        :param name: the host name whose answer lists the endpoint's
            addresses; None for an IP literal (then the key's address is
            given with :meth:`set_addresses`).
        """
        ep = self.endpoints.get(key)
        if ep is None:
            ep = self.endpoints[key] = EndpointState(key, name)
            ep.owner = self
            if name is not None:
                self.by_name.setdefault(name, {})[ep] = None
        return ep

    def forget_unused(self, keep: int = MAX_ENDPOINTS) -> list[EndpointState[K, C]]:
        """Bound the endpoints remembered: while more than ``keep`` are known,
        forget those with nothing open, opening or waiting, oldest first.
        Returns what was forgotten (its counts leave ``stats()``); a
        forgotten state has no owner any more."""
        excess = len(self.endpoints) - keep
        forgotten: list[EndpointState[K, C]] = []
        if excess <= 0:
            return forgotten
        for key, ep in list(self.endpoints.items()):
            if ep.total == 0 and not ep.waiters:
                del self.endpoints[key]
                ep.owner = None
                if ep.name is not None:
                    same = self.by_name[ep.name]
                    del same[ep]
                    if not same:
                        del self.by_name[ep.name]
                forgotten.append(ep)
                if len(forgotten) >= excess:
                    break
        return forgotten

    # -- names -------------------------------------------------------------------

    def answer(self, name: str, ips: Sequence[str]) -> None:
        """The latest answer for ``name``: every endpoint of the name
        (another port, TLS or not) follows it at once, so that none keeps
        dialling or reusing an address that left (see :meth:`set_addresses`)."""
        fresh = tuple(dict.fromkeys(ips))
        for ep in list(self.by_name.get(name, ())):
            if tuple(a.ip for a in ep.listed) != fresh:
                self.set_addresses(ep, fresh)

    def refresh_due(
        self, cached: Callable[[str], Sequence[str] | None]
    ) -> list[EndpointState[K, C]]:
        """The sweep's decision for names: which to look up again.

        A name is refreshed while some endpoint of it holds connections (or is
        dialling), so that addresses that left its answer drain even when
        nobody dials; with a warm floor, also while it holds none but has
        resolved before (the floor's dials need its current addresses; one
        that never resolved is left to acquires).  ``cached(name)`` is the
        cache's fresh answer, or None when it expired: a fresh answer (another
        endpoint of the name fetched it) is spread at once (:meth:`answer`);
        for an expired one, the first endpoint of the name that holds
        connections is returned (the shell looks the name up for it), once
        until :meth:`refresh_done`.
        """
        due: list[EndpointState[K, C]] = []
        for name, eps in list(self.by_name.items()):
            holding = next((ep for ep in eps if ep.total or (self.min_idle and ep.listed)), None)
            if holding is None:
                continue
            ips = cached(name)
            if ips is not None:
                self.answer(name, ips)
            elif name not in self.refreshing:
                self.refreshing.add(name)
                due.append(holding)
        return due

    def refresh_done(self, name: str) -> None:
        """A lookup :meth:`refresh_due` asked for is over (answered or not)."""
        self.refreshing.discard(name)

    def set_addresses(self, ep: EndpointState[K, C], ips: Sequence[str]) -> None:
        """Record the name's latest answer.

        New addresses receive connections at once.  Addresses that left are
        drained: their idle connections close now, active ones close when
        released, and none is reused or dialled again.
        """
        listed: list[AddressState[K, C]] = []
        seen: set[str] = set()
        for ip in ips:
            if ip in seen:
                continue
            seen.add(ip)
            addr = ep.addresses.get(ip)
            if addr is None:
                addr = ep.addresses[ip] = AddressState(ip)
            addr.listed = True
            listed.append(addr)
        ep.listed = listed
        self._addresses_changed(ep)
        for addr in list(ep.addresses.values()):
            if addr.ip not in seen and addr.listed:
                addr.listed = False
                for rec in list(addr.idle):
                    self._close_idle(rec, "drained")
                self._forget_if_unused(ep, addr)

    def _forget_if_unused(self, ep: EndpointState[K, C], addr: AddressState[K, C]) -> None:
        if not addr.listed and addr.connections == 0:
            ep.addresses.pop(addr.ip, None)
            self._addresses_changed(ep)

    @staticmethod
    def _addresses_changed(ep: EndpointState[K, C]) -> None:
        addresses = ep.addresses
        ep.single = next(iter(addresses.values())) if len(addresses) == 1 else None
        ep.idle_addrs = [] if ep.single is not None else [a for a in addresses.values() if a.idle]

    # -- acquiring -------------------------------------------------------------

    def acquire(self, ep: EndpointState[K, C], now: float) -> ConnRecord[K, C] | Answer:
        """A task asks for a connection to ``ep``.

        :returns: an idle :class:`ConnRecord` now active, :data:`DIAL` (a slot
            is reserved: open a connection, then call :meth:`connected` or
            :meth:`dial_failed`), or :data:`WAIT` (call :meth:`enqueue`).
        :raises PoolClosed: the pool is closed.
        """
        if self.closed:
            raise PoolClosed("the pool is closed")
        # The reuse path of every request: attribute reads and dict
        # operations only, no helper calls in the common case.
        # (Idle records of an address that left the answer were closed when
        # it left, so "listed" needs no check here.)
        while ep.idle:
            single = ep.single
            if single is not None:
                rec, _ = single.idle.popitem()  # the most recently used
            else:
                addr = self._idle_address(ep)
                if self.levels and self._level_up(ep, addr, now):
                    break  # (dial: the room is there, see _level_up)
                rec, _ = addr.idle.popitem()
                if not addr.idle:
                    ep.idle_addrs.pop()  # (_idle_address left it last)
            del self.lru[rec]
            ep.idle -= 1
            conn = rec.conn  # (never None while idle: the pool holds it)
            if (
                (now < rec.expires or self._kept_by_floor(rec, now))
                and conn is not None
                and conn._usable(now - rec.last_used)
            ):
                rec.state = ACTIVE
                rec.uses += 1
                ep.reused += 1
                return rec
            rec.state = CLOSED
            self._closed(rec, self._expiry(rec, now) or "stale")
        if ep.waiters:
            # Others were here first; the next free connection is theirs.
            return WAIT
        if ep.total < self.per_endpoint:
            if self.max_total is None or self.total < self.max_total:
                ep.pending += 1
                self.total += 1
                return DIAL
            if self._evict_lru():
                ep.pending += 1
                self.total += 1
                return DIAL
        return WAIT

    def acquire_fresh(self, ep: EndpointState[K, C]) -> Answer:
        """A task asks for a new connection to ``ep``, never an idle one.

        :returns: :data:`DIAL` (a slot is reserved) or :data:`WAIT`.  When
            the endpoint's limit is reached and some of its connections are
            idle, the least recently used of them is closed to make room.
        :raises PoolClosed: the pool is closed.
        """
        if self.closed:
            raise PoolClosed("the pool is closed")
        if ep.waiters:
            return WAIT
        if ep.total >= self.per_endpoint and ep.idle:
            for rec in self.lru:
                if rec.ep is ep:
                    self._close_idle(rec, "fresh")
                    break
        if ep.total < self.per_endpoint and (
            self.max_total is None or self.total < self.max_total or self._evict_lru()
        ):
            ep.pending += 1
            self.total += 1
            return DIAL
        return WAIT

    def _idle_address(self, ep: EndpointState[K, C]) -> AddressState[K, C]:
        """The address to reuse an idle connection from: the least loaded;
        equal ones take turns.  The address chosen goes to the back of
        ``idle_addrs`` (the caller may pop it from there).

        Reusing from the address with the fewest connections in use spreads
        requests as evenly as the dial policy spreads connections.  The
        turns matter as much as the loads: when every address is equally
        busy (a client with fewer requests in flight than connections, the
        common case), a fixed tie-break would send every request to the
        same few addresses while the others' connections sit idle.  Here
        the tie goes to the front of ``idle_addrs``, the address reused
        from least recently (or idle again most long ago), and every
        choice moves to the back, so equal addresses serve in rotation.
        Moving only an address whose last idle connection was taken is not
        enough: with several idle per address none runs out, the order
        never changes, and the first address wins every tie (under 32
        threads over four addresses it took ~29 % of the requests, the
        last ~19 %).
        """
        candidates = ep.idle_addrs
        n = len(candidates)
        if n > 4:
            # Many addresses: the less busy of two, keeping this cheap (the
            # power of two choices, see _balance.power_of_two): the one
            # reused from least recently and one halfway down the list.
            a = candidates[0]
            b = candidates[n >> 1]
            best = a if a.open - len(a.idle) <= b.open - len(b.idle) else b
        else:
            best = candidates[0]
            best_busy = best.open - len(best.idle)
            for addr in candidates:
                busy = addr.open - len(addr.idle)
                if busy < best_busy:
                    best, best_busy = addr, busy
        if best is not candidates[-1]:
            candidates.remove(best)
            candidates.append(best)
        return best

    def _level_up(self, ep: EndpointState[K, C], addr: AddressState[K, C], now: float) -> bool:
        """Whether to dial a new connection rather than reuse ``addr``'s
        idle one: yes when ``addr`` already has requests in flight, another
        address (admitted, with no idle connection) has no more connections
        open and opening than ``addr`` has in use, and the limits have room
        without closing anything.  The dial's least-connections choice then
        goes to such an address (every address with idle connections holds
        more), and its connection counts level up with ``addr``'s.

        Why: under load, when nearly every connection is in use, each
        address serves requests in proportion to its connections, and the
        dial policy leaves them only within one of each other: six, five,
        five and five connections give the first address 27 % of the
        requests.  Levelling costs at most one connection per address more
        than the busiest holds; it never applies to an address with nothing
        in flight (a sequential client keeps reusing its one connection),
        nor beyond four addresses (where reuse compares only two), nor to
        the other policies (whose dials do not go to the lighter address).
        """
        busy = addr.open - len(addr.idle)
        if busy == 0 or ep.total >= self.per_endpoint:
            return False
        if self.max_total is not None and self.total >= self.max_total:
            return False
        listed = ep.listed
        if len(listed) > 4:
            return False
        lightest = busy + 1
        picked = 0
        for a in listed:
            picked += a.pending
            if not a.idle and now >= a.ejected_until:
                load = a.open + a.pending
                if load < lightest:
                    lightest = load
        if lightest > busy:
            return False
        # Dials whose address is not picked yet go to the lightest too.
        # (A Happy Eyeballs race holds one slot and two attempts: never
        # fewer than none.)
        return lightest + max(ep.pending - picked, 0) <= busy

    def _kept_by_floor(self, rec: ConnRecord[K, C], now: float) -> bool:
        """Whether an idle record past its idle time is one the warm floor
        keeps.  The sweep renews those, but on a starved event loop it runs
        late, and an acquire that comes first must not close (and redial)
        what the floor promises to keep: the sweep's own rule, applied here
        (only ever reached once ``rec.expires`` has passed)."""
        return rec.ep.open <= self.min_idle and now < rec.dies and rec.addr.listed

    def _expiry(self, rec: ConnRecord[K, C], now: float) -> str | None:
        if now >= rec.dies:
            return "lifetime"
        if now >= rec.expires:
            return "idle"
        if not rec.addr.listed:
            return "drained"
        return None

    def _evict_lru(self) -> bool:
        """Close the least recently used idle connection, of any endpoint,
        to make room under ``max_connections``.  Returns False if none is idle."""
        if not self.lru:
            return False
        rec = next(iter(self.lru))
        self._close_idle(rec, "evicted")
        return True

    def enqueue(self, ep: EndpointState[K, C], handle: Any, now: float) -> Waiter[K, C] | None:
        """Park a task that got :data:`WAIT`.  Returns None when ``max_waiters``
        are already waiting: the caller fails at once."""
        if self.max_waiters is not None and self.n_waiters >= self.max_waiters:
            return None
        w = Waiter(ep, handle, now)
        ep.waiters[w] = None
        self.n_waiters += 1
        if self.max_total is not None:
            self.waiters[w] = None
        return w

    def cancel(self, w: Waiter[K, C], now: float) -> None:
        """A waiter gave up (timeout or cancellation).

        If it was served in the meantime, what it was given goes to the next
        waiter (or back to idle) so no slot or connection is lost.
        """
        grant = w.grant
        if grant is None:
            if w in w.ep.waiters:  # idempotent: a timeout may have unqueued it
                self._unqueue(w)
                if w.budget:
                    # It stood before the endpoint's other waiters: the
                    # room it left may be theirs now.
                    self._serve_behind(w.ep)
        elif grant is DIAL:
            w.grant = None
            self.dial_abandoned(w.ep)
        else:
            assert isinstance(grant, ConnRecord)
            w.grant = None
            grant.uses -= 1
            w.ep.reused -= 1
            self.release(grant, now, reusable=True)

    def _unqueue(self, w: Waiter[K, C]) -> None:
        del w.ep.waiters[w]
        self.n_waiters -= 1
        if self.max_total is not None:
            del self.waiters[w]

    # -- dialling --------------------------------------------------------------

    def pick_address(
        self,
        ep: EndpointState[K, C],
        now: float,
        avoid: Iterable[str] = (),
        family: int | None = None,
    ) -> str | None:
        """Choose the address the next attempt of a dial goes to, and count
        it as pending there.  Returns None when the name has no address.

        Ejected addresses and those in ``avoid`` (already tried by this dial)
        are skipped while others remain; when every address is excluded the
        pool fails open and picks among all of them.  ``family`` (4 or 6)
        restricts the choice to one address family, for a Happy Eyeballs
        race; then None means the name has no address of that family.
        """
        listed = ep.listed
        if family is not None:
            listed = [a for a in listed if (":" in a.ip) == (family == 6)]
        if not listed:
            return None
        avoid = set(avoid)
        candidates: list[AddressState[K, C]] = []
        admitted: list[AddressState[K, C]] = []
        # One pass: re-admit addresses whose ejection is over, skip those
        # still ejected, and those this dial already tried.
        for a in listed:
            until = a.ejected_until
            if until != -math.inf:
                if now < until:
                    continue
                # Its ejection time is over: back in rotation, with a clean
                # slate (failures of attempts that were in flight when it was
                # ejected must not eject it again at its first failure).
                a.ejected_until = -math.inf
                a.consecutive_failures = 0
                self._event("address.readmit", ep, a.ip, "ejection time over")
            admitted.append(a)
            if a.ip not in avoid:
                candidates.append(a)
        if not candidates:
            candidates = admitted or list(listed)
        i = self.policy([a.open + a.pending for a in candidates], ep.turn, self.rng)
        ep.turn += 1
        addr = candidates[i]
        addr.pending += 1
        return addr.ip

    def attempt_failed(
        self, ep: EndpointState[K, C], ip: str, now: float, *, counts: bool = True
    ) -> None:
        """One attempt to ``ip`` failed (``counts``) or was abandoned (not)."""
        addr = ep.addresses[ip]
        addr.pending -= 1
        if counts:
            addr.failures += 1
            addr.consecutive_failures += 1
            if addr.consecutive_failures >= self.config.eject_after_failures:
                self._maybe_eject(ep, addr, now)
        self._forget_if_unused(ep, addr)

    def _maybe_eject(self, ep: EndpointState[K, C], addr: AddressState[K, C], now: float) -> None:
        # Envoy's outlier detection: eject for base_time * times-ejected,
        # capped, and never more than a share of the hosts; when the share
        # would be exceeded the address stays in (fail open).
        if addr.ejected(now):
            return
        listed = ep.listed
        allowed = math.floor(self.config.max_ejected_share * len(listed))
        if len(listed) > 1:
            allowed = max(allowed, 1)
        ejected = sum(1 for a in listed if a.ejected(now))
        if ejected >= allowed:
            return
        duration = min(self.config.eject_time * (2**addr.ejections), self.config.eject_time_max)
        addr.ejections += 1
        addr.ejected_until = now + duration
        addr.consecutive_failures = 0
        self._event(
            "address.eject",
            ep,
            addr.ip,
            f"{self.config.eject_after_failures} consecutive failures; out for {duration:g} s",
        )

    def _event(self, kind: str, ep: EndpointState[K, C], ip: str, detail: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, ep, ip, detail)

    def connected(self, ep: EndpointState[K, C], ip: str, conn: C, now: float) -> ConnRecord[K, C]:
        """The dial that reserved a slot on ``ep`` succeeded on ``ip``."""
        addr = ep.addresses[ip]
        addr.pending -= 1
        addr.created += 1
        addr.consecutive_failures = 0
        if addr.ejected_until != -math.inf:
            self._event("address.readmit", ep, ip, "connected")
        addr.ejections = 0
        addr.ejected_until = -math.inf
        addr.open += 1
        # The endpoint answers again: the floor's backoff starts over.
        ep.refill_streak = 0
        ep.refill_after = -math.inf
        ep.pending -= 1
        ep.open += 1
        ep.created += 1
        self.next_id += 1
        lifetime = self.max_lifetime
        if self.jitter:
            lifetime *= 1.0 - self.jitter * self.rng.random()
        rec = ConnRecord(self.next_id, ep, addr, now, lifetime)
        rec.conn = conn
        heapq.heappush(self.ages, rec)
        self.live += 1
        return rec

    def dial_failed(self, ep: EndpointState[K, C]) -> None:
        """The dial that reserved a slot on ``ep`` gave up with an error."""
        ep.connect_failures += 1
        self.dial_abandoned(ep)

    def dial_abandoned(self, ep: EndpointState[K, C]) -> None:
        """The slot reserved for a dial is free again (failure or cancel)."""
        ep.pending -= 1
        self.total -= 1
        self._slot_freed(ep)

    # -- releasing ----------------------------------------------------------------

    def release(
        self, rec: ConnRecord[K, C], now: float, reusable: bool, why: str = "error"
    ) -> None:
        """A handed-out connection comes back.

        :param reusable: False when the user closed it, an I/O error or an
            exception ended its use, or its protocol state is unknown.
        :param why: the close reason when not reusable ("closed" for a
            connection the user closed, "error" otherwise).
        """
        if rec.state is not ACTIVE:
            raise RuntimeError(f"connection #{rec.id} is not in use: it was already released")
        ep = rec.ep
        addr = rec.addr
        if not (
            reusable
            and now < rec.dies
            and rec.uses < self.uses_cap
            and addr.listed
            and not self.closed
        ):
            rec.state = CLOSED
            self._closed(rec, why if not reusable else self._release_reason(rec, now))
            return
        rec.last_used = now
        if ep.waiters:
            # Straight to the task that has waited longest (the contended
            # path of every pair: _unqueue inlined).
            w, _ = ep.waiters.popitem(last=False)
            self.n_waiters -= 1
            if self.max_total is not None:
                del self.waiters[w]
            rec.uses += 1
            ep.reused += 1
            w.grant = rec
            w.waited = now - w.since
            self.to_wake.append(w)
            if w.budget:
                # A dial that waited for the fleet budget, holding no slot:
                # the room it left may be for the waiters behind it now.
                self._serve_behind(ep)
            return
        expires = now + self.max_idle
        rec.expires = expires if expires < rec.dies else rec.dies
        if self.waiters and self._oldest_dialable() is not None:
            # Another endpoint's task waits for room under max_connections:
            # this connection is worth less to the pool than that task's slot.
            rec.state = CLOSED
            self._closed(rec, "evicted")
            return
        rec.state = IDLE
        if ep.single is None and not addr.idle:
            ep.idle_addrs.append(addr)
        addr.idle[rec] = None
        ep.idle += 1
        self.lru[rec] = None

    def _release_reason(self, rec: ConnRecord[K, C], now: float) -> str:
        if self.closed:
            return "pool-closed"
        if rec.uses == _SHED:
            return "budget"
        if self.max_uses is not None and rec.uses >= self.max_uses:
            return "uses"
        if now >= rec.dies:
            return "lifetime"
        return "drained"

    def shed(self, ep: EndpointState[K, C], n: int) -> int:
        """Give up to ``n`` of ``ep``'s connections back to a fleet budget
        (others wait below their fair share): idle ones close now, the least
        recently used first; the rest of ``n`` in use close when released
        instead of going idle or to a waiter (reason ``"budget"``).
        Returns how many will close.  Cold path: it scans the open records.
        """
        done = 0
        idle = sorted((rec for a in ep.addresses.values() for rec in a.idle), key=_last_used)
        for rec in idle[:n]:
            self._close_idle(rec, "budget")
            done += 1
        if done < n:
            for rec in self.ages:
                if rec.ep is ep and rec.state is ACTIVE and rec.uses != _SHED:
                    # A use count no cap allows: release then closes it (the
                    # reuse path compares uses already, so this costs nothing
                    # there).  _release_reason tells it from a real cap.
                    rec.uses = _SHED
                    done += 1
                    if done >= n:
                        break
        return done

    def discard(self, rec: ConnRecord[K, C], reason: str) -> None:
        """Close a handed-out connection (a failed health check, say)."""
        if rec.state is not ACTIVE:
            raise RuntimeError(f"connection #{rec.id} is not in use")
        rec.state = CLOSED
        self._closed(rec, reason)

    def _close_idle(self, rec: ConnRecord[K, C], reason: str) -> None:
        addr = rec.addr
        del addr.idle[rec]
        if not addr.idle and rec.ep.single is None:
            rec.ep.idle_addrs.remove(addr)
        del self.lru[rec]
        rec.ep.idle -= 1
        rec.state = CLOSED
        self._closed(rec, reason)

    def _closed(self, rec: ConnRecord[K, C], reason: str) -> None:
        """Book-keeping for a record just set CLOSED (and out of any idle
        set): free its slot."""
        ep = rec.ep
        ep.open -= 1
        rec.addr.open -= 1
        ep.closed += 1
        self.total -= 1
        self.live -= 1
        self.to_close.append((rec, reason))
        self._forget_if_unused(ep, rec.addr)
        if len(self.ages) > 2 * self.live + 64 and not self.sweeping:
            self._compact_ages()
        self._slot_freed(ep)
        if self.min_idle:
            self.refill_due = True

    def _compact_ages(self) -> None:
        self.ages = [r for r in self.ages if r.state is not CLOSED]
        heapq.heapify(self.ages)

    def _slot_freed(self, ep: EndpointState[K, C]) -> None:
        """A slot on ``ep`` (and in the total) is free: serve the waiter that
        has waited longest among those it can serve."""
        if not self.n_waiters or self.closed:
            return
        if self.max_total is None:
            if not ep.waiters or ep.total >= self.per_endpoint:
                return
            w = next(iter(ep.waiters))
            if w.budget:
                # Dials of the endpoint wait for the fleet's lease: a waiter
                # behind them would only queue for that lease too.
                return
        else:
            if self.total >= self.max_total:
                return
            found = self._oldest_dialable()
            if found is None:
                return
            w = found
        self._unqueue(w)
        w.ep.pending += 1
        self.total += 1
        w.grant = DIAL
        self.to_wake.append(w)

    def _oldest_dialable(self) -> Waiter[K, C] | None:
        for w in self.waiters:
            # (Not a dial waiting for the fleet budget, nor a waiter behind
            # one: see _slot_freed.)
            if w.ep.total < self.per_endpoint and not next(iter(w.ep.waiters)).budget:
                return w
        return None

    # -- the fleet budget: dials that wait for a lease -------------------------------

    def wait_budget(self, ep: EndpointState[K, C], handle: Any, since: float) -> Waiter[K, C]:
        """The dial in a slot reserved on ``ep`` must wait for a fleet
        budget's lease (the fleet is at its limit, or another dial of the
        endpoint asks first).  It stops holding the slot, which another
        endpoint's waiter may take under ``max_connections``, and queues as
        a *budget waiter*: first come, first served with the endpoint's
        other waiters, so that a connection released meanwhile goes to it
        if it came first (``grant``: the record, as for any waiter; the
        shell then withdraws its wait for the lease).  ``since``: when its
        acquire began.

        Budget waiters stand before the endpoint's other waiters (a dial got
        its slot before any of them queued, or as the oldest of them), in
        the order of their ``since``; while one waits, freed slots of the
        endpoint are not handed to the waiters behind it (they would only
        queue for the lease too).  End the wait with :meth:`budget_over`,
        or :meth:`cancel` it.
        """
        w = Waiter(ep, handle, since)
        w.budget = True
        # (Dials that began later may have come to wait first: one asked
        # the fleet while the next queued behind it.)
        self._line_up(w, lambda x: not x.budget or x.since > since)
        ep.pending -= 1
        self.total -= 1
        self._slot_freed(ep)
        return w

    def budget_over(self, w: Waiter[K, C]) -> ConnRecord[K, C] | Answer:
        """A budget waiter's wait for the lease ended: the fleet granted it,
        or the shell gave up waiting because :attr:`Waiter.grant` was set.

        :returns: the connection record a release served it (hand it out; a
            lease granted meanwhile goes to the next budget waiter, see
            :meth:`pass_lease`, or back), :data:`DIAL` (a slot is reserved
            again: dial with the lease, or with the one another dial passed
            it), or :data:`WAIT` (no room
            in the local limits now: the lease goes back and the task waits
            as an ordinary waiter, still first in line, on its handle).
        :raises PoolClosed: the pool was closed meanwhile.
        """
        ep = w.ep
        grant = w.grant
        if isinstance(grant, ConnRecord):
            self._serve_behind(ep)  # (the waiters behind it may have room now)
            return grant
        if self.closed:
            if w in ep.waiters:
                self._unqueue(w)
            if grant is DIAL:
                w.grant = None
                self.dial_abandoned(ep)
            raise PoolClosed("the pool was closed while waiting for a connection")
        if grant is DIAL:
            return DIAL  # another dial's lease, and a slot: see pass_lease
        self._unqueue(w)
        if self._reserve(ep):
            self._serve_behind(ep)
            return DIAL
        # Back in line, as an ordinary waiter before the others.
        w.budget = False
        self._line_up(w, lambda x: not x.budget)
        return WAIT

    def pass_lease(self, ep: EndpointState[K, C]) -> Waiter[K, C] | None:
        """A lease came for a budget waiter that a release served meanwhile:
        the next budget waiter of ``ep`` takes it rather than asking the
        fleet again (and the lease is not wasted).  Its slot is reserved and
        it is served :data:`DIAL` (woken: the shell hands it the lease).
        None when no budget waiter of ``ep`` waits or the limits have no
        room: the lease goes back."""
        w = next(iter(ep.waiters), None)
        if w is None or not w.budget or self.closed:
            return None
        self._unqueue(w)
        if not self._reserve(ep):
            # (Back where it stood: first.)
            ep.waiters[w] = None
            ep.waiters.move_to_end(w, last=False)
            self.n_waiters += 1
            if self.max_total is not None:
                self.waiters[w] = None
            return None
        w.grant = DIAL
        self.to_wake.append(w)
        return w

    def _serve_behind(self, ep: EndpointState[K, C]) -> None:
        """A budget waiter left the front of ``ep``'s line: the waiters
        behind it may dial in all the room the limits have (the slots the
        budget waiters gave up, which nobody took while they stood first)."""
        while True:
            served = len(self.to_wake)
            self._slot_freed(ep)
            if len(self.to_wake) == served:
                return

    def _reserve(self, ep: EndpointState[K, C]) -> bool:
        """Reserve a dial's slot on ``ep`` if the limits have room, making it
        under ``max_connections`` by closing the least recently used idle
        connection if need be.  The slot is taken before that close, so the
        room the close makes is not handed to another waiter as well."""
        if ep.total >= self.per_endpoint:
            return False
        if self.max_total is not None and self.total >= self.max_total:
            if not self.lru:
                return False
            ep.pending += 1
            self.total += 1
            self._evict_lru()
            return True
        ep.pending += 1
        self.total += 1
        return True

    def _line_up(self, w: Waiter[K, C], behind: Callable[[Waiter[K, C]], bool]) -> None:
        """Queue ``w`` before the endpoint's waiters that ``behind`` picks
        (and, under ``max_connections``, before every later one)."""
        waiters = w.ep.waiters
        after = [x for x in waiters if behind(x)]
        waiters[w] = None
        for x in after:
            waiters.move_to_end(x)
        self.n_waiters += 1
        if self.max_total is not None:
            later = [x for x in self.waiters if x.since > w.since]
            self.waiters[w] = None
            for x in later:
                self.waiters.move_to_end(x)

    # -- time passing --------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close idle connections that expired.  Costs what expires, not what
        is idle: both queues are ordered by their deadline.

        With a warm floor, idle connections of an endpoint with no more than
        ``min_idle`` open are kept instead (renewed: their idle time starts
        again), and every :data:`FLOOR_CHECK_INTERVAL` each idle connection is
        asked whether it is still usable, so that one the peer closed is
        replaced."""
        lru = self.lru
        max_idle = self.max_idle
        floor = self.min_idle
        self.sweeping = True
        try:
            while lru:
                rec = next(iter(lru))
                if now < rec.last_used + max_idle:
                    break
                if rec.ep.open <= floor:
                    if now >= rec.dies:
                        self._close_idle(rec, "lifetime")
                        continue
                    # At or below the floor: kept.  Its idle time starts
                    # over (and it goes to the back of the queue), so the
                    # loop ends and an acquire still sees it as fresh.
                    # (Idle records are always of listed addresses.)
                    rec.last_used = now
                    expires = now + max_idle
                    rec.expires = expires if expires < rec.dies else rec.dies
                    lru.move_to_end(rec)
                    continue
                self._close_idle(rec, "idle")
            if floor and now >= self.next_check:
                self.next_check = now + FLOOR_CHECK_INTERVAL
                for rec in list(lru):
                    conn = rec.conn
                    if conn is None or not conn._usable(now - rec.last_used):
                        self._close_idle(rec, "stale")
                self.refill_due = True
        finally:
            self.sweeping = False
        if len(self.ages) > 2 * self.live + 64:
            self._compact_ages()
        ages = self.ages
        while ages:
            rec = ages[0]
            if rec.state is CLOSED:
                heapq.heappop(ages)
                continue
            if now < rec.dies:
                break
            heapq.heappop(ages)
            if rec.state is IDLE:
                self._close_idle(rec, "lifetime")
                ages = self.ages  # (a close may have compacted it)
            # An active record past its lifetime closes on release.

    def next_deadline(self) -> float:
        """When :meth:`sweep` will next have something to do (or inf)."""
        deadline = math.inf
        if self.lru:
            deadline = next(iter(self.lru)).last_used + self.max_idle
        ages = self.ages
        while ages and ages[0].state is CLOSED:
            heapq.heappop(ages)  # (dropping what sweep would drop: no change seen)
        if ages:
            deadline = min(deadline, ages[0].dies)
        if self.min_idle:
            deadline = min(deadline, self.next_check, self.refill_wake)
        return deadline

    # -- the warm floor --------------------------------------------------------------

    def floor_of(self, ep: EndpointState[K, C]) -> int:
        """How many connections the floor keeps for ``ep`` now: those open,
        up to ``min_idle``."""
        return min(ep.open, self.min_idle)

    def refills(self, now: float) -> list[tuple[EndpointState[K, C], str]]:
        """The warm dials to start now: ``(endpoint, address)`` pairs, each
        with its slot reserved and counted pending at the address.

        An endpoint short of its floor (connections open and dials in
        progress below ``min_idle``) gets dials for the difference, within the
        per-endpoint and total limits, unless it backs off after failures,
        tasks wait for it (a free slot is theirs), tasks wait for room under
        ``max_connections``, or its name has no address.  The shell opens
        each (one attempt) and reports with :meth:`refill_connected` then
        :meth:`warm_ready`, or :meth:`refill_failed`, or
        :meth:`warm_abandoned`.
        """
        self.refill_due = False
        dials: list[tuple[EndpointState[K, C], str]] = []
        floor = self.min_idle
        if not floor or self.closed:
            return dials
        if self.refill_wake <= now:
            self.refill_wake = math.inf
        for ep in self.endpoints.values():
            want = floor - ep.total
            if want <= 0 or ep.waiters or not ep.listed:
                continue
            if now < ep.refill_after:
                self.refill_wake = min(self.refill_wake, ep.refill_after)
                continue
            want = min(want, self.per_endpoint - ep.total)
            if self.max_total is not None:
                if self.waiters:
                    break  # the room under max_connections is theirs
                want = min(want, self.max_total - self.total)
            for _ in range(want):
                ep.pending += 1
                self.total += 1
                ep.warming += 1
                ip = self.pick_address(ep, now)
                assert ip is not None  # (ep.listed is not empty)
                dials.append((ep, ip))
        return dials

    def reserve_warm(self, ep: EndpointState[K, C], n: int) -> int:
        """Reserve the slots of the dials that bring ``ep`` to ``n`` idle
        connections (``pool.prewarm``), counting those idle and those warm
        dials already bring, within the limits (nothing is evicted for it,
        and a slot tasks wait for is theirs).  Returns how many were
        reserved: dial each like an acquire's (:meth:`pick_address`...), then
        :meth:`connected` and :meth:`warm_ready`, or :meth:`warm_abandoned`
        with ``failed=True``."""
        if self.closed:
            raise PoolClosed("the pool is closed")
        want = n - ep.idle - ep.warming
        if want <= 0 or ep.waiters:
            return 0
        want = min(want, self.per_endpoint - ep.total)
        if self.max_total is not None:
            want = 0 if self.waiters else min(want, self.max_total - self.total)
        want = max(want, 0)
        ep.pending += want
        self.total += want
        ep.warming += want
        return want

    def refill_connected(
        self, ep: EndpointState[K, C], ip: str, conn: C, now: float
    ) -> ConnRecord[K, C]:
        """A warm dial to ``ip`` connected.  The record is active (counted
        as warming still) until :meth:`warm_ready`, so that the shell can
        run ``on_connect`` on it first, or :meth:`init_failed`."""
        return self.connected(ep, ip, conn, now)

    def warm_ready(self, rec: ConnRecord[K, C], now: float, *, refill: bool = False) -> None:
        """A warm connection is ready: it goes idle (or to a waiter) without
        having been handed out (``uses`` 0 until its first hand-out).
        ``refill``: it came from :meth:`refills` (counted as a refill), not
        from a prewarm."""
        rec.ep.warming -= 1
        if refill:
            rec.ep.refills += 1
        rec.uses = 0
        self.release(rec, now, reusable=True)

    def refill_failed(
        self, ep: EndpointState[K, C], ip: str | None, now: float, *, counts: bool = True
    ) -> None:
        """A warm dial failed (at ``ip``, or before it had one): the slot is
        free and the endpoint backs off (exponential, capped, jittered).
        ``counts``: the failure is the address's (not a proxy's)."""
        if ip is not None:
            self.attempt_failed(ep, ip, now, counts=counts)
        self._refill_backoff(ep, now)
        ep.warming -= 1
        self.dial_abandoned(ep)

    def warm_abandoned(
        self, ep: EndpointState[K, C], ip: str | None, *, failed: bool = False
    ) -> None:
        """A warm dial ended without a connection (cancelled, or a prewarm
        dial that failed after its retries, ``failed``): the slot is free."""
        if ip is not None:
            addr = ep.addresses[ip]
            addr.pending -= 1
            self._forget_if_unused(ep, addr)
        ep.warming -= 1
        if failed:
            ep.connect_failures += 1
        self.dial_abandoned(ep)

    def init_failed(
        self, rec: ConnRecord[K, C], now: float, *, warm: bool = False, background: bool = False
    ) -> None:
        """``on_connect`` failed on a new connection (registered with
        :meth:`connected` or :meth:`refill_connected`): it closes and the
        address keeps its good name (a failing initialiser is a configuration
        error, not the address's fault).  ``warm``: the dial of a refill or a
        prewarm; ``background``: a refill, which backs off (nobody's acquire
        failed), where any other counts as a failed connect."""
        ep = rec.ep
        if warm:
            ep.warming -= 1
        if background:
            self._refill_backoff(ep, now)
        else:
            ep.connect_failures += 1
        self.discard(rec, "on_connect")

    def _refill_backoff(self, ep: EndpointState[K, C], now: float) -> None:
        # Exponential from retry_backoff (never below REFILL_BACKOFF_MIN), capped
        # at retry_backoff_max, with "equal jitter": at least half the delay,
        # so that background dials never hammer a server that refuses them,
        # yet pools that failed together do not retry together.
        ep.refill_failures += 1
        ep.refill_streak += 1
        base = max(self.config.retry_backoff, REFILL_BACKOFF_MIN)
        cap = max(self.config.retry_backoff_max, base)
        ceiling = min(cap, base * 2.0 ** min(ep.refill_streak - 1, 62))
        delay = ceiling / 2 + self.rng.uniform(0.0, ceiling / 2)
        ep.refill_after = now + delay
        self.refill_wake = min(self.refill_wake, ep.refill_after)

    def would_reuse(self, rec: ConnRecord[K, C], now: float) -> bool:
        """Whether releasing ``rec`` (held, not broken) would keep it for
        reuse rather than close it: what decides whether ``reset`` runs."""
        return not self.closed and now < rec.dies and rec.uses < self.uses_cap and rec.addr.listed

    def close(self) -> None:
        """Close the pool: every idle record closes, every waiter is woken
        with nothing (the shell raises PoolClosed), active records close when
        they come back."""
        self.closed = True
        for ep in self.endpoints.values():
            for w in list(ep.waiters):
                self._unqueue(w)
                self.to_wake.append(w)
        for rec in list(self.lru):
            self._close_idle(rec, "pool-closed")


def _last_used(rec: ConnRecord[Any, Any]) -> float:
    return rec.last_used
