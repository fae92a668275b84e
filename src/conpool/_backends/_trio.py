"""The trio backend.

Plain TCP connections are :class:`SocketConnection`, straight on the socket.
anyio's trio backend gives each socket stream two wrappers (anyio's
``SocketStream`` over trio's socket object) and two resource guards: memory
on every idle connection and a few calls per read or write.  This does what
they do, with trio's own low-level primitives, for the one case the pool
hands out most: non-blocking ``send``/``recv`` tried first, and
``trio.lowlevel.wait_readable``/``wait_writable`` when the socket is not
ready.  Each operation is a trio checkpoint, like trio's own socket methods:
it raises if already cancelled and yields to the scheduler even when the
socket was ready.  TLS goes through anyio's ``TLSStream``
(:class:`StreamConnection`).

A waiting acquire parks on a :class:`Parked` (trio's lowest-level
primitives, the counterpart of the native future on asyncio);
``acquire_timeout`` is a cancel scope around that wait.  Imported only on
trio (an optional extra).
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import trio
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream

from .._connection import Connection
from .._proxy import Proxy
from .._tunnel import ProxyAttempt, Trace
from ._sockets import (
    DEFAULT_SOCKETS,
    SocketFactory,
    attempt_socket,
    close_socket,
    closed_in_handshake,
    probe,
    timeout_error,
    tls_timed,
)
from ._streams import OnStream

if TYPE_CHECKING:
    from .._endpoint import Endpoint
    from .._records import Waiter

__all__ = ["Parked", "SocketConnection", "StreamConnection", "TrioBackend", "open_trio"]


_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
# Bound once: each parked waiter (the contended path) uses these, and a
# module attribute lookup per use is measurable there.
_current_task = trio.lowlevel.current_task
_reschedule = trio.lowlevel.reschedule
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_checkpoint = trio.lowlevel.checkpoint
_ABORTED = trio.lowlevel.Abort.SUCCEEDED


async def _ready(wait: Callable[[socket.socket], Awaitable[None]], sock: socket.socket) -> None:
    """Wait until ``sock`` is readable or writable; a close from another
    task (trio.lowlevel.notify_closing) surfaces as anyio's error."""
    try:
        await wait(sock)
    except trio.ClosedResourceError:
        raise anyio.ClosedResourceError from None


class SocketOwner(Connection):
    """A connection on trio, where the pool holds the socket itself: closing
    it and checking it while idle are the same for plain TCP
    (:class:`SocketConnection`) and for TLS
    (:class:`StreamConnection`)."""

    __slots__ = ("_sock", "_tls")

    def __init__(
        self, endpoint: Endpoint, address: tuple[str, int], sock: socket.socket, tls: bool
    ) -> None:
        super().__init__(endpoint, address)
        self._sock = sock
        self._tls = tls

    def _close_now(self) -> None:
        # Closing the socket is synchronous on every backend once the event
        # loop is told (notify_closing wakes anyone blocked on it).  A TLS
        # stream closed this way skips close_notify, as browsers and most
        # pools do for idle connections: the peer sees a plain FIN.
        if not self._closed:
            self._closed = self._broken = True
            close_socket(self._sock)

    def _usable(self, idle: float) -> bool:
        if self._broken:  # (closed sets it too)
            return False
        # Nothing reads a trio socket between the user's reads, so there are
        # no flags: every reuse asks the kernel, however short the idle time.
        # Bytes the last user left unread (a request cut short) sit in the
        # kernel, not in a buffer of ours, and may have come long before
        # the release (test_cancel.py::test_cancel_while_holding).
        # (The descriptor is not kept: an int above 256 is one more object
        # on every idle connection, and this path makes a system call anyway.)
        return probe(self._sock.fileno(), self._tls)


class StreamConnection(SocketOwner, OnStream):
    """A TLS connection on trio: wraps the anyio stream :func:`open_trio`
    opened."""

    __slots__ = ("_stream",)

    def __init__(
        self, endpoint: Endpoint, address: tuple[str, int], stream: ByteStream, sock: socket.socket
    ) -> None:
        super().__init__(endpoint, address, sock, isinstance(stream, TLSStream))
        self._stream = stream

    async def aclose(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        self._closed = self._broken = True
        await anyio.aclose_forcefully(self._stream)

    def _closer(self) -> Callable[[], None]:
        return functools.partial(close_socket, self._sock)


class SocketConnection(SocketOwner):
    """A plain TCP connection on trio, on its non-blocking socket."""

    __slots__ = ("_receiving", "_sending")

    def __init__(self, endpoint: Endpoint, address: tuple[str, int], sock: socket.socket) -> None:
        super().__init__(endpoint, address, sock, False)
        # anyio's contract: a second task reading (or writing) at the same
        # time gets BusyResourceError, not interleaved bytes.
        self._receiving = False
        self._sending = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._rec.conn is not None:
            raise self._released()
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise anyio.BusyResourceError("reading from")
        self._receiving = True
        try:
            await _checkpoint_if_cancelled()
            data = await self._recv(max_bytes)
        except BaseException:
            self._broken = True
            raise
        finally:
            self._receiving = False
        if not data:
            self._broken = True
            raise anyio.EndOfStream
        return data

    async def _recv(self, max_bytes: int) -> bytes:
        sock = self._sock
        waited = False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                await _ready(_wait_readable, sock)
                waited = True
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not waited:
                # Ready at once: still yield once (waiting was the yield otherwise).
                await _shielded_checkpoint()
            return data

    async def send(self, item: bytes) -> None:
        if self._rec.conn is not None:
            raise self._released()
        if self._sending:
            raise anyio.BusyResourceError("writing to")
        self._sending = True
        try:
            await _checkpoint_if_cancelled()
            await self._send_all(item)
        except BaseException:
            self._broken = True
            raise
        finally:
            self._sending = False

    async def _send_all(self, item: bytes) -> None:
        sock = self._sock
        view: memoryview | None = None
        remaining = len(item)
        waited = False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                sent = sock.send(item if view is None else view)
            except BlockingIOError:
                await _ready(_wait_writable, sock)
                waited = True
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            remaining -= sent
            if not remaining:
                break
            # A partial write (a full socket buffer): go on from where it
            # stopped, without copying the rest.
            view = (memoryview(item) if view is None else view)[sent:]
        if not waited:
            await _shielded_checkpoint()

    async def send_eof(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        if self._closed:
            raise anyio.ClosedResourceError
        # After a half-close the peer may still answer, but the connection
        # cannot carry another request: never reuse it.
        self._broken = True
        await _checkpoint_if_cancelled()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        await _shielded_checkpoint()

    async def aclose(self) -> None:
        if self._rec.conn is not None:
            raise self._released()
        # Closed first, so that a cancellation at the checkpoint cannot
        # leave it open.
        self._close_now()
        await _shielded_checkpoint()

    def _closer(self) -> Callable[[], None]:
        # For a connection dropped without release: nothing can be waiting
        # on its socket (a task waiting would hold the connection), so no
        # trio.lowlevel.notify_closing is due, and a bound method is kept
        # on every connection, smaller than a partial of close_socket.
        return self._sock.close

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        return {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: sock.getsockname(),
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_address: lambda: sock.getpeername(),
            SocketAttribute.remote_port: lambda: sock.getpeername()[1],
            SocketAttribute.raw_socket: lambda: sock,
        }


class Parked:
    """One waiting task, parked with trio's lowest-level primitives: a
    ``wait_task_rescheduled`` woken by ``reschedule``, which is what
    ``trio.Event`` does under its parking lot, without the lot, and without
    anyio's ``Event`` wrapped around it.

    Made by the task that will wait, which then awaits it.  :meth:`set` may
    come before the await (which then only checkpoints), while it waits, or
    after it was cancelled (then it is a no-op: the cancelled task is not
    woken twice).
    """

    __slots__ = ("_task", "is_set", "parked")

    def __init__(self) -> None:
        self._task = _current_task()
        self.is_set = False
        self.parked = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            if self.parked:
                self.parked = False
                _reschedule(self._task)

    def __await__(self) -> Generator[Any, None, None]:
        # ``await parked``, as the asyncio shell awaits its future: straight
        # into trio's wait, with no coroutine of ours in between (a woken
        # task resumes through every level).
        if self.is_set:
            return _checkpoint().__await__()  # (awaited by the caller)
        self.parked = True
        return _wait_task_rescheduled(self._abort).__await__()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self.parked = False
        return _ABORTED


async def open_trio(
    endpoint: Endpoint,
    ip: str,
    port: int,
    connect_timeout: float | None,
    *,
    proxy: Proxy | None = None,
    trace: Trace | None = None,
    sockets: SocketFactory | None = None,
) -> Connection:
    """One attempt on trio: the socket itself for plain TCP
    (:class:`SocketConnection`), an anyio socket stream wrapped in TLS
    otherwise (:class:`StreamConnection`).

    With *proxy*, the socket is the proxy's, with the tunnel to ``ip:port``
    open (see :mod:`conpool._tunnel`); all the rest is as without one.  An
    ``https://`` proxy needs TLS in TLS, which goes through
    :mod:`._tunnel`'s stream connection.  Without one, the socket is made by
    *sockets* (``Config.socket_options``, ``Config.local_address``), and
    ``ip`` is the socket's path for a Unix socket endpoint."""
    if proxy is not None and proxy.is_tls:
        from ._tunnel import open_tls_proxied

        return await open_tls_proxied(endpoint, ip, port, connect_timeout, proxy, trace)
    via = None if proxy is None else ProxyAttempt(proxy, ip, port, trace)
    sock, sockaddr = attempt_socket(sockets or DEFAULT_SOCKETS, endpoint, ip, port, via is not None)
    stream: SocketStream | None = None
    tls = endpoint.tls
    stage = "TCP connect"
    tls_start = 0  # set when the handshake starts
    try:
        with anyio.fail_after(connect_timeout):
            if via is None:
                err = sock.connect_ex(sockaddr)
                if err in (errno.EINPROGRESS, errno.EAGAIN):
                    await anyio.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, os.strerror(err))
            else:
                sock = await via.open()
            if tls is None:
                return SocketConnection(endpoint, (ip, port), sock)
            stream = await SocketStream.from_socket(sock)
            stage = "TLS handshake"
            tls_start = time.monotonic_ns()
            try:
                wrapped = await TLSStream.wrap(
                    stream,
                    hostname=tls.server_name_for(endpoint.host),
                    ssl_context=tls.ssl_context,
                    standard_compatible=False,
                )
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                # anyio's words for a peer that hung up mid-handshake; the
                # pool (and its retries) deal in OSErrors.
                raise closed_in_handshake() from exc
            conn = StreamConnection(endpoint, (ip, port), wrapped, sock)
            conn._tls_ns = time.monotonic_ns() - tls_start
            return conn
    except TimeoutError as exc:
        await _aclose_quietly(stream, sock, via)
        if via is not None and not via.finished:
            raise via.failed(exc, connect_timeout) from None
        if exc.errno is not None or connect_timeout is None:  # not our deadline
            raise
        raise tls_timed(timeout_error(stage, connect_timeout), tls_start) from None
    except BaseException as exc:
        await _aclose_quietly(stream, sock, via)
        if via is not None:
            via.failed(exc, connect_timeout)
        tls_timed(exc, tls_start)
        raise


async def _aclose_quietly(
    stream: SocketStream | None, sock: socket.socket, via: ProxyAttempt | None = None
) -> None:
    if stream is not None:
        await anyio.aclose_forcefully(stream)
    else:
        sock.close()
        if via is not None:
            via.close()


class TrioBackend:
    """The pool's backend on trio (see :class:`conpool._backends.Backend`)."""

    name = "trio"

    def __init__(self) -> None:
        self.clock: Callable[[], float] = time.monotonic
        self.park: Callable[[], Parked] = Parked
        self.call_soon_threadsafe = trio.lowlevel.current_trio_token().run_sync_soon
        self.open = open_trio

    @staticmethod
    def wake(waiters: Sequence[Waiter[Any, Any]]) -> None:
        for w in waiters:
            w.handle.set()

    async def wait(self, parked: Awaitable[None], seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await parked
