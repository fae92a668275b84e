"""The floor of a fair pool: what any first-come-first-served pool costs.

A list of free items and a queue of parked tasks, nothing else: no
connections (the items are tokens), no limits per name, no expiry, no
statistics, no tracing.  A release with tasks waiting hands its item to the
one that waited longest and wakes it, exactly as conpool does; unlike
``asyncio.Queue`` (bench.naive), a task that releases and acquires again
cannot take the item back ahead of the waiters.

So in the contended workload this is the least a fair pool can add to a
loop's bare yield: one park and one wake per pair.  It is a reference line
for conpool's figure, not a pool anybody should use.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

__all__ = ["AsyncioFifo", "TrioFifo"]


class AsyncioFifo:
    """asyncio: parked tasks wait on futures."""

    def __init__(self, size: int) -> None:
        self.free: list[object] = [object() for _ in range(size)]
        self.waiters: deque[asyncio.Future[object]] = deque()

    async def acquire(self) -> object:
        if self.free and not self.waiters:
            return self.free.pop()
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # served, then cancelled: pass it on
            else:
                self.waiters.remove(fut)
            raise

    def release(self, item: object) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(item)
                return
        self.free.append(item)


class TrioFifo:
    """trio: parked tasks wait in ``wait_task_rescheduled``.

    Like conpool on trio, an acquire that finds an item free returns it
    without a checkpoint.
    """

    def __init__(self, size: int) -> None:
        import outcome
        import trio

        self.free: list[object] = [object() for _ in range(size)]
        self.waiters: deque[Any] = deque()
        self._current_task = trio.lowlevel.current_task
        self._wait = trio.lowlevel.wait_task_rescheduled
        self._reschedule = trio.lowlevel.reschedule
        self._value = outcome.Value
        self._succeeded = trio.lowlevel.Abort.SUCCEEDED

    async def acquire(self) -> object:
        if self.free and not self.waiters:
            return self.free.pop()
        task = self._current_task()
        self.waiters.append(task)

        def abort(_: object) -> Any:
            self.waiters.remove(task)
            return self._succeeded

        item: object = await self._wait(abort)
        return item

    def release(self, item: object) -> None:
        if self.waiters:
            self._reschedule(self.waiters.popleft(), self._value(item))
        else:
            self.free.append(item)
