"""The pool: a thin async shell around the state machine in :mod:`conpool._state`.

The shell feeds the machine events with the time, then does what it was told:
dial, close, wake a waiter.  It changes state only through the machine, does
I/O only after the state update, and on any exception (cancellation included)
hands the slot it held back to the machine before re-raising, so a cancelled
task can never leak a slot, a socket or a waiter.

Read it top to bottom: the lease (``async with pool.connection(ep)``), the
lifecycle, the hot path (:meth:`Pool._grab` and :meth:`Pool._put_back`, plain
functions because every request runs them), waiting, carrying out the
machine's decisions (:meth:`Pool._flush`), hooks, then resolving and dialling,
the fleet budget's give-back and the background sweep.  With a
:class:`~conpool.RedisBudget`, a dial first waits for the fleet's lease and a
close hands it back (:meth:`Pool._dial`, :meth:`Pool._flush`): a hand-out
of an idle connection never talks to it.  Everything that depends on the
event loop (how a connection is opened, how a task parks and is woken, the clock) is the
backend's, picked once when the pool is entered (:mod:`conpool._backends`);
how one dial proceeds is :mod:`conpool._connect`'s.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Never, TypedDict, Unpack

import anyio
from anyio.abc import TaskGroup

from ._backends import Backend, current_backend
from ._budget import RedisBudget, participant_stats
from ._budget_core import GaveUp
from ._budget_steps import Line, budget_failed, budget_over
from ._config import Config, _float
from ._connect import Connector
from ._connection import Connection
from ._endpoint import Endpoint
from ._errors import PoolClosed, PoolError
from ._hooks import Hooks, logger
from ._leaks import Leaks
from ._lifecycle import Lifecycle, prewarm_count
from ._resolve import ResolutionCache, Resolver
from ._shell import Shell, _histogram, checked_arguments
from ._state import (
    DIAL,
    MAX_ENDPOINTS,
    WAIT,
    Answer,
    ConnRecord,
    EndpointState,
    PoolState,
    Waiter,
)
from ._stats import Histogram, PoolStats
from ._trace import Tracer

if TYPE_CHECKING:
    from ._budget_core import Lease
    from ._budget_redis import Participant

__all__ = ["MAX_ENDPOINTS", "Pool"]

# The state machine's types, with the shell's key and connection.
State = PoolState[Endpoint, Connection]
Ep = EndpointState[Endpoint, Connection]
Rec = ConnRecord[Endpoint, Connection]
Wait = Waiter[Endpoint, Connection]


class _Unset:
    """The default of the per-call options: "as the config says" (None
    already means "no limit")."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<from the config>"


#: An option not given on this call.
UNSET: Final = _Unset()

#: A value no caller passes as a timeout (see Pool._last_limits).
_UNCHECKED: Final = object()


class AcquireOptions(TypedDict, total=False):
    """The per-call options of :meth:`Pool.acquire` and :meth:`Pool.connection`.

    Taken as ``**options`` rather than as keyword-only parameters with
    defaults: CPython fills each keyword-only default a call leaves out
    with a dict lookup, which every acquire without options paid three
    times; an empty ``**options`` costs what a call with none should."""

    fresh: bool
    timeout: float | None
    connect_timeout: float | None


_OPTION_NAMES: Final = frozenset(AcquireOptions.__annotations__)


def _options(
    options: Mapping[str, Any], call: str
) -> tuple[object, float | _Unset | None, float | _Unset | None]:
    """(fresh, timeout, connect_timeout) of a call's ``**options``, UNSET for
    those not given.

    :raises TypeError: an option that does not exist.
    """
    unknown = options.keys() - _OPTION_NAMES
    if unknown:
        raise TypeError(
            f"{call}() got an unexpected keyword argument {min(unknown)!r} "
            "(its options are fresh, timeout and connect_timeout)"
        )
    return (
        options.get("fresh", False),
        options.get("timeout", UNSET),
        options.get("connect_timeout", UNSET),
    )


