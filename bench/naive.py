"""The pool everyone writes first: an asyncio.Queue of asyncio stream pairs.

No per-name balancing, no expiry, no health checks, no stats: the floor a
real pool's overhead is judged against.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["QueuePool"]

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


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
