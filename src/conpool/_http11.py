"""HTTP/1.1 for the httpx transports, without I/O.

Both :class:`conpool.httpx.AsyncTransport` (on :class:`~conpool.Pool`) and
:class:`conpool.httpx.Transport` (on :class:`~conpool.SyncPool`) drive h11
through these functions: what bytes open a request, what an h11 event means,
whether a failure may be sent again, what an error says and which httpx
class it is, which endpoint and proxy a request goes to.  The transports
only move bytes and hold connections.

Needs ``h11`` and ``httpx`` (the ``httpx`` extra): imported only by
:mod:`conpool.httpx`.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

import anyio
import h11
import httpx

from ._config import Config
from ._endpoint import TLS, Endpoint
from ._errors import ConnectError, PoolError, PoolTimeout
from ._noproxy import EnvironmentProxies, NoProxy
from ._proxy import Proxy

#: Where a connection keeps its h11 state machine (in ``user_data``).
H11_KEY: Final = "conpool.httpx.h11"

#: A request body up to this size goes out in the same send as the head.
SMALL_BODY: Final = 64 * 1024

#: Bytes asked for per receive.
READ_SIZE: Final = 64 * 1024

#: h11's limit on a response head (httpcore's value).
MAX_HEAD: Final = 100 * 1024

#: Methods whose request may be sent again (RFC 9110, section 9.2.2).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

#: What an owned pool is made with by default: httpx's own limit and
#: keep-alive expiry.
DEFAULT_CONFIG: Final = Config(max_connections_per_endpoint=100, max_idle_time=5.0)

_NO_TIMEOUT: Final[Mapping[str, float | None]] = {}

#: How many distinct request heads a transport keeps framed (see start_request).
REQUEST_EVENTS_MAX: Final = 256

#: h11's events are immutable: one end-of-message serves every request.
_END: Final = h11.EndOfMessage()

#: httpx's ``http_version`` extension by h11's version.
_VERSIONS: Final = {b"1.1": b"HTTP/1.1", b"1.0": b"HTTP/1.0"}

#: h11's request events by method, target and header fields (see start_request).
RequestEvents = dict[tuple[str, bytes, tuple[tuple[bytes, bytes], ...]], h11.Request]


class PooledConnection(Protocol):
    """What the error stories need of a connection (either shell's)."""

    @property
    def id(self) -> int: ...

    @property
    def uses(self) -> int: ...

    endpoint: Endpoint
    address: tuple[str, int]


P = TypeVar("P")
C = TypeVar("C", bound=PooledConnection)


# -- requests ----------------------------------------------------------------------------


def new_h11() -> h11.Connection:
    """The HTTP/1.1 state machine of a new connection."""
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)


def request_target(request: httpx.Request) -> bytes:
    target = request.extensions.get("target")
    return target if isinstance(target, bytes) else request.url.raw_path


def start_request(
    conn: h11.Connection, request: httpx.Request, events: RequestEvents | None = None
) -> tuple[bytes, bool]:
    """The bytes that open ``request`` on ``conn``: the head, and with a
    small body already in memory the body and its end too.

    :param events: h11's request events by method, target and header
        fields, kept by the caller (a transport, for as long as it lives)
        across requests.  A client sends the same head again and again (its
        defaults, Host), and an h11 event is immutable: h11 checks and
        normalises a head's fields once, not on every request (half of its
        cost of sending one).  Bounded by :data:`REQUEST_EVENTS_MAX`.
        Without it, every head is checked anew.
    :returns: ``(data, complete)``: ``complete`` when the whole request is in
        ``data``; otherwise the caller streams ``request.stream``.
    :raises h11.LocalProtocolError: the request cannot be framed.
    """
    raw = request.headers.raw
    target = request_target(request)
    if events is None:
        event = _request_event(request.method, target, raw)
    else:
        key = (request.method, target, tuple(raw))
        found = events.get(key)
        if found is None:
            found = _request_event(request.method, target, raw)
            if len(events) >= REQUEST_EVENTS_MAX:
                events.clear()
            events[key] = found
        event = found
    head = conn.send(event)
    assert head is not None
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        # (Not request.content: a redirect's request shares the stream
        # without having read it.)
        body = b"".join(stream)
        if len(body) <= SMALL_BODY:
            if body:
                data = conn.send(h11.Data(data=body)) or b""
                return b"".join((head, data, conn.send(_END) or b"")), True
            end = conn.send(_END)
            return (head + end if end else head), True
    return head, False


