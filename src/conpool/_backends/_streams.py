"""A pooled connection that reads and writes through an anyio stream: trio's
TLS connections and, on every backend, those through an ``https://`` proxy
(TLS in TLS).  How the socket under the stream is held, checked and closed
is each subclass's own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from anyio.abc import ByteStream

from .._connection import Connection

__all__ = ["OnStream"]


class OnStream(Connection):
    """``send``, ``receive``, ``send_eof`` and the typed attributes of the
    anyio stream in ``_stream`` (a slot of the subclass): a failure in any
    of them marks the connection broken, so it is not reused."""

    # No slots of its own: a subclass's other base (trio's SocketOwner) has
    # its own, and two bases with slots cannot be combined.
    __slots__ = ()
    _stream: ByteStream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._rec.conn is not None:
            raise self._released()
        try:
            return await self._stream.receive(max_bytes)
        except BaseException:
            self._broken = True
            raise

    async def send(self, item: bytes) -> None:
        if self._rec.conn is not None:
            raise self._released()
        try:
            await self._stream.send(item)
        except BaseException:
            self._broken = True
            raise

    async def send_eof(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        self._broken = True
        await self._stream.send_eof()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes
