"""Making one pooled connection: the shell that carries out a dial's plan.

Every choice is made elsewhere: the address of each attempt by the state
machine (:meth:`PoolState.pick_address <conpool._state.PoolState.pick_address>`:
the balancing policy, skipping ejected addresses and those this dial already
tried); whether a round races two address families, what a lost race counts
as, when to retry, how long to back off and when to give up by
:mod:`conpool._dialplan`.  This module opens the sockets (through the backend),
sleeps, races, traces, and registers the winner with the state machine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar

import anyio

from ._backends import Backend
from ._backends._sockets import SocketFactory
from ._connection import Connection
from ._dialplan import DialPlan, Race, blames_address, should_race, tls_failure
from ._endpoint import Endpoint
from ._errors import ConnectError, ResolveError, describe
from ._proxy import Proxy
from ._state import EndpointState, PoolState

__all__ = ["NO_LOCK", "Connector", "Dialer"]

Emit = Callable[..., None]
State = PoolState[Endpoint, Connection]
Ep = EndpointState[Endpoint, Connection]
C = TypeVar("C", bound="DialedConn")


class DialedConn(Protocol):
    """What a dial asks of either shell's connection."""

    address: tuple[str, int]
    _rec: Any
    _connect_ns: int
    _tls_ns: int | None

    def _usable(self, idle: float) -> bool: ...

    def _close_now(self) -> None: ...