def _request_event(method: str, target: bytes, raw: list[tuple[bytes, bytes]]) -> h11.Request:
    """h11's event for a request head, every field checked by h11."""
    try:
        method_bytes = method.encode("ascii")
    except UnicodeEncodeError:
        raise h11.LocalProtocolError(f"Illegal method {method!r}") from None
    return h11.Request(method=method_bytes, target=target, headers=raw)


def begin(
    user_data: dict[Any, Any],
    request: httpx.Request,
    conn: PooledConnection,
    events: RequestEvents | None = None,
) -> tuple[h11.Connection, bytes, bool]:
    """Open ``request`` on a pooled connection: its h11 state machine (kept
    in ``user_data``, made new when the last exchange did not end cleanly)
    and :func:`start_request`'s ``(data, complete)`` (with the transport's
    ``events``).

    :raises httpx.LocalProtocolError: the request cannot be framed.
    """
    h11c: h11.Connection | None = user_data.get(H11_KEY)
    if h11c is None or h11c.our_state is not h11.IDLE:
        h11c = user_data[H11_KEY] = new_h11()
    try:
        data, complete = start_request(h11c, request, events)
    except h11.LocalProtocolError as exc:
        raise local_error(exc, request, conn) from exc
    return h11c, data, complete


def replayable(request: httpx.Request) -> bool:
    """Whether ``request`` can be sent again unchanged: an idempotent method
    and a body that is in memory (or none)."""
    return request.method in IDEMPOTENT and isinstance(request.stream, httpx.ByteStream)


def timeouts(request: httpx.Request) -> Mapping[str, float | None]:
    value = request.extensions.get("timeout")
    # (httpx's own is a dict: the exact type test spares the ABC's.)
    if type(value) is dict or isinstance(value, Mapping):
        return value
    return _NO_TIMEOUT


# -- responses ---------------------------------------------------------------------------


def is_upgrade(request: httpx.Request, status: int) -> bool:
    """Whether this response hands the connection to the caller."""
    return status == 101 or (request.method == "CONNECT" and 200 <= status < 300)


def head_event(conn: h11.Connection) -> h11.Response | h11.InformationalResponse | None:
    """The final response head (or a 101) if h11 has it, skipping other 1xx;
    None when more bytes are needed.

    :raises h11.RemoteProtocolError: the server broke HTTP.
    :raises anyio.EndOfStream: the server closed first.
    """
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return None
        cls = type(event)
        if cls is h11.Response:
            return event  # type: ignore[return-value]
        if cls is h11.InformationalResponse and event.status_code == 101:  # type: ignore[union-attr]
            return event  # type: ignore[return-value]
        if cls is h11.ConnectionClosed:
            raise anyio.EndOfStream


def response_parts(
    head: h11.Response | h11.InformationalResponse,
) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any]]:
    """An ``httpx.Response``'s status, headers and extensions from h11's head."""
    extensions: dict[str, Any] = {
        "http_version": _VERSIONS.get(head.http_version) or b"HTTP/" + head.http_version,
        "reason_phrase": head.reason,
    }
    return head.status_code, head.headers.raw_items(), extensions


