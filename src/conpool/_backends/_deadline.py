"""Per-request deadlines on asyncio and uvloop, all of a loop's on one timer.

A protocol layer's request (the httpx transport's) needs a deadline that
cancels it when it passes.  An anyio cancel scope does that at a high
price, and even a loop timer per request costs more than it seems: a
``call_at`` and a ``cancel`` for every request, and a heap of cancelled
timers the loop sifts through (on uvloop, a libuv timer started and
stopped).  Measured in the httpx workload, a request's two timers (one for
the write, moved to the read) cost 8-15 µs of client CPU per request at
C = 16 and 64, about 8 % of all of it.

So the deadlines of a loop share one timer (:class:`LoopTimers`), armed for
the earliest of them.  Entering a block adds the block's deadline to a dict,
leaving removes it, moving it later touches nothing: when the timer fires it
cancels the tasks whose deadlines have passed and arms itself for the
earliest that has not.  A loop busy with requests that end in time sees one
timer fire per timeout period (5 s for httpx's default), not two timers per
request.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

__all__ = ["LoopDeadline", "LoopTimers", "loop_timers"]

_INF = float("inf")


class LoopTimers:
    """The deadlines of one event loop's :class:`LoopDeadline` blocks, on
    one loop timer.

    Get a loop's with :func:`loop_timers`.  The timer is armed for the
    earliest deadline of a block entered since it was last armed; it may
    fire for a block already left (then it only arms itself again, for the
    earliest block still inside, or stays off).  A block whose deadline is
    earlier than the armed time arms it anew; the timer armed before is not
    cancelled (that would mean keeping its handle, which holds the loop),
    and finds itself superseded when it fires.

    The loop is held weakly: the loop's timers are dropped with it.
    """

    __slots__ = ("__weakref__", "_active", "_at", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)
        #: The blocks inside, by insertion (a dict as an ordered set).
        self._active: dict[LoopDeadline, None] = {}
        #: When the timer is armed for (inf: not armed).
        self._at = _INF

    def _arm(self, when: float) -> None:
        loop = self._loop()
        if loop is not None:
            self._at = when
            loop.call_at(when, self._fire, when)

    def _fire(self, at: float) -> None:
        loop = self._loop()
        assert loop is not None  # (it runs this)
        # Due: what the loop took for the armed time (its clock may read a
        # little earlier, within its resolution), or any later time passed.
        now = loop.time()
        active = self._active
        due = [d for d in active if d._when <= (now if now > at else at)]
        for d in due:
            del active[d]
            d._expire()
        if at != self._at:
            return  # superseded by an earlier arming, which is in charge
        self._at = _INF
        if active:
            earliest = min(d._when for d in active)
            if earliest != _INF:
                self._arm(earliest)

    def __len__(self) -> int:
        """How many blocks are inside a deadline now."""
        return len(self._active)

    @property
    def armed(self) -> bool:
        """Whether the timer is set (for a block inside, or one left since)."""
        return self._at != _INF


_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopTimers] = (
    weakref.WeakKeyDictionary()
)


def loop_timers(loop: asyncio.AbstractEventLoop) -> LoopTimers:
    """The :class:`LoopTimers` of ``loop`` (made on first use, dropped with
    the loop).  Look it up once per connection, not per request."""
    found = _timers.get(loop)
    if found is None:
        found = _timers[loop] = LoopTimers(loop)
    return found


class LoopDeadline:
    """A deadline for a block of one task on asyncio or uvloop: when it
    passes, the loop's shared timer (:class:`LoopTimers`) cancels the task,
    and the cancellation is turned back into "the deadline passed" on the
    way out.  What an anyio cancel scope with a deadline does for a protocol
    layer's request, at a fraction of its cost (no scope stack, no sniffio
    lookup, no checkpoint, no timer of its own).

    ``with LoopDeadline(timers, when) as d:`` (``timers`` from
    :func:`loop_timers`, ``when`` in ``loop.time()`` seconds, ``inf`` for
    none); ``d.deadline = t`` moves it, ``d.reset(s)`` puts it ``s`` seconds
    from now; afterwards ``d.cancelled_caught`` says whether the deadline
    ended the block (its :class:`asyncio.CancelledError` is then swallowed,
    as a cancel scope's is).  A cancellation from anywhere else goes through
    untouched, also when it comes together with the deadline's (the task's
    ``cancelling()`` count tells them apart, as :func:`asyncio.timeout`
    does).

    The timer can only cancel the task while it is suspended inside the
    block (the block leaves the timers' set on the way out, and the loop
    runs no callback while the task runs), so its cancellation is always
    raised inside the block.
    """

    __slots__ = ("_cancelling", "_fired", "_task", "_timers", "_when", "cancelled_caught")

    def __init__(self, timers: LoopTimers, when: float) -> None:
        self._timers = timers
        self._when = when
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._fired = False
        self.cancelled_caught = False

    def __enter__(self) -> LoopDeadline:
        timers = self._timers
        task = asyncio.current_task(timers._loop())
        if task is None:
            raise RuntimeError("LoopDeadline needs a running task")
        self._task = task
        self._cancelling = task.cancelling()
        timers._active[self] = None
        when = self._when
        if when < timers._at:
            timers._arm(when)
        return self

    @property
    def deadline(self) -> float:
        return self._when

    @deadline.setter
    def deadline(self, when: float) -> None:
        self._move(when)

    def reset(self, seconds: float | None) -> None:
        """From now on, ``seconds`` (None: no limit)."""
        if seconds is None:
            self._move(_INF)
            return
        loop = self._timers._loop()
        assert loop is not None  # (a block on it runs)
        self._move(loop.time() + seconds)

    def _move(self, when: float) -> None:
        # Later than the armed time: nothing to do (the timer finds this
        # block not yet due when it fires, and arms itself again).
        self._when = when
        timers = self._timers
        if when < timers._at and self in timers._active:
            timers._arm(when)

    def _expire(self) -> None:
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> bool:
        self._timers._active.pop(self, None)
        if self._fired:
            assert self._task is not None
            # Ours was the last cancellation asked for: the block ended by
            # the deadline alone, so the cancellation stops here.
            if (
                self._task.uncancel() <= self._cancelling
                and exc_type is not None
                and issubclass(exc_type, asyncio.CancelledError)
            ):
                self.cancelled_caught = True
                return True
        return False
