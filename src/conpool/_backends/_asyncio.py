"""The asyncio backend (uvloop included: it is asyncio's loop API).

Connections are :class:`ProtocolConnection`: the :class:`anyio.abc.ByteStream`
interface implemented directly on an :class:`asyncio.Protocol`.  anyio's own
asyncio socket stream yields to the loop and pauses/resumes reading on every
``receive()``, which costs a large share of the round-trip throughput on small
messages.  Here a receive that finds buffered data returns it at once, and a
waiting receive parks on a plain asyncio future, which anyio's cancel scopes
cancel like any other await.  The protocol keeps the flags the pool needs to
decide, without I/O, whether an idle connection can be handed out again: the
peer closed it, reset it, or sent bytes nobody asked for.

A waiting acquire parks on a native future; ``acquire_timeout`` is a loop
timer (``call_later``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute

from .._connection import Connection
from .._proxy import Proxy
from .._tunnel import ProxyAttempt, Trace
from ._deadline import loop_timers
from ._sockets import (
    DEFAULT_SOCKETS,
    PROBE_AFTER,
    NotTLSError,
    SocketFactory,
    attempt_socket,
    closed_in_handshake,
    probe,
    timeout_error,
    tls_timed,
)

if TYPE_CHECKING:
    from .._endpoint import Endpoint
    from .._records import Waiter

__all__ = ["AsyncioBackend", "ProtocolConnection", "open_asyncio"]

# Reading pauses when this much is buffered and nobody receives, so a peer
# that floods an idle or slow connection cannot grow our memory without bound.
_HIGH_WATER = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Buffers what arrives and wakes at most one reader and one writer."""

    __slots__ = (
        "buffer",
        "buffered",
        "drain",
        "eof",
        "exc",
        "half_close",
        "lost",
        "paused",
        "reader",
        "transport",
        "writing_paused",
    )

    def __init__(self, half_close: bool = True) -> None:
        # Plain TCP may stay open for writing after the peer's EOF; asyncio's
        # TLS transport cannot (and warns if asked).
        self.half_close = half_close
        self.transport: asyncio.Transport | None = None
        # A list, not a deque: an empty deque is many times the size of an
        # empty list, on every idle connection; it rarely holds more than one
        # chunk, and data_received coalesces it so that pop(0) stays cheap.
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.eof = False
        self.lost = False
        self.exc: BaseException | None = None
        # A waiting receive(): its result is the bytes handed straight over,
        # or None for "look at the buffer and the flags".
        self.reader: asyncio.Future[bytes | None] | None = None
        self.drain: asyncio.Future[None] | None = None
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        reader = self.reader
        if reader is not None and not buffer and not reader.done():
            # A reader waits and nothing came before: hand the bytes straight
            # to it (the common case of a request and its response).
            reader.set_result(data)
            return
        buffer.append(data)
        if len(buffer) > 16:
            buffer[:] = [b"".join(buffer)]
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        # Keep the transport open for writing: a half-closed peer may still
        # read (send_eof-style protocols).  It closes on our aclose().
        return self.half_close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exc = exc
        self._wake_reader()
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drain = self.drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake_reader(self) -> None:
        reader = self.reader
        if reader is not None and not reader.done():
            reader.set_result(None)


def _tls_protocol() -> _Protocol:
    return _Protocol(half_close=False)


