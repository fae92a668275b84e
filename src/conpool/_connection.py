"""The connection a user holds: an anyio byte stream that knows its pool.

Two implementations share one public base class:

* :class:`ProtocolConnection`, on asyncio (and uvloop), implements the
  :class:`anyio.abc.ByteStream` interface directly on an
  :class:`asyncio.Protocol`.  anyio's own asyncio socket stream yields to the
  loop and pauses/resumes reading on every ``receive()``; that costs 40-55 %
  of round-trip throughput on small messages.  Here a receive that finds
  buffered data returns it at once, and a waiting receive parks on a plain
  asyncio future, which anyio's cancel scopes cancel like any other await.
* :class:`StreamConnection`, on every other backend (trio), wraps the anyio
  stream that :mod:`conpool._dial` opened.

Both keep the flags the pool needs to decide, without I/O, whether an idle
connection can be handed out again: the peer closed it, reset it, or sent
bytes nobody asked for.
"""

from __future__ import annotations

import asyncio
import functools
import select
import socket
import ssl
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

if TYPE_CHECKING:
    from ._endpoint import Endpoint
    from ._state import ConnRecord

__all__ = ["Connection", "ProtocolConnection", "StreamConnection"]

# A connection idle for less than this is not polled on reuse: it was in use
# a moment ago, the loop's flags are as fresh as a poll would be to within
# that moment, and a close arriving now races any check (the request itself
# then fails, as with every pool).  Skipping the system call keeps hot reuse
# cheap; a connection idle for longer, which is when servers close them, is
# always polled.
_PROBE_AFTER = 0.001

_PROBE_EVENTS = select.POLLIN | select.POLLRDHUP

# poll(2) events meaning the peer is gone (or the descriptor is).
_HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL

# Reading pauses when this much is buffered and nobody receives, so a peer
# that floods an idle or slow connection cannot grow our memory without bound.
_HIGH_WATER = 256 * 1024


class _NoOwner:
    __slots__ = ()
    owner = None


class _Unregistered:
    """Stands in for the pool's record of a connection the pool has not
    registered yet (it is being dialled).  Its ``handle`` is None, as a held
    connection's is, so the idle check on every send and receive reads
    ``self._rec.handle`` with no None test first; its endpoint has no owner,
    so ``release()`` refuses it as not the pool's with the same test."""

    __slots__ = ()
    handle = None
    ep = _NoOwner()


_UNREGISTERED = _Unregistered()


def _probe(fd: int, tls: bool) -> bool:
    """Ask the kernel whether an idle socket is still worth reusing, without
    reading and without raising.

    poll(2) with POLLRDHUP reports a peer that closed or reset even when bytes
    are still queued.  Plaintext bytes nobody asked for make the stream
    unusable (the protocol on it is out of step); on TLS they may be a TLS 1.3
    session ticket not read yet, so there only a hang-up counts.
    """
    # A poll object per probe, not per connection (332 bytes each, idle):
    # registering makes no system call, so this is still one poll(2).
    poll = select.poll()
    poll.register(fd, _PROBE_EVENTS)
    ready = poll.poll(0)
    if not ready:
        return True
    if ready[0][1] & _HANGUP:
        return False
    return tls


