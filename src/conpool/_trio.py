"""Plain TCP connections on trio, straight on the socket.

anyio's trio backend gives each socket stream two wrappers (anyio's
``SocketStream`` over trio's socket object) and two resource guards: about
400 bytes per idle connection and a few calls per read or write.  This does
what they do, with trio's own low-level primitives, for the one case the
pool hands out most: non-blocking ``send``/``recv`` tried first, and
``trio.lowlevel.wait_readable``/``wait_writable`` when the socket is not
ready.  Each operation is a trio checkpoint, like trio's own socket methods:
it raises if already cancelled and yields to the scheduler even when the
socket was ready.

TLS on trio keeps going through anyio's ``TLSStream``
(:class:`conpool._connection.StreamConnection`).

Also here: :class:`Parked`, what a waiting task parks on, the counterpart
of the native future the asyncio shell uses.  Imported only on trio.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import trio
from anyio.abc import SocketAttribute

from ._connection import SocketOwner

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["Parked", "SocketConnection"]

_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable = trio.lowlevel.wait_readable
_wait_writable = trio.lowlevel.wait_writable
# Bound once: each parked waiter (the contended path) uses these, and the
# module attribute lookups cost about 0.2 µs per contended pair on trio.
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
        if self._rec.handle is not None:
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
            self.broken = True
            raise
        finally:
            self._receiving = False
        if not data:
            self.broken = True
            raise anyio.EndOfStream
        return data

    async def _recv(self, max_bytes: int) -> bytes:
        sock = self._sock
        waited = False
        while True:
            if self.closed:
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
        if self._rec.handle is not None:
            raise self._released()
        if self._sending:
            raise anyio.BusyResourceError("writing to")
        self._sending = True
        try:
            await _checkpoint_if_cancelled()
            await self._send_all(item)
        except BaseException:
            self.broken = True
            raise
        finally:
            self._sending = False

    async def _send_all(self, item: bytes) -> None:
        sock = self._sock
        view: memoryview | None = None
        remaining = len(item)
        waited = False
        while True:
            if self.closed:
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
        if self._rec.handle is not None:
            raise self._released()
        if self.closed:
            raise anyio.ClosedResourceError
        # After a half-close the peer may still answer, but the connection
        # cannot carry another request: never reuse it.
        self.broken = True
        await _checkpoint_if_cancelled()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        await _shielded_checkpoint()

    async def aclose(self) -> None:
        # Closed first, so that a cancellation at the checkpoint cannot
        # leave it open.
        self.close_now()
        await _shielded_checkpoint()

    def closer(self) -> Callable[[], None]:
        # For a connection dropped without release: nothing can be waiting
        # on its socket (a task waiting would hold the connection), so no
        # trio.lowlevel.notify_closing is due, and a bound method costs 64
        # bytes per connection where a partial of _close_socket costs 190.
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