def buffered_body(conn: h11.Connection, chunks: list[bytes]) -> bool:
    """Take what of the body h11 has without more I/O into ``chunks``;
    True when that reached the end of the body.  (A protocol error is
    left for the reader, who raises it with its story.)"""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return False
        cls = type(event)
        if cls is h11.Data:
            chunks.append(bytes(event.data))  # type: ignore[union-attr]
        elif cls is h11.EndOfMessage:
            return True
        else:
            return False  # NEED_DATA; anything else surfaces when the body is read


def body_event(conn: h11.Connection) -> bytes | bool:
    """The next piece of a response body: a chunk, True at its end, False
    when more bytes are needed.

    :raises h11.RemoteProtocolError: the server broke HTTP.
    """
    event = conn.next_event()
    if event is h11.NEED_DATA:
        return False
    cls = type(event)
    if cls is h11.Data:
        return bytes(event.data)  # type: ignore[union-attr]
    if cls is h11.EndOfMessage:
        return True
    raise h11.RemoteProtocolError(f"unexpected {event!r} in a response body")


def reusable(conn: h11.Connection) -> bool:
    """After a response was read to its end: can the connection carry
    another request?  (Starts h11's next cycle when it can.)  Not when bytes
    came after the response: they answer no request, so the connection is
    out of step; and so every cycle starts with nothing buffered, and the
    first look for a response head can wait for bytes without asking h11."""
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        if conn.trailing_data[0]:
            return False
        conn.start_next_cycle()
        return True
    return False


def pending_end(conn: h11.Connection) -> list[bytes] | None:
    """The rest of a response body that has already arrived: the chunks, or
    None when the body is not complete without more I/O.  Lets a response
    closed early keep its connection when nothing is left to read."""
    chunks: list[bytes] = []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return None
        if type(event) is h11.Data:
            chunks.append(bytes(event.data))
        elif type(event) is h11.EndOfMessage:
            return chunks
        else:
            return None


class Body(Generic[P, C]):
    """What both transports' response bodies hold, and when their
    connection goes back: the I/O (reading, releasing) is each one's."""

    def __init__(
        self,
        pool: P,
        conn: C,
        h11c: h11.Connection,
        request: httpx.Request,
        read_timeout: float | None,
        chunks: list[bytes] | None = None,
    ) -> None:
        self._pool = pool
        self._conn: C | None = conn
        self._h11 = h11c
        self._request = request
        self._read = read_timeout
        #: What of the body came with the head (and is not read yet).
        self._chunks: list[bytes] = [] if chunks is None else chunks

    def _buffered(self) -> bool:
        """Take what of the body h11 has without I/O; True at its end."""
        return buffered_body(self._h11, self._chunks)

    def _done(self) -> tuple[C, bool] | None:
        """At the end of the body: its connection (now the caller's to give
        back) and whether it can carry another request; None if already."""
        conn = self._conn
        if conn is None:
            return None
        self._conn = None
        return conn, reusable(self._h11)

    def _closing(self) -> tuple[C, bool] | None:
        """Closed by the caller: as :meth:`_done`, but a body closed before
        its end with more to come leaves the connection out of step (closed,
        not reused: draining a body of unknown length could take as long as
        the body)."""
        if self._conn is None:
            return None
        if pending_end(self._h11) is None:
            conn, self._conn = self._conn, None
            return conn, False
        return self._done()

    def _failed(self, exc: BaseException, conn: C) -> httpx.HTTPError | None:
        """Reading failed (the connection is being discarded): httpx's error."""
        self._conn = None
        return body_error(exc, self._request, conn, self._read)


class Handed(Generic[P, C]):
    """The part of a handed-over connection (101, CONNECT) both
    transports share: the bytes h11 had read past the response head."""

    def __init__(self, pool: P, conn: C, leading: bytes) -> None:
        self._pool = pool
        self._conn: C | None = conn
        self._leading = leading

    def _take_leading(self, max_bytes: int) -> bytes:
        data, self._leading = self._leading[:max_bytes], self._leading[max_bytes:]
        return data


# -- errors ------------------------------------------------------------------------------