class _Lease:
    """``async with pool.connection(ep) as conn``: a class, not a generator,
    because this sits on every request's path."""

    __slots__ = ("_conn", "_endpoint", "_pool")

    _pool: Pool
    _endpoint: Endpoint
    _conn: Connection | None

    async def __aenter__(self) -> Connection:
        pool = self._pool
        endpoint = self._endpoint
        conn = pool._grab(endpoint)
        if conn is None:
            ep = pool._last_ep
            if pool._got is WAIT and pool._quick_wait:
                # Pool.acquire's contended path, in this frame (see there).
                w = pool._park(ep)
                try:
                    await w.handle
                except BaseException as exc:
                    pool._gave_up(w, exc)
                    raise
                rec = pool._served(w)
                conn = pool._hand_out(rec) if rec is not None else await pool._dial(ep)
            else:
                conn = await pool._acquire(ep, pool._got)
        self._conn = conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        self._conn = None
        if exc_type is not None:
            # The exchange was interrupted: the peer may be mid-response.
            conn._broken = True
        self._pool._put_back(conn)


class _ResettingLease(_Lease):
    """The lease of a pool with ``Config.reset``: a class of its own, so
    that the common lease pays nothing for it."""

    __slots__ = ()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        self._conn = None
        if exc_type is not None:
            conn._broken = True
            self._pool._put_back(conn)
        else:
            await self._pool._reset_then_put_back(conn)


class _OptionLease(_Lease):
    """``pool.connection(ep, fresh=..., timeout=..., connect_timeout=...)``:
    the lease of a call that gave options (a subclass, so that the lease of
    a call without them pays nothing for them)."""

    __slots__ = ("_options",)

    _options: AcquireOptions

    async def __aenter__(self) -> Connection:
        conn = await self._pool._acquire_with(self._endpoint, self._options, "connection")
        self._conn = conn
        return conn


class _ResettingOptionLease(_OptionLease, _ResettingLease):
    """The lease of a call with options on a pool with ``Config.reset``."""

    __slots__ = ()


_new_lease = object.__new__


