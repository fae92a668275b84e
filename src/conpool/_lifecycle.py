"""What the pool shell does around a connection's life: ``on_connect`` on
every new connection, ``reset`` before reuse, and the warm floor's dials
(refills in the background, ``pool.prewarm()`` on demand).

The decisions (how many warm dials, where, when to back off) are the state
machine's (:meth:`conpool._state.PoolState.refills`); this does the I/O and
reports back, as :mod:`conpool._pool` does for acquires.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup

from ._dialplan import address_label, blames_address
from ._errors import ConnectError, PoolError, PoolTimeout, describe
from ._hooks import logger
from ._state import ConnRecord, EndpointState, PoolState

if TYPE_CHECKING:
    from ._budget_core import Lease
    from ._budget_redis import Participant
    from ._config import Config
    from ._connect import Connector
    from ._connection import Connection
    from ._endpoint import Endpoint

__all__ = [
    "Lifecycle",
    "Shell",
    "init_done",
    "init_failed",
    "prewarm_count",
    "reset_outcome",
    "reset_wanted",
]

#: Seconds a warm dial waits at most for the fleet budget when no timeout
#: bounds it (``connect_timeout=None``): a floor must not wait forever.
_BUDGET_WAIT = 10.0


class _NoBudget(Exception):
    """The fleet budget refused a refill (no lease in time, or Redis down
    with ``on_unavailable="fail-closed"``)."""

    def __init__(self, cause: PoolError) -> None:
        super().__init__(str(cause))
        self.cause = cause


# The state machine's types, with the shell's key and connection.
State = PoolState["Endpoint", "Connection"]
Ep = EndpointState["Endpoint", "Connection"]
Rec = ConnRecord["Endpoint", "Connection"]


class Shell(Protocol):
    """What this module uses of the pool shell (:class:`conpool.Pool`),
    named here so that the shell can import this module and not the other
    way round."""

    config: Config
    _state: State
    _connector: Connector | None
    _tg: TaskGroup | None
    _clock: Callable[[], float]
    # The fleet budget (conpool.RedisBudget): this pool's participant, and
    # the lease of each connection it has open.
    _participant: Participant | None
    _leases: dict[Rec, Lease]

    def _flush(self) -> None: ...

    def _return_lease(self, lease: Lease | None) -> None: ...

    def _emit(
        self,
        kind: str,
        endpoint: object = "",
        address: str = "",
        conn_id: int = 0,
        duration_ns: int | None = None,
        detail: str = "",
    ) -> None: ...

    def _addresses(self, ep: Ep) -> Awaitable[None]: ...

    def _note_connected(self, ep: Ep, conn: Connection, rec: Rec) -> Any: ...


class Lifecycle:
    """The pool's lifecycle work (one per :class:`~conpool.Pool`)."""

    def __init__(self, pool: Shell) -> None:
        self.pool = pool
        self.on_connect = pool.config.on_connect
        self.reset = pool.config.reset

    # -- on_connect ------------------------------------------------------------

    async def init(self, conn: Connection, *, warm: bool = False, refill: bool = False) -> None:
        """Run ``on_connect`` on a new, registered connection (held, not idle).

        If it raises, the connection is closed and :class:`ConnectError` is
        raised with the hook's exception; a cancellation closes it too.
        """
        hook = self.on_connect
        assert hook is not None
        rec = conn._rec
        start = time.monotonic_ns()
        # The hook uses the connection as its first holder would: not idle.
        rec.conn = None
        try:
            await hook(conn)
        except BaseException as exc:
            rec.conn = conn
            error = init_failed(self.pool, conn, exc, start, warm, refill)
            if error is exc:
                raise
            raise error from exc
        rec.conn = conn
        init_done(self.pool, conn, start, warm, refill)

    # -- reset -------------------------------------------------------------------

    async def run_reset(self, conn: Connection) -> bool:
        """Before a release that would reuse ``conn``: run ``reset``.
        Returns False when the release must close it instead (``reset``
        said False, raised, or broke the connection); a cancellation marks
        it broken and propagates."""
        hook = self.reset
        assert hook is not None
        if not reset_wanted(self.pool, conn):
            return True
        start = time.monotonic_ns()
        try:
            ok = await hook(conn)
        except Exception as exc:
            return reset_outcome(self.pool, conn, False, describe(exc), start)
        except BaseException:
            conn._broken = True
            raise
        return reset_outcome(self.pool, conn, ok, f"returned {ok!r}", start)

    # -- the warm floor ----------------------------------------------------------

    def start_refills(self) -> None:
        """Start the warm dials the state machine asks for (each a task in
        the pool's task group)."""
        pool = self.pool
        tg = pool._tg
        state = pool._state
        dials = state.refills(pool._clock())
        if not dials:
            return
        if tg is None:
            for ep, ip in dials:
                state.warm_abandoned(ep, ip)
            pool._flush()
            return
        for ep, ip in dials:
            tg.start_soon(self._refill, ep, ip, name="conpool refill")

    async def _refill(self, ep: Ep, ip: str) -> None:
        """One background dial to ``ip``: one attempt, no retries (the
        backoff between refills is the retry).  Nothing raises out of it."""
        pool = self.pool
        state = pool._state
        endpoint = ep.key
        connector = pool._connector
        assert connector is not None
        start = time.monotonic_ns()
        pool._emit("connect.started", endpoint, ip, detail="refill")
        lease = None
        try:
            if pool._participant is not None:
                # A warm connection counts in the fleet's budget like any
                # other; waiting for it is bounded, and a refusal is the
                # refill's failure (backed off), not the address's.
                try:
                    lease = await pool._participant.acquire(
                        endpoint, pool.config.connect_timeout or _BUDGET_WAIT
                    )
                except PoolError as exc:
                    raise _NoBudget(exc) from exc
            conn = await connector.open(endpoint, ip, connector.config.connect_timeout)
        except Exception as exc:
            pool._return_lease(lease)
            cause = exc.cause if isinstance(exc, _NoBudget) else exc
            pool._emit(
                "connect.failed",
                endpoint,
                ip,
                duration_ns=time.monotonic_ns() - start,
                detail=f"refill: {describe(cause)}",
            )
            blamed = not isinstance(exc, _NoBudget) and blames_address(exc)
            state.refill_failed(ep, ip, pool._clock(), counts=blamed)
            pool._flush()
            return
        except BaseException:
            pool._return_lease(lease)
            state.warm_abandoned(ep, ip)
            pool._flush()
            raise
        conn._connect_ns = time.monotonic_ns() - start
        rec = state.refill_connected(ep, ip, conn, pool._clock())
        conn._rec = rec
        if lease is not None:
            pool._leases[rec] = lease  # (given back when it closes: Pool._flush)
        pool._emit(
            "connect.complete", endpoint, ip, rec.id, duration_ns=conn._connect_ns, detail="refill"
        )
        pool._note_connected(ep, conn, rec)
        if self.on_connect is not None:
            try:
                await self.init(conn, warm=True, refill=True)
            except PoolError:
                return  # traced (on_connect.failed), closed, backing off
        state.warm_ready(rec, pool._clock(), refill=True)
        pool._flush()

    async def prewarm(self, ep: Ep, endpoint: Endpoint, n: int) -> int:
        """Open connections until ``n`` are idle (see :meth:`Pool.prewarm`)."""
        pool = self.pool
        state = pool._state
        connector = pool._connector
        assert connector is not None
        await pool._addresses(ep)
        k = state.reserve_warm(ep, n)
        wait_budget = pool.config.connect_timeout or _BUDGET_WAIT
        errors: list[ConnectError] = []
        opened = 0

        async def one() -> None:
            nonlocal opened
            lease = None
            try:
                if pool._participant is not None:
                    lease = await pool._participant.acquire(
                        ep.key,
                        wait_budget
                        if pool.config.acquire_timeout is None
                        else pool.config.acquire_timeout,
                    )
                conn = await connector.connect(ep, connector.config.connect_timeout)
            except PoolTimeout:
                # No room in the fleet's budget: nothing to open, no error.
                state.warm_abandoned(ep, None)
                pool._flush()
                return
            except ConnectError as exc:
                pool._return_lease(lease)
                state.warm_abandoned(ep, None, failed=True)
                pool._flush()
                errors.append(exc)
                return
            except BaseException:
                pool._return_lease(lease)
                state.warm_abandoned(ep, None)
                pool._flush()
                raise
            rec = conn._rec
            if lease is not None:
                pool._leases[rec] = lease
            pool._note_connected(ep, conn, rec)
            if self.on_connect is not None:
                try:
                    await self.init(conn, warm=True)
                except ConnectError as exc:
                    errors.append(exc)
                    return
            opened += 1
            state.warm_ready(rec, pool._clock())
            pool._flush()

        if k:
            async with anyio.create_task_group() as tg:
                for _ in range(k):
                    tg.start_soon(one)
        if k and not opened:
            raise errors[0]
        if errors:
            logger.debug("conpool: prewarm of %s: %d of %d dials failed", endpoint, len(errors), k)
        return ep.idle


