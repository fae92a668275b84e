"""What both pool shells do the same way: the async :class:`~conpool.Pool`
(:mod:`conpool._pool`) and the threaded :class:`~conpool.SyncPool`
(:mod:`conpool._syncpool`).

Everything here is synchronous book-keeping around the state machine: the
first step of an acquire and the release (plain functions, so that the async
shell's hot path awaits nothing it need not), parking and serving waiters,
carrying out the machine's decisions, trace points, hooks, stats and the body
of a sweep.  Neither awaiting nor blocking happens here: how a caller waits,
how a connection is opened and how the sweep is scheduled are each shell's.
The threaded shell calls these under its lock; the async one needs none
(nothing here awaits, so each call is atomic on the event loop).
"""

from __future__ import annotations

import abc
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol

from typing_extensions import TypeVar

from ._config import Config
from ._endpoint import Endpoint
from ._errors import PoolClosed, PoolTimeout, ResolveError, describe
from ._hooks import Hook, Hooks
from ._leaks import Leaks, note_taken
from ._resolve import ResolutionCache
from ._state import (
    EXPIRY_REASONS,
    IDLE,
    MAX_ENDPOINTS,
    Answer,
    ConnRecord,
    EndpointState,
    PoolState,
    Waiter,
)
from ._stats import BUCKETS, Histogram, PoolStats, snapshot
from ._trace import Tracer

if TYPE_CHECKING:
    from ._budget_core import Lease
    from ._budget_redis import Membership

__all__ = ["Shell", "checked_arguments"]


def checked_arguments(
    config: Config | None, resolver: Any, tracer: Tracer | None, resolve: str
) -> tuple[Config, Any]:
    """A pool's constructor arguments, checked: the config (the defaults for
    None) and the resolver (a :class:`~conpool.SystemResolver` for None),
    which must have the method ``resolve`` names.

    :raises TypeError: an argument of the wrong type.
    """
    if config is None:
        config = Config()
    elif not isinstance(config, Config):
        raise TypeError(f"config must be a conpool.Config, got {config!r}")
    if resolver is None:
        from ._resolve import SystemResolver

        resolver = SystemResolver()
    elif not callable(getattr(resolver, resolve, None)):
        kind = "an async resolve(host)" if resolve == "resolve" else "a resolve_sync(host)"
        raise TypeError(
            f"resolver must have {kind} method (every conpool resolver has both), got {resolver!r}"
        )
    if tracer is not None and not isinstance(tracer, Tracer):
        raise TypeError(f"tracer must be a conpool.Tracer, got {tracer!r}")
    return config, resolver


class PoolConn(Protocol):
    """What the shared book-keeping asks of either shell's connection."""

    _rec: ConnRecord[Endpoint, Any]
    _broken: bool
    _closed: bool

    def _usable(self, idle: float) -> bool: ...

    def _close_now(self) -> None: ...


C = TypeVar("C", bound=PoolConn)