class Connection(ByteStream):
    """A pooled connection: an :class:`anyio.abc.ByteStream` plus what the
    pool knows about it.

    Return it with :meth:`Pool.release <conpool.Pool.release>` (or leave the
    ``pool.connection()`` block); ``await conn.aclose()`` closes it for good
    and the pool will not reuse it.

    Do not use it after releasing it.  While it sits idle in the pool, its
    ``send``, ``receive`` and ``send_eof`` raise :class:`RuntimeError` (and
    leave it as it was); once another task has acquired it, the pool cannot
    tell a stale reference from the new holder's, so keep none.

    :ivar endpoint: the :class:`~conpool.Endpoint` it was acquired for.
    :ivar address: ``(ip, port)`` actually dialled.
    """

    __slots__ = (
        "_rec",
        "address",
        "broken",
        "closed",
        "connect_ns",
        "endpoint",
        "tls_ns",
    )

    def __init__(self, endpoint: Endpoint, address: tuple[str, int]) -> None:
        self.endpoint = endpoint
        self.address = address
        # The pool's record once registered.  Its ``handle`` is the pool's
        # strong reference while the connection is idle and None while a
        # task holds it: how send and receive tell a use after release.
        self._rec: ConnRecord | _Unregistered = _UNREGISTERED
        # broken: an exception escaped a send or receive, so the protocol
        # state is unknown; closed: the user (or the pool) closed it.
        self.broken = False
        self.closed = False
        # How long the connect (TCP and TLS) and the TLS handshake alone
        # took, for the trace.
        self.connect_ns = 0
        self.tls_ns: int | None = None

    @property
    def created_at(self) -> float:
        """When the connection was established, in :func:`time.monotonic` seconds."""
        rec = self._rec
        assert not isinstance(rec, _Unregistered)
        return rec.created

    @property
    def uses(self) -> int:
        """How many times the pool has handed this connection out, this time included."""
        rec = self._rec
        assert not isinstance(rec, _Unregistered)
        return rec.uses

    @property
    def id(self) -> int:
        """The pool's number for this connection, as used in trace events."""
        rec = self._rec
        assert not isinstance(rec, _Unregistered)
        return rec.id

    @abstractmethod
    def usable(self, idle: float) -> bool:
        """Non-blocking check that an idle connection is still worth reusing.

        :param idle: seconds since it was released.
        """

    @abstractmethod
    def close_now(self) -> None:
        """Close without awaiting (the pool closes idle and expired
        connections from synchronous bookkeeping).  Idempotent."""

    @abstractmethod
    def closer(self) -> Callable[[], None]:
        """A function that closes the underlying socket and holds no
        reference to this object: the pool keeps it to close a connection
        that was garbage-collected without being released."""

    def _released(self) -> RuntimeError:
        """The error of a send or receive on a connection idle in the pool."""
        return RuntimeError(
            f"{self!r} was released to the pool and is idle there: "
            "acquire a connection again to use one"
        )

    def __repr__(self) -> str:
        rec = self._rec
        ident = f"#{rec.id} " if not isinstance(rec, _Unregistered) else ""
        ip, port = self.address
        host = f"[{ip}]" if ":" in ip else ip
        state = "closed" if self.closed else "broken" if self.broken else "open"
        uses = rec.uses if not isinstance(rec, _Unregistered) else 0
        return f"<conpool.Connection {ident}{self.endpoint} via {host}:{port} {state} uses={uses}>"


Connection.__module__ = "conpool"


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
        # A list, not a deque: an empty deque costs 760 bytes per idle
        # connection, a list 56; it rarely holds more than one chunk, and
        # data_received coalesces it so that pop(0) stays cheap.
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

    __slots__ = ("_fd", "_loop", "_proto", "_tls", "_transport")

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

    @staticmethod
    def protocol_factory(tls: bool) -> Callable[[], _Protocol]:
        return _tls_protocol if tls else _Protocol

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._rec.handle is not None:
            raise self._released()
        proto = self._proto
        buffer = proto.buffer
        if not buffer:
            if self.closed:
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
                self.broken = True
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
                if self.closed:
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
        self.broken = True
        exc = self._proto.exc
        if exc is not None:
            raise anyio.BrokenResourceError from exc
        raise anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        proto = self._proto
        if self.closed or proto.lost or self._rec.handle is not None:
            self._check_writable()
        self._transport.write(item)
        if proto.writing_paused:
            if proto.drain is not None:
                raise anyio.BusyResourceError("writing to")
            fut = proto.drain = self._loop.create_future()
            try:
                await fut
            except BaseException:
                self.broken = True
                raise
            finally:
                proto.drain = None
            self._check_writable()

    def _check_writable(self) -> None:
        if self._rec.handle is not None:
            raise self._released()
        if self.closed:
            raise anyio.ClosedResourceError
        if self._proto.lost:
            self.broken = True
            raise anyio.BrokenResourceError from self._proto.exc

    async def send_eof(self) -> None:
        if self._rec.handle is not None:
            raise self._released()
        if self._tls:
            raise NotImplementedError("send_eof() is not supported on TLS connections")
        if self.closed:
            raise anyio.ClosedResourceError
        # After a half-close the peer may still answer, but the connection
        # cannot carry another request: never reuse it.
        self.broken = True
        self._transport.write_eof()

    async def aclose(self) -> None:
        self.close_now()

    def closer(self) -> Callable[[], None]:
        return self._transport.abort

    def close_now(self) -> None:
        if not self.closed:
            self.closed = True
            if self._tls:
                # A graceful TLS close waits for close_notify to be sent,
                # which would outlive the pool (and the loop) when the pool
                # closes; abort like the other backends do.
                self._transport.abort()
            else:
                self._transport.close()
            self._proto._wake_reader()

    def usable(self, idle: float) -> bool:
        proto = self._proto
        # Bytes that arrived while idle belong to no request: the protocol on
        # this stream is out of step, so it must not carry another one.
        if self.closed or self.broken or proto.lost or proto.eof or proto.buffer:
            return False
        if idle < _PROBE_AFTER:
            return True
        # The flags above are only as fresh as the event loop's last look at
        # the socket; a FIN or RST the kernel received since is news to them.
        return _probe(self._fd, self._tls)

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


