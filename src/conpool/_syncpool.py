"""The threaded shell: :class:`SyncPool`, the same state machine as
:class:`~conpool.Pool` driven from threads.

Locking: one re-entrant lock around every call into the state machine and
the shared book-keeping (:class:`conpool._shell.Shell`); no I/O under it.
Sockets the machine retires are closed after the lock is released
(:meth:`SyncPool._close_conn` queues them), dials, lookups, health checks and
TLS handshakes run with the lock free.

Waiting: a thread that must wait parks on a lock of its own
(:mod:`conpool._backends._threads`), queued in the machine like an async
waiter; whoever frees a slot or a connection serves the oldest waiter under
the pool's lock and releases that thread's lock.  First come, first served.

The sweep: a daemon thread started with the first endpoint, sleeping until
the machine's next deadline (woken earlier by a release that makes one
sooner).  It holds the pool only weakly between sweeps, so it never keeps
the pool or the interpreter alive, and it ends when the pool is closed.

Fork: every entry point compares the pool's fork generation with the
process's (bumped in the child by :func:`os.register_at_fork`).  In a child
the pool starts empty: the inherited sockets' descriptors are closed without
``shutdown()`` and without a TLS goodbye, so the parent's connections carry
on untouched.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._backends._threads import park, wait, wake
from ._budget import RedisBudget, participant_stats
from ._budget_core import GaveUp, Lease
from ._budget_steps import Line, budget_failed, budget_over
from ._config import Config
from ._dialplan import blames_address
from ._endpoint import Endpoint
from ._errors import ConnectError, PoolError, PoolTimeout, describe
from ._hooks import Hooks, logger
from ._leaks import Leaks
from ._lifecycle import init_done, init_failed, prewarm_count, reset_outcome, reset_wanted
from ._resolve import ResolutionCache
from ._shell import Shell, checked_arguments
from ._state import DIAL, WAIT, Answer, ConnRecord, EndpointState, PoolState, Waiter
from ._stats import PoolStats
from ._syncconnect import SyncConnector
from ._syncconnection import SyncConnection
from ._trace import Tracer

if TYPE_CHECKING:
    from ._budget_sync import SyncParticipant

__all__ = ["SyncPool"]

#: Seconds a warm dial waits at most for the fleet budget when no
#: connect_timeout bounds it.
WARM_BUDGET_WAIT = 10.0

Ep = EndpointState[Endpoint, SyncConnection]
Rec = ConnRecord[Endpoint, SyncConnection]
Wait = Waiter[Endpoint, SyncConnection]

# Bumped in a child process after fork(): a pool made in another generation
# starts over before it does anything (see the module docstring).
_generation = [0]


def _forked() -> None:
    _generation[0] += 1


os.register_at_fork(after_in_child=_forked)


def _fork_generation() -> int:
    return _generation[0]


class _Lease:
    """``with pool.connection(ep) as conn`` (made without ``__init__``:
    :meth:`SyncPool.connection` sets the slots; a call of the bare class
    costs less than one of ``object.__new__`` or an ``__init__``)."""

    __slots__ = ("_conn", "_endpoint", "_pool")

    _conn: SyncConnection | None
    _endpoint: Endpoint
    _pool: SyncPool

    def __enter__(self) -> SyncConnection:
        conn = self._conn = self._pool._take(self._endpoint, _DEFAULT, _DEFAULT)
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        conn = self._conn
        self._conn = None
        assert conn is not None
        if exc_type is not None:
            # Left by an exception: the exchange was interrupted and the
            # peer may be mid-response, so the connection is not reused.
            conn._broken = True
        self._pool.release(conn)


class _OptionLease(_Lease):
    """A lease with ``fresh``, ``timeout`` or ``connect_timeout``: checked
    by :meth:`SyncPool.acquire` when the block is entered."""

    __slots__ = ("_options",)

    _options: tuple[Any, Any, Any]

    def __enter__(self) -> SyncConnection:
        fresh, timeout, connect_timeout = self._options
        conn = self._conn = self._pool.acquire(
            self._endpoint, fresh=fresh, timeout=timeout, connect_timeout=connect_timeout
        )
        return conn


_DEFAULT: Any = object()


class SyncPool(Shell[SyncConnection]):
    """A connection pool for threads, keyed by endpoint, balanced across
    every address: the same :class:`~conpool.Config`, limits, balancing,
    errors, stats, tracer and hooks as :class:`~conpool.Pool`.

    Use it as ``with conpool.SyncPool(...) as pool`` (or call :meth:`close`).
    Safe to share between threads.

    :param config: limits and lifetimes; :class:`~conpool.Config` defaults if
        None.  Its ``health_check``, if any, must be a plain function
        ``check(conn: SyncConnection) -> bool``.
    :param resolver: turns names into addresses (its ``resolve_sync``); a
        :class:`~conpool.SystemResolver` if None.
    :param tracer: a :class:`~conpool.Tracer` that receives the pool's events.
    :param budget: a :class:`~conpool.RedisBudget` whose per-endpoint limit
        this pool shares with every other pool using it (threaded or async,
        in any process); the pool is one participant, with a renewal thread
        and a pub/sub thread of its own until :meth:`close`.  Only dials and
        closes talk to it.
    :raises TypeError: an argument of the wrong type.
    """

    _conn_kind = "conpool.SyncConnection"

    def __init__(
        self,
        config: Config | None = None,
        *,
        resolver: Any = None,
        tracer: Tracer | None = None,
        budget: RedisBudget | None = None,
    ) -> None:
        config, resolver = checked_arguments(config, resolver, tracer, "resolve_sync")
        if budget is not None and not isinstance(budget, RedisBudget):
            raise TypeError(f"budget must be a conpool.RedisBudget or None, got {budget!r}")
        self.budget = budget
        health = config.health_check
        for field, hook, shape in (
            ("health_check", health, "check(conn) -> bool"),
            ("on_connect", config.on_connect, "on_connect(conn) -> None"),
            ("reset", config.reset, "reset(conn) -> bool"),
        ):
            if hook is not None and inspect.iscoroutinefunction(hook):
                raise TypeError(
                    f"SyncPool needs a plain function as Config.{field} "
                    f"({shape}), got the coroutine function {hook!r}"
                )
        self._on_connect: Callable[[SyncConnection], object] | None = config.on_connect  # type: ignore[assignment]
        self._reset: Callable[[SyncConnection], object] | None = config.reset  # type: ignore[assignment]
        self.config = config
        self.resolver = resolver
        self.tracer = tracer
        self._hooks = Hooks()
        self._hooks.tracer = tracer
        self._trace = None
        self._trace_rec = None
        # Tracer and hooks are not thread-safe by themselves: one lock of
        # their own, taken only while someone listens.
        self._trace_lock = threading.RLock()
        self._health: Callable[[SyncConnection], object] | None = health  # type: ignore[assignment]
        self._acquire_timeout = config.acquire_timeout
        self._leak_after = config.leak_warning_after
        self._plain = health is None and self._leak_after is None
        self._clock = time.monotonic
        self._new_parked = park
        self._wake = wake
        self._rng = random.Random(config.balance_seed)
        self._retrace()
        self._start()

    def _start(self) -> None:
        """(Re)make everything that belongs to one process: the machine,
        the lock, the cache, the sweeper's signals."""
        config = self.config
        self._gen = _fork_generation()
        self._lock = threading.RLock()
        self._state: PoolState[Endpoint, SyncConnection] = PoolState(config)
        self._state.on_event = self._core_event
        self._names = ResolutionCache(self.resolver, config.dns_stale_limit)
        self._last_key = object()
        self._last_ep = EndpointState(Endpoint("0.0.0.0", 1))
        self._got = WAIT
        self._waits = {}
        self._connects = {}
        self._sweep_at = 0.0
        self._leaks = Leaks(self._state, self._flush, self._emit)
        # A dropped connection's weakref callback may run inside any
        # allocation, under our lock or not: it only queues the reclaim,
        # which the next entry point (or the sweep) runs under the lock.
        self._deferred: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._leaks.soon = self._defer
        self._to_close: deque[SyncConnection] = deque()
        self._refresh_due: list[Ep] = []
        self._refills_due = False
        self._leases = {}
        self._passed = {}
        self._participant: SyncParticipant | None = None
        self._closing = threading.Event()
        self._sweep_wake = threading.Event()
        self._sweeper: threading.Thread | None = None
        connector = SyncConnector(self._state, self._clock, self._emit, self._rng, self._lock)
        connector.gen = _fork_generation
        connector.closing = self._closing
        self._connector = connector
        if self.budget is not None and not self._state.closed:
            self._join_budget(self.budget)

    def _join_budget(self, budget: RedisBudget) -> None:
        """Join the fleet: a participant whose threads hold this pool only
        weakly (an unclosed pool garbage-collected stops them), and a wake
        that also ends the budget wait of a dial the machine served."""
        ref = weakref.ref(self)

        def give_back(endpoint: Endpoint, n: int) -> int:
            pool = ref()
            return 0 if pool is None else pool._give_back_locked(endpoint, n)

        def emit(*args: Any, **kwargs: Any) -> None:
            pool = ref()
            if pool is not None:
                pool._emit(*args, **kwargs)

        participant = budget._join_sync(give_back=give_back, emit=emit)
        self._participant = participant
        weakref.finalize(self, _abandoned, budget, participant)

        def wake_budgeted(waiters: list[Wait]) -> None:
            wake(waiters)
            for w in waiters:
                if w.budget:
                    participant.idle_now(w.ep.key)

        self._wake = wake_budgeted
        participant.start()

    def _after_fork(self) -> None:
        """First use in a child process: forget the parent's connections
        without touching their streams (see the module docstring)."""
        inherited = [rec.conn for rec in list(self._state.lru) if rec.conn is not None]
        closed = self._state.closed
        participant = self._participant
        if participant is not None and self.budget is not None:
            # The parent's membership: its threads did not follow us, and
            # its Redis connections are the parent's (not closed here).
            self.budget._forget(participant)
        self._start()
        if closed:
            self._state.close()
        for conn in inherited:
            # Only this process's descriptor: no shutdown(), no TLS
            # close_notify, so the parent's stream is as it was.
            conn._closed = conn._broken = True
            conn._sock.close()

    def _enter(self) -> None:
        """Every entry point: notice a fork, run deferred reclaims."""
        if self._gen != _generation[0]:
            self._after_fork()
        if self._deferred:
            with self._lock:
                while self._deferred:
                    fn, args = self._deferred.popleft()
                    fn(*args)
            self._close_pending()

    def _defer(self, fn: Callable[..., object], /, *args: Any) -> None:
        # (Run by the next entry point, or the next sweep at the latest.)
        self._deferred.append((fn, args))

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> SyncPool:
        if self._state.closed:
            raise RuntimeError("a SyncPool cannot be used again once closed")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool: idle connections close now, connections in use
        close when released, every waiting or later acquire raises
        :class:`~conpool.PoolClosed`, and the sweeper thread ends.  Safe to
        call more than once."""
        self._enter()
        with self._lock:
            if self._state.closed:
                return
            self._emit("pool.close")
            self._state.close()
            self._flush()
        self._closing.set()
        self._sweep_wake.set()
        self._close_pending()
        participant = self._participant
        if participant is not None and self.budget is not None:
            # Tell the fleet of the connections just closed (a connection
            # still in use gives its share back within lease_ttl).
            try:
                participant.close()
            finally:
                self.budget._leave(participant)

    # -- acquiring and releasing ---------------------------------------------------

    def connection(
        self,
        endpoint: Endpoint,
        *,
        fresh: bool = False,
        timeout: float | None = _DEFAULT,
        connect_timeout: float | None = _DEFAULT,
    ) -> _Lease:
        """``with pool.connection(endpoint) as conn``: acquire, then release
        on a normal exit or close on an exception.  Takes the arguments of
        :meth:`acquire`."""
        if fresh is not False or timeout is not _DEFAULT or connect_timeout is not _DEFAULT:
            options = _OptionLease()
            options._options = (fresh, timeout, connect_timeout)
            lease: _Lease = options
        else:
            lease = _Lease()
        lease._pool = self
        lease._endpoint = endpoint
        lease._conn = None
        return lease

    def acquire(
        self,
        endpoint: Endpoint,
        *,
        fresh: bool = False,
        timeout: float | None = _DEFAULT,
        connect_timeout: float | None = _DEFAULT,
    ) -> SyncConnection:
        """A connection to ``endpoint``: an idle one if the pool has one,
        else a new one (waiting for a free slot if the limits are reached).

        :param endpoint: where to connect.
        :param fresh: never hand out an idle connection: dial a new one
            (within the limits; when the endpoint's limit is reached and
            some of its connections are idle, the least recently used idle
            one is closed to make room).  For retrying a request that failed
            on a reused connection.
        :param timeout: seconds to wait for a slot (None: as long as it
            takes), instead of ``Config.acquire_timeout`` for this call; with
            a budget, the wait for the fleet's lease shares this deadline.
        :param connect_timeout: seconds per connection attempt, instead of
            ``Config.connect_timeout`` for this call.
        :returns: a :class:`~conpool.SyncConnection`; give it back with :meth:`release`.
        :raises TypeError: ``endpoint`` is not a :class:`~conpool.Endpoint`,
            or ``fresh`` is not a bool.
        :raises ValueError: a negative or NaN ``timeout`` or ``connect_timeout``.
        :raises ConnectError: every attempt failed; its text tells the story.
        :raises ResolveError: the name did not resolve.
        :raises PoolTimeout: no slot (or, with a budget, no lease) within
            the timeout, or ``max_waiters`` threads already wait.
        :raises PoolClosed: the pool is closed, or closed while waiting.
        """
        if fresh is False and timeout is _DEFAULT and connect_timeout is _DEFAULT:
            return self._take(endpoint, _DEFAULT, _DEFAULT)
        if timeout is not _DEFAULT and timeout is not None:
            timeout = _seconds("timeout", timeout)
        if connect_timeout is not _DEFAULT and connect_timeout is not None:
            connect_timeout = _seconds("connect_timeout", connect_timeout)
        if fresh is False:
            return self._take(endpoint, timeout, connect_timeout)
        if fresh is not True:
            raise TypeError(f"fresh must be a bool, got {type(fresh).__name__} {fresh!r}")
        return self._acquire_fresh(
            endpoint,
            self._acquire_timeout if timeout is _DEFAULT else timeout,
            self.config.connect_timeout if connect_timeout is _DEFAULT else connect_timeout,
        )

    def _take(self, endpoint: Endpoint, timeout: Any, connect_timeout: Any) -> SyncConnection:
        """An acquire with checked options (``_DEFAULT``: the config's)."""
        if self._gen != _generation[0] or self._deferred:
            self._enter()
        # (acquire/release, not ``with``: the lock's __enter__ and __exit__
        # would be looked up and bound anew on every lease.)
        lock = self._lock
        lock.acquire()
        try:
            conn = self._grab(endpoint)
            if conn is None:
                ep = self._last_ep
                got = self._got
        finally:
            lock.release()
        if self._to_close:
            self._close_pending()
        if conn is not None:
            return conn
        return self._acquire(
            ep,
            got,
            self._acquire_timeout if timeout is _DEFAULT else timeout,
            self.config.connect_timeout if connect_timeout is _DEFAULT else connect_timeout,
        )

    def _acquire(
        self, ep: Ep, got: Rec | Answer, timeout: float | None, connect_timeout: float | None
    ) -> SyncConnection:
        """The rest of an acquire: health checks, dialling, waiting."""
        lock = self._lock
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            if got is DIAL:
                return self._dial(ep, connect_timeout, deadline, timeout)
            if got is WAIT:
                granted = self._wait(ep, deadline, timeout)
                if granted is None:
                    return self._dial(ep, connect_timeout, deadline, timeout)
                got = granted
            assert isinstance(got, ConnRecord)
            if self._health is None or self._healthy(got):
                with lock:
                    return self._hand_out(got)
            with lock:
                got = self._state.acquire(ep, self._clock())
                if self._state.to_close or self._state.to_wake:
                    self._flush()
            self._close_pending()

    def _ep_for(self, endpoint: Endpoint) -> Ep:
        """The machine's state of ``endpoint``, made on first use (under the lock)."""
        try:
            found = self._state.endpoints.get(endpoint)
        except TypeError:
            found = None
        return self._new_endpoint(endpoint) if found is None else found

    def _acquire_fresh(
        self, endpoint: Endpoint, timeout: float | None, connect_timeout: float | None
    ) -> SyncConnection:
        """A new connection, never an idle one (``acquire(fresh=True)``)."""
        self._enter()
        lock = self._lock
        state = self._state
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            with lock:
                ep = self._ep_for(endpoint)
                got = state.acquire_fresh(ep)
                if state.to_close or state.to_wake:
                    self._flush()
            self._close_pending()
            if got is DIAL:
                return self._dial(ep, connect_timeout, deadline, timeout)
            granted = self._wait(ep, deadline, timeout)
            if granted is None:
                return self._dial(ep, connect_timeout, deadline, timeout)
            # Served a connection someone released: not what was asked for.
            # Closing it frees its slot; the next round dials in it (or
            # waits again, if a waiter that came first takes it).
            with lock:
                state.discard(granted, "fresh")
                self._flush()
            self._close_pending()

    def _wait(self, ep: Ep, deadline: float | None, timeout: float | None) -> Rec | None:
        """Park until served: a connection record, or None for a dial slot."""
        with self._lock:
            w = self._park(ep)
        return self._wait_parked(w, deadline, timeout)

    def _wait_parked(self, w: Wait, deadline: float | None, timeout: float | None) -> Rec | None:
        """Block on a parked waiter's handle until served (or the deadline)."""
        lock = self._lock
        ep = w.ep
        try:
            wait(w.handle, None if deadline is None else deadline - self._clock())
        except BaseException as exc:
            with lock:
                self._gave_up(w, exc)
            self._close_pending()
            raise
        with lock:
            if w.grant is None and not self._state.closed:
                assert timeout is not None
                timed_out = self._timed_out(ep.key, timeout)
                self._gave_up(w, timed_out)
            else:
                return self._served(w)
        self._close_pending()
        raise timed_out

    def _healthy(self, rec: Rec) -> bool:
        """Run the user's health check (lock free) on a connection about to be reused."""
        assert self._health is not None
        conn = rec.conn
        assert conn is not None
        # The check uses the connection as its next holder will: not idle.
        rec.conn = None
        try:
            ok = self._health(conn)
        except Exception:
            ok = False
        finally:
            rec.conn = conn
        if ok is True and not conn._broken:
            return True
        with self._lock:
            self._state.discard(rec, "health")
            self._flush()
        self._close_pending()
        return False

    def _dial(
        self,
        ep: Ep,
        connect_timeout: float | None,
        deadline: float | None = None,
        timeout: float | None = None,
    ) -> SyncConnection:
        """Open a connection in the slot the machine reserved for us; on any
        failure the slot goes back.  With a budget, the dial first waits
        for a lease of the fleet's limit, until ``deadline`` (the acquire's
        ``timeout`` seconds, slot wait included)."""
        lock = self._lock
        lease: Lease | None = None
        if self._participant is not None:
            got = self._budget_lease(ep, connect_timeout, deadline, timeout)
            if isinstance(got, SyncConnection):
                return got
            lease = got
        try:
            self._addresses(ep)
            conn = self._connector.connect(ep, connect_timeout)
        except Exception as exc:
            with lock:
                self._return_lease(lease)
                self._dial_failed(ep, exc)
            self._close_pending()
            raise
        except BaseException:
            with lock:
                self._return_lease(lease)
                self._dial_abandoned(ep)
            self._close_pending()
            raise
        with lock:
            if lease is not None:
                self._leases[conn._rec] = lease
            self._note_new(ep, conn)
        try:
            if self._on_connect is not None:
                self._init(conn)
            with lock:
                return self._hand_new(conn)
        finally:
            if self._to_close:
                self._close_pending()

    def _budget_lease(
        self, ep: Ep, connect_timeout: float | None, deadline: float | None, timeout: float | None
    ) -> Lease | SyncConnection:
        """The fleet's lease for the dial in ``ep``'s reserved slot, or a
        connection that came back for it meanwhile: the async pool's
        ``_budget_lease`` on threads (the machine decides, the steps are
        :mod:`conpool._budget_steps`', taken under the lock)."""
        participant = self._participant
        assert participant is not None
        lock = self._lock
        state = self._state
        line = Line(self, ep, lock, self._close_pending)
        what = None if timeout is None else self._timeout_name(timeout)
        while True:
            lease: Lease | None = None
            left = None if deadline is None else max(0.0, deadline - self._clock())
            try:
                try:
                    lease = participant.acquire(ep.key, left, line.served, line.join, what)
                except GaveUp:
                    pass
                w = line.w
                if w is None:
                    assert lease is not None
                    return lease  # at once: the slot is still this dial's
                with lock:
                    got, lease = budget_over(self, w, lease)
            except BaseException as exc:
                with lock:
                    budget_failed(self, ep, line.w, lease, exc)
                self._close_pending()
                raise
            if got is DIAL:
                assert lease is not None
                return lease
            with lock:
                self._return_lease(lease)  # served, or no local room for it
                rec = None if got is WAIT else self._served(w)
            if got is WAIT:
                rec = self._wait_parked(w, deadline, timeout)
            if rec is None:
                line = Line(self, ep, lock, self._close_pending)
                continue  # a slot again: ask the fleet again
            if self._health is None or self._healthy(rec):
                with lock:
                    return self._hand_out(rec)
            left = None if deadline is None else max(0.0, deadline - self._clock())
            with lock:
                again = state.acquire(ep, self._clock())
                self._flush()
            self._close_pending()
            return self._acquire(ep, again, left, connect_timeout)

    def _give_back_locked(self, endpoint: Endpoint, n: int) -> int:
        """The budget's give-back (from its threads), under the pool's lock."""
        with self._lock:
            done = self._give_back(endpoint, n)
        self._close_pending()
        return done

    def _warm_lease(self, ep: Ep) -> Lease | None:
        """A warm dial's lease (a prewarm or a refill counts in the fleet's
        budget like any connection); waiting for it is bounded.
        :raises PoolError: no lease (in time, or Redis down and fail-closed)."""
        participant = self._participant
        if participant is None:
            return None
        return participant.acquire(ep.key, self.config.connect_timeout or WARM_BUDGET_WAIT)

    def _init(self, conn: SyncConnection, *, warm: bool = False, refill: bool = False) -> None:
        """Run ``on_connect`` (lock free) on a new connection, as the async
        pool does (:mod:`conpool._lifecycle`'s halves that do not wait)."""
        assert self._on_connect is not None
        rec = conn._rec
        start = time.monotonic_ns()
        rec.conn = None  # used as its first holder would: not idle
        try:
            self._on_connect(conn)
        except BaseException as exc:
            rec.conn = conn
            with self._lock:
                error = init_failed(self, conn, exc, start, warm, refill)
            if error is exc:
                raise
            if not warm:
                self._emit("acquire.failed", conn.endpoint, detail=str(error))
            raise error from exc
        rec.conn = conn
        with self._lock:
            try:
                init_done(self, conn, start, warm, refill)
            except PoolError as exc:
                if not warm:
                    self._emit("acquire.failed", conn.endpoint, detail=str(exc))
                raise

    def _addresses(self, ep: Ep) -> None:
        """Make sure the machine knows the name's current addresses (the
        lookup runs with the lock free; threads share one per name)."""
        name = ep.name
        if name is None:
            return
        names = self._names
        now = self._clock()
        ips = names.peek(name, now)
        start = 0
        if ips is None:

            def started() -> None:
                nonlocal start
                start = self._lookup_started(ep.key)

            if names.looking_up(name):
                self._emit("resolve.joined", ep.key)
            try:
                ips, _changed = names.resolve_sync(name, now, on_lookup=started)
            except Exception as exc:
                raise self._lookup_failed(ep, exc, start) from exc
        with self._lock:
            self._looked_up(ep, ips, start)
        self._close_pending()

    def release(self, conn: SyncConnection) -> None:
        """Give a connection back.  It becomes idle for the next acquire, or
        is closed if it was closed, broken, expired or used up.

        :raises TypeError: ``conn`` is not a :class:`~conpool.SyncConnection`.
        :raises ValueError: ``conn`` belongs to another pool.
        :raises RuntimeError: ``conn`` was already released.
        """
        if conn.__class__ is not SyncConnection and not isinstance(conn, SyncConnection):
            raise TypeError(f"release() takes a conpool.SyncConnection, got {conn!r}")
        if conn._gen != _generation[0]:
            # Held across a fork: the parent owns the stream; only this
            # process's descriptor goes.
            if not conn._closed:
                conn._closed = conn._broken = True
                conn._sock.close()
            return
        if conn._timeout is not None and not conn._broken:
            try:
                conn._sock.settimeout(None)
                conn._timeout = None
            except OSError:
                conn._broken = True
        if self._gen != _generation[0] or self._deferred:
            self._enter()
        if self._reset is not None and not self._reset_ok(conn):
            with self._lock:
                self._put_back_closing(conn, "reset")
        else:
            lock = self._lock  # (see _take)
            lock.acquire()
            try:
                self._put_back(conn)
            finally:
                lock.release()
        if self._to_close:
            self._close_pending()

    def _reset_ok(self, conn: SyncConnection) -> bool:
        """Run ``reset`` (lock free) before a release that would reuse
        ``conn``; False when it must be closed instead."""
        assert self._reset is not None
        with self._lock:
            wanted = reset_wanted(self, conn)
        if not wanted:
            return True
        start = time.monotonic_ns()
        try:
            ok = self._reset(conn)
        except Exception as exc:
            ok, detail = False, describe(exc)
        except BaseException:
            conn._broken = True
            with self._lock:
                self._put_back(conn)
            raise
        else:
            detail = f"returned {ok!r}"
        with self._lock:
            return reset_outcome(self, conn, ok, detail, start)

    def prewarm(self, endpoint: Endpoint, n: int | None = None) -> int:
        """Open connections to ``endpoint`` now, until ``n`` are idle (each
        runs ``on_connect``), one after another in the calling thread.  The
        endpoint is then one the pool serves: with ``Config.min_idle`` its
        floor is kept from here on.  Never beyond the limits.

        :param n: how many idle connections to have; ``None`` for
            ``max(Config.min_idle, 1)``.
        :returns: the number of idle connections to ``endpoint`` now.
        :raises TypeError: ``endpoint`` is not an :class:`~conpool.Endpoint`,
            or ``n`` is not an int.
        :raises ValueError: ``n`` is negative.
        :raises ConnectError: dials were needed and not one opened a connection.
        :raises PoolClosed: the pool is closed.
        """
        n = prewarm_count(n, self.config.min_idle)
        self._enter()
        lock = self._lock
        state = self._state
        with lock:
            ep = self._ep_for(endpoint)
        self._addresses(ep)
        with lock:
            k = state.reserve_warm(ep, n)
        errors: list[ConnectError] = []
        opened = 0
        try:
            for _ in range(k):
                lease = None
                try:
                    lease = self._warm_lease(ep)
                    conn = self._connector.connect(ep, self.config.connect_timeout)
                except PoolTimeout:
                    # No room in the fleet's budget: nothing to open, no error.
                    with lock:
                        state.warm_abandoned(ep, None)
                        self._flush()
                    continue
                except ConnectError as exc:
                    with lock:
                        self._return_lease(lease)
                        state.warm_abandoned(ep, None, failed=True)
                        self._flush()
                    errors.append(exc)
                    continue
                except BaseException:
                    with lock:
                        self._return_lease(lease)
                        state.warm_abandoned(ep, None)
                        self._flush()
                    raise
                with lock:
                    if lease is not None:
                        self._leases[conn._rec] = lease
                    self._note_new(ep, conn)
                if self._on_connect is not None:
                    try:
                        self._init(conn, warm=True)
                    except ConnectError as exc:
                        errors.append(exc)
                        continue
                opened += 1
                with lock:
                    state.warm_ready(conn._rec, self._clock())
                    self._flush()
        finally:
            self._close_pending()
        if k and not opened:
            raise errors[0]
        with lock:
            return ep.idle

    def stats(self) -> PoolStats:
        """A frozen snapshot of every count (see :class:`~conpool.PoolStats`)."""
        self._enter()
        with self._lock:
            stats = super().stats()
        if self._participant is not None:
            stats = dataclasses.replace(stats, budget=participant_stats(self._participant))
        return stats

    def __repr__(self) -> str:
        return self._describe("conpool.SyncPool", "open")

    # -- the shared book-keeping's hooks into this shell ---------------------------

    def _new_endpoint(self, endpoint: Endpoint) -> Ep:
        if not isinstance(endpoint, Endpoint):
            raise TypeError(f"endpoint must be a conpool.Endpoint, got {endpoint!r}")
        ep = self._new_endpoint_state(endpoint)
        if self._sweeper is None:
            self._sweeper = threading.Thread(
                target=_sweep, args=(weakref.ref(self),), name="conpool sweeper", daemon=True
            )
            self._sweeper.start()
        return ep

    def _close_conn(self, conn: SyncConnection) -> None:
        # Under the lock: the socket is closed once it is released.
        self._to_close.append(conn)

    def _close_pending(self) -> None:
        pending = self._to_close
        while pending:
            try:
                conn = pending.popleft()
            except IndexError:
                return
            conn._close_now()

    def _sweep_sooner(self, when: float) -> None:
        if self.config.sweep_interval is None:
            self._sweep_at = when
            self._sweep_wake.set()

    def _start_refills(self) -> None:
        # Done by the sweeper thread (woken now) once it let go of the lock.
        self._refills_due = True
        self._sweep_wake.set()

    def _refill(self, ep: Ep, ip: str) -> None:
        """One background dial of the warm floor (the sweeper thread): one
        attempt, no retries (the backoff between refills is the retry);
        nothing raises out of it."""
        lock = self._lock
        state = self._state
        endpoint = ep.key
        start = time.monotonic_ns()
        self._emit("connect.started", endpoint, ip, detail="refill")
        lease = None
        try:
            try:
                lease = self._warm_lease(ep)
            except PoolError as exc:
                raise _NoBudget(str(exc)) from exc
            conn = self._connector.open_one(ep, ip, self.config.connect_timeout)
        except Exception as exc:
            cause = (exc.__cause__ or exc) if isinstance(exc, _NoBudget) else exc
            self._emit(
                "connect.failed",
                endpoint,
                ip,
                duration_ns=time.monotonic_ns() - start,
                detail=f"refill: {describe(cause)}",
            )
            # (No budget is the refill's failure, backed off, not the address's.)
            blamed = not isinstance(exc, _NoBudget) and blames_address(exc)
            with lock:
                self._return_lease(lease)
                state.refill_failed(ep, ip, self._clock(), counts=blamed)
                self._flush()
            return
        except BaseException:
            with lock:
                self._return_lease(lease)
                state.warm_abandoned(ep, ip)
                self._flush()
            raise
        with lock:
            rec = state.refill_connected(ep, ip, conn, self._clock())
            conn._rec = rec
            if lease is not None:
                self._leases[rec] = lease
            self._note_new(ep, conn)
        self._emit(
            "connect.complete", endpoint, ip, rec.id, duration_ns=conn._connect_ns, detail="refill"
        )
        if self._on_connect is not None:
            try:
                self._init(conn, warm=True, refill=True)
            except PoolError:
                return  # traced (on_connect.failed), closed, backing off
        with lock:
            state.warm_ready(rec, self._clock(), refill=True)
            self._flush()

    def _start_refresh(self, ep: Ep) -> None:
        # Done by the sweeper thread once it let go of the lock.
        self._refresh_due.append(ep)

    def _retrace(self) -> None:
        super()._retrace()
        trace, trace_rec = self._trace, self._trace_rec
        if trace is None or trace_rec is None:
            return
        lock = self._trace_lock

        def locked(*args: Any, **kwargs: Any) -> None:
            with lock:
                trace(*args, **kwargs)

        def locked_rec(kind: str, rec: Rec, now: float) -> None:
            with lock:
                trace_rec(kind, rec, now)

        self._trace = locked
        self._trace_rec = locked_rec

    def _sweep_once_unlocked(self) -> None:
        """One sweep from the sweeper thread: the machine's part under the
        lock, closes and name refreshes after."""
        self._enter()
        with self._lock:
            self._sweep_once()
            due, self._refresh_due = self._refresh_due, []
        self._close_pending()
        if self._refills_due:
            self._refills_due = False
            with self._lock:
                dials = self._state.refills(self._clock())
            for ep, ip in dials:
                self._refill(ep, ip)
            self._close_pending()
        for ep in due:
            assert ep.name is not None
            try:
                self._addresses(ep)
            except PoolError:
                pass  # kept serving the old answer, or nothing to drain; traced
            finally:
                with self._lock:
                    self._state.refresh_done(ep.name)

    def _next_sweep(self) -> float:
        """Seconds until the sweeper should look again."""
        interval = self.config.sweep_interval
        with self._lock:
            now = self._clock()
            delay = (
                interval
                if interval is not None
                else min(max(self._state.next_deadline() - now, 0.005), 1.0)
            )
            self._sweep_at = now + delay
        return delay


def _sweep(ref: weakref.ref[SyncPool]) -> None:
    """The sweeper thread: holds the pool only while sweeping, so that a
    pool dropped without close is collected (and its thread ends)."""
    pool = ref()
    if pool is None:
        return
    gen = pool._gen
    while True:
        if pool._state.closed or pool._gen != gen or gen != _generation[0]:
            return
        delay = pool._next_sweep()
        wake_up = pool._sweep_wake
        del pool
        wake_up.wait(delay)
        wake_up.clear()
        pool = ref()
        if pool is None:
            return
        if pool._state.closed or pool._gen != gen:
            return
        try:
            pool._sweep_once_unlocked()
        except Exception:
            logger.exception("conpool: the expiry sweep failed")


def _abandoned(budget: RedisBudget, participant: SyncParticipant) -> None:
    """A pool with a budget was garbage-collected unclosed: its threads stop
    (its leases expire after lease_ttl) and the budget stops counting it."""
    participant.stop()
    budget._leave(participant)


class _NoBudget(Exception):
    """The fleet budget refused a refill's lease."""


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0 or None, got {value!r}")
    return float(value)


SyncPool.__module__ = "conpool"
