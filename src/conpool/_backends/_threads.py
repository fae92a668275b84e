"""The threaded shell's side of waiting and connecting (:class:`~conpool.SyncPool`).

A waiting thread parks on a lock of its own, made locked: acquiring it again
is the wait, releasing it (under the pool's lock, by whoever served the
waiter) is the wake.  One primitive per waiter, so a release wakes exactly
the thread the state machine chose: first come, first served, with no
thundering herd on a shared condition.

A connection attempt is a non-blocking ``connect`` whose completion a
selector reports (:mod:`conpool._syncconnect` runs several in one thread for
Happy Eyeballs); TLS is then a blocking handshake bounded by what is left of
the attempt's time.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._sockets import NotTLSError, SocketFactory, closed_in_handshake, timeout_error, tls_timed
from ._tlsintls import TLSInTLS

if TYPE_CHECKING:
    from .._endpoint import TLS, Endpoint
    from .._records import Waiter

__all__ = ["connect_result", "park", "start_connect", "tls_handshake", "wait", "wake"]


def park() -> threading.Lock:
    """What a waiting thread blocks on: a lock made locked."""
    lock = threading.Lock()
    lock.acquire()
    return lock


def wake(waiters: Sequence[Waiter[Any, Any]]) -> None:
    """Wake the threads parked on these waiters (called under the pool's lock)."""
    for w in waiters:
        handle: threading.Lock = w.handle
        if handle.locked():
            handle.release()


def wait(handle: threading.Lock, seconds: float | None) -> None:
    """Block until woken or ``seconds`` passed (the caller tells which from
    the waiter's grant, under the pool's lock)."""
    if seconds is None:
        handle.acquire()
    else:
        handle.acquire(timeout=max(seconds, 0.0))


def start_connect(
    sockets: SocketFactory, endpoint: Endpoint, ip: str, port: int
) -> tuple[socket.socket, bool]:
    """Start a connect without blocking, on a socket made with the configured
    options (``socket_options``, ``local_address``; a Unix socket for a Unix
    endpoint, ``ip`` being its path): the socket, and whether it connected
    already (else the selector reports writability when done).

    :raises OSError: the connect failed at once.
    """
    sock, sockaddr = sockets.open(endpoint, ip, port)
    try:
        err = sock.connect_ex(sockaddr)
    except BaseException:
        sock.close()
        raise
    if err == 0:
        return sock, True
    if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        return sock, False
    sock.close()
    raise OSError(err, os.strerror(err))


def connect_result(sock: socket.socket) -> OSError | None:
    """What a connect the selector reported done came to."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return OSError(err, os.strerror(err)) if err else None


def tls_handshake(
    sock: socket.socket, endpoint: Endpoint, deadline: float | None, timeout: float | None
) -> tuple[ssl.SSLSocket | TLSInTLS, int]:
    """The TLS handshake on a connected socket (or inside an https://
    proxy's TLS tunnel), bounded by ``deadline``
    (monotonic; ``timeout`` is what it is reported as).  Returns the TLS
    socket and how long the handshake took (ns).  On failure the socket is
    closed."""
    tls = endpoint.tls
    assert tls is not None
    tls_start = time.monotonic_ns()
    tls_sock: ssl.SSLSocket | TLSInTLS
    try:
        if isinstance(sock, ssl.SSLSocket):
            # The tunnel of an https:// proxy: TLS inside its TLS (no peek:
            # the proxy's own records are there to read).
            tls_sock = TLSInTLS(sock, tls.ssl_context, tls.server_name_for(endpoint.host))
        else:
            tls_sock = _wrap(sock, tls, endpoint.host)
    except BaseException as exc:
        sock.close()
        tls_timed(exc, tls_start)
        raise
    try:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        tls_sock.settimeout(remaining)
        tls_sock.do_handshake()
        tls_sock.settimeout(None)
    except TimeoutError as exc:
        tls_sock.close()
        if timeout is None:
            raise tls_timed(exc, tls_start) from None
        raise tls_timed(timeout_error("TLS handshake", timeout), tls_start) from None
    except ssl.SSLEOFError as exc:
        tls_sock.close()
        raise tls_timed(closed_in_handshake(), tls_start) from exc
    except BaseException as exc:
        tls_sock.close()
        tls_timed(exc, tls_start)
        raise
    return tls_sock, time.monotonic_ns() - tls_start


def _wrap(sock: socket.socket, tls: TLS, host: str) -> ssl.SSLSocket:
    # A TLS server waits for our hello; bytes (or a hang-up) before it
    # mean whatever listens there does not speak TLS.
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)
    if poll.poll(0):
        peeked = sock.recv(1, socket.MSG_PEEK)
        if not peeked:
            raise closed_in_handshake()
        raise NotTLSError("the server sent bytes before the TLS handshake")
    return tls.ssl_context.wrap_socket(
        sock, server_hostname=tls.server_name_for(host), do_handshake_on_connect=False
    )
