"""Leak detection: connections dropped without release, and held too long.

While a user holds a connection the pool keeps no strong reference to it
(the record's ``conn`` is None), so one that is dropped gets
garbage-collected.  A weak reference notices; its callback may run inside
any allocation, even in the middle of a state transition, so it only
schedules the reclaim on the pool's event loop.  The reclaim closes the
socket through a closer that never referenced the connection, gives the
slot back to the state machine, and raises a ``ResourceWarning``.

With ``Config.leak_warning_after``, each hand-out also records the stack that
acquired it, and the sweeper logs connections held longer than that.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._hooks import logger
from ._records import ACTIVE, ConnRecord

if TYPE_CHECKING:
    from ._endpoint import Endpoint
    from ._state import PoolState


class Watched(Protocol):
    """Either shell's connection, as the leak watch sees it."""

    def _closer(self) -> Callable[[], None]: ...


Rec = ConnRecord["Endpoint", Any]

__all__ = ["Leaks", "note_taken"]


def note_taken(rec: Rec) -> None:
    """Record when and where the current holder acquired the connection."""
    watch: _Watch = rec.leak
    watch.taken = time.monotonic()
    watch.site = "".join(traceback.format_stack(limit=16)[:-3])
    watch.reported = False


class _Watch(weakref.ref[Watched]):
    """What the pool keeps of a connection it may not hold strongly: a weak
    reference that is also the record of what to do when it dies (one
    object per connection, not a weakref plus a callback plus a record)."""

    __slots__ = ("closer", "rec", "reported", "site", "taken")

    def __new__(
        cls,
        conn: Watched,
        callback: Callable[[_Watch], None],
        rec: Rec,
        closer: Callable[[], None],
    ) -> _Watch:
        return super().__new__(cls, conn, callback)

    def __init__(
        self,
        conn: Watched,
        callback: Callable[[_Watch], None],
        rec: Rec,
        closer: Callable[[], None],
    ) -> None:
        # (weakref.ref's own __init__ does nothing that __new__ did not.)
        self.rec = rec
        self.closer = closer
        # Only with Config.leak_warning_after: when and where the current
        # holder acquired it, and whether that was reported already.
        self.taken = 0.0
        self.site: str | None = None
        self.reported = False


class Leaks:
    """The pool's leak watch.

    :param state: the state machine to give reclaimed slots back to.
    :param flush: the shell's "do what the machine decided".
    :param emit: the shell's trace point.
    """

    def __init__(
        self,
        state: PoolState[Endpoint, Any],
        flush: Callable[[], None],
        emit: Callable[..., None],
    ) -> None:
        self.state = state
        self.flush = flush
        self.emit = emit
        # Schedules a call on the pool's event loop from anywhere (set when
        # the pool is entered).
        self.soon: Callable[..., object] | None = None

    def track(self, rec: Rec, conn: Watched) -> None:
        """Watch a new connection for the rest of its life."""
        rec.leak = _Watch(conn, self._collected, rec, conn._closer())

    def _collected(self, watch: _Watch) -> None:
        rec = watch.rec
        if rec.state is ACTIVE and rec.conn is None and self.soon is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to do
                self.soon(self.reclaim, rec)

    def reclaim(self, rec: Rec) -> None:
        """Close a connection that was dropped without release, give its
        slot back, and say so."""
        if rec.state is not ACTIVE or rec.conn is not None:
            return
        watch: _Watch = rec.leak
        self.state.discard(rec, "leaked")
        watch.closer()
        self.flush()
        what = f"connection #{rec.id} to {rec.ep.key} via {rec.addr.ip}"
        self.emit("conn.leaked", rec.ep.key, rec.addr.ip, rec.id, detail=what)
        where = (
            f", acquired at:\n{watch.site}"
            if watch.site
            else " (set Config.leak_warning_after to record where connections are acquired)"
        )
        warnings.warn(
            f"conpool: {what} was garbage-collected without being released; the pool "
            f"closed it and reclaimed its slot{where}",
            ResourceWarning,
            stacklevel=1,
        )

    def warn_held_too_long(self, now: float, after: float) -> None:
        """Log, once per hand-out, connections held longer than ``after``."""
        for rec in list(self.state.ages):
            if rec.state is not ACTIVE or rec.conn is not None or rec.leak is None:
                continue
            watch: _Watch = rec.leak
            if watch.reported or watch.site is None or now - watch.taken < after:
                continue
            logger.warning(
                "conpool: connection #%d to %s via %s held for %.1f s (over "
                "leak_warning_after=%g s), acquired at:\n%s",
                rec.id,
                rec.ep.key,
                rec.addr.ip,
                now - watch.taken,
                after,
                watch.site,
            )
            watch.reported = True  # once per hand-out
