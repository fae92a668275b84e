"""What every backend does the same way with a socket: make one for an
address, ask the kernel whether an idle one is still worth reusing, and word
the errors of an attempt the way the pool reports them."""

from __future__ import annotations

import select
import socket
import ssl
import time

import anyio

__all__ = [
    "PROBE_AFTER",
    "NotTLSError",
    "close_socket",
    "closed_in_handshake",
    "make_socket",
    "probe",
    "timeout_error",
    "tls_timed",
]

# A connection idle for less than this is not polled on reuse: it was in use
# a moment ago, the loop's flags are as fresh as a poll would be to within
# that moment, and a close arriving now races any check (the request itself
# then fails, as with every pool).  Skipping the system call keeps hot reuse
# cheap; a connection idle for longer, which is when servers close them, is
# always polled.
PROBE_AFTER = 0.001

_PROBE_EVENTS = select.POLLIN | select.POLLRDHUP

# poll(2) events meaning the peer is gone (or the descriptor is).
_HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


def probe(fd: int, tls: bool) -> bool:
    """Ask the kernel whether an idle socket is still worth reusing, without
    reading and without raising.

    poll(2) with POLLRDHUP reports a peer that closed or reset even when bytes
    are still queued.  Plaintext bytes nobody asked for make the stream
    unusable (the protocol on it is out of step); on TLS they may be a TLS 1.3
    session ticket not read yet, so there only a hang-up counts.
    """
    # A poll object per probe, not per connection (kept, it would cost
    # memory on every idle connection): registering makes no system call,
    # so this is still one poll(2).
    poll = select.poll()
    poll.register(fd, _PROBE_EVENTS)
    ready = poll.poll(0)
    if not ready:
        return True
    if ready[0][1] & _HANGUP:
        return False
    return tls


def make_socket(ip: str) -> socket.socket:
    """A non-blocking TCP socket for ``ip``'s family, with Nagle off."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # Small request/response messages must not wait for Nagle's timer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def close_socket(sock: socket.socket) -> None:
    """Close ``sock`` at once, waking any task blocked on it."""
    if sock.fileno() != -1:
        anyio.notify_closing(sock)
        sock.close()


class NotTLSError(ssl.SSLError):
    """What listens there spoke first, so it is not a TLS server."""

    def __str__(self) -> str:
        return str(self.args[0])


def tls_timed(exc: BaseException, tls_start: int) -> BaseException:
    """Note on a failure in the TLS handshake how long the handshake ran,
    for the ``tls.failed`` trace event (read back with
    ``getattr(exc, "conpool_tls_ns", None)``)."""
    if tls_start and isinstance(exc, OSError):
        setattr(exc, "conpool_tls_ns", time.monotonic_ns() - tls_start)  # noqa: B010
    return exc


def closed_in_handshake() -> ConnectionResetError:
    return ConnectionResetError("connection closed by the peer during the TLS handshake")


def timeout_error(what: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"{what} timed out after {timeout:g} s")