class ProtocolConnection(Connection):
    """A connection on asyncio or uvloop, implemented on an asyncio protocol."""

    __slots__ = ("_fd", "_loop", "_proto", "_timers", "_tls", "_transport")

    def __init__(
        self,
        endpoint: Endpoint,
        address: tuple[str, int],
        transport: asyncio.Transport,
        protocol: _Protocol,
        tls: bool,
    ) -> None:
        super().__init__(endpoint, address)
        self._transport = transport
        self._proto = protocol
        self._tls = tls
        sock: socket.socket = transport.get_extra_info("socket")
        self._fd = sock.fileno()
        # Kept, not looked up per wait: asyncio.get_running_loop() makes a
        # getpid() system call each time (seen on CPython 3.11).
        self._loop = asyncio.get_running_loop()
        #: The loop's shared timer for a protocol layer's deadlines.
        self._timers = loop_timers(self._loop)

    @staticmethod
    def protocol_factory(tls: bool) -> Callable[[], _Protocol]:
        return _tls_protocol if tls else _Protocol

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._rec.conn is not None:
            raise self._released()
        proto = self._proto
        buffer = proto.buffer
        if not buffer:
            if self._closed:
                raise anyio.ClosedResourceError
            if proto.eof or proto.lost:
                return self._end_of_stream()
            if proto.reader is not None:
                raise anyio.BusyResourceError("reading from")
            if max_bytes < 1:
                # (Checked here, not on every call: with data buffered the
                # size check below catches it.)
                raise ValueError("max_bytes must be a positive integer")
            fut: asyncio.Future[bytes | None] = self._loop.create_future()
            proto.reader = fut
            try:
                data = await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    handed = fut.result()
                    if handed:
                        # Cancelled with bytes already handed over: they go
                        # back in front, so that nothing read is lost.
                        buffer.insert(0, handed)
                        proto.buffered += len(handed)
                self._broken = True
                raise
            finally:
                proto.reader = None
            if data is not None:
                if len(data) <= max_bytes:
                    return data
                buffer.insert(0, data[max_bytes:])
                proto.buffered += len(data) - max_bytes
                return data[:max_bytes]
            if not buffer:
                if self._closed:
                    raise anyio.ClosedResourceError
                return self._end_of_stream()
        chunk = buffer.pop(0)
        if len(chunk) > max_bytes:
            if max_bytes < 1:
                buffer.insert(0, chunk)
                raise ValueError("max_bytes must be a positive integer")
            buffer.insert(0, chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        proto.buffered -= len(chunk)
        if proto.paused and proto.buffered <= _HIGH_WATER // 4:
            proto.paused = False
            self._transport.resume_reading()
        return chunk

    def _end_of_stream(self) -> bytes:
        self._broken = True
        exc = self._proto.exc
        if exc is not None:
            raise anyio.BrokenResourceError from exc
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        proto = self._proto
        if self._closed or proto.lost or self._rec.conn is not None:
            self._check_writable()
        self._transport.write(item)
        if proto.writing_paused:
            if proto.drain is not None:
                raise anyio.BusyResourceError("writing to")
            fut = proto.drain = self._loop.create_future()
            try:
                await fut
            except BaseException:
                self._broken = True
                raise
            finally:
                proto.drain = None
            self._check_writable()

    def _check_writable(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        if self._closed:
            raise anyio.ClosedResourceError
        if self._proto.lost:
            self._broken = True
            raise anyio.BrokenResourceError from self._proto.exc

    async def send_eof(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        if self._tls:
            raise NotImplementedError("send_eof() is not supported on TLS connections")
        if self._closed:
            raise anyio.ClosedResourceError
        # After a half-close the peer may still answer, but the connection
        # cannot carry another request: never reuse it.
        self._broken = True
        self._transport.write_eof()

    async def aclose(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        self._close_now()

    def _closer(self) -> Callable[[], None]:
        return self._transport.abort

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = self._broken = True
            transport = self._transport
            if self._tls or transport.get_write_buffer_size():
                # A graceful close waits until what is queued (TLS's
                # close_notify, or bytes of a send that was cancelled or
                # failed) is sent, which a peer that stopped reading puts
                # off for ever: the socket would outlive the pool, and the
                # loop.  Abort, as the other backends close at once.
                transport.abort()
            else:
                transport.close()
            self._proto._wake_reader()

    def _usable(self, idle: float) -> bool:
        proto = self._proto
        # Bytes that arrived while idle belong to no request: the protocol on
        # this stream is out of step, so it must not carry another one.
        if self._broken or proto.lost or proto.eof or proto.buffer:
            return False
        if idle < PROBE_AFTER:
            return True
        # The flags above are only as fresh as the event loop's last look at
        # the socket; a FIN or RST the kernel received since is news to them.
        return probe(self._fd, self._tls)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        transport = self._transport
        sock: socket.socket = transport.get_extra_info("socket")
        attrs: dict[Any, Callable[[], Any]] = {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: sock.getsockname(),
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_address: lambda: transport.get_extra_info("peername"),
            SocketAttribute.remote_port: lambda: transport.get_extra_info("peername")[1],
            SocketAttribute.raw_socket: lambda: sock,
        }
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            obj = ssl_object
            attrs.update(
                {
                    TLSAttribute.alpn_protocol: obj.selected_alpn_protocol,
                    TLSAttribute.channel_binding_tls_unique: lambda: obj.get_channel_binding(
                        "tls-unique"
                    ),
                    TLSAttribute.cipher: obj.cipher,
                    TLSAttribute.peer_certificate: lambda: obj.getpeercert(False),
                    TLSAttribute.peer_certificate_binary: lambda: obj.getpeercert(True),
                    TLSAttribute.server_side: lambda: obj.server_side,
                    TLSAttribute.shared_ciphers: obj.shared_ciphers,
                    TLSAttribute.ssl_object: lambda: obj,
                    TLSAttribute.standard_compatible: lambda: True,
                    TLSAttribute.tls_version: obj.version,
                }
            )
        return attrs


async def open_asyncio(
    endpoint: Endpoint,
    ip: str,
    port: int,
    connect_timeout: float | None,
    *,
    proxy: Proxy | None = None,
    trace: Trace | None = None,
    sockets: SocketFactory | None = None,
) -> Connection:
    """One attempt on asyncio/uvloop: a native protocol-backed connection.

    With *proxy*, the socket is the proxy's, with the tunnel to ``ip:port``
    open (see :mod:`conpool._tunnel`); all the rest is as without one.  An
    ``https://`` proxy needs TLS in TLS, which goes through
    :mod:`._tunnel`'s stream connection.  Without one, the socket is made by
    *sockets* (``Config.socket_options``, ``Config.local_address``), and
    ``ip`` is the socket's path for a Unix socket endpoint."""
    if proxy is not None and proxy.is_tls:
        from ._tunnel import open_tls_proxied

        return await open_tls_proxied(endpoint, ip, port, connect_timeout, proxy, trace)
    loop = asyncio.get_running_loop()
    via = None if proxy is None else ProxyAttempt(proxy, ip, port, trace)
    sockets = sockets or DEFAULT_SOCKETS
    sock, sockaddr = attempt_socket(sockets, endpoint, ip, port, via is not None)
    transport: asyncio.Transport | None = None
    tls = endpoint.tls
    stage = "TCP connect"
    tls_start = 0  # set when the handshake starts
    try:
        with anyio.fail_after(connect_timeout):
            if via is None:
                await loop.sock_connect(sock, sockaddr)
            else:
                sock = await via.open()
            raw, protocol = await loop.create_connection(
                ProtocolConnection.protocol_factory(tls is not None), sock=sock
            )
            transport = raw
            if via is None:
                sockets.settle(endpoint, raw.get_extra_info("socket"))
            if tls is not None:
                stage = "TLS handshake"
                tls_start = time.monotonic_ns()
                if protocol.buffer:
                    # A TLS server waits for our hello; bytes before it mean
                    # whatever listens there does not speak TLS.
                    raise NotTLSError(
                        f"the server sent {protocol.buffered} bytes before the TLS handshake"
                    )
                if transport.is_closing() or protocol.eof or protocol.lost:
                    # Hung up before we said a word (uvloop would report a
                    # fatal error from a handshake on a closed transport).
                    raise closed_in_handshake()
                # start_tls on a transport we own, rather than
                # create_connection(ssl=...): cancelled mid-handshake, the
                # latter leaves a half-built TLS transport registered on a
                # socket we close (asyncio then trips over the reused fd,
                # uvloop reports a fatal SSL error); here the raw transport
                # is ours to abort.
                tls_transport = await loop.start_tls(
                    transport,
                    protocol,
                    tls.ssl_context,
                    server_hostname=tls.server_name_for(endpoint.host),
                    # asyncio insists on a handshake timeout of its own; make
                    # it later than ours so that fail_after decides.
                    ssl_handshake_timeout=(connect_timeout or 60.0) * 2 + 1,
                )
                if tls_transport is None or tls_transport.get_extra_info("socket") is None:
                    # uvloop hands back a dead transport when the peer hung
                    # up during the handshake.
                    raise closed_in_handshake()
                transport = tls_transport
    except TimeoutError as exc:
        _abort(transport, sock, via)
        if via is not None and not via.finished:
            raise via.failed(exc, connect_timeout) from None
        if exc.errno is not None or connect_timeout is None:  # not our deadline
            raise
        raise tls_timed(timeout_error(stage, connect_timeout), tls_start) from None
    except ConnectionError as exc:
        _abort(transport, sock, via)
        if via is not None and not via.finished:
            raise via.failed(exc, connect_timeout) from None
        if tls_start and not exc.args:
            # asyncio's TLS layer raises a bare ConnectionResetError when the
            # peer hangs up mid-handshake: say what happened.
            raise tls_timed(closed_in_handshake(), tls_start) from exc
        tls_timed(exc, tls_start)
        raise
    except BaseException as exc:
        _abort(transport, sock, via)
        if via is not None:
            via.failed(exc, connect_timeout)
        tls_timed(exc, tls_start)
        raise
    conn = ProtocolConnection(endpoint, (ip, port), transport, protocol, tls is not None)
    if tls is not None:
        conn._tls_ns = time.monotonic_ns() - tls_start
    return conn


def _abort(
    transport: asyncio.Transport | None, sock: socket.socket, via: ProxyAttempt | None = None
) -> None:
    if transport is not None:
        transport.abort()
    sock.close()
    if via is not None:
        via.close()


class AsyncioBackend:
    """The pool's backend on asyncio and uvloop (see :class:`conpool._backends.Backend`)."""

    name = "asyncio"

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.clock: Callable[[], float] = time.monotonic
        # A waiter parks on a bare future of the loop: awaiting it is the
        # whole wait.
        self.park: Callable[[], asyncio.Future[None]] = loop.create_future
        self.call_soon_threadsafe = loop.call_soon_threadsafe
        self.open = open_asyncio

    @staticmethod
    def wake(waiters: Sequence[Waiter[Any, Any]]) -> None:
        for w in waiters:
            handle = w.handle
            # (Done when its task was cancelled in the meantime: its cancel()
            # hands the grant on.)
            if not handle.done():
                handle.set_result(None)

    async def wait(self, parked: Any, seconds: float) -> None:
        fut: asyncio.Future[None] = parked
        timer = self._loop.call_later(seconds, _time_up, fut)
        try:
            await fut
        finally:
            timer.cancel()


def _time_up(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