class _NoLock:
    """The async shell's lock: none (nothing between two awaits can interleave)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


NO_LOCK = _NoLock()


class Dialer(Generic[C]):
    """What a dial does the same way in both shells: the story of a retry,
    of a failed attempt and of a dial that gave up, and registering the winner
    with the state machine.  A shell's connector (the async :class:`Connector`,
    the threaded one in :mod:`conpool._syncconnect`) does the waiting.

    :param state: the state machine.
    :param clock: the pool's clock.
    :param emit: the shell's trace point.
    :param rng: the backoff's jitter.
    :param lock: held around every call into the state machine (the threaded
        shell's lock; none for the async shell).
    """

    def __init__(
        self,
        state: PoolState[Endpoint, C],
        clock: Callable[[], float],
        emit: Emit,
        rng: random.Random,
        lock: AbstractContextManager[Any] = NO_LOCK,
    ) -> None:
        self.state = state
        self.config = state.config
        self.clock = clock
        self.emit = emit
        self.rng = rng
        self.lock = lock
        self.sockets = SocketFactory.of(self.config)

    def _proxy(self, endpoint: Endpoint) -> Proxy | None:
        """The proxy a dial to ``endpoint`` goes through (never for a Unix
        socket: it is local by definition)."""
        if endpoint.is_unix:
            return None
        return self.config.proxy_for(endpoint.host, endpoint.port)

    def _plan(self, attempt_timeout: float | None) -> DialPlan:
        config = self.config
        return DialPlan(
            config.connect_retries,
            config.retry_backoff,
            config.retry_backoff_max,
            self.rng,
            attempt_timeout,
        )

    def _retrying(self, ep: EndpointState[Endpoint, C], plan: DialPlan, delay: float) -> None:
        self.emit(
            "connect.retry",
            ep.key,
            plan.errors[-1][0],
            detail=f"attempt {plan.round} of {plan.rounds} in {delay:.3f} s",
        )

    def _no_address(self, ep: EndpointState[Endpoint, C], plan: DialPlan) -> str:
        """The address the round starts with (the state machine's pick)."""
        with self.lock:
            first = self.state.pick_address(ep, self.clock(), plan.tried)
        if first is None:
            raise ResolveError(
                "the name has no address", endpoint=ep.key, context=[f"connecting to {ep.key}"]
            )
        return first

    def _gave_up(self, ep: EndpointState[Endpoint, C], plan: DialPlan) -> ConnectError:
        endpoint = ep.key
        last = plan.errors[-1][1]
        error = ConnectError(
            describe(last),
            endpoint=endpoint,
            errors=[exc for _, exc in plan.errors],
            context=plan.context(endpoint, endpoint.port, self._proxy(endpoint), endpoint.is_unix),
        )
        error.__cause__ = last
        error.__suppress_context__ = True
        return error

    def _failed(
        self,
        ep: EndpointState[Endpoint, C],
        ip: str,
        plan: DialPlan,
        exc: OSError,
        elapsed: int,
    ) -> None:
        """An attempt to ``ip`` failed with ``exc`` after ``elapsed`` ns.
        The events go out before the state machine hears of the failure, so
        an ejection it decides on follows the failure that caused it."""
        endpoint = ep.key
        plan.failed(ip, exc)
        if tls_failure(exc):
            tls_ns = getattr(exc, "conpool_tls_ns", None)
            self.emit("tls.failed", endpoint, ip, duration_ns=tls_ns, detail=describe(exc))
        self.emit("connect.failed", endpoint, ip, duration_ns=elapsed, detail=describe(exc))
        with self.lock:
            self.state.attempt_failed(ep, ip, self.clock(), counts=blames_address(exc))

    def _cancelled(
        self,
        ep: EndpointState[Endpoint, C],
        ip: str,
        why: str,
        elapsed: int,
        race: Race | None,
    ) -> None:
        """An attempt to ``ip`` was abandoned (``why``: what stopped it): lost
        a race or its caller gave up."""
        lost = race is not None and race.cancel_counts(ip)
        self.emit(
            "connect.cancelled",
            ep.key,
            ip,
            duration_ns=elapsed,
            detail="lost the Happy Eyeballs race" if lost else why,
        )
        with self.lock:
            self.state.attempt_failed(ep, ip, self.clock(), counts=lost)

    def _connected(self, ep: EndpointState[Endpoint, C], conn: C, start: int) -> None:
        conn._connect_ns = time.monotonic_ns() - start
        if conn._tls_ns is not None:
            self.emit("tls.complete", ep.key, conn.address[0], duration_ns=conn._tls_ns)

    def _register(self, ep: EndpointState[Endpoint, C], conn: C) -> C:
        with self.lock:
            rec = self.state.connected(ep, conn.address[0], conn, self.clock())
        conn._rec = rec
        self.emit("connect.complete", ep.key, conn.address[0], rec.id, duration_ns=conn._connect_ns)
        return conn

    def _discard(self, ep: EndpointState[Endpoint, C], conn: C) -> None:
        """Close a connection that lost a race (never registered)."""
        with self.lock:
            self.state.attempt_failed(ep, conn.address[0], self.clock(), counts=False)
        conn._close_now()


class Connector(Dialer[Connection]):
    """Opens connections in slots the state machine reserved (async shell).

    :param state: the state machine.
    :param backend: opens the sockets and tells the time.
    :param emit: the shell's trace point.
    :param rng: the backoff's jitter.
    """

    def __init__(self, state: State, backend: Backend, emit: Emit, rng: random.Random) -> None:
        super().__init__(state, backend.clock, emit, rng)
        self.backend = backend

    async def connect(self, ep: Ep, attempt_timeout: float | None) -> Connection:
        """A registered connection (its record active), or :class:`ConnectError`.

        :param attempt_timeout: seconds per attempt (the caller's
            ``connect_timeout``, or the config's).
        """
        plan = self._plan(attempt_timeout)
        while (delay := plan.next_round()) is not None:
            if plan.round > 1:
                self._retrying(ep, plan, delay)
                await anyio.sleep(delay)
            conn = await self._round(ep, plan)
            if conn is not None:
                return conn
        raise self._gave_up(ep, plan)

    async def _round(self, ep: Ep, plan: DialPlan) -> Connection | None:
        first = self._no_address(ep, plan)
        if not should_race(a.ip for a in ep.listed):
            conn = await self._attempt(ep, first, plan)
            return None if conn is None else self._register(ep, conn)
        return await self._race(ep, first, plan)

    async def _race(self, ep: Ep, first: str, plan: DialPlan) -> Connection | None:
        state = self.state
        race = Race(first)
        # The winner is registered with the state machine only after the race
        # is over, so a cancellation arriving while the loser is torn down
        # cannot strand a registered connection nobody holds.
        winner: list[Connection] = []

        async def attempt(ip: str, failed: anyio.Event, scope: anyio.CancelScope) -> None:
            conn = await self._attempt(ep, ip, plan, race)
            if conn is None:
                failed.set()
            elif race.won(ip):
                winner.append(conn)
                scope.cancel()
            else:
                self._discard(ep, conn)

        try:
            async with anyio.create_task_group() as tg:
                first_failed = anyio.Event()
                tg.start_soon(attempt, first, first_failed, tg.cancel_scope)
                with anyio.move_on_after(self.config.happy_eyeballs_delay):
                    await first_failed.wait()
                if not winner:
                    second = state.pick_address(
                        ep, self.backend.clock(), [*plan.tried, first], family=race.second_family()
                    )
                    if second is not None:
                        race.second = second
                        self.emit("connect.race", ep.key, second, detail=f"racing {first}")
                        tg.start_soon(attempt, second, anyio.Event(), tg.cancel_scope)
        except BaseException:
            for conn in winner:
                self._discard(ep, conn)
            raise
        return self._register(ep, winner[0]) if winner else None

    async def _attempt(
        self, ep: Ep, ip: str, plan: DialPlan, race: Race | None = None
    ) -> Connection | None:
        """One connection attempt to ``ip`` (already counted pending there).
        Returns the unregistered connection, or None after recording the
        error.  Whether a cancellation counts as the address's failure is the
        race's to say."""
        endpoint = ep.key
        start = time.monotonic_ns()
        self.emit("connect.started", endpoint, ip)
        try:
            conn = await self.open(endpoint, ip, plan.attempt_timeout)
        except BaseException as exc:
            # OSError covers refusals, resets, timeouts and TLS failures;
            # anything else is cancellation or a bug, and propagates as is.
            elapsed = time.monotonic_ns() - start
            if not isinstance(exc, OSError):
                self._cancelled(ep, ip, type(exc).__name__, elapsed, race)
                raise
            self._failed(ep, ip, plan, exc, elapsed)
            return None
        self._connected(ep, conn, start)
        return conn

    async def open(self, endpoint: Endpoint, ip: str, attempt_timeout: float | None) -> Connection:
        """The backend's one attempt to ``ip``, for at most ``attempt_timeout``
        seconds: through the proxy that applies, or directly on a socket made
        with the configured options (the warm floor's refills open theirs
        here too)."""
        proxy = self._proxy(endpoint)
        if proxy is None:
            return await self.backend.open(
                endpoint, ip, endpoint.port, attempt_timeout, sockets=self.sockets
            )
        return await self.backend.open(
            endpoint,
            ip,
            endpoint.port,
            attempt_timeout,
            proxy=proxy,
            trace=self._tracer(endpoint, ip),
        )

    def _tracer(self, endpoint: Endpoint, ip: str) -> Callable[[str, int | None, str], None]:
        """What a proxied attempt reports its handshake span through."""
        emit = self.emit

        def trace(kind: str, duration_ns: int | None, detail: str) -> None:
            emit(kind, endpoint, ip, duration_ns=duration_ns, detail=detail)

        return trace
