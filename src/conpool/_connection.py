"""The connection a user holds: the public base class every backend's
connection derives from.

:class:`Connection` is an :class:`anyio.abc.ByteStream` that knows its pool:
its endpoint, the address it was dialled to, and the pool's record of it
(when it was made, how often it was handed out).  The byte stream itself is
each backend's (:mod:`conpool._backends`); so is what the pool needs to
decide, without I/O, whether an idle connection can be handed out again, and
how to close it from synchronous book-keeping.  Those are underscore names:
the pool's side of the object, not the user's.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from anyio.abc import ByteStream

from ._records import AddressState, ConnRecord, EndpointState

if TYPE_CHECKING:
    from ._endpoint import Endpoint

__all__ = ["UNREGISTERED", "Connection", "describe_connection", "released_error"]

#: Stands in for the pool's record of a connection the pool has not
#: registered yet (it is being dialled).  Its ``conn`` is None, as a held
#: connection's is, so the idle check on every send and receive reads
#: ``self._rec.conn`` with no None test first; its endpoint has no owner, so
#: ``release()`` refuses it as not the pool's with the same test.
UNREGISTERED: ConnRecord[Any, Any] = ConnRecord(
    0, EndpointState("(unregistered)"), AddressState("0.0.0.0"), 0.0, 0.0
)


class Connection(ByteStream):
    """A pooled connection: an :class:`anyio.abc.ByteStream` plus what the
    pool knows about it.

    Return it with :meth:`Pool.release <conpool.Pool.release>` (or leave the
    ``pool.connection()`` block); ``await conn.aclose()`` closes it for good
    and the pool will not reuse it.

    Do not use it after releasing it.  While it sits idle in the pool, its
    ``send``, ``receive``, ``send_eof`` and ``aclose`` raise
    :class:`RuntimeError` (and leave it as it was); once another task has
    acquired it, the pool cannot tell a stale reference from the new
    holder's, so keep none.

    :ivar endpoint: the :class:`~conpool.Endpoint` it was acquired for.
    :ivar address: ``(ip, port)`` actually dialled; ``(path, 0)`` on a Unix
        domain socket.
    """

    __slots__ = (
        "_broken",
        "_closed",
        "_connect_ns",
        "_rec",
        "_tls_ns",
        "_user_data",
        "address",
        "endpoint",
    )

    def __init__(self, endpoint: Endpoint, address: tuple[str, int]) -> None:
        self.endpoint = endpoint
        self.address = address
        # The pool's record once registered.  Its ``conn`` is the pool's
        # strong reference while the connection is idle and None while a
        # task holds it: how send and receive tell a use after release.
        self._rec: ConnRecord[Endpoint, Connection] = UNREGISTERED
        # closed: the user (or the pool) closed it.  broken: it must not be
        # reused, because an exception escaped a send or receive (the
        # protocol state is unknown) or because it was closed: every close
        # sets both, so that a release tests one flag.
        self._broken = False
        self._closed = False
        # Made on first use: most connections never need one.
        self._user_data: dict[Any, Any] | None = None
        # How long the connect (TCP and TLS) and the TLS handshake alone
        # took, for the trace.
        self._connect_ns = 0
        self._tls_ns: int | None = None

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by you, the pool or an error
        that ended it); a closed connection is never handed out again."""
        return self._closed

    @property
    def user_data(self) -> dict[Any, Any]:
        """A dict that lives as long as the connection, for a protocol layer
        to keep per-connection state in (an HTTP/1.1 state machine, a
        negotiated protocol version).  The pool never reads it."""
        data = self._user_data
        if data is None:
            data = self._user_data = {}
        return data

    @property
    def created_at(self) -> float:
        """When the connection was established, in the pool's clock
        (:func:`time.monotonic` seconds)."""
        rec = self._rec
        assert rec is not UNREGISTERED
        return rec.created

    @property
    def uses(self) -> int:
        """How many times the pool has handed this connection out, this time included."""
        rec = self._rec
        assert rec is not UNREGISTERED
        return rec.uses

    @property
    def id(self) -> int:
        """The pool's number for this connection, as used in trace events."""
        rec = self._rec
        assert rec is not UNREGISTERED
        return rec.id

    # -- the pool's side ----------------------------------------------------------

    @abstractmethod
    def _usable(self, idle: float) -> bool:
        """Non-blocking check that an idle connection is still worth reusing
        (what the state machine asks, see :class:`conpool._state.Pooled`).

        :param idle: seconds since it was released.
        """

    @abstractmethod
    def _close_now(self) -> None:
        """Close without awaiting (the pool closes idle and expired
        connections from synchronous bookkeeping).  Idempotent."""

    @abstractmethod
    def _closer(self) -> Callable[[], None]:
        """A function that closes the underlying socket and holds no
        reference to this object: the pool keeps it to close a connection
        that was garbage-collected without being released."""

    def _released(self) -> RuntimeError:
        return released_error(self)

    def __repr__(self) -> str:
        return describe_connection("conpool.Connection", self)


Connection.__module__ = "conpool"


def released_error(conn: object) -> RuntimeError:
    """The error of a send or receive on a connection idle in the pool (either shell's)."""
    return RuntimeError(
        f"{conn!r} was released to the pool and is idle there: "
        "acquire a connection again to use one"
    )


def describe_connection(kind: str, conn: Any) -> str:
    """Either shell's connection's ``repr``."""
    rec = conn._rec
    ident = f"#{rec.id} " if rec is not UNREGISTERED else ""
    ip, port = conn.address
    if conn.endpoint.is_unix:
        via = f"unix:{ip}"
    else:
        via = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    state = "closed" if conn._closed else "broken" if conn._broken else "open"
    uses = rec.uses if rec is not UNREGISTERED else 0
    return f"<{kind} {ident}{conn.endpoint} via {via} {state} uses={uses}>"
