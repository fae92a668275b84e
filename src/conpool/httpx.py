"""httpx on conpool: ``httpx.AsyncClient(transport=conpool.httpx.AsyncTransport())``.

HTTP/1.1 is framed by h11, driven here directly: one ``h11.Connection`` per
pooled connection, kept in :attr:`Connection.user_data
<conpool.Connection.user_data>` across requests.  Everything below HTTP
(names, addresses, balancing, lifetimes, ejection, limits, tracing, leak
detection) is the pool's.

This module needs the ``httpx`` extra (``pip install 'conpool[httpx]'``);
``import conpool`` never imports it.

The module is two layers.  The functions at the top drive h11 and classify
outcomes without I/O (what bytes to send, what an event means, whether a
failure may be retried, what an error says), so a threaded transport can
share them; the classes below do the I/O on the pool.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Final

import anyio
import h11
import httpx

from ._config import Config
from ._connection import Connection
from ._endpoint import TLS, Endpoint
from ._errors import ConnectError, PoolClosed, PoolTimeout
from ._noproxy import EnvironmentProxies, NoProxy
from ._pool import Pool
from ._proxy import Proxy
from ._resolve import Resolver
from ._trace import Tracer

__all__ = ["AsyncTransport"]

#: Where a connection keeps its h11 state machine (in ``Connection.user_data``).
H11_KEY: Final = "conpool.httpx.h11"

#: A request body up to this size goes out in the same send as the head.
SMALL_BODY: Final = 64 * 1024

#: Bytes asked for per receive.
READ_SIZE: Final = 64 * 1024

#: h11's limit on a response head (httpcore's value).
MAX_HEAD: Final = 100 * 1024

#: Methods whose request may be sent again (RFC 9110, section 9.2.2).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

_NO_TIMEOUT: Final[Mapping[str, float | None]] = {}

# RFC 9110's field-name (a token) and field-value, as h11 checks them.
_FIELD_NAME: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE: Final = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")

#: Header fields already checked.  A client sends the same few (its
#: defaults, Host) with every request: checking each once, not on every
#: request, is a third of h11's cost of a request head.  Bounded.
_CHECKED: set[tuple[bytes, bytes]] = set()
_CHECKED_MAX: Final = 4096


# -- without I/O: what a threaded twin can share -------------------------------------


def new_h11() -> h11.Connection:
    """The HTTP/1.1 state machine of a new connection."""
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)


def request_target(request: httpx.Request) -> bytes:
    target = request.extensions.get("target")
    return target if isinstance(target, bytes) else request.url.raw_path


def start_request(conn: h11.Connection, request: httpx.Request) -> tuple[bytes, bool]:
    """The bytes that open ``request`` on ``conn``: the head, and with a
    small body already in memory the body and its end too.

    :returns: ``(data, complete)``: ``complete`` when the whole request is in
        ``data``; otherwise the caller streams ``request.stream``.
    :raises h11.LocalProtocolError: the request cannot be framed.
    """
    raw = request.headers.raw
    checked = _CHECKED
    for field in raw:
        if field not in checked:
            _check_field(field)
    # (_parsed: h11 skips the header regexes checked above and still checks
    # the method, the target, Host, Content-Length and Transfer-Encoding.)
    try:
        method = request.method.encode("ascii")
    except UnicodeEncodeError:
        raise h11.LocalProtocolError(f"Illegal method {request.method!r}") from None
    head = conn.send(
        h11.Request(
            method=method,
            target=request_target(request),
            headers=raw,
            _parsed=True,
        )
    )
    assert head is not None
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        # (Not request.content: a redirect's request shares the stream
        # without having read it.)
        body = b"".join(stream)
        if len(body) <= SMALL_BODY:
            parts = [head]
            if body:
                parts.append(conn.send(h11.Data(data=body)) or b"")
            parts.append(conn.send(h11.EndOfMessage()) or b"")
            return b"".join(parts), True
    return head, False


def _check_field(field: tuple[bytes, bytes]) -> None:
    name, value = field
    if _FIELD_NAME.fullmatch(name) is None:
        raise h11.LocalProtocolError(f"Illegal header name {name!r}")
    if _FIELD_VALUE.fullmatch(value) is None:
        raise h11.LocalProtocolError(f"Illegal header value {value!r}")
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.add(field)


def replayable(request: httpx.Request) -> bool:
    """Whether ``request`` can be sent again unchanged: an idempotent method
    and a body that is in memory (or none)."""
    return request.method in IDEMPOTENT and isinstance(request.stream, httpx.ByteStream)


def is_upgrade(request: httpx.Request, status: int) -> bool:
    """Whether this response hands the connection to the caller."""
    return status == 101 or (request.method == "CONNECT" and 200 <= status < 300)


def reusable(conn: h11.Connection) -> bool:
    """After a response was read to its end: can the connection carry
    another request?  (Starts h11's next cycle when it can.)"""
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
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


def timeouts(request: httpx.Request) -> Mapping[str, float | None]:
    value = request.extensions.get("timeout")
    return value if isinstance(value, Mapping) else _NO_TIMEOUT


def where(conn: Connection) -> str:
    """The pool's part of an error's story: which connection, how used."""
    ip, port = conn.address
    host = f"[{ip}]" if ":" in ip else ip
    uses = conn.uses
    how = "new" if uses == 1 else f"reused, use {uses}"
    return f"on connection #{conn.id} to {conn.endpoint} via {host}:{port} ({how})"


def story(first: str, request: httpx.Request, doing: str, conn: Connection | None) -> str:
    lines = [first, f"  {doing} {request.method} {request.url}"]
    if conn is not None:
        lines.append(f"  {where(conn)}")
    return "\n".join(lines)


def connect_error(exc: ConnectError, request: httpx.Request) -> httpx.HTTPError:
    """httpx's error for a connection the pool could not make."""
    timed_out = any(isinstance(e, TimeoutError) for e in exc.errors)
    cls = httpx.ConnectTimeout if timed_out else httpx.ConnectError
    return cls(f"{exc}\n  sending {request.method} {request.url}", request=request)


def head_failure(
    failure: BaseException,
    write_failed: BaseException | None,
    got_bytes: bool,
    reused: bool,
    request: httpx.Request,
    conn: Connection,
) -> httpx.HTTPError:
    """httpx's error for a request that got no response head: what stopped
    the read (``failure``), whether the send had failed first, whether any
    response byte had arrived, and whether the connection was a reused one
    (then a non-idempotent request's message says why it is not retried)."""
    doing = "reading the response to"
    error: httpx.HTTPError
    if write_failed is not None and not got_bytes:
        error = httpx.WriteError(
            story(_describe(write_failed), request, "sending", conn), request=request
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
        error = httpx.ReadError(story(_describe(failure), request, doing, conn), request=request)
    if error.__cause__ is None:
        error.__cause__ = failure
    if reused and not got_bytes and not replayable(request):
        error.args = (
            f"{error.args[0]}\n  not sent again: the connection was a reused "
            f"one, but {request.method} requests are not retried",
        )
    return error


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = str(cause)
    return text or type(cause).__name__


# -- the I/O shell ----------------------------------------------------------------------


class _Failed(Exception):
    """A request failed before any byte of its response arrived (``early``),
    on a reused connection the server had closed (``stale``) or not."""

    def __init__(self, error: httpx.HTTPError, early: bool, stale: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.early = early
        self.stale = stale


class AsyncTransport(httpx.AsyncBaseTransport):
    """An httpx transport on a :class:`conpool.Pool`.

    :param pool: a pool to share (entered and closed by you; the transport
        never closes it).  If None, the transport makes and owns one from
        ``config``, ``resolver`` and ``tracer``, opened when the client (or
        the transport) is entered and closed with it.
    :param config: the owned pool's :class:`~conpool.Config`; by default
        ``Config(max_connections_per_endpoint=100, max_idle_time=5.0)``,
        httpx's own limit and keep-alive expiry.
    :param resolver: the owned pool's resolver.
    :param tracer: the owned pool's tracer.
    :param verify: certificate verification for ``https``: True (httpx's
        default context), False (no verification), or an
        :class:`ssl.SSLContext` to use as is.  ALPN offers ``http/1.1``.
    :param retries: how many more times an idempotent request with an
        in-memory body is sent on a new connection after a connect or I/O
        failure before any byte of its response (on top of the single retry
        a stale reused connection always gets).  Connect attempts themselves
        are retried by ``Config.connect_retries``.
    :param proxy: a proxy every request goes through (a URL for
        :meth:`conpool.Proxy.parse`, or a :class:`conpool.Proxy`): the owned
        pool's ``Config.proxy``, so CONNECT and SOCKS name the address the
        pool chose and balancing stays per target address.  ``config``'s
        ``no_proxy`` still applies.  Not with a shared ``pool`` (whose own
        ``Config.proxy`` decides).
    :param trust_env: with no ``proxy`` (and no ``Config.proxy``), honour
        ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (read
        when the transport is made) as httpx does: per request, by the URL's
        scheme and host.  The requests through a proxy go to an owned pool
        of their own per proxy, made on first use from ``config``; never
        applied to a shared ``pool``.
    :raises TypeError: an argument of the wrong type, or ``pool`` given
        together with ``config``, ``resolver`` or ``tracer``.
    :raises ValueError: ``retries`` is negative; ``proxy`` is not a valid
        proxy URL, or is given with a shared ``pool`` or with a ``config``
        that has its own ``proxy``; a proxy environment variable is not a
        valid proxy URL (named, without its credentials).
    """

    def __init__(
        self,
        pool: Pool | None = None,
        *,
        config: Config | None = None,
        resolver: Resolver | None = None,
        tracer: Tracer | None = None,
        verify: ssl.SSLContext | bool = True,
        retries: int = 0,
        proxy: str | Proxy | None = None,
        trust_env: bool = True,
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
        self._env: EnvironmentProxies | None = None
        self._bypass: NoProxy | None = None
        if pool is not None:
            if not isinstance(pool, Pool):
                raise TypeError(f"pool must be a conpool.Pool or None, got {pool!r}")
            if config is not None or resolver is not None or tracer is not None:
                raise TypeError("give either pool or config/resolver/tracer, not both")
            if proxy is not None:
                raise ValueError(
                    "proxy cannot be given with a shared pool: the shared pool's own "
                    "Config.proxy decides (make it with conpool.Config(proxy=...))"
                )
            self._owned = False
        else:
            if config is None:
                config = Config(max_connections_per_endpoint=100, max_idle_time=5.0)
            elif not isinstance(config, Config):
                raise TypeError(f"config must be a conpool.Config or None, got {config!r}")
            if proxy is not None:
                if config.proxy is not None:
                    raise ValueError("give the proxy either as proxy= or as config.proxy, not both")
                config = dataclasses.replace(config, proxy=proxy)
            elif config.proxy is None and trust_env:
                env = EnvironmentProxies(os.environ)
                if env.http is not None or env.https is not None or env.all is not None:
                    self._env = env
                    if config.no_proxy:
                        self._bypass = NoProxy(config.no_proxy)
            pool = Pool(config, resolver=resolver, tracer=tracer)
            self._owned = True
        self._config = pool.config
        self._resolver = resolver
        self._tracer = tracer
        #: Every pool under the transport by its proxy (None: direct).
        self._pools: dict[Proxy | None, Pool] = {pool.config.proxy: pool}
        # With proxies from the environment: the task group the pools made
        # on first use live in (entered with the transport), and what ends them.
        self._tg: anyio.abc.TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._making: anyio.Lock | None = None
        if not isinstance(verify, bool | ssl.SSLContext):
            raise TypeError(f"verify must be a bool or an ssl.SSLContext, got {verify!r}")
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"retries must be an int, got {retries!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self._pool = pool
        self._verify = verify
        # Made on the first https request: loading the CA bundle takes
        # milliseconds that a plain-http client need not pay.
        self._tls_value: TLS | None = None
        self._retries = retries
        self._endpoints: dict[
            tuple[bytes, bytes, int | None, object], tuple[Endpoint, Proxy | None]
        ] = {}
        self._entered = False
        self._closed = False

    @property
    def _tls(self) -> TLS:
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

    @property
    def pool(self) -> Pool:
        """The :class:`conpool.Pool` under this transport: ``stats()``, the
        tracer.  With proxies from the environment, the pool of the direct
        requests (see :attr:`pools`)."""
        return self._pool

    @property
    def pools(self) -> Mapping[Proxy | None, Pool]:
        """Every pool under this transport by its ``Config.proxy`` (``None``
        for direct connections): more than one only with proxies from the
        environment, one per proxy used so far."""
        return dict(self._pools)

    def __repr__(self) -> str:
        proxies = [str(p) for p in self._pools if p is not None]
        return (
            f"<conpool.httpx.AsyncTransport owned={self._owned} proxies={proxies!r}"
            f" trust_env_proxies={self._env is not None}>"
        )

    async def __aenter__(self) -> AsyncTransport:
        if self._owned and not self._entered:
            if self._closed:
                raise RuntimeError(
                    "this conpool.httpx.AsyncTransport was closed with its pool: "
                    "make a new transport for a new client"
                )
            if self._env is not None:
                tg = anyio.create_task_group()
                await tg.__aenter__()
                self._tg, self._stop, self._making = tg, anyio.Event(), anyio.Lock()
            try:
                await self._pool.__aenter__()
            except BaseException:
                await self._end_proxy_pools()
                raise
            self._entered = True
        return self

    async def _end_proxy_pools(self) -> None:
        """Close the pools made on first use and leave their task group."""
        tg, stop = self._tg, self._stop
        if tg is None or stop is None:
            return
        self._tg = None
        for proxy, pool in self._pools.items():
            if proxy is not None:
                await pool.aclose()
        stop.set()
        await tg.__aexit__(None, None, None)

    async def _run_pool(
        self, pool: Pool, stop: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        # A pool's task group must be entered and left by one task: this one,
        # in the transport's task group, for as long as the transport is open.
        async with pool:
            task_status.started()
            await stop.wait()

    async def _proxy_pool(self, proxy: Proxy, request: httpx.Request) -> Pool:
        """The owned pool of the requests through *proxy*, made and entered
        on first use."""
        tg, lock, stop, env = self._tg, self._making, self._stop, self._env
        if self._closed or tg is None or lock is None or stop is None or env is None:
            why = "is closed" if self._closed else "was not entered"
            raise httpx.ConnectError(
                f"conpool.httpx.AsyncTransport {why}: use it as "
                f"'async with httpx.AsyncClient(transport=...)'\n"
                f"  sending {request.method} {request.url} via {proxy}",
                request=request,
            )
        async with lock:
            pool = self._pools.get(proxy)
            if pool is None:
                config = dataclasses.replace(
                    self._config,
                    proxy=proxy,
                    no_proxy=(*self._config.no_proxy, *env.no_proxy),
                )
                pool = Pool(config, resolver=self._resolver, tracer=self._tracer)
                # Shielded: a pool half entered cannot be entered again.
                with anyio.CancelScope(shield=True):
                    await tg.start(self._run_pool, pool, stop)
                self._pools[proxy] = pool
        return pool

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._owned and self._entered:
            self._entered = False
            self._closed = True
            try:
                await self._pool.__aexit__(exc_type, exc_value, traceback)
            finally:
                await self._end_proxy_pools()

    async def aclose(self) -> None:
        """Close the pools the transport owns (a shared pool stays open)."""
        if self._owned:
            self._closed = True
            for pool in list(self._pools.values()):
                await pool.aclose()
            if self._stop is not None:
                self._stop.set()

    # -- a request ---------------------------------------------------------------------

    def _endpoint(self, request: httpx.Request) -> tuple[Endpoint, Proxy | None]:
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
                    f"conpool.httpx.AsyncTransport speaks http and https, not {scheme!r}: {url}",
                    request=request,
                )
            if not url.host:
                raise httpx.UnsupportedProtocol(f"no host in {url}", request=request)
            port = url.port or (443 if scheme == "https" else 80)
            tls = None
            if scheme == "https":
                tls = self._tls
                if isinstance(sni, str):
                    tls = TLS(self._tls.context, server_name=sni, alpn=("http/1.1",))
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        endpoint, proxy = self._endpoint(request)
        if proxy is None:
            pool = self._pool
        else:
            found = self._pools.get(proxy)
            pool = found if found is not None else await self._proxy_pool(proxy, request)
        limits = timeouts(request)
        retries = self._retries
        fresh = False
        stale_retried = False
        while True:
            try:
                return await self._send(request, pool, endpoint, limits, fresh)
            except _Failed as failed:
                if not replayable(request):
                    raise failed.error from failed.error.__cause__
                if failed.stale and not stale_retried:
                    stale_retried = True
                elif retries > 0 and failed.early:
                    retries -= 1
                else:
                    raise failed.error from failed.error.__cause__
                fresh = True

    async def _send(
        self,
        request: httpx.Request,
        pool: Pool,
        endpoint: Endpoint,
        limits: Mapping[str, float | None],
        fresh: bool,
    ) -> httpx.Response:
        try:
            conn = await pool.acquire(
                endpoint,
                fresh=fresh,
                timeout=limits.get("pool"),
                connect_timeout=limits.get("connect"),
            )
        except PoolTimeout as exc:
            raise httpx.PoolTimeout(
                f"{exc}\n  sending {request.method} {request.url}", request=request
            ) from exc
        except ConnectError as exc:
            error = connect_error(exc, request)
            error.__cause__ = exc
            if self._retries:
                raise _Failed(error, True, False) from exc
            raise error from exc
        except PoolClosed as exc:
            raise httpx.ConnectError(
                f"{exc}\n  sending {request.method} {request.url}", request=request
            ) from exc
        # From here the connection is ours until the response is done with:
        # every way out either hands it to the response or gives it back.
        try:
            return await self._exchange(pool, conn, request, limits)
        except BaseException:
            await _discard(pool, conn)
            raise

    async def _exchange(
        self,
        pool: Pool,
        conn: Connection,
        request: httpx.Request,
        limits: Mapping[str, float | None],
    ) -> httpx.Response:
        user_data = conn.user_data
        h11c: h11.Connection | None = user_data.get(H11_KEY)
        if h11c is None or h11c.our_state is not h11.IDLE:
            h11c = user_data[H11_KEY] = new_h11()
        write_t = limits.get("write")
        read_t = limits.get("read")
        reused = conn.uses > 1
        try:
            data, complete = start_request(h11c, request)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(
                story(str(exc), request, "sending", conn), request=request
            ) from exc
        write_failed: BaseException | None = None
        # One cancel scope for the request; its deadline moves from the
        # write limit to the read limit (not a scope per read or write).
        phase = "write"
        with anyio.CancelScope(deadline=_deadline(write_t)) as scope:
            try:
                await conn.send(data)
                if not complete:
                    async for chunk in request.stream:  # type: ignore[union-attr]
                        if chunk:
                            out = h11c.send(h11.Data(data=chunk))
                            if out:
                                scope.deadline = _deadline(write_t)
                                await conn.send(out)
                    out = h11c.send(h11.EndOfMessage())
                    if out:
                        await conn.send(out)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                # The server may have answered early (a 413, say) and closed:
                # read what it said before giving up.
                write_failed = exc
            except h11.LocalProtocolError as exc:
                raise httpx.LocalProtocolError(
                    story(str(exc), request, "sending", conn), request=request
                ) from exc
            phase = "read"
            scope.deadline = _deadline(read_t)
            head, got_bytes, failure = await _read_head(conn, h11c)
        if scope.cancelled_caught:
            if phase == "write":
                raise httpx.WriteTimeout(
                    story(f"timed out after {write_t:g} s", request, "sending", conn),
                    request=request,
                )
            raise httpx.ReadTimeout(
                story(f"timed out after {read_t:g} s", request, "reading the response to", conn),
                request=request,
            )
        if head is None:
            assert failure is not None
            error = head_failure(failure, write_failed, got_bytes, reused, request, conn)
            raise _Failed(error, not got_bytes, reused and not got_bytes)
        status = head.status_code
        extensions: dict[str, Any] = {
            "http_version": b"HTTP/" + head.http_version,
            "reason_phrase": head.reason,
        }
        headers = head.headers.raw_items()
        if is_upgrade(request, status):
            trailing, _ = h11c.trailing_data
            extensions["network_stream"] = _NetworkStream(pool, conn, bytes(trailing))
            # The response itself has no body: what follows is the new protocol's.
            return httpx.Response(
                status, headers=headers, stream=httpx.ByteStream(b""), extensions=extensions
            )
        body = _ResponseStream(pool, conn, h11c, request, read_t)
        # Whatever of the body came with the head, without waiting for more.
        await body.take_buffered()
        return httpx.Response(status, headers=headers, stream=body, extensions=extensions)


def _deadline(seconds: float | None) -> float:
    if seconds is None:
        return float("inf")
    return anyio.current_time() + seconds


async def _read_head(
    conn: Connection, h11c: h11.Connection
) -> tuple[h11.Response | None, bool, BaseException | None]:
    """Read up to the final response head (skipping 1xx but a 101).

    :returns: ``(head, got_bytes, failure)``: the head, or None with what
        stopped it; ``got_bytes`` says whether any response byte arrived.
    """
    got_bytes = False
    while True:
        try:
            event = h11c.next_event()
        except h11.RemoteProtocolError as exc:
            return None, got_bytes, exc
        if event is h11.NEED_DATA:
            try:
                data = await conn.receive(READ_SIZE)
            except anyio.EndOfStream as exc:
                return None, got_bytes, exc
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                return None, got_bytes, exc
            got_bytes = True
            h11c.receive_data(data)
            continue
        cls = type(event)
        if cls is h11.Response:
            return event, True, None  # type: ignore[return-value]
        if cls is h11.InformationalResponse and event.status_code == 101:  # type: ignore[union-attr]
            return event, True, None  # type: ignore[return-value]
        if cls is h11.ConnectionClosed:
            return None, got_bytes, anyio.EndOfStream()


async def _discard(pool: Pool, conn: Connection) -> None:
    """Close a connection whose HTTP state is unknown and give it back.

    Neither step suspends on asyncio; on trio the close is shielded, and the
    release runs whatever happens to it."""
    try:
        with anyio.CancelScope(shield=True):
            await conn.aclose()
    finally:
        await pool.release(conn)


class _ResponseStream(httpx.AsyncByteStream):
    """A response body read from a pooled connection.

    The connection goes back to the pool when the body ends (reusable, if
    h11 says so), and is closed and given back when the body is closed
    early (unless the rest has already arrived), when reading it fails, or
    when the reading task is cancelled.  A response dropped without being
    closed drops the connection with it: the pool's leak detection reclaims
    and reports it.
    """

    def __init__(
        self,
        pool: Pool,
        conn: Connection,
        h11c: h11.Connection,
        request: httpx.Request,
        read_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self._h11 = h11c
        self._request = request
        self._read = read_timeout
        self._chunks: list[bytes] = []

    async def take_buffered(self) -> None:
        """Take what of the body h11 has without more I/O; at the end of the
        body, give the connection back now (a small response costs no
        further await)."""
        h11c = self._h11
        chunks = self._chunks
        while True:
            try:
                event = h11c.next_event()
            except h11.RemoteProtocolError:
                return  # raised again, with its story, when the body is read
            cls = type(event)
            if cls is h11.Data:
                chunks.append(bytes(event.data))  # type: ignore[union-attr]
            elif cls is h11.EndOfMessage:
                await self._finish()
                return
            else:
                return  # NEED_DATA; anything else surfaces when the body is read

    async def _finish(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if reusable(self._h11):
            await self._pool.release(conn)
        else:
            # Connection: close, HTTP/1.0, or the server closed after: retire.
            await _discard(self._pool, conn)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        if chunks:
            return chunks.pop(0)
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        h11c = self._h11
        try:
            with anyio.fail_after(self._read):
                while True:
                    event = h11c.next_event()
                    if event is h11.NEED_DATA:
                        try:
                            data = await conn.receive(READ_SIZE)
                        except anyio.EndOfStream:
                            data = b""
                        h11c.receive_data(data)
                        continue
                    cls = type(event)
                    if cls is h11.Data:
                        return bytes(event.data)  # type: ignore[union-attr]
                    if cls is h11.EndOfMessage:
                        break
                    raise h11.RemoteProtocolError(f"unexpected {event!r} in a response body")
        except BaseException as exc:
            self._conn = None
            await _discard(self._pool, conn)
            request = self._request
            if isinstance(exc, TimeoutError):
                raise httpx.ReadTimeout(
                    story(
                        f"timed out after {self._read:g} s",
                        request,
                        "reading the body of the response to",
                        conn,
                    ),
                    request=request,
                ) from None
            if isinstance(exc, h11.RemoteProtocolError):
                raise httpx.RemoteProtocolError(
                    story(str(exc), request, "reading the body of the response to", conn),
                    request=request,
                ) from exc
            if isinstance(exc, OSError | anyio.BrokenResourceError | anyio.ClosedResourceError):
                raise httpx.ReadError(
                    story(_describe(exc), request, "reading the body of the response to", conn),
                    request=request,
                ) from exc
            raise
        await self._finish()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if pending_end(self._h11) is None:
            # Closed before its end with more to come: the connection is out
            # of step, so it is closed, not reused (draining a body of
            # unknown length could take as long as the body).
            self._conn = None
            await _discard(self._pool, conn)
        else:
            # The rest of the body had already arrived: still in step.
            await self._finish()


class _NetworkStream:
    """The connection after a ``101 Switching Protocols`` or a ``CONNECT``:
    the caller's, through ``response.extensions["network_stream"]``.  It
    never goes back to the pool for reuse: closing it closes the connection
    (and frees its slot)."""

    def __init__(self, pool: Pool, conn: Connection, leading: bytes) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self._leading = leading

    def _held(self) -> Connection:
        conn = self._conn
        if conn is None:
            raise anyio.ClosedResourceError
        return conn

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._leading:
            data, self._leading = self._leading[:max_bytes], self._leading[max_bytes:]
            return data
        conn = self._held()
        try:
            with anyio.fail_after(timeout):
                return await conn.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"timed out after {timeout:g} s") from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise httpx.ReadError(_describe(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        conn = self._held()
        try:
            with anyio.fail_after(timeout):
                await conn.send(buffer)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(f"timed out after {timeout:g} s") from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise httpx.WriteError(_describe(exc)) from exc

    def get_extra_info(self, info: str) -> Any:
        conn = self._held()
        if info == "client_addr":
            return conn.extra(anyio.abc.SocketAttribute.local_address, None)
        if info == "server_addr":
            return conn.extra(anyio.abc.SocketAttribute.remote_address, None)
        if info == "ssl_object":
            from anyio.streams.tls import TLSAttribute

            return conn.extra(TLSAttribute.ssl_object, None)
        if info == "socket":
            return conn.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if info == "connection":
            return conn
        return None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read(READ_SIZE)
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            await _discard(self._pool, conn)
