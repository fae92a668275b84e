"""HTTP/1.1 for the httpx transports, without I/O.

Both :class:`conpool.httpx.AsyncTransport` (on :class:`~conpool.Pool`) and
:class:`conpool.httpx.Transport` (on :class:`~conpool.SyncPool`) go through
these functions and classes: what bytes open a request (its head checked
and written by h11, once per distinct head), what the response's bytes say
(parsed by httptools, the binding of llhttp, the C parser of Node.js),
whether a failure may be sent again, what an error says and which httpx
class it is, which endpoint and proxy a request goes to.  The transports
only move bytes and hold connections.

Needs ``h11``, ``httptools`` and ``httpx`` (the ``httpx`` extra): imported
only by :mod:`conpool.httpx`.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

import anyio
import h11
import httptools
import httpx

from ._config import Config
from ._endpoint import TLS, Endpoint
from ._errors import ConnectError, PoolError, PoolTimeout
from ._noproxy import EnvironmentProxies, NoProxy
from ._proxy import Proxy

#: A request body up to this size goes out in the same send as the head.
SMALL_BODY: Final = 64 * 1024

#: Bytes asked for per receive.
READ_SIZE: Final = 64 * 1024

#: The limit on a response head (httpcore's, and h11's here before).
MAX_HEAD: Final = 100 * 1024

#: Methods whose request may be sent again (RFC 9110, section 9.2.2).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

#: What an owned pool is made with by default: httpx's own limit and
#: keep-alive expiry.
DEFAULT_CONFIG: Final = Config(max_connections_per_endpoint=100, max_idle_time=5.0)

_NO_TIMEOUT: Final[Mapping[str, float | None]] = {}

#: How many distinct request heads a transport keeps framed (see start_request).
REQUEST_HEADS_MAX: Final = 256

#: httpx's ``http_version`` extension by llhttp's version.
_VERSIONS: Final = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}


class Head:
    """A request head framed once: its bytes (checked and written by h11),
    how its body is framed, and whether it asks the server to close."""

    __slots__ = ("close", "data", "length")

    def __init__(self, data: bytes, length: int | None, close: bool) -> None:
        self.data = data
        #: The body's Content-Length; None: chunked.
        self.length = length
        self.close = close


#: Framed request heads by method, target and header fields (see start_request).
RequestHeads = dict[tuple[str, bytes, tuple[tuple[bytes, bytes], ...]], Head]


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


def request_target(request: httpx.Request) -> bytes:
    target = request.extensions.get("target")
    return target if isinstance(target, bytes) else request.url.raw_path


def frame_head(method: str, target: bytes, raw: list[tuple[bytes, bytes]]) -> Head:
    """A request head checked and written by h11 (names are tokens, values
    hold no CR, LF or NUL, Host is there, the body framing is one h11
    accepts), with its body framing: h11's rules, Transfer-Encoding over
    Content-Length, no body without either.

    :raises h11.LocalProtocolError: h11 would not send this head.
    """
    try:
        method_bytes = method.encode("ascii")
    except UnicodeEncodeError:
        raise h11.LocalProtocolError(f"Illegal method {method!r}") from None
    event = h11.Request(method=method_bytes, target=target, headers=raw)
    data = h11.Connection(h11.CLIENT).send(event)
    assert data is not None
    length: int | None = 0
    close = False
    # (h11's fields: names lower-cased, framing headers already checked.)
    for name, value in event.headers:
        if name == b"transfer-encoding":
            length = None
        elif name == b"content-length" and length is not None:
            length = int(value)
        elif name == b"connection" and b"close" in connection_tokens(value):
            close = True
    return Head(data, length, close)


def start_request(
    request: httpx.Request, heads: RequestHeads | None = None
) -> tuple[Head, bytes, Framer | None]:
    """The bytes that open ``request``: the head, and with a small body
    already in memory the framed body too.

    :param heads: framed heads by method, target and header fields, kept
        by the caller (a transport, for as long as it lives) across
        requests.  A client sends the same head again and again (its
        defaults, Host): h11 checks and writes a head once, not on every
        request.  Bounded by :data:`REQUEST_HEADS_MAX`.  Without it, every
        head is framed anew.
    :returns: ``(head, data, framer)``: ``framer`` None when the whole
        request is in ``data``; otherwise the caller streams
        ``request.stream`` through it.
    :raises h11.LocalProtocolError: the request cannot be framed.
    """
    raw = request.headers.raw
    target = request_target(request)
    if heads is None:
        head = frame_head(request.method, target, raw)
    else:
        key = (request.method, target, tuple(raw))
        found = heads.get(key)
        if found is None:
            found = frame_head(request.method, target, raw)
            if len(heads) >= REQUEST_HEADS_MAX:
                heads.clear()
            heads[key] = found
        head = found
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        # (Not request.content: a redirect's request shares the stream
        # without having read it.)
        body = b"".join(stream)
        if len(body) <= SMALL_BODY:
            length = head.length
            if length is None:
                if body:
                    return head, b"%b%x\r\n%b\r\n0\r\n\r\n" % (head.data, len(body), body), None
                return head, head.data + b"0\r\n\r\n", None
            if len(body) != length:
                raise h11.LocalProtocolError(_length_error(len(body) > length))
            return head, (head.data + body if body else head.data), None
    return head, head.data, Framer(head.length)


def _length_error(too_much: bool) -> str:
    # (h11's words.)
    if too_much:
        return "Too much data for declared Content-Length"
    return "Too little data for declared Content-Length"


class Framer:
    """A streamed request body framed as its head says: chunks, or exactly
    Content-Length bytes."""

    __slots__ = ("_left",)

    def __init__(self, length: int | None) -> None:
        self._left = length

    def data(self, chunk: bytes) -> bytes:
        """The bytes that carry ``chunk`` (not empty).

        :raises h11.LocalProtocolError: more than the Content-Length.
        """
        left = self._left
        if left is None:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if len(chunk) > left:
            raise h11.LocalProtocolError(_length_error(True))
        self._left = left - len(chunk)
        return chunk

    def end(self) -> bytes:
        """The bytes that end the body.

        :raises h11.LocalProtocolError: less than the Content-Length.
        """
        left = self._left
        if left is None:
            return b"0\r\n\r\n"
        if left:
            raise h11.LocalProtocolError(_length_error(False))
        return b""


def begin(
    request: httpx.Request,
    conn: PooledConnection,
    heads: RequestHeads | None = None,
) -> tuple[Response, bytes, Framer | None]:
    """Open ``request`` on a pooled connection: the parser of its response
    and :func:`start_request`'s ``(data, framer)`` (with the transport's
    ``heads``).

    :raises httpx.LocalProtocolError: the request cannot be framed.
    """
    try:
        head, data, framer = start_request(request, heads)
    except h11.LocalProtocolError as exc:
        raise local_error(exc, request, conn) from exc
    return Response(request.method, head.close), data, framer


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


class ProtocolError(Exception):
    """The server broke HTTP/1.1 (what llhttp, through httptools, said)."""


def is_upgrade(request: httpx.Request, status: int) -> bool:
    """Whether this response hands the connection to the caller."""
    return status == 101 or (request.method == "CONNECT" and 200 <= status < 300)


def connection_tokens(value: bytes) -> set[bytes]:
    """The options of a ``Connection`` field's value, lower-cased."""
    return {token.strip() for token in value.lower().split(b",")}


