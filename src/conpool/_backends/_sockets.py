"""What every backend does the same way with a socket: make one for an
address (family, ``Config.socket_options``, ``TCP_NODELAY``,
``Config.local_address``: :class:`SocketFactory`), ask the kernel whether an
idle one is still worth reusing, and word the errors of an attempt the way
the pool reports them."""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import ssl
import time
from typing import TYPE_CHECKING

import anyio

from .._errors import SocketSetupError

if TYPE_CHECKING:
    from .._config import Config, SocketOption
    from .._endpoint import Endpoint

__all__ = [
    "PROBE_AFTER",
    "NotTLSError",
    "DEFAULT_SOCKETS",
    "SocketFactory",
    "attempt_socket",
    "close_socket",
    "closed_in_handshake",
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


# Levels that exist only on IP sockets: skipped on a Unix domain socket, so
# one config (TCP keepalive, say) serves TCP and Unix endpoints alike.
_IP_LEVELS = frozenset({socket.IPPROTO_TCP, socket.IPPROTO_IP, socket.IPPROTO_IPV6})


def _setup_error(err: int | None, text: str) -> SocketSetupError:
    words = os.strerror(err) if err else "refused"
    return SocketSetupError(f"{text}: [Errno {err}] {words}" if err else f"{text}: {words}")


class SocketFactory:
    """Makes the non-blocking sockets of connection attempts.

    :param options: ``Config.socket_options`` (validated there).
    :param local_address: ``Config.local_address`` (validated there).
    """

    __slots__ = ("_local", "_local_version", "_nodelay", "_nodelay_given", "_options")

    @classmethod
    def of(cls, config: Config) -> SocketFactory:
        return cls(tuple(config.socket_options), config.local_address)

    def __init__(
        self, options: tuple[SocketOption, ...] = (), local_address: str | None = None
    ) -> None:
        self._options = options
        # Small request/response messages must not wait for Nagle's timer:
        # on unless the options set TCP_NODELAY themselves (either way).
        given = [
            (level, name, value)
            for level, name, value in options
            if level == socket.IPPROTO_TCP and name == socket.TCP_NODELAY
        ]
        self._nodelay = not given
        # asyncio's and uvloop's transports turn TCP_NODELAY on by themselves:
        # an explicit setting is applied again once the transport exists.
        self._nodelay_given = given[-1:]
        self._local = local_address
        self._local_version = (
            None if self._local is None else ipaddress.ip_address(self._local).version
        )

    def open(
        self, endpoint: Endpoint, ip: str, port: int
    ) -> tuple[socket.socket, tuple[str, int] | str]:
        """A new non-blocking socket for dialling ``ip`` (the path, for a
        Unix socket endpoint), and the address to connect it to.

        :raises SocketSetupError: an option or the source address was refused.
        """
        if endpoint.is_unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                for level, name, value in self._options:
                    if level not in _IP_LEVELS:
                        _set(sock, level, name, value)
            except BaseException:
                sock.close()
                raise
            return sock, ip
        v6 = ":" in ip
        if self._local_version is not None and self._local_version != (6 if v6 else 4):
            raise _setup_error(
                errno.EAFNOSUPPORT,
                f"local_address {self._local} cannot reach the IPv{6 if v6 else 4} address {ip}",
            )
        sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self._nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for level, name, value in self._options:
                _set(sock, level, name, value)
            if self._local is not None:
                try:
                    # Port 0: the kernel picks the source port, as connect would.
                    sock.bind((self._local, 0))
                except OSError as exc:
                    raise _setup_error(exc.errno, f"binding local_address {self._local}") from exc
        except BaseException:
            sock.close()
            raise
        return sock, (ip, port)

    def settle(self, endpoint: Endpoint, sock: socket.socket | None) -> None:
        """Apply again what an event loop's transport overrode (asyncio and
        uvloop set ``TCP_NODELAY`` on every TCP transport they make)."""
        if self._nodelay_given and sock is not None and not endpoint.is_unix:
            for level, name, value in self._nodelay_given:
                _set(sock, level, name, value)


def _set(sock: socket.socket, level: int, name: int, value: int | bytes) -> None:
    try:
        sock.setsockopt(level, name, value)
    except OSError as exc:
        raise _setup_error(
            exc.errno, f"setsockopt({level}, {name}, {value!r}) from socket_options"
        ) from exc


#: For a backend asked to open without a factory: TCP_NODELAY, nothing else.
DEFAULT_SOCKETS = SocketFactory()


# Stands in for the socket of a proxied attempt until the proxy is connected
# (closing it is harmless), so the error paths need no None test.
_NO_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
_NO_SOCKET.close()


def attempt_socket(
    sockets: SocketFactory, endpoint: Endpoint, ip: str, port: int, proxied: bool
) -> tuple[socket.socket, tuple[str, int] | str]:
    """The socket a connection attempt starts with, and the address it
    connects to: a new socket from *sockets*, or for a proxied attempt
    (whose socket the proxy's connect makes later) a closed placeholder."""
    if proxied:
        return _NO_SOCKET, (ip, port)
    return sockets.open(endpoint, ip, port)


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
