"""The pools conpool is compared against, over asyncio streams.

* ``naive``: :class:`QueuePool`, the pool everyone writes first: an
  ``asyncio.Queue`` of stream pairs, no balancing, expiry, checks or stats.
* ``fifo``: :class:`AsyncioFifo` / :class:`TrioFifo`, the floor of a fair
  pool: free tokens and a queue of parked tasks, a release handing its token
  to the longest waiter as conpool does.  A reference line, not a pool.
* ``acp``: asyncio-connection-pool (one target; ``pool.get_connection()``).
* ``gcp``: generic-connection-pool's asyncio pool with its own
  ``TcpStreamConnectionManager`` (checks liveness on every acquire, as shipped).

acp and gcp are optional (the ``bench`` extra), imported by name at run time
and typed loosely, so that the type check passes without them.
"""

from __future__ import annotations

import asyncio
import importlib
from collections import deque
from types import TracebackType
from typing import Any

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# The optional peers' modules (``Workload.requires``).
REQUIRES = {"acp": "asyncio_connection_pool", "gcp": "generic_connection_pool"}


class QueuePool:
    """At most ``size`` connections to one address; idle ones wait in a queue."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.Queue[Stream] = asyncio.Queue()
        self.opened = 0

    async def acquire(self) -> Stream:
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self.opened -= 1
                raise
        return await self.idle.get()

    async def release(self, conn: Stream, broken: bool = False) -> None:
        if broken:
            self.opened -= 1
            conn[1].close()
        else:
            self.idle.put_nowait(conn)

    def connection(self) -> _Lease:
        return _Lease(self)

    async def aclose(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()
            await writer.wait_closed()


class _Lease:
    __slots__ = ("conn", "pool")

    def __init__(self, pool: QueuePool) -> None:
        self.pool = pool

    async def __aenter__(self) -> Stream:
        self.conn = await self.pool.acquire()
        return self.conn

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.pool.release(self.conn, broken=typ is not None)


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
    """trio: parked tasks wait in ``wait_task_rescheduled``; like conpool on
    trio, an acquire that finds a token free returns without a checkpoint."""

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


class _StreamStrategy:
    """asyncio-connection-pool's ConnectionStrategy for asyncio streams (the
    pool calls only these three methods)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def make_connection(self) -> Stream:
        return await asyncio.open_connection(self.host, self.port)

    def connection_is_closed(self, conn: Stream) -> bool:
        return conn[1].is_closing()

    async def close_connection(self, conn: Stream) -> None:
        conn[1].close()
        await conn[1].wait_closed()


def acp_pool(host: str, port: int, size: int) -> Any:
    """An asyncio_connection_pool.ConnectionPool (call in a running loop)."""
    mod = importlib.import_module("asyncio_connection_pool")
    return mod.ConnectionPool(strategy=_StreamStrategy(host, port), max_size=size)


async def acp_close(pool: Any) -> None:
    """Close the idle connections (the pool has no close of its own)."""
    while not pool.available.empty():
        await pool.strategy.close_connection(pool.available.get_nowait())


def gcp_pool(size: int) -> Any:
    """A generic_connection_pool asyncio pool of streams, ``size`` per
    endpoint, none of them closed for being idle."""
    pool_mod = importlib.import_module("generic_connection_pool.asyncio")
    contrib = importlib.import_module("generic_connection_pool.contrib.socket_async")
    return pool_mod.ConnectionPool(
        contrib.TcpStreamConnectionManager(),
        min_idle=size,
        max_size=size,
        total_max_size=max(size, 100),
        idle_timeout=60.0,
        max_lifetime=3600.0,
    )
