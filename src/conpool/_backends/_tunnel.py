"""Connections through an ``https://`` proxy, on any backend.

TLS to the proxy, ``CONNECT`` inside it, then (for a TLS endpoint) TLS to the
target inside that: TLS in TLS, which only memory-BIO streams can carry (an
anyio :class:`~anyio.streams.tls.TLSStream`), not an asyncio transport.  So
these connections are anyio streams on every backend, like trio's TLS
connections, at a little more cost per read and write than the native ones.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from .._connection import Connection
from .._tunnel import ProxyAttempt, Trace
from ._sockets import close_socket, closed_in_handshake, probe, timeout_error, tls_timed
from ._streams import OnStream

if TYPE_CHECKING:
    from .._endpoint import Endpoint
    from .._proxy import Proxy

__all__ = ["TunnelConnection", "open_tls_proxied"]


class TunnelConnection(OnStream):
    """A connection through an ``https://`` proxy: an anyio stream (TLS to the
    proxy, and TLS to the target inside it for a TLS endpoint) on the raw
    socket, which the pool holds to close it and to check it while idle.

    On asyncio the socket stream sits on a transport, which closing the
    socket alone would leave registered (and reported unclosed when
    collected): closing aborts it too.
    """

    __slots__ = ("_sock", "_stream", "_transport")

    def __init__(
        self,
        endpoint: Endpoint,
        address: tuple[str, int],
        stream: ByteStream,
        sock: socket.socket,
        transport: asyncio.Transport | None,
    ) -> None:
        super().__init__(endpoint, address)
        self._stream = stream
        self._sock = sock
        self._transport = transport

    async def aclose(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        self._closed = self._broken = True
        await anyio.aclose_forcefully(self._stream)
        self._close_raw()

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = self._broken = True
            self._close_raw()

    def _close_raw(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        close_socket(self._sock)

    def _closer(self) -> Callable[[], None]:
        transport, sock = self._transport, self._sock

        def close() -> None:
            if transport is not None:
                transport.abort()
            close_socket(sock)

        return close

    def _usable(self, idle: float) -> bool:
        if self._broken:
            return False
        # Always TLS to the proxy: unread bytes may be a session ticket, so
        # only a hang-up counts (see probe()).
        return probe(self._sock.fileno(), True)


async def open_tls_proxied(
    endpoint: Endpoint,
    ip: str,
    port: int,
    connect_timeout: float | None,
    proxy: Proxy,
    trace: Trace | None,
) -> Connection:
    """One attempt through the ``https://`` *proxy* to ``ip:port``, on any backend."""
    via = ProxyAttempt(proxy, ip, port, trace)
    tls = endpoint.tls
    stream: ByteStream | None = None
    tls_start = 0
    try:
        with anyio.fail_after(connect_timeout):
            stream, sock = await via.open_tls()
            transport = getattr(via.raw, "_transport", None)  # anyio's asyncio stream
            if tls is None:
                return TunnelConnection(endpoint, (ip, port), stream, sock, transport)
            tls_start = time.monotonic_ns()
            try:
                stream = await TLSStream.wrap(
                    stream,
                    hostname=tls.server_name_for(endpoint.host),
                    ssl_context=tls.ssl_context,
                    standard_compatible=False,
                )
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                raise closed_in_handshake() from exc
            conn = TunnelConnection(endpoint, (ip, port), stream, sock, transport)
            conn._tls_ns = time.monotonic_ns() - tls_start
            return conn
    except TimeoutError as exc:
        await _aclose(stream, via)
        if not via.finished:
            raise via.failed(exc, connect_timeout) from None
        if exc.errno is not None or connect_timeout is None:  # not our deadline
            raise
        raise tls_timed(timeout_error("TLS handshake", connect_timeout), tls_start) from None
    except BaseException as exc:
        await _aclose(stream, via)
        via.failed(exc, connect_timeout)
        tls_timed(exc, tls_start)
        raise


async def _aclose(stream: ByteStream | None, via: ProxyAttempt) -> None:
    if stream is not None:
        await anyio.aclose_forcefully(stream)
    await via.aclose()