class SocketOwner(Connection):
    """A connection on trio, where the pool holds the socket itself: closing
    it and checking it while idle are the same for plain TCP
    (:class:`conpool._trio.SocketConnection`) and for TLS
    (:class:`StreamConnection`)."""

    __slots__ = ("_sock", "_tls")

    def __init__(
        self, endpoint: Endpoint, address: tuple[str, int], sock: socket.socket, tls: bool
    ) -> None:
        super().__init__(endpoint, address)
        self._sock = sock
        self._tls = tls

    def close_now(self) -> None:
        # Closing the socket is synchronous on every backend once the event
        # loop is told (notify_closing wakes anyone blocked on it).  A TLS
        # stream closed this way skips close_notify, as browsers and most
        # pools do for idle connections: the peer sees a plain FIN.
        if not self.closed:
            self.closed = True
            _close_socket(self._sock)

    def usable(self, idle: float) -> bool:
        if self.closed or self.broken:
            return False
        # Nothing reads a trio socket between the user's reads, so there are
        # no flags: every reuse asks the kernel, however short the idle time.
        # Bytes the last user left unread (a request cut short) sit in the
        # kernel, not in a buffer of ours, and may have come long before
        # the release (test_cancel.py::test_cancel_while_holding).
        # (The descriptor is not kept: an int above 256 is 28 more bytes per
        # idle connection, and this path makes a system call anyway.)
        return _probe(self._sock.fileno(), self._tls)


class StreamConnection(SocketOwner):
    """A TLS connection on trio: wraps the anyio stream :mod:`conpool._dial`
    opened."""

    __slots__ = ("_stream",)

    def __init__(
        self, endpoint: Endpoint, address: tuple[str, int], stream: ByteStream, sock: socket.socket
    ) -> None:
        super().__init__(endpoint, address, sock, isinstance(stream, TLSStream))
        self._stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._rec.handle is not None:
            raise self._released()
        try:
            return await self._stream.receive(max_bytes)
        except BaseException:
            self.broken = True
            raise

    async def send(self, item: bytes) -> None:
        if self._rec.handle is not None:
            raise self._released()
        try:
            await self._stream.send(item)
        except BaseException:
            self.broken = True
            raise

    async def send_eof(self) -> None:
        if self._rec.handle is not None:
            raise self._released()
        self.broken = True
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self.closed = True
        await anyio.aclose_forcefully(self._stream)

    def closer(self) -> Callable[[], None]:
        return functools.partial(_close_socket, self._sock)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


def _close_socket(sock: socket.socket) -> None:
    if sock.fileno() != -1:
        anyio.notify_closing(sock)
        sock.close()
