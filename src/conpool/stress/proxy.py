"""A small TCP proxy that adds latency, for the "one address is slower" scenario.

There is no ``tc netem`` or toxiproxy on the machines this runs on, so the
delay is made in user space: every chunk the upstream sends back is held for
``delay`` seconds before it is written to the client.  Chunks keep their order
(one queue and one timer per connection, never one timer per chunk: asyncio's
timer heap does not keep equal deadlines in order).  With ``delay=0`` the proxy
is a plain pass-through, so the fast addresses of a scenario go through the
same hop as the slow one and only the delay differs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

__all__ = ["LatencyProxy"]


class _Side(asyncio.Protocol):
    """One leg of a proxied connection; writes what it receives to ``peer``."""

    def __init__(self, link: _Link, upstream: bool) -> None:
        self.link = link
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (A stream connection's transport is an asyncio.Transport; uvloop's
        # implement the interface without subclassing it.)
        self.transport = cast(asyncio.Transport, transport)
        if not self.upstream:
            self.link.client_connected(self)

    def data_received(self, data: bytes) -> None:
        if self.upstream:
            self.link.from_upstream(data)
        else:
            self.link.from_client(data)

    def eof_received(self) -> bool:
        self.link.eof(self.upstream)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.lost(self.upstream)


class _Link:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: LatencyProxy) -> None:
        self.proxy = proxy
        self.loop = asyncio.get_running_loop()
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self.early: list[bytes] = []  # client bytes that arrived before the upstream connected
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: close after the delay
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def client_connected(self, side: _Side) -> None:
        self.client = side
        self.proxy.links.add(self)
        self.loop.create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        proxy = self.proxy
        try:
            if proxy.upstream_port == 0:  # a Unix socket target: the host is its path
                _transport, side = await self.loop.create_unix_connection(
                    lambda: _Side(self, upstream=True), proxy.upstream_host
                )
            else:
                _transport, side = await self.loop.create_connection(
                    lambda: _Side(self, upstream=True), proxy.upstream_host, proxy.upstream_port
                )
        except OSError:
            self.close()
            return
        if self.closed:
            if side.transport is not None:
                side.transport.abort()
            return
        self.upstream = side
        if side.transport is not None:
            for chunk in self.early:
                side.transport.write(chunk)
        self.early.clear()

    def from_client(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is None or upstream.transport is None:
            self.early.append(data)
        else:
            upstream.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        self._to_client(data)

    def _to_client(self, data: bytes | None) -> None:
        delay = self.proxy.delay
        if delay <= 0 and not self.queue:
            self._deliver(data)
            return
        self.queue.append((self.loop.time() + delay, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _due, data = self.queue.popleft()
            self._deliver(data)
        if self.queue and not self.closed:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _deliver(self, data: bytes | None) -> None:
        client = self.client
        if client is None or client.transport is None or self.closed:
            return
        if data is None:
            self.close()
        else:
            client.transport.write(data)

    def eof(self, from_upstream: bool) -> None:
        if from_upstream:
            self._to_client(None)  # the close travels as late as the data before it
        else:
            self.close()

    def lost(self, from_upstream: bool) -> None:
        if from_upstream:
            self._to_client(None)
        else:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()
        self.proxy.links.discard(self)

    def abort(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.abort()
        self.proxy.links.discard(self)


class LatencyProxy:
    """Listen on ``(host, port)`` and forward to ``(upstream_host, upstream_port)``,
    holding every chunk of the answer for ``delay`` seconds.

    :param delay: seconds added to each response chunk (so to each round trip).
    """

    def __init__(
        self, host: str, port: int, upstream_host: str, upstream_port: int, delay: float
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        self.host = host
        self.port = port
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.delay = delay
        self.links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Side(_Link(self), upstream=False),
            self.host,
            self.port,
            reuse_address=True,
            backlog=1024,
        )

    def close(self) -> None:
        """Stop listening and drop every proxied connection (with a reset)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self.links):
            link.abort()

    def __repr__(self) -> str:
        return (
            f"<LatencyProxy {self.host}:{self.port} -> {self.upstream_host}:{self.upstream_port}"
            f" +{self.delay * 1000:g} ms, {len(self.links)} connections>"
        )