def persists(version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a connection stays open after a response with this head,
    its framing aside (RFC 9112, section 9.3): not after ``Connection:
    close``; after HTTP/1.1 otherwise; after HTTP/1.0 only with
    ``Connection: keep-alive``."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens |= connection_tokens(value)
    if b"close" in tokens:
        return False
    return version >= "1.1" or b"keep-alive" in tokens


class Response:
    """One response, parsed by httptools (llhttp) as its bytes are fed.

    llhttp frames the body (Content-Length, chunked, until close, none for
    1xx, 204 and 304); what it cannot be told through httptools is done
    here: a response to HEAD, and a 2xx to CONNECT, end at their head.
    Every callback or parse error after the end marks bytes past the
    response (:attr:`extra`): they answer no request.

    The parser holds this response's callbacks, a reference cycle; it is
    dropped when the response ends, so a response is freed by reference
    counting and not left to the cyclic garbage collector (which, with the
    dozen objects hanging from each response, ran half again as often).
    What comes after the end is then judged without it: anything but the
    blank lines llhttp skips between messages is :attr:`extra`.
    """

    __slots__ = (
        "_close",
        "_connect",
        "_fields",
        "_interim",
        "_keep",
        "_parser",
        "_size",
        "_skip",
        "_until_close",
        "_version",
        "chunks",
        "complete",
        "extra",
        "head",
        "headers",
        "leading",
        "reason",
        "status",
    )

    def __init__(self, method: str, close: bool = False) -> None:
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._version = "1.1"
        self._close = close
        self._skip = method == "HEAD"
        self._connect = method == "CONNECT"
        self._fields: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._until_close = False
        self._keep = False
        self._size = 0
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        #: Pieces of the body parsed and not yet taken.
        self.chunks: list[bytes] = []
        #: The final head (or a 101) is parsed.
        self.head = False
        #: The response ended.
        self.complete = False
        #: Bytes came after the end of the response.
        self.extra = False
        #: What came after the head of a 101 or a 2xx to CONNECT.
        self.leading = b""

    # httptools' callbacks (llhttp calls them from feed_data).

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_status(self, reason: bytes) -> None:
        if self.complete:
            self.extra = True
        else:
            # (A span split across two feeds comes in two calls.)
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            self.extra = True
            return
        parser = self._parser
        assert parser is not None  # (dropped only once complete)
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim (100 Continue, 103): skipped; llhttp ends it itself.
            self._interim = True
            self._fields = []
            self.reason = b""
            return
        self.status = status
        self._version = parser.get_http_version()
        self.headers = self._fields
        # (Trailers of a chunked body go here, and are dropped as h11 did.)
        self._fields = []
        self.head = True
        if self._skip or (self._connect and 200 <= status < 300):
            self._end(parser)

    def on_body(self, data: bytes) -> None:
        if self.complete:
            self.extra = True
        else:
            self.chunks.append(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self.complete:
            parser = self._parser
            assert parser is not None
            self._end(parser)

    def _end(self, parser: httptools.HttpResponseParser) -> None:
        self.complete = True
        if self._skip:
            # llhttp, not told of the HEAD, takes a head without framing
            # headers for a body until close: persistence by the head alone.
            self._keep = persists(self._version, self.headers)
        else:
            # (Asked now: llhttp forgets the message's flags once it ends.)
            self._keep = parser.should_keep_alive()
        # The cycle broken.  (llhttp, inside feed_data, still holds the
        # parser and goes on with the rest of the bytes fed.)
        self._parser = None

    # The reader's side.

    def feed(self, data: bytes) -> None:
        """Parse bytes from the server.

        :raises ProtocolError: they are not HTTP/1.1, or the head is over
            :data:`MAX_HEAD`.
        """
        if self._connect and not self.head:
            # Byte by byte up to the head: what follows a 2xx is the
            # tunnel's, however llhttp would frame it.
            for i in range(len(data)):
                if self._feed(data[i : i + 1]):
                    if self.complete:
                        self.leading = data[i + 1 :]
                        return
                    data = data[i + 1 :]
                    break
            else:
                return
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; True when the head is in."""
        parser = self._parser
        if parser is None:
            # After the end: llhttp too would skip blank lines there.
            if data.strip(b"\r\n"):
                self.extra = True
            return True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.leading = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            if not self.complete:
                raise ProtocolError(_parse_error(exc)) from exc
            self.extra = True
        if not self.head:
            self._size += len(data)
            if self._size > MAX_HEAD:
                raise ProtocolError(f"response head larger than {MAX_HEAD} bytes")
            return False
        return True

    def eof(self) -> None:
        """The server closed: the end of a body delimited by the close.

        :raises ProtocolError: the body was framed and is not complete.
        """
        if self.complete:
            return
        if self.head and not any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers
        ):
            self._until_close = True
            self.complete = True
            self._parser = None
            return
        raise ProtocolError("peer closed connection without sending complete message body")

    def parts(self) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any]]:
        """An ``httpx.Response``'s status, headers and extensions."""
        version = self._version
        extensions: dict[str, Any] = {
            "http_version": _VERSIONS.get(version) or b"HTTP/" + version.encode(),
            "reason_phrase": self.reason,
        }
        return self.status, self.headers, extensions

    def reusable(self) -> bool:
        """After the response ended: can the connection carry another
        request?  Not when the request or the response said close (or it
        is HTTP/1.0 without keep-alive), the body ran until close, or bytes
        came after the response (they answer no request: the connection
        is out of step)."""
        return (
            self.complete
            and not self.extra
            and not self._until_close
            and not self._close
            and self._keep
        )


def _parse_error(exc: BaseException) -> str:
    text = str(exc)
    return f"malformed response: {text}" if text else "malformed response"


class Body(Generic[P, C]):
    """What both transports' response bodies hold, and when their
    connection goes back: the I/O (reading, releasing) is each one's."""

    def __init__(
        self,
        pool: P,
        conn: C,
        response: Response,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._conn: C | None = conn
        self._response = response
        self._request = request
        self._read = read_timeout
        #: What of the body is parsed and not read yet (the parser's list).
        self._chunks: list[bytes] = response.chunks

    def _done(self) -> tuple[C, bool] | None:
        """At the end of the body: its connection (now the caller's to give
        back) and whether it can carry another request; None if already."""
        conn = self._conn
        if conn is None:
            return None
        self._conn = None
        return conn, self._response.reusable()

    def _closing(self) -> tuple[C, bool] | None:
        """Closed by the caller: as :meth:`_done`, but a body closed before
        its end with more to come leaves the connection out of step (closed,
        not reused: draining a body of unknown length could take as long as
        the body)."""
        if self._conn is None:
            return None
        if not self._response.complete:
            conn, self._conn = self._conn, None
            return conn, False
        return self._done()

    def _failed(self, exc: BaseException, conn: C) -> httpx.HTTPError | None:
        """Reading failed (the connection is being discarded): httpx's error."""
        self._conn = None
        return body_error(exc, self._request, conn, self._read)


class Handed(Generic[P, C]):
    """The part of a handed-over connection (101, CONNECT) both
    transports share: the bytes read past the response head."""

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
    elif isinstance(failure, ProtocolError):
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
    if isinstance(exc, ProtocolError):
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