class Pool(Shell[Connection]):
    """A connection pool keyed by endpoint, balanced across every address.

    Use it as ``async with conpool.Pool(...) as pool``: the block owns the
    pool's background task (expiry sweep, name refresh) and closes every
    connection on the way out.

    :param config: limits and lifetimes; :class:`~conpool.Config` defaults if None.
    :param resolver: turns names into addresses; a :class:`~conpool.SystemResolver`
        if None.  IP-literal endpoints never use it.
    :param tracer: a :class:`~conpool.Tracer` that receives the pool's events.
    :param budget: a :class:`~conpool.RedisBudget` whose per-endpoint limit
        this pool shares with every other pool using it (in any process);
        the pool is one participant.  Only dials and closes talk to it.
    :raises TypeError: an argument of the wrong type.
    """

    # The attributes the lease path reads as slots (see Shell); the
    # ``__dict__`` holds the others, and the budget's _put_back.
    __slots__ = (
        "__dict__",
        "_acquire_timeout",
        "_backend",
        "_health",
        "_last_limits",
        "_lease",
        "_participant",
        "_quick_wait",
        "_reset",
    )

    def __init__(
        self,
        config: Config | None = None,
        *,
        resolver: Resolver | None = None,
        tracer: Tracer | None = None,
        budget: RedisBudget | None = None,
    ) -> None:
        config, resolver = checked_arguments(config, resolver, tracer, "resolve")
        if budget is not None and not isinstance(budget, RedisBudget):
            raise TypeError(f"budget must be a conpool.RedisBudget or None, got {budget!r}")
        self.budget = budget
        # This pool's membership of the budget's fleet, from __aenter__ on.
        self._participant: Participant | None = None
        # The budget lease of each connection the pool has open (with a budget).
        self._leases: dict[Rec, Lease] = {}
        self._passed = {}
        self.config = config
        self.resolver = resolver
        self.tracer = tracer
        self._hooks = Hooks()
        self._hooks.tracer = tracer
        # The one attribute every trace point checks: None while nobody
        # listens (no tracer, no hook), so tracing costs nothing when off.
        self._trace: Callable[..., None] | None = None
        # The same for the hottest trace points (reuse, release), which
        # pass the connection record instead of its fields.
        self._trace_rec: Callable[[str, Rec, float], None] | None = None
        self._retrace()
        self._state: State = PoolState(config)
        self._names = ResolutionCache(resolver, config.dns_stale_limit)
        self._rng = random.Random(config.balance_seed)
        self._health = config.health_check
        self._tg: TaskGroup | None = None
        # The event loop's side (conpool._backends): picked when the pool is
        # entered, unless set before (a test's scripted backend).  Its
        # clock, parking and waking are bound here once, for the hot paths.
        self._backend: Backend | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._new_parked: Callable[[], Awaitable[None]] = _not_entered
        self._wake: Callable[[list[Wait]], None] = _not_entered
        self._sweep_scope: anyio.CancelScope | None = None
        self._sweep_at = 0.0  # when the sweeper wakes up next (the pool's clock)
        self._last_key: object = object()  # matches no endpoint
        self._last_ep: Ep = EndpointState(Endpoint("0.0.0.0", 1))  # (never used)
        self._got: Rec | Answer = WAIT
        self._leak_after = config.leak_warning_after
        self._acquire_timeout = config.acquire_timeout
        # (timeout, connect_timeout, their checked seconds) of the last
        # acquire given them (see _limits); first, a pair nobody passes.
        self._last_limits: tuple[object, object, tuple[float | None, float | None]] = (
            _UNCHECKED,
            _UNCHECKED,
            (None, None),
        )
        # No timeout and no health check: a waiting acquire takes the short path.
        self._quick_wait = self._acquire_timeout is None and self._health is None
        # No health check and no held-too-long watch: an idle connection is
        # handed out by _grab alone (else _acquire does the rest).
        self._plain = self._health is None and self._leak_after is None
        self._leaks = Leaks(self._state, self._flush, self._emit)
        # Per endpoint: how long waits and connects took.
        self._waits: dict[Ep, Histogram] = {}
        self._connects: dict[Ep, Histogram] = {}
        self._connector: Connector | None = None
        self._state.on_event = self._core_event
        self._life = Lifecycle(self)
        self._on_connect = config.on_connect
        self._reset = config.reset
        self._lease: type[_Lease] = _Lease if config.reset is None else _ResettingLease

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Pool:
        if self._tg is not None or self._state.closed:
            raise RuntimeError("a Pool can be entered only once")
        backend = self._backend
        if backend is None:
            backend = self._backend = current_backend()
        self._clock = backend.clock
        self._new_parked = backend.park
        self._wake = backend.wake
        self._leaks.soon = backend.call_soon_threadsafe
        self._connector = Connector(self._state, backend, self._emit, self._rng)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._sweeper, name="conpool sweeper")
        if self.budget is not None:
            participant = self.budget._join(
                give_back=self._give_back, emit=self._emit, library=backend.name
            )
            self._participant = participant
            # Serving a dial that waits for budget also cuts its wait short
            # (see _wake_budgeted): set on this pool only, so that a pool
            # without a budget wakes its waiters as it did.
            self._wake = self._wake_budgeted
            try:
                await tg.start(participant.run, name="conpool budget")
            except BaseException:
                # (Cancelled while subscribing: the pool never opened.)
                self.budget._leave(participant)
                self._state.close()
                tg.cancel_scope.cancel()
                try:
                    await tg.__aexit__(None, None, None)
                finally:
                    await participant.aclose()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        tg = self._tg
        assert tg is not None
        try:
            participant = self._participant
            if participant is not None:
                assert self.budget is not None
                # Tell the fleet of the connections just closed, within
                # reason, even when the exit is cancelled: leases not flushed
                # expire after lease_ttl anyway.
                try:
                    with anyio.move_on_after(2 * self.budget.timeout, shield=True):
                        await participant.flush(now=True)
                finally:
                    self.budget._leave(participant)
        finally:
            tg.cancel_scope.cancel()
            try:
                # Exit the task group as if the body ended normally, so that
                # an exception from the body propagates as itself, not wrapped
                # in an ExceptionGroup along with the (cancelled) sweeper.
                await tg.__aexit__(None, None, None)
            finally:
                if self._participant is not None:
                    # (Its tasks have ended: nothing uses its clients now.)
                    await self._participant.aclose()

    async def aclose(self) -> None:
        """Close the pool: idle connections close now, connections in use
        close when released, and every waiting or later acquire raises
        :class:`~conpool.PoolClosed`.  Safe to call more than once."""
        if self._state.closed:
            return
        self._emit("pool.close")
        self._state.close()
        self._flush()

    # -- the hot path ------------------------------------------------------------

    def connection(self, endpoint: Endpoint, **options: Unpack[AcquireOptions]) -> _Lease:
        """``async with pool.connection(endpoint) as conn``: acquire, then
        release on a normal exit or close on an exception.

        :param endpoint: where to connect.
        :param options: ``fresh``, ``timeout``, ``connect_timeout``, as for
            :meth:`acquire`.
        :raises ConnectError: no connection could be made (see :meth:`acquire`).
        :raises PoolTimeout: no slot within ``acquire_timeout`` (or ``timeout``).
        :raises PoolClosed: the pool is closed.
        """
        if options:
            # (Checked when the block is entered, as acquire() checks them.)
            with_options = _new_lease(
                _OptionLease if self._lease is _Lease else _ResettingOptionLease
            )
            with_options._pool = self
            with_options._endpoint = endpoint
            with_options._conn = None
            with_options._options = options
            return with_options
        # No __init__: one Python call per request fewer.
        lease = _new_lease(self._lease)
        lease._pool = self
        lease._endpoint = endpoint
        lease._conn = None
        return lease

    async def acquire(self, endpoint: Endpoint, **options: Unpack[AcquireOptions]) -> Connection:
        """A connection to ``endpoint``: an idle one if the pool has one,
        else a new one (waiting for a free slot if the limits are reached).

        :param endpoint: where to connect.
        :param options: keywords, each optional.  ``fresh=True``: never
            hand out an idle connection: dial a new one (within the limits;
            when the endpoint's limit is reached and some of its connections
            are idle, the least recently used idle one is closed to make
            room), for retrying a request that failed on a reused
            connection.  ``timeout``: seconds to wait for a free slot (None:
            no limit), for this call instead of ``Config.acquire_timeout``; with a
            budget, the wait for the fleet's lease shares this deadline.
            ``connect_timeout``: seconds per connection attempt (None: no
            limit), for this call instead of ``Config.connect_timeout``.
        :returns: a :class:`~conpool.Connection`; give it back with :meth:`release`.
        :raises TypeError: ``endpoint`` is not a :class:`~conpool.Endpoint`,
            or an option is not a number (or None, or a bool for ``fresh``).
        :raises ValueError: ``timeout`` is negative or NaN, ``connect_timeout``
            is zero, negative or NaN.
        :raises ConnectError: every attempt failed; its text tells the story.
        :raises ResolveError: the name did not resolve.
        :raises PoolTimeout: no slot (or, with a budget, no lease) within
            ``acquire_timeout`` (or ``timeout``), or ``max_waiters`` tasks
            already wait.
        :raises PoolClosed: the pool is closed, or closed while waiting.
        """
        if options:
            return await self._acquire_with(endpoint, options, "acquire")
        conn = self._grab(endpoint)
        if conn is not None:
            return conn
        ep = self._last_ep
        if self._got is WAIT and self._quick_wait:
            # Contended, with no timeout and no health check: wait in this
            # frame, not in _acquire's.  A woken task resumes through every
            # coroutine level between it and what it awaits, and each level
            # costs the contended path a visible share.
            w = self._park(ep)
            try:
                await w.handle
            except BaseException as exc:
                self._gave_up(w, exc)
                raise
            rec = self._served(w)
            if rec is not None:
                return self._hand_out(rec)
            return await self._dial(ep)
        return await self._acquire(ep, self._got)

    async def _acquire_with(
        self, endpoint: Endpoint, options: Mapping[str, Any], call: str
    ) -> Connection:
        """:meth:`acquire` with options (of a call to ``call``): validated,
        then the same steps."""
        fresh, timeout, connect_timeout = _options(options, call)
        return await self._acquire_given(endpoint, fresh, timeout, connect_timeout)

    async def _acquire_given(
        self, endpoint: Endpoint, fresh: object, slot_timeout: object, connect_timeout: object
    ) -> Connection:
        """:meth:`acquire` with its options as arguments (``slot_timeout``
        is ``timeout``; UNSET: not given):
        what a protocol layer that passes them on every request calls (the
        httpx transport), sparing the keywords' dict."""
        if fresh is not True and fresh is not False:
            raise TypeError(f"fresh must be a bool, got {type(fresh).__name__} {fresh!r}")
        last = self._last_limits
        if slot_timeout is last[0] and connect_timeout is last[1]:
            wait, dial = last[2]
        else:
            wait, dial = limits = self._limits(slot_timeout, connect_timeout)
            self._last_limits = (slot_timeout, connect_timeout, limits)
        if fresh:
            return await self._acquire_fresh(endpoint, wait, dial)
        conn = self._grab(endpoint)
        if conn is not None:
            return conn
        return await self._acquire(self._last_ep, self._got, wait, dial)

    def _limits(
        self, timeout: object, connect_timeout: object
    ) -> tuple[float | None, float | None]:
        """(seconds to wait for a slot, seconds per attempt) of an acquire's
        ``timeout`` and ``connect_timeout`` (UNSET: the config's), checked.

        :meth:`_acquire_given` keeps the last pair by identity: a protocol
        layer passes the same objects on every request (httpx's ``Timeout``
        values), so they are checked once, not twice per request.
        """
        wait = (
            self._acquire_timeout
            if timeout is UNSET
            else _float("timeout", timeout, finite=False, optional=True)
        )
        dial = (
            self.config.connect_timeout
            if connect_timeout is UNSET
            else _float(
                "connect_timeout", connect_timeout, inclusive=False, finite=False, optional=True
            )
        )
        # An infinite number of seconds is no limit, as in Config.
        if wait is not None and wait == float("inf"):
            wait = None
        if dial is not None and dial == float("inf"):
            dial = None
        return wait, dial

    async def _acquire_fresh(
        self, endpoint: Endpoint, wait: float | None, connect_timeout: float | None
    ) -> Connection:
        """A new connection, never an idle one (``acquire(fresh=True)``)."""
        state = self._state
        ep = self._endpoint_state(endpoint)
        deadline = None if wait is None else self._clock() + wait
        while True:
            got = state.acquire_fresh(ep)
            if state.to_close or state.to_wake:
                self._flush()
            if got is DIAL:
                return await self._dial(ep, connect_timeout, deadline, wait)
            w = self._park(ep)
            try:
                if wait is None:
                    await w.handle
                else:
                    await self._wait_timed(w, wait)
            except BaseException as exc:
                self._gave_up(w, exc)
                raise
            granted = self._served(w)
            if granted is None:
                return await self._dial(ep, connect_timeout, deadline, wait)
            # Served a connection someone released: not what was asked for.
            # Closing it frees its slot; the next round dials in it (or
            # waits again, if a waiter that came first takes it).
            state.discard(granted, "fresh")
            self._flush()

    def _endpoint_state(self, endpoint: Endpoint) -> Ep:
        """The machine's state of ``endpoint`` (made on first use), as
        :meth:`_grab` finds it."""
        if endpoint is self._last_key:
            if self._state.closed:
                raise PoolClosed("the pool is closed")
            return self._last_ep
        try:
            found = self._state.endpoints.get(endpoint)
        except TypeError:
            found = None
        ep = self._new_endpoint(endpoint) if found is None else found
        if self._state.closed:
            raise PoolClosed("the pool is closed")
        self._last_key = endpoint
        self._last_ep = ep
        return ep

    async def _acquire(
        self,
        ep: Ep,
        got: Rec | Answer,
        wait: float | _Unset | None = UNSET,
        connect_timeout: float | _Unset | None = UNSET,
    ) -> Connection:
        """The rest of an acquire: health checks, dialling, waiting (for at
        most ``wait`` seconds, each connection attempt for at most
        ``connect_timeout``; by default the config's)."""
        state = self._state
        if wait is UNSET:
            wait = self._acquire_timeout
        assert not isinstance(wait, _Unset)
        # One deadline for the whole acquire: the slot wait and a dial's
        # wait for the fleet budget share ``wait``.
        deadline = None if wait is None else self._clock() + wait
        while True:
            if got is DIAL:
                return await self._dial(ep, connect_timeout, deadline, wait)
            if got is WAIT:
                # Wait, in this frame: every contended acquire resumes
                # through it, and each coroutine level costs.
                w = self._park(ep)
                try:
                    if wait is None:
                        await w.handle
                    else:
                        await self._wait_timed(w, wait)
                except BaseException as exc:
                    self._gave_up(w, exc)
                    raise
                granted = self._served(w)
                if granted is None:
                    return await self._dial(ep, connect_timeout, deadline, wait)
                if self._health is None or await self._healthy(granted):
                    return self._hand_out(granted)
            else:
                if self._health is None or await self._healthy(got):
                    return self._hand_out(got)
            got = state.acquire(ep, self._clock())
            if state.to_close or state.to_wake:
                self._flush()

    async def release(self, conn: Connection) -> None:
        """Give a connection back.  It becomes idle for the next acquire, or
        is closed if it was closed, broken, expired or used up.

        :raises TypeError: ``conn`` is not a :class:`~conpool.Connection`.
        :raises ValueError: ``conn`` belongs to another pool.
        :raises RuntimeError: ``conn`` was already released.
        """
        if self._reset is not None:
            await self._reset_then_put_back(conn)
            return
        self._put_back(conn)

    async def _reset_then_put_back(self, conn: Connection) -> None:
        """A release with ``Config.reset``: run it (when the connection would
        be reused), then put the connection back, closing it if it failed."""
        try:
            ok = await self._life.run_reset(conn)
        except BaseException:
            # Cancelled mid-reset: the exchange may be half done, so the
            # connection is broken; its slot still goes back.
            self._put_back(conn)
            raise
        if ok:
            self._put_back(conn)
        else:
            self._put_back_closing(conn, "reset")

    def _wake_budgeted(self, waiters: list[Wait]) -> None:
        """The backend's wake, for a pool with a budget: a dial waiting for
        the fleet's lease is a waiter of the machine too (first come, first
        served), but it waits in the budget, not on its handle; serving it
        (a connection came back for it, or the pool closed) nudges that wait
        to end now rather than at its next poll."""
        backend = self._backend
        assert backend is not None
        backend.wake(waiters)
        participant = self._participant
        if participant is not None:
            for w in waiters:
                if w.budget:
                    participant.idle_now(w.ep.key)

    async def prewarm(self, endpoint: Endpoint, n: int | None = None) -> int:
        """Open connections to ``endpoint`` now, until ``n`` are idle, so
        that the first requests find them ready (each runs ``on_connect``).

        The endpoint is then one the pool serves: with ``Config.min_idle``
        its floor is kept from here on.  Never beyond the limits, never
        evicting another endpoint's idle connections.

        :param endpoint: where to connect.
        :param n: how many idle connections to have; ``None`` for
            ``max(Config.min_idle, 1)``.
        :returns: the number of idle connections to ``endpoint`` now.
        :raises TypeError: ``endpoint`` is not an :class:`~conpool.Endpoint`,
            or ``n`` is not an int.
        :raises ValueError: ``n`` is negative.
        :raises ConnectError: dials were needed and not a single one opened a
            connection (or the name did not resolve: :class:`~conpool.ResolveError`).
        :raises PoolClosed: the pool is closed.
        """
        n = prewarm_count(n, self.config.min_idle)
        try:
            found = self._state.endpoints.get(endpoint)
        except TypeError:
            found = None
        ep = self._new_endpoint(endpoint) if found is None else found
        if self._state.closed:
            raise PoolClosed("the pool is closed")
        return await self._life.prewarm(ep, endpoint, n)

    def stats(self) -> PoolStats:
        """A frozen snapshot of every count (see :class:`~conpool.PoolStats`)."""
        stats = super().stats()
        if self._participant is not None:
            stats = dataclasses.replace(stats, budget=participant_stats(self._participant))
        return stats

    def __repr__(self) -> str:
        status = "open" if self._tg is not None else "not entered"
        return self._describe("conpool.Pool", status)

    # -- helpers -------------------------------------------------------------------

    def _new_endpoint(self, endpoint: Endpoint) -> Ep:
        if not isinstance(endpoint, Endpoint):
            raise TypeError(f"endpoint must be a conpool.Endpoint, got {endpoint!r}")
        if self._tg is None:
            if self._state.closed:
                raise PoolClosed("the pool is closed")
            raise RuntimeError("use the pool as 'async with conpool.Pool(...) as pool:'")
        return self._new_endpoint_state(endpoint)

    async def _healthy(self, rec: Rec) -> bool:
        """Run the user's health check on a connection about to be reused."""
        assert self._health is not None
        state = self._state
        conn = rec.conn
        assert conn is not None
        # The check uses the connection as its next holder will: not idle
        # (see Connection._rec), so its send and receive work.
        rec.conn = None
        try:
            ok = await self._health(conn)
        except Exception:
            ok = False
        except BaseException:
            # Cancelled mid-check: the exchange may be half done.
            rec.conn = conn
            state.discard(rec, "health")
            self._flush()
            raise
        rec.conn = conn
        if ok is True and not conn._broken:
            return True
        state.discard(rec, "health")
        self._flush()
        return False

    # -- waiting: _acquire parks, awaits the handle, then asks _served ----------

    async def _wait_timed(self, w: Wait, wait: float) -> None:
        """Await a parked waiter's handle for at most ``wait`` seconds."""
        backend = self._backend
        assert backend is not None
        await backend.wait(w.handle, wait)
        if w.grant is None and not self._state.closed:
            raise self._timed_out(w.ep.key, wait)

    # -- hooks -----------------------------------------------------------------------

    # -- resolving and dialling ----------------------------------------------------

    async def _addresses(self, ep: Ep) -> None:
        """Make sure the machine knows the name's current addresses.

        Concurrent dials of one name share one lookup (the cache's): the
        acquire that starts it traces ``resolve.started`` and its outcome,
        each one that joins it traces ``resolve.joined``."""
        name = ep.name
        if name is None:
            return
        now = self._clock()
        ips = self._names.peek(name, now)
        start = 0
        if ips is None:

            def started() -> None:
                nonlocal start
                start = self._lookup_started(ep.key)

            if self._names.looking_up(name):
                self._emit("resolve.joined", ep.key)
            try:
                ips, _changed = await self._names.resolve(name, now, on_lookup=started)
            except Exception as exc:
                raise self._lookup_failed(ep, exc, start) from exc
        self._looked_up(ep, ips, start)

    async def _dial(
        self,
        ep: Ep,
        connect_timeout: float | _Unset | None = UNSET,
        deadline: float | None = None,
        wait: float | None = None,
    ) -> Connection:
        """Open a connection in the slot the machine reserved for us (each
        attempt for at most ``connect_timeout``, by default the config's).

        On any failure, cancellation included, the slot goes back.  With a
        budget, the dial first waits for a lease of the fleet's limit (the
        first of the budget's two call points; the other is in _flush),
        until ``deadline`` (the pool's clock: when the acquire's ``wait``
        seconds, slot wait included, are over; None for no limit)."""
        state = self._state
        connector = self._connector
        assert connector is not None
        lease: Lease | None = None
        if connect_timeout is UNSET:
            connect_timeout = self.config.connect_timeout
        assert not isinstance(connect_timeout, _Unset)
        if self._participant is not None:
            got = await self._budget_lease(ep, connect_timeout, deadline, wait)
            if isinstance(got, Connection):
                return got
            lease = got
        try:
            await self._addresses(ep)
            conn = await connector.connect(ep, connect_timeout)
        except Exception as exc:
            self._return_lease(lease)
            state.dial_failed(ep)
            self._flush()
            self._emit("acquire.failed", ep.key, detail=str(exc))
            raise
        except BaseException:
            self._return_lease(lease)
            state.dial_abandoned(ep)
            self._flush()
            raise
        rec = conn._rec
        if lease is not None:
            self._leases[rec] = lease
        self._note_connected(ep, conn, rec)
        if self._on_connect is not None:
            try:
                await self._life.init(conn)
            except PoolError as exc:
                self._emit("acquire.failed", ep.key, detail=str(exc))
                raise
        if state.closed:
            state.discard(rec, "pool-closed")
            self._flush()
            raise PoolClosed("the pool was closed while connecting")
        return self._hand_out(rec, reused=False)

    # -- the fleet budget ------------------------------------------------------------

    async def _budget_lease(
        self, ep: Ep, connect_timeout: float | None, deadline: float | None, wait: float | None
    ) -> Lease | Connection:
        """The fleet's lease for the dial in ``ep``'s reserved slot, or a
        connection of the pool's own that came back for it meanwhile.

        While the dial cannot have a lease at once (the fleet is at its
        limit, or another dial of the endpoint asks first), it waits in the
        machine's line too (:meth:`PoolState.wait_budget`), holding no slot:
        a connection released meanwhile goes to whoever came first, this
        dial included, and its wait for the lease is then withdrawn.  The
        machine decides what a wait's end means (:meth:`PoolState.budget_over`);
        this carries it out.  On any failure, whatever it held goes back.
        """
        participant = self._participant
        assert participant is not None
        state = self._state
        line = Line(self, ep)
        what = None if wait is None else self._timeout_name(wait)
        while True:
            lease: Lease | None = None
            left = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                try:
                    lease = await participant.acquire(ep.key, left, line.served, line.join, what)
                except GaveUp:
                    pass
                w = line.w
                if w is None:
                    assert lease is not None
                    return lease  # at once: the slot is still this dial's
                got, lease = budget_over(self, w, lease)
            except BaseException as exc:
                budget_failed(self, ep, line.w, lease, exc)
                raise
            if got is DIAL:
                assert lease is not None
                return lease
            # Served by a connection of the pool's own, or no local room for
            # the lease: it goes back either way.
            self._return_lease(lease)
            if got is WAIT:
                queued = w
                try:
                    if left is None:
                        await queued.handle
                    else:
                        await self._wait_timed(queued, left)
                except BaseException as exc:
                    self._gave_up(queued, exc)
                    raise
            rec = self._served(w)
            if rec is None:
                # A slot again (the local limits had no room for the lease
                # before): ask the fleet again.
                line = Line(self, ep)
                continue
            if self._health is None or await self._healthy(rec):
                return self._hand_out(rec)
            left = None if deadline is None else max(0.0, deadline - self._clock())
            return await self._acquire(ep, state.acquire(ep, self._clock()), left, connect_timeout)

    def _note_connected(self, ep: Ep, conn: Connection, rec: Rec) -> None:
        """A new connection is registered: its connect time, its leak watch."""
        _histogram(self._connects, ep).observe(conn._connect_ns / 1e9)
        self._leaks.track(rec, conn)

    # -- background work -----------------------------------------------------------

    async def _sweeper(self) -> None:
        """Close expired idle connections, and refresh names whose answer
        expired while they have connections, so that addresses that left the
        answer drain even when nobody dials.

        It sleeps until the earliest deadline the machine knows of (at most a
        second, for the name refreshes); a release that makes an earlier one
        moves its wake-up forward (see :meth:`_put_back`).
        """
        state = self._state
        interval = self.config.sweep_interval
        while not state.closed:
            now = self._clock()
            if interval is not None:
                delay = interval
            else:
                delay = min(max(state.next_deadline() - now, 0.005), 1.0)
            self._sweep_at = now + delay
            with anyio.CancelScope(deadline=anyio.current_time() + delay) as scope:
                self._sweep_scope = scope
                await anyio.sleep_forever()
            self._sweep_scope = None
            try:
                self._sweep_once()
            except Exception:
                # A bug here must not take the application's tasks down with
                # the pool's task group: log it and keep sweeping.
                logger.exception("conpool: the expiry sweep failed")

    def _sweep_sooner(self, when: float) -> None:
        """Wake the sweeper at time ``when`` (the pool's clock) instead of later."""
        scope = self._sweep_scope
        if scope is not None and self.config.sweep_interval is None:
            self._sweep_at = when
            scope.deadline = anyio.current_time() + max(when - self._clock(), 0.0)

    def _start_refresh(self, ep: Ep) -> None:
        tg = self._tg
        if tg is None:
            assert ep.name is not None
            self._state.refresh_done(ep.name)
        else:
            tg.start_soon(self._refresh, ep)

    def _start_refills(self) -> None:
        self._life.start_refills()

    async def _refresh(self, ep: Ep) -> None:
        """Look a name up again for the sweep (see PoolState.refresh_due)."""
        assert ep.name is not None
        try:
            await self._addresses(ep)
        except PoolError:
            pass  # kept serving the old answer, or nothing to drain; logged as an event
        finally:
            self._state.refresh_done(ep.name)


def _not_entered(*_: object) -> Never:
    # (What a pool not entered yet parks and wakes with: unreachable, since
    # acquiring requires the pool entered.)
    raise RuntimeError("use the pool as 'async with conpool.Pool(...) as pool:'")


Pool.__module__ = "conpool"
