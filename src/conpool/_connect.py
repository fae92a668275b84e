"""Making one pooled connection: retries, address choice, Happy Eyeballs.

Each *round* dials the address the state machine picks (the balancing
policy, skipping ejected addresses and those this dial already tried).  When
the name has both IPv4 and IPv6 addresses, a round is a Happy Eyeballs race
(RFC 8305, section 5): if the first attempt has neither succeeded nor failed
after ``happy_eyeballs_delay`` (250 ms by default, the RFC's recommended
"Connection Attempt Delay"), a second attempt starts to an address of the
other family, the first to succeed wins, and the loser is cancelled and its
socket closed.  A failure starts the next attempt at once instead of waiting
out the delay (section 5: "... or the previous attempt fails").

Between rounds the connector sleeps an exponential backoff with full jitter.
Errors that retrying cannot fix (TLS certificate failures) end the dial early.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

import anyio

from ._connection import Connection
from ._dial import backoff_delay, retryable, tls_failure
from ._endpoint import Endpoint
from ._errors import ConnectError, ResolveError, describe
from ._state import EndpointState, PoolState

__all__ = ["Connector", "Opener"]

#: ``opener(endpoint, ip, port, connect_timeout) -> Connection``: one attempt.
Opener = Callable[[Endpoint, str, int, "float | None"], Awaitable[Connection]]
Emit = Callable[..., None]

_monotonic = time.monotonic


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


class Connector:
    """Opens connections in slots the state machine reserved."""

    def __init__(self, state: PoolState, opener: Opener, emit: Emit, rng: random.Random) -> None:
        self.state = state
        self.config = state.config
        self.opener = opener
        self.emit = emit
        self.rng = rng

    async def connect(self, ep: EndpointState, endpoint: Endpoint) -> Connection:
        """A registered connection (its record active), or :class:`ConnectError`."""
        config = self.config
        errors: list[tuple[str, BaseException]] = []
        tried: list[str] = []
        rounds = 1 + config.connect_retries
        done = 0
        for round_no in range(rounds):
            if round_no:
                delay = backoff_delay(
                    round_no, config.retry_backoff, config.retry_backoff_max, self.rng
                )
                self.emit(
                    "connect.retry",
                    endpoint,
                    errors[-1][0],
                    detail=f"attempt {round_no + 1} of {rounds} in {delay:.3f} s",
                )
                await anyio.sleep(delay)
            failed_before = len(errors)
            done += 1
            conn = await self._round(ep, endpoint, tried, errors)
            if conn is not None:
                return conn
            if not any(retryable(exc) for _, exc in errors[failed_before:]):
                break
        ip, last = errors[-1]
        host = f"[{ip}]" if ":" in ip else ip
        context = [f"connecting to tcp:{host}:{endpoint.port}", f"connecting to {endpoint}"]
        if done > 1:
            retries = done - 1
            context.append(f"after {retries} retry attempt{'s' if retries > 1 else ''}")
        raise ConnectError(
            describe(last),
            endpoint=endpoint,
            errors=[exc for _, exc in errors],
            context=context,
        ) from last

    async def _round(
        self,
        ep: EndpointState,
        endpoint: Endpoint,
        tried: list[str],
        errors: list[tuple[str, BaseException]],
    ) -> Connection | None:
        state = self.state
        first = state.pick_address(ep, _monotonic(), tried)
        if first is None:
            raise ResolveError(
                "the name has no address", endpoint=endpoint, context=[f"connecting to {endpoint}"]
            )
        families = {_family(a.ip) for a in ep.listed}
        if len(families) < 2:
            conn = await self._attempt(ep, endpoint, first, tried, errors)
            return None if conn is None else self._register(ep, endpoint, conn)
        return await self._race(ep, endpoint, first, tried, errors)

    async def _race(
        self,
        ep: EndpointState,
        endpoint: Endpoint,
        first: str,
        tried: list[str],
        errors: list[tuple[str, BaseException]],
    ) -> Connection | None:
        state = self.state
        # The winner is registered with the state machine only after the race
        # is over, so a cancellation arriving while the loser is torn down
        # cannot strand a registered connection nobody holds.
        winner: list[Connection] = []
        # An address that started first and lost to the other family counts
        # a failure when cancelled: a black-holed family is then ejected
        # after a few races instead of costing the delay on every dial.
        slow: set[str] = set()

        async def attempt(ip: str, failed: anyio.Event, scope: anyio.CancelScope) -> None:
            conn = await self._attempt(ep, endpoint, ip, tried, errors, slow)
            if conn is None:
                failed.set()
            elif winner:
                _discard(state, ep, conn)
            else:
                winner.append(conn)
                if ip != first:
                    slow.add(first)
                scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                first_failed = anyio.Event()
                tg.start_soon(attempt, first, first_failed, tg.cancel_scope)
                with anyio.move_on_after(self.config.happy_eyeballs_delay):
                    await first_failed.wait()
                if not winner:
                    other = 4 if _family(first) == 6 else 6
                    second = state.pick_address(ep, _monotonic(), [*tried, first], family=other)
                    if second is not None:
                        self.emit("connect.race", endpoint, second, detail=f"racing {first}")
                        tg.start_soon(attempt, second, anyio.Event(), tg.cancel_scope)
        except BaseException:
            for conn in winner:
                _discard(state, ep, conn)
            raise
        return self._register(ep, endpoint, winner[0]) if winner else None

    async def _attempt(
        self,
        ep: EndpointState,
        endpoint: Endpoint,
        ip: str,
        tried: list[str],
        errors: list[tuple[str, BaseException]],
        slow: set[str] | frozenset[str] = frozenset(),
    ) -> Connection | None:
        """One connection attempt to ``ip`` (already counted pending there).
        Returns the unregistered connection, or None after recording the error.
        A cancellation counts as the address's failure when ``ip`` is in
        ``slow`` (it lost a Happy Eyeballs race it started first)."""
        state = self.state
        start = time.monotonic_ns()
        self.emit("connect.started", endpoint, ip)
        try:
            conn = await self.opener(endpoint, ip, endpoint.port, self.config.connect_timeout)
        except BaseException as exc:
            # OSError covers refusals, resets, timeouts and TLS failures;
            # anything else is cancellation or a bug, and propagates as is.
            # The events go out before the state machine hears of the failure,
            # so an ejection it decides on follows the failure that caused it.
            elapsed = time.monotonic_ns() - start
            if not isinstance(exc, OSError):
                lost = ip in slow
                self.emit(
                    "connect.cancelled",
                    endpoint,
                    ip,
                    duration_ns=elapsed,
                    detail="lost the Happy Eyeballs race" if lost else type(exc).__name__,
                )
                state.attempt_failed(ep, ip, _monotonic(), counts=lost)
                raise
            errors.append((ip, exc))
            tried.append(ip)
            if tls_failure(exc):
                tls_ns = getattr(exc, "conpool_tls_ns", None)
                self.emit("tls.failed", endpoint, ip, duration_ns=tls_ns, detail=describe(exc))
            self.emit("connect.failed", endpoint, ip, duration_ns=elapsed, detail=describe(exc))
            state.attempt_failed(ep, ip, _monotonic(), counts=True)
            return None
        conn.connect_ns = time.monotonic_ns() - start
        if conn.tls_ns is not None:
            self.emit("tls.complete", endpoint, ip, duration_ns=conn.tls_ns)
        return conn

    def _register(self, ep: EndpointState, endpoint: Endpoint, conn: Connection) -> Connection:
        rec = self.state.connected(ep, conn.address[0], conn, _monotonic())
        conn._rec = rec
        self.emit(
            "connect.complete", endpoint, conn.address[0], rec.id, duration_ns=conn.connect_ns
        )
        return conn


def _discard(state: PoolState, ep: EndpointState, conn: Connection) -> None:
    """Close a connection that lost a race (never registered)."""
    state.attempt_failed(ep, conn.address[0], _monotonic(), counts=False)
    conn.close_now()