# -- the halves of on_connect and reset that do not wait: both shells' -----------


def prewarm_count(n: object, min_idle: int) -> int:
    """``prewarm()``'s ``n``, checked (``None``: ``max(min_idle, 1)``).

    :raises TypeError: not an int.
    :raises ValueError: negative.
    """
    if n is None:
        return max(min_idle, 1)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int or None, got {type(n).__name__} {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    return n


def init_failed(
    pool: Any, conn: Any, exc: BaseException, start: int, warm: bool, refill: bool
) -> BaseException:
    """``on_connect`` raised ``exc``: close the connection and return what
    to raise (a :class:`ConnectError` with the hook's error; a cancellation
    or interrupt as it is)."""
    rec = conn._rec
    endpoint: Endpoint = conn.endpoint
    ip = conn.address[0]
    if isinstance(exc, Exception):
        # (Traced before the close it causes.)
        pool._emit(
            "on_connect.failed",
            endpoint,
            ip,
            rec.id,
            time.monotonic_ns() - start,
            ("refill: " if refill else "") + describe(exc),
        )
    pool._state.init_failed(rec, pool._clock(), warm=warm, background=refill)
    pool._flush()
    if not isinstance(exc, Exception):
        return exc  # cancelled: closed, and the cancellation goes on
    return _init_error(endpoint, ip, exc)


def init_done(pool: Any, conn: Any, start: int, warm: bool, refill: bool) -> None:
    """``on_connect`` returned: trace it, unless it left the connection
    broken (then close it and raise :class:`ConnectError`)."""
    rec = conn._rec
    endpoint: Endpoint = conn.endpoint
    ip = conn.address[0]
    if conn._broken:
        # The hook closed it, or left it in an unknown state.
        error = ConnectionError("on_connect closed the connection or left it broken")
        pool._emit("on_connect.failed", endpoint, ip, rec.id, None, str(error))
        pool._state.init_failed(rec, pool._clock(), warm=warm, background=refill)
        pool._flush()
        raise _init_error(endpoint, ip, error)
    pool._emit("on_connect.complete", endpoint, ip, rec.id, time.monotonic_ns() - start)


def _init_error(endpoint: Endpoint, ip: str, exc: BaseException) -> ConnectError:
    error = ConnectError(
        describe(exc),
        endpoint=endpoint,
        errors=[exc],
        context=[
            "running on_connect",
            f"connecting to {address_label(ip, endpoint.port, endpoint.is_unix)}",
            f"connecting to {endpoint}",
        ],
    )
    error.__cause__ = exc
    return error


def reset_wanted(pool: Any, conn: Any) -> bool:
    """Whether a release of ``conn`` runs ``reset`` first: only one that
    would be reused (a foreign, released or broken one goes to the release,
    which refuses or closes it)."""
    state: Any = pool._state
    rec = getattr(conn, "_rec", None)
    if not isinstance(rec, ConnRecord) or rec.ep.owner is not state:
        return False
    if rec.conn is not None or conn._broken:
        return False
    would_reuse = pool._state.would_reuse
    return bool(would_reuse(rec, pool._clock()))


def reset_outcome(pool: Any, conn: Any, ok: object, detail: str, start: int) -> bool:
    """``reset`` answered ``ok`` (``detail`` says how): trace it; True when
    the connection may be reused."""
    rec = conn._rec
    elapsed = time.monotonic_ns() - start
    if ok is True and not conn._broken:
        pool._emit("reset.complete", conn.endpoint, conn.address[0], rec.id, elapsed)
        return True
    pool._emit("reset.failed", conn.endpoint, conn.address[0], rec.id, elapsed, detail)
    return False