class Failed(Exception):
    """A request failed before any byte of its response arrived (``early``),
    on a reused connection the server had closed (``stale``) or not."""

    def __init__(self, error: httpx.HTTPError, early: bool, stale: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.early = early
        self.stale = stale


def where(conn: PooledConnection) -> str:
    """The pool's part of an error's story: which connection, how used."""
    ip, port = conn.address
    host = f"[{ip}]" if ":" in ip else ip
    uses = conn.uses
    how = "new" if uses == 1 else f"reused, use {uses}"
    return f"on connection #{conn.id} to {conn.endpoint} via {host}:{port} ({how})"


def story(first: str, request: httpx.Request, doing: str, conn: PooledConnection | None) -> str:
    lines = [first, f"  {doing} {request.method} {request.url}"]
    if conn is not None:
        lines.append(f"  {where(conn)}")
    return "\n".join(lines)


def connect_error(exc: ConnectError, request: httpx.Request) -> httpx.HTTPError:
    """httpx's error for a connection the pool could not make."""
    timed_out = any(isinstance(e, TimeoutError) for e in exc.errors)
    cls = httpx.ConnectTimeout if timed_out else httpx.ConnectError
    return cls(f"{exc}\n  sending {request.method} {request.url}", request=request)


def acquire_error(exc: PoolError, request: httpx.Request, retries: int) -> Exception:
    """What to raise when the pool gave no connection (``exc`` is its
    :class:`~conpool.PoolTimeout`, :class:`~conpool.ConnectError` or
    :class:`~conpool.PoolClosed`): httpx's error, wrapped in :class:`Failed`
    when ``retries`` may send the request again (a connection not made)."""
    if isinstance(exc, ConnectError):
        error = connect_error(exc, request)
        error.__cause__ = exc
        if retries:
            return Failed(error, True, False)
        return error
    cls = httpx.PoolTimeout if isinstance(exc, PoolTimeout) else httpx.ConnectError
    return cls(f"{exc}\n  sending {request.method} {request.url}", request=request)


def write_timeout(
    request: httpx.Request, conn: PooledConnection, seconds: float
) -> httpx.HTTPError:
    return httpx.WriteTimeout(
        story(f"timed out after {seconds:g} s", request, "sending", conn), request=request
    )


def read_timeout(request: httpx.Request, conn: PooledConnection, seconds: float) -> httpx.HTTPError:
    return httpx.ReadTimeout(
        story(f"timed out after {seconds:g} s", request, "reading the response to", conn),
        request=request,
    )


def local_error(
    exc: h11.LocalProtocolError, request: httpx.Request, conn: PooledConnection
) -> httpx.HTTPError:
    """httpx's error for a request h11 would not frame."""
    return httpx.LocalProtocolError(story(str(exc), request, "sending", conn), request=request)


def no_head(
    failure: BaseException,
    write_failed: BaseException | None,
    got_bytes: bool,
    reused: bool,
    request: httpx.Request,
    conn: PooledConnection,
) -> Failed:
    """httpx's error for a request that got no response head, marked for the
    retry decision: what stopped the read (``failure``), whether the send
    had failed first, whether any response byte had arrived, and whether
    the connection was a reused one (then a non-idempotent request's
    message says why it is not retried)."""
    doing = "reading the response to"
    error: httpx.HTTPError
    if write_failed is not None and not got_bytes:
        error = httpx.WriteError(
            story(describe(write_failed), request, "sending", conn), request=request
        )
        error.__cause__ = write_failed
    elif isinstance(failure, h11.RemoteProtocolError):
        error = httpx.RemoteProtocolError(
            story(str(failure), request, doing, conn), request=request
        )
    elif isinstance(failure, anyio.EndOfStream):
        what = (
            "Server disconnected in the middle of the response head."
            if got_bytes
            else "Server disconnected without sending a response."
        )
        error = httpx.RemoteProtocolError(story(what, request, doing, conn), request=request)
    else:
        error = httpx.ReadError(story(describe(failure), request, doing, conn), request=request)
    if error.__cause__ is None:
        error.__cause__ = failure
    if reused and not got_bytes and not replayable(request):
        error.args = (
            f"{error.args[0]}\n  not sent again: the connection was a reused "
            f"one, but {request.method} requests are not retried",
        )
    return Failed(error, not got_bytes, reused and not got_bytes)


def body_error(
    exc: BaseException, request: httpx.Request, conn: PooledConnection, seconds: float | None
) -> httpx.HTTPError | None:
    """httpx's error for a failure while reading a response body (None:
    not one of ours, raise it as it is)."""
    doing = "reading the body of the response to"
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(
            story(f"timed out after {seconds:g} s", request, doing, conn), request=request
        )
    if isinstance(exc, h11.RemoteProtocolError):
        return httpx.RemoteProtocolError(story(str(exc), request, doing, conn), request=request)
    if isinstance(exc, OSError | anyio.BrokenResourceError | anyio.ClosedResourceError):
        return httpx.ReadError(story(describe(exc), request, doing, conn), request=request)
    return None


def describe(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = str(cause)
    return text or type(cause).__name__


class Retries:
    """Whether a failed request goes out again: once after a stale reused
    connection, and up to ``retries`` more times after a failure before any
    response byte, only for a request that can be sent again unchanged."""

    __slots__ = ("left", "stale_retried")

    def __init__(self, retries: int) -> None:
        self.left = retries
        self.stale_retried = False

    def after(self, failed: Failed, request: httpx.Request) -> None:
        """Return to send ``request`` again (on a fresh connection);
        otherwise raise its error."""
        if replayable(request):
            if failed.stale and not self.stale_retried:
                self.stale_retried = True
                return
            if self.left > 0 and failed.early:
                self.left -= 1
                return
        raise failed.error from failed.error.__cause__


# -- the transports' arguments and routing ---------------------------------------------


class Setup:
    """A transport's checked arguments: the pool to use (``shared``) or the
    config to make one from, the proxies of the environment, verify and
    retries.

    :raises TypeError: see the transports.
    :raises ValueError: see the transports.
    """

    __slots__ = ("bypass", "config", "env", "owned", "retries", "verify")

    def __init__(
        self,
        pool_type: type[Any],
        pool_name: str,
        shared: Any,
        config: Config | None,
        resolver: object,
        tracer: object,
        verify: ssl.SSLContext | bool,
        retries: int,
        proxy: str | Proxy | None,
        trust_env: bool,
    ) -> None:
        if isinstance(proxy, str):
            proxy = Proxy.parse(proxy)  # (its ValueError shows the URL redacted)
        elif proxy is not None and not isinstance(proxy, Proxy):
            raise TypeError(
                f"proxy must be a proxy URL (str), a conpool.Proxy or None, "
                f"got {type(proxy).__name__}"
            )
        if not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be a bool, got {trust_env!r}")
        #: Routing by the environment's proxies (owned pools only), or None.
        self.env: EnvironmentProxies | None = None
        self.bypass: NoProxy | None = None
        if shared is not None:
            if not isinstance(shared, pool_type):
                raise TypeError(f"pool must be a {pool_name} or None, got {shared!r}")
            if config is not None or resolver is not None or tracer is not None:
                raise TypeError("give either pool or config/resolver/tracer, not both")
            if proxy is not None:
                raise ValueError(
                    "proxy cannot be given with a shared pool: the shared pool's own "
                    "Config.proxy decides (make it with conpool.Config(proxy=...))"
                )
            self.owned = False
            config = shared.config
        else:
            if config is None:
                config = DEFAULT_CONFIG
            elif not isinstance(config, Config):
                raise TypeError(f"config must be a conpool.Config or None, got {config!r}")
            if proxy is not None:
                if config.proxy is not None:
                    raise ValueError("give the proxy either as proxy= or as config.proxy, not both")
                config = dataclasses.replace(config, proxy=proxy)
            elif config.proxy is None and trust_env:
                env = EnvironmentProxies(os.environ)
                if env.http is not None or env.https is not None or env.all is not None:
                    self.env = env
                    if config.no_proxy:
                        self.bypass = NoProxy(config.no_proxy)
            self.owned = True
        assert config is not None
        self.config: Config = config
        if not isinstance(verify, bool | ssl.SSLContext):
            raise TypeError(f"verify must be a bool or an ssl.SSLContext, got {verify!r}")
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"retries must be an int, got {retries!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.verify = verify
        self.retries = retries

    def proxy_config(self, proxy: Proxy) -> Config:
        """The config of the owned pool for the requests through ``proxy``."""
        env = self.env
        assert env is not None
        return dataclasses.replace(
            self.config, proxy=proxy, no_proxy=(*self.config.no_proxy, *env.no_proxy)
        )


class Router:
    """Which endpoint (and which proxy of the environment) a request goes
    to, remembered per scheme, host, port and SNI name."""

    __slots__ = ("_bypass", "_endpoints", "_env", "_name", "_tls_value", "_verify")

    def __init__(self, name: str, setup: Setup) -> None:
        self._name = name
        self._verify = setup.verify
        self._env = setup.env
        self._bypass = setup.bypass
        # Made on the first https request: loading the CA bundle takes
        # milliseconds that a plain-http client need not pay.
        self._tls_value: TLS | None = None
        self._endpoints: dict[
            tuple[bytes, bytes, int | None, object], tuple[Endpoint, Proxy | None]
        ] = {}

    @property
    def tls(self) -> TLS:
        """The TLS settings of https endpoints (ALPN http/1.1, SNI by name)."""
        tls = self._tls_value
        if tls is None:
            verify = self._verify
            context = (
                verify
                if isinstance(verify, ssl.SSLContext)
                else httpx.create_ssl_context(verify=verify)
            )
            tls = self._tls_value = TLS(context, alpn=("http/1.1",))
        return tls

    def route(self, request: httpx.Request) -> tuple[Endpoint, Proxy | None]:
        """The request's endpoint, and the proxy from the environment it goes
        through (None: direct, or no proxies from the environment)."""
        url = request.url
        sni = request.extensions.get("sni_hostname")
        key = (url.raw_scheme, url.raw_host, url.port, sni)
        route = self._endpoints.get(key)
        if route is None:
            scheme = url.scheme
            if scheme not in ("http", "https"):
                raise httpx.UnsupportedProtocol(
                    f"{self._name} speaks http and https, not {scheme!r}: {url}",
                    request=request,
                )
            if not url.host:
                raise httpx.UnsupportedProtocol(f"no host in {url}", request=request)
            port = url.port or (443 if scheme == "https" else 80)
            tls = None
            if scheme == "https":
                tls = self.tls
                if isinstance(sni, str):
                    tls = TLS(tls.context, server_name=sni, alpn=("http/1.1",))
            endpoint = Endpoint(url.host, port, tls=tls)
            proxy = None
            env = self._env
            if env is not None:
                proxy = env.proxy_for(endpoint)
                bypass = self._bypass
                if proxy is not None and bypass is not None and bypass.matches(endpoint):
                    proxy = None
            route = (endpoint, proxy)
            if len(self._endpoints) > 1024:
                self._endpoints.clear()
            self._endpoints[key] = route
        return route


def transport_closed(
    name: str, why: str, use: str, request: httpx.Request, proxy: Proxy
) -> httpx.HTTPError:
    """The error of a request through a proxy of the environment on a
    transport that is not open."""
    return httpx.ConnectError(
        f"{name} {why}: use it as '{use}'\n  sending {request.method} {request.url} via {proxy}",
        request=request,
    )