class Shell(abc.ABC, Generic[C]):
    """The shared half of a pool shell (see the module docstring).

    A subclass sets every attribute annotated here in its ``__init__`` and
    provides the abstract methods (:meth:`_new_endpoint`,
    :meth:`_sweep_sooner`, :meth:`_start_refresh`, :meth:`_start_refills`).
    """

    # Slots, not an instance dict: on CPython 3.11 an instance with more
    # than 30 attributes in its dict loses its inline values, and then no
    # attribute read or method call on ``self`` is specialized (each goes
    # through a type lookup and a dict lookup), which the hot path of
    # every acquire and release pays many times over.  The shells keep a
    # ``__dict__`` beside these for their colder attributes.
    __slots__ = (
        "_clock",
        "_connects",
        "_got",
        "_hooks",
        "_last_ep",
        "_last_key",
        "_leak_after",
        "_leaks",
        "_leases",
        "_names",
        "_new_parked",
        "_plain",
        "_state",
        "_sweep_at",
        "_trace",
        "_trace_rec",
        "_waits",
        "_wake",
        "config",
        "tracer",
    )

    #: How ``release()`` names the connection type it takes, in its errors.
    _conn_kind = "conpool.Connection"

    config: Config
    tracer: Tracer | None
    _hooks: Hooks
    _trace: Callable[..., None] | None
    _trace_rec: Callable[[str, ConnRecord[Endpoint, C], float], None] | None
    _state: PoolState[Endpoint, C]
    _names: ResolutionCache
    _clock: Callable[[], float]
    _new_parked: Callable[[], Any]
    _wake: Callable[[list[Waiter[Endpoint, C]]], None]
    _sweep_at: float
    _last_key: object
    _last_ep: EndpointState[Endpoint, C]
    _got: ConnRecord[Endpoint, C] | Answer
    _leak_after: float | None
    _plain: bool
    _leaks: Leaks
    _waits: dict[EndpointState[Endpoint, C], Histogram]
    _connects: dict[EndpointState[Endpoint, C], Histogram]
    # The fleet budget (conpool.RedisBudget): this pool's membership, and
    # the lease of each connection it has open (empty without a budget).
    _participant: Membership | None
    _leases: dict[Any, Any]
    # Leases one dial waiting for budget passed to the next (see
    # conpool._budget_steps.budget_over), until the next takes it.
    _passed: dict[Waiter[Endpoint, C], Lease]

    def _closed_lease(self, rec: ConnRecord[Endpoint, C]) -> None:
        # The budget's second call point: batched, never waited for.
        self._return_lease(self._leases.pop(rec, None))

    def _return_lease(self, lease: Lease | None) -> None:
        """A dial or a connection that held ``lease`` (if any) is over."""
        if lease is not None:
            participant = self._participant
            assert participant is not None  # (leases exist only with one)
            participant.release(lease)

    def _give_back(self, endpoint: Endpoint, n: int) -> int:
        """The budget asks for up to ``n`` of ``endpoint``'s connections
        back (other participants wait below their fair share): idle ones
        close now, in-use ones when released.  Returns how many will."""
        state = self._state
        ep = state.endpoints.get(endpoint)
        if ep is None or state.closed:
            return 0
        done = state.shed(ep, n)
        self._flush()
        return done

    @abc.abstractmethod
    def _start_refills(self) -> None:
        """The machine found endpoints below ``Config.min_idle``: open
        connections for them in the background."""

    @abc.abstractmethod
    def _new_endpoint(self, endpoint: Endpoint) -> EndpointState[Endpoint, C]:
        """The machine's state for an endpoint not seen before (checked as
        an :class:`~conpool.Endpoint`, and the pool open)."""

    @abc.abstractmethod
    def _sweep_sooner(self, when: float) -> None:
        """Wake the sweep at ``when`` (the pool's clock) instead of later."""

    @abc.abstractmethod
    def _start_refresh(self, ep: EndpointState[Endpoint, C]) -> None:
        """Look ``ep``'s name up again in the background, then tell the
        machine ``refresh_done``."""

    def _grab(self, endpoint: Endpoint) -> C | None:
        """The synchronous first step of every acquire: ask the machine.

        Returns the connection when an idle one can be handed out at once
        (no health check, no ``leak_warning_after``); otherwise leaves the machine's answer
        in ``self._got`` and the endpoint state in ``self._last_ep`` for
        :meth:`_acquire`, which the caller awaits with nothing in between.
        Being a plain function, not a coroutine, is what makes the common
        case cheap.
        """
        state = self._state
        # Most callers ask for the same endpoint object again and again: an
        # identity check saves hashing it (a Python-level __hash__).
        if endpoint is self._last_key:
            ep = self._last_ep
        else:
            try:
                found = state.endpoints.get(endpoint)
            except TypeError:
                found = None
            ep = self._new_endpoint(endpoint) if found is None else found
            self._last_key = endpoint
            self._last_ep = ep
        # (Read, then called: called as a method, an attribute that holds a
        # function is not specialized by CPython 3.11, and costs a lookup.)
        clock = self._clock
        now = clock()
        got = state.acquire(ep, now)
        if state.to_close or state.to_wake:
            self._flush()
        if got.__class__ is ConnRecord and self._plain:
            rec: ConnRecord[Endpoint, C] = got
            if self._trace_rec is not None:
                self._trace_rec("conn.reuse", rec, now)
            conn = rec.conn
            # The holder's reference is the only strong one (see _hand_out).
            rec.conn = None
            return conn
        self._got = got
        return None

    def _hand_out(self, rec: ConnRecord[Endpoint, C], reused: bool = True) -> C:
        """Give the user the connection of an active record: one the machine
        granted from idle (traced as ``conn.reuse``), or a new one.

        While the user holds it, the pool keeps no strong reference to it
        (``rec.conn`` is None), so a connection dropped without release is
        garbage-collected, reported and reclaimed (see :mod:`conpool._leaks`).
        """
        if reused and self._trace_rec is not None:
            self._trace_rec("conn.reuse", rec, self._clock())
        conn = rec.conn
        assert conn is not None
        rec.conn = None
        if self._leak_after is not None:
            note_taken(rec)
        return conn

    def _put_back(self, conn: C) -> None:
        try:
            # (A connection not registered yet has a stand-in record whose
            # endpoint has no owner: refused below, as not this pool's.)
            rec = conn._rec
        except AttributeError:
            raise TypeError(f"release() takes a {self._conn_kind}, got {conn!r}") from None
        state = self._state
        if rec.ep.owner is not state:
            raise ValueError(f"{conn!r} does not belong to this pool")
        if rec.conn is not None:
            raise RuntimeError(f"{conn!r} is not in use: it was already released")
        rec.conn = conn
        clock = self._clock  # (see _grab)
        now = clock()
        if conn._broken:  # (set too when it was closed)
            state.release(rec, now, False, "closed" if conn._closed else "error")
        else:
            state.release(rec, now, True)
            if rec.expires < self._sweep_at and rec.state is IDLE:
                # The sweeper sleeps past this connection's expiry (it had
                # nothing to wait for): bring its wake-up forward.  (The
                # deadline first: it is usually false, and decides alone.)
                self._sweep_sooner(rec.expires)
        if self._trace_rec is not None:
            self._trace_rec("conn.release", rec, now)
        if state.to_close or state.to_wake:
            self._flush()

    def stats(self) -> PoolStats:
        """A frozen snapshot of every count (see :class:`~conpool.PoolStats`)."""
        stale = frozenset(name for name in self._state.by_name if self._names.is_stale(name))
        return snapshot(self._state, self._clock(), stale, self._waits, self._connects)

    def _park(self, ep: EndpointState[Endpoint, C]) -> Waiter[Endpoint, C]:
        """Queue the calling task for the machine to serve; it then awaits
        the waiter's handle (what the backend parks a task on)."""
        park, clock = self._new_parked, self._clock  # (see _grab)
        w = self._state.enqueue(ep, park(), clock())
        if w is None:
            raise self._too_many_waiters(ep.key)
        if self._trace is not None:
            self._trace("acquire.queued", ep.key)
        return w

    def _served(self, w: Waiter[Endpoint, C]) -> ConnRecord[Endpoint, C] | None:
        """The parked task was woken: a connection record, or None for a
        reserved dial slot.

        Runs once per acquire that waited, so it reads the clock only when
        no release told the waiter how long it waited.
        """
        waited = w.waited
        if waited is None:  # served a dial slot, or woken by close
            clock = self._clock  # (see _grab)
            waited = clock() - w.since
        ep = w.ep
        # Histogram.observe, inlined.
        hist = self._waits.get(ep) or _histogram(self._waits, ep)
        hist.counts[bisect_left(BUCKETS, waited)] += 1
        hist.sum += waited
        hist.count += 1
        grant = w.grant
        if grant is None:
            raise PoolClosed("the pool was closed while waiting for a connection")
        if self._trace is not None:
            self._trace("acquire.granted", ep.key, "", 0, int(waited * 1e9))
        if grant.__class__ is ConnRecord:
            return grant
        return None

    def _gave_up(self, w: Waiter[Endpoint, C], exc: BaseException) -> None:
        """A parked task timed out, was cancelled, or was failed by close:
        whatever the machine granted it in the meantime goes to the next
        waiter, and the wait still counts."""
        now = self._clock()
        self._state.cancel(w, now)
        self._flush()
        waited = now - w.since
        _histogram(self._waits, w.ep).observe(waited)
        if isinstance(exc, PoolTimeout):
            self._emit("acquire.timeout", w.ep.key, duration_ns=int(waited * 1e9))

    def _timed_out(self, endpoint: Endpoint, wait: float) -> PoolTimeout:
        which = self._timeout_name(wait)
        return PoolTimeout(f"no connection to {endpoint} became free within {which}")

    def _timeout_name(self, wait: float) -> str:
        """How a timeout names the acquire's ``wait`` seconds."""
        if wait == self.config.acquire_timeout:
            return f"acquire_timeout={wait:g} s"
        return f"timeout={wait:g} s"

    def _too_many_waiters(self, endpoint: Endpoint) -> PoolTimeout:
        self._emit("acquire.rejected", endpoint)
        return PoolTimeout(
            f"no connection to {endpoint} is free and max_waiters="
            f"{self.config.max_waiters} tasks are already waiting"
        )

    def _flush(self) -> None:
        """Do what the machine decided: wake served waiters, close connections."""
        state = self._state
        if state.to_wake:
            waiters, state.to_wake = state.to_wake, []
            wake = self._wake  # (see _grab)
            wake(waiters)
        if state.to_close:
            closing, state.to_close = state.to_close, []
            for rec, reason in closing:
                conn = rec.conn
                if self._trace is not None:
                    if reason in EXPIRY_REASONS:
                        self._trace("conn.expire", rec.ep.key, rec.addr.ip, rec.id, None, reason)
                    lived = int((self._clock() - rec.created) * 1e9)
                    self._trace("conn.close", rec.ep.key, rec.addr.ip, rec.id, lived, reason)
                # (None for a connection garbage-collected while held: the
                # leak watch closed its socket.)
                if conn is not None:
                    self._close_conn(conn)
                    # Nothing needs a closed connection's stream any more
                    # (and a tracer may keep the record a while).
                    rec.conn = None
                if self._leases:
                    self._closed_lease(rec)
            # (Only a close leaves the floor short, outside the sweep.)
            if state.refill_due:
                self._start_refills()

    def _emit(
        self,
        kind: str,
        endpoint: object = "",
        address: str = "",
        conn_id: int = 0,
        duration_ns: int | None = None,
        detail: str = "",
    ) -> None:
        trace = self._trace
        if trace is not None:
            trace(kind, endpoint, address, conn_id, duration_ns, detail)

    def _core_event(
        self, kind: str, ep: EndpointState[Endpoint, C], address: str, detail: str
    ) -> None:
        """What the state machine reports by itself (ejections, re-admissions)."""
        self._emit(kind, ep.key, address, detail=detail)

    def add_hook(self, kind: str, hook: Hook) -> None:
        """Call ``hook(event)`` for every event whose kind matches.

        :param kind: an event kind (``"conn.close"``), a scope (``"connect.*"``)
            or ``"*"`` for all.
        :param hook: a plain function taking a :class:`~conpool.Event`.  It runs
            inside the pool's bookkeeping, so it must not block; one that raises
            is disabled and logged, and the pool carries on.
        :raises TypeError: ``kind`` is not a non-empty str or ``hook`` is not callable.
        """
        self._hooks.add(kind, hook)
        self._retrace()

    def remove_hook(self, hook: Hook) -> None:
        """Unregister ``hook`` (every pattern it was added under).

        :raises ValueError: it was not registered.
        """
        self._hooks.remove(hook)
        self._retrace()

    def _retrace(self) -> None:
        """Point the trace points at what listens: nothing (None: one
        attribute check per trace point), the tracer's own ``emit`` when it
        is alone (one call), or the hook dispatcher."""
        if len(self._hooks):
            self._trace = self._hooks
            self._trace_rec = self._rec_event
        elif self.tracer is not None:
            self._trace = self.tracer.emit
            self._trace_rec = self.tracer._record
        else:
            self._trace = None
            self._trace_rec = None

    def _rec_event(self, kind: str, rec: ConnRecord[Endpoint, C], now: float) -> None:
        trace = self._trace
        if trace is not None:
            trace(kind, rec.ep.key, rec.addr.ip, rec.id)

    def on_connection_created(self, hook: Hook) -> Hook:
        """Register ``hook`` for ``connect.complete``; usable as a decorator."""
        self.add_hook("connect.complete", hook)
        return hook

    def on_connection_reused(self, hook: Hook) -> Hook:
        """Register ``hook`` for ``conn.reuse``; usable as a decorator."""
        self.add_hook("conn.reuse", hook)
        return hook

    def on_connection_closed(self, hook: Hook) -> Hook:
        """Register ``hook`` for ``conn.close`` (detail: the reason); usable
        as a decorator."""
        self.add_hook("conn.close", hook)
        return hook

    def _sweep_once(self) -> None:
        state = self._state
        now = self._clock()
        state.sweep(now)
        self._flush()
        if state.refill_due:
            self._start_refills()
        if self._leak_after is not None:
            self._leaks.warn_held_too_long(now, self._leak_after)
        for ep in state.forget_unused(MAX_ENDPOINTS):
            self._waits.pop(ep, None)
            self._connects.pop(ep, None)
            if ep is self._last_ep:
                self._last_key = object()
        names = self._names
        due = state.refresh_due(lambda name: names.peek(name, now))
        self._flush()  # (a fresh answer spread to an endpoint may drain idle ones)
        for ep in due:
            self._start_refresh(ep)

    def _describe(self, kind: str, status: str) -> str:
        """The pool's ``repr`` (``status`` while it is not closed)."""
        s = self._state
        active = sum(ep.active for ep in s.endpoints.values())
        idle = sum(ep.idle for ep in s.endpoints.values())
        return (
            f"<{kind} {'closed' if s.closed else status} endpoints={len(s.endpoints)} "
            f"active={active} idle={idle} waiting={s.n_waiters} "
            f"limit={self.config.max_connections_per_endpoint}/endpoint>"
        )

    def _close_conn(self, conn: C) -> None:
        """Close a connection the machine retired (the threaded shell defers
        it until its lock is released)."""
        conn._close_now()

    # -- dialling: what becomes of a reserved slot --------------------------------

    def _dial_failed(self, ep: EndpointState[Endpoint, C], exc: Exception) -> None:
        """The dial in ``ep``'s reserved slot failed: the slot goes back."""
        self._state.dial_failed(ep)
        self._flush()
        self._emit("acquire.failed", ep.key, detail=str(exc))

    def _dial_abandoned(self, ep: EndpointState[Endpoint, C]) -> None:
        """The dial was interrupted (cancelled): the slot goes back."""
        self._state.dial_abandoned(ep)
        self._flush()

    def _new_endpoint_state(self, endpoint: Endpoint) -> EndpointState[Endpoint, C]:
        """The machine's state for a new endpoint (the caller checked it)."""
        if self._state.closed:
            raise PoolClosed("the pool is closed")
        if endpoint.is_unix or endpoint.is_ip or self._proxy_resolves(endpoint):
            # No name to resolve (and so none to refresh): the host is the
            # endpoint's one address (the IP, a socket's path, or a name a
            # proxy resolves).
            ep = self._state.endpoint(endpoint)
            self._state.set_addresses(ep, [endpoint.host])
        else:
            ep = self._state.endpoint(endpoint, endpoint.host)
        return ep

    def _proxy_resolves(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint's name goes to a proxy that resolves it
        (``socks5h``, ``socks4a``): the state machine then balances the name
        itself as a single address."""
        proxy = self.config.proxy
        return (
            proxy is not None
            and proxy.remote_dns
            and self.config.proxy_for(endpoint.host, endpoint.port) is proxy
        )

    def _note_new(self, ep: EndpointState[Endpoint, C], conn: Any) -> None:
        """A dial succeeded: its connect time, its leak watch."""
        _histogram(self._connects, ep).observe(conn._connect_ns / 1e9)
        self._leaks.track(conn._rec, conn)

    def _hand_new(self, conn: Any) -> C:
        """Hand out a new connection (after ``on_connect``, if any)."""
        rec = conn._rec
        state = self._state
        if state.closed:
            state.discard(rec, "pool-closed")
            self._flush()
            raise PoolClosed("the pool was closed while connecting")
        return self._hand_out(rec, reused=False)

    def _put_back_closing(self, conn: C, why: str) -> None:
        """Give a held connection back to be closed for ``why``."""
        rec = conn._rec
        if rec.conn is None and rec.ep.owner is self._state:
            now = self._clock()
            rec.conn = conn
            self._state.release(rec, now, False, why)
            if self._trace_rec is not None:
                self._trace_rec("conn.release", rec, now)
            self._flush()
        else:
            self._put_back(conn)  # (raises the right error)

    # -- resolving: what a lookup tells the trace and the machine ----------------

    def _lookup_started(self, endpoint: Endpoint) -> int:
        """A lookup of this call's own begins: its start, for the trace."""
        self._emit("resolve.started", endpoint)
        return time.monotonic_ns()

    def _lookup_failed(
        self, ep: EndpointState[Endpoint, C], exc: Exception, start: int
    ) -> ResolveError:
        """The error an acquire raises when ``ep``'s name did not resolve."""
        endpoint = ep.key
        if start:
            self._emit("resolve.failed", endpoint, detail=describe(exc))
        return ResolveError(
            describe(exc),
            endpoint=endpoint,
            errors=[exc],
            context=[f"resolving {ep.name}", f"connecting to {endpoint}"],
        )

    def _looked_up(self, ep: EndpointState[Endpoint, C], ips: tuple[str, ...], start: int) -> None:
        """A lookup answered (``start``: when this call's own lookup began, 0
        if it shared one or the cache's answer): trace it, and give the
        machine the answer if it changed."""
        name = ep.name
        assert name is not None
        endpoint = ep.key
        if start:
            stale = self._names.stale_error(name)
            if stale is not None:
                self._emit("resolve.failed", endpoint, detail=describe(stale))
                self._emit("resolve.stale", endpoint, detail=" ".join(ips))
            else:
                self._emit(
                    "resolve.complete",
                    endpoint,
                    duration_ns=time.monotonic_ns() - start,
                    detail=" ".join(ips),
                )
        if tuple(a.ip for a in ep.listed) != ips:
            # (Every endpoint of the name follows, not only this one.)
            self._state.answer(name, ips)
            self._flush()


def _histogram(table: dict[Any, Histogram], ep: Any) -> Histogram:
    """``ep``'s histogram in ``table``, made on first use."""
    hist = table.get(ep)
    if hist is None:
        hist = table[ep] = Histogram()
    return hist
