"""The connection a thread holds: :class:`SyncConnection`, a blocking socket
(TLS through :mod:`ssl`) that knows its pool, as :class:`~conpool.Connection`
does for the async shell."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._backends._sockets import PROBE_AFTER, probe
from ._backends._tlsintls import TLSInTLS
from ._connection import UNREGISTERED, describe_connection, released_error
from ._records import ConnRecord

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["SyncConnection"]


class SyncConnection:
    """A pooled connection for threads: a blocking socket plus what the pool
    knows about it.

    Give it back with :meth:`SyncPool.release <conpool.SyncPool.release>` (or
    leave the ``pool.connection()`` block); :meth:`close` closes it for good.
    Do not use it after releasing it: while it is idle in the pool its
    ``send``, ``receive`` and ``send_eof`` raise :class:`RuntimeError`.

    An error escaping ``send`` or ``receive`` (a timeout included) marks it
    broken: the pool closes it on release instead of reusing it.

    :ivar endpoint: the :class:`~conpool.Endpoint` it was acquired for.
    :ivar address: ``(ip, port)`` actually dialled.
    :ivar user_data: a dict that lives as long as the connection (protocol
        state of a layer built on the pool).
    """

    __slots__ = (
        "__weakref__",
        "_broken",
        "_closed",
        "_connect_ns",
        "_fd",
        "_gen",
        "_rec",
        "_recv",
        "_sendall",
        "_sock",
        "_timeout",
        "_tls",
        "_tls_ns",
        "address",
        "endpoint",
        "user_data",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        address: tuple[str, int],
        sock: socket.socket | TLSInTLS,
        gen: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self.address = address
        self._sock = sock
        # Bound once: send and receive are then one call into the socket.
        self._sendall = sock.sendall
        self._recv = sock.recv
        self._fd = sock.fileno()
        self._tls = isinstance(sock, ssl.SSLSocket | TLSInTLS)
        #: What settimeout() last gave the socket (None: blocking).
        self._timeout: float | None = None
        self._rec: ConnRecord[Endpoint, Any] = UNREGISTERED
        self._broken = False
        self._closed = False
        self._connect_ns = 0
        self._tls_ns: int | None = None
        # The fork generation of the process that opened it (see _syncpool).
        self._gen = gen
        self.user_data: dict[Any, Any] = {}

    # -- the user's side ---------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send all of ``data``, blocking until the kernel took it.

        :raises RuntimeError: the connection was released to the pool.
        :raises OSError: the connection is closed or failed (then broken).
        :raises TimeoutError: the :meth:`settimeout` time passed (then broken).
        """
        if self._rec.conn is not None or self._closed:
            self._refuse()
        # (Read, then called: a method call on a slot that holds a bound
        # method is not specialized by CPython 3.11.)
        sendall = self._sendall
        try:
            sendall(data)
        except BaseException:
            self._broken = True
            raise

    def receive(self, max_bytes: int = 65536) -> bytes:
        """At most ``max_bytes`` bytes, blocking until some arrive; ``b""`` at
        the end of the stream (then the connection is not reused).

        :raises ValueError: ``max_bytes`` is not a positive integer.
        :raises RuntimeError: the connection was released to the pool.
        :raises OSError: the connection is closed or failed (then broken).
        :raises TimeoutError: the :meth:`settimeout` time passed (then broken).
        """
        # (One test for the common case; the reasons apart only on failure.)
        if (
            self._rec.conn is not None
            or self._closed
            or max_bytes.__class__ is not int
            or max_bytes < 1
        ):
            self._refuse(max_bytes)
        recv = self._recv  # (see send)
        try:
            data = recv(max_bytes)
        except BaseException:
            self._broken = True
            raise
        if not data:
            self._broken = True
        return data

    def _refuse(self, max_bytes: object = 1) -> None:
        """Raise why ``send`` or ``receive`` cannot go ahead (or return, for
        a ``max_bytes`` of an int subclass)."""
        if self._rec.conn is not None:
            raise self._released()
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        if self._closed:
            raise OSError("the connection is closed")

    def send_eof(self) -> None:
        """Half-close: tell the peer nothing more will be sent (plain TCP
        only).  The connection is not reused afterwards.

        :raises NotImplementedError: on a TLS connection.
        """
        if self._rec.conn is not None:
            raise self._released()
        if self._tls:
            raise NotImplementedError("send_eof() is not supported on TLS connections")
        if self._closed:
            raise OSError("the connection is closed")
        self._broken = True
        self._sock.shutdown(socket.SHUT_WR)

    def settimeout(self, seconds: float | None) -> None:
        """Bound each later ``send`` and ``receive`` to ``seconds`` (None:
        block as long as it takes, the default).  Reset on release.

        :raises ValueError: a negative or NaN ``seconds``.
        """
        if seconds is None:
            if self._timeout is None:
                return
        elif seconds.__class__ is float and seconds == self._timeout:
            # (A protocol layer sets the same timeout before every request:
            # the socket already has it, no system call.)
            return
        elif isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"seconds must be a number >= 0 or None, got {seconds!r}")
        self._sock.settimeout(seconds)
        self._timeout = seconds

    def close(self) -> None:
        """Close the connection for good; the pool will not reuse it.

        :raises RuntimeError: the connection was released to the pool (a
            stale holder cannot close what someone else may hold now).
        """
        if self._rec.conn is not None:
            raise self._released()
        self._close_now()

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (an :class:`ssl.SSLSocket` with TLS; with
        TLS inside an ``https://`` proxy's tunnel, an object with the socket
        methods the connection uses, ``sendall``, ``recv``, ``settimeout``,
        ``fileno``)."""
        return self._sock  # type: ignore[return-value]

    @property
    def ssl_object(self) -> ssl.SSLSocket | ssl.SSLObject | None:
        """The TLS session to the endpoint (for ``version()``,
        ``selected_alpn_protocol()``, ``getpeercert()``), or None without TLS."""
        sock = self._sock
        if self.endpoint.tls is None:
            return None  # (a plain endpoint through an https:// proxy's TLS included)
        if isinstance(sock, TLSInTLS):
            return sock.ssl_object
        return sock if isinstance(sock, ssl.SSLSocket) else None

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._closed

    @property
    def uses(self) -> int:
        """How many times the pool has handed this connection out, this time included."""
        return self._rec.uses

    @property
    def created_at(self) -> float:
        """When the connection was established (:func:`time.monotonic` seconds)."""
        return self._rec.created

    @property
    def id(self) -> int:
        """The pool's number for this connection, as used in trace events."""
        return self._rec.id

    # -- the pool's side ---------------------------------------------------------

    def _usable(self, idle: float) -> bool:
        if self._broken:
            return False
        if idle < PROBE_AFTER:
            return True
        # No event loop watches an idle blocking socket: the kernel is the
        # only one who knows whether the peer closed it meanwhile.
        return probe(self._fd, self._tls)

    def _close_now(self) -> None:
        if not self._closed:
            self._closed = self._broken = True
            self._sock.close()

    def _closer(self) -> Callable[[], None]:
        return self._sock.close

    def _released(self) -> RuntimeError:
        return released_error(self)

    def __repr__(self) -> str:
        return describe_connection("conpool.SyncConnection", self)


SyncConnection.__module__ = "conpool"
