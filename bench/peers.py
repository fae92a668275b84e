"""Other asyncio pools, set up as their documentation shows, over asyncio streams.

* ``acp``: asyncio-connection-pool (a lock-free pool for one target; only a
  context manager, ``pool.get_connection()``).
* ``gcp``: generic-connection-pool's asyncio ``ConnectionPool`` with its own
  ``TcpStreamConnectionManager`` (keyed by endpoint, checks liveness on
  every acquire as shipped).

Both are optional (``pip install -e '.[bench]'``), so they are imported by name
at run time and typed loosely: the type check must pass without them.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

__all__ = ["Stream", "StreamStrategy", "acp_pool", "gcp_pool"]

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class StreamStrategy:
    """asyncio-connection-pool's ConnectionStrategy for asyncio streams (the
    pool only calls these three methods, so no subclassing is needed)."""

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
    return mod.ConnectionPool(strategy=StreamStrategy(host, port), max_size=size)


def gcp_pool(size: int) -> Any:
    """A generic_connection_pool.asyncio.ConnectionPool of asyncio streams,
    ``size`` connections per endpoint, none of them closed for being idle."""
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
