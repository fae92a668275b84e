"""httpx on the threaded pool: ``httpx.Client(transport=conpool.httpx.Transport())``.

The twin of :class:`conpool.httpx.AsyncTransport` over
:class:`~conpool.SyncPool`: every decision (what bytes to send, what the
response's bytes say, what is retried, which error and story) is
:mod:`conpool._http11`'s; this module only moves bytes on blocking sockets.
Timeouts are the socket's own (:meth:`SyncConnection.settimeout
<conpool.SyncConnection.settimeout>`), per operation as httpcore's are.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final

import anyio
import h11
import httpx

from . import _http11 as http
from ._config import Config
from ._endpoint import Endpoint
from ._errors import ConnectError, PoolClosed, PoolTimeout
from ._proxy import Proxy
from ._syncconnection import SyncConnection
from ._syncpool import SyncPool
from ._trace import Tracer

__all__ = ["Transport"]

_NAME = "conpool.httpx.Transport"


class Transport(httpx.BaseTransport):
    """An httpx transport on a :class:`conpool.SyncPool`, for
    ``httpx.Client``: the same behaviour as
    :class:`~conpool.httpx.AsyncTransport`, from threads.

    :param pool: a pool to share (closed by you; the transport never closes
        it).  If None, the transport makes and owns one from ``config``,
        ``resolver`` and ``tracer``, closed with the client (or by
        :meth:`close`).
    :param config: the owned pool's :class:`~conpool.Config`; by default
        ``Config(max_connections_per_endpoint=100, max_idle_time=5.0)``,
        httpx's own limit and keep-alive expiry.
    :param resolver: the owned pool's resolver (its ``resolve_sync`` is used).
    :param tracer: the owned pool's tracer.
    :param verify: for ``https``: True verifies with httpx's default
        context, False does not verify, an :class:`ssl.SSLContext` is used
        as it is.  ALPN offers ``http/1.1``; SNI is the URL's host.
    :param retries: extra sends of an idempotent request whose body is in
        memory, on a new connection, after it failed (connect or I/O) before
        any response byte.  A stale reused connection's one resend comes on
        top.
    :param proxy: a proxy every request goes through (a URL for
        :meth:`conpool.Proxy.parse`, or a :class:`conpool.Proxy`): the owned
        pool's ``Config.proxy``.  Not with a shared ``pool``.
    :param trust_env: with no ``proxy`` (and no ``Config.proxy``), honour
        ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (read
        when the transport is made) as httpx does; the requests through a
        proxy go to an owned pool of their own per proxy, made on first use.
    :raises TypeError: an argument of the wrong type, or ``pool`` given
        together with ``config``, ``resolver`` or ``tracer``.
    :raises ValueError: ``retries`` is negative; ``proxy`` is not a valid
        proxy URL, or is given with a shared ``pool`` or with a ``config``
        that has its own ``proxy``; a proxy environment variable is not a
        valid proxy URL.
    """

    def __init__(
        self,
        pool: SyncPool | None = None,
        *,
        config: Config | None = None,
        resolver: Any = None,
        tracer: Tracer | None = None,
        verify: ssl.SSLContext | bool = True,
        retries: int = 0,
        proxy: str | Proxy | None = None,
        trust_env: bool = True,
    ) -> None:
        setup = http.Setup(
            SyncPool,
            "conpool.SyncPool",
            pool,
            config,
            resolver,
            tracer,
            verify,
            retries,
            proxy,
            trust_env,
        )
        self._setup = setup
        self._owned = setup.owned
        self._env = setup.env
        self._resolver = resolver
        self._tracer = tracer
        if pool is None:
            pool = SyncPool(setup.config, resolver=resolver, tracer=tracer)
        self._pool = pool
        #: Every pool under the transport by its proxy (None: direct).
        self._pools: dict[Proxy | None, SyncPool] = {pool.config.proxy: pool}
        self._making = threading.Lock()
        self._retries = setup.retries
        #: Framed request heads, kept across requests (see start_request;
        #: a dict's get and set are safe across threads).
        self._heads: http.RequestHeads = {}
        self._router = http.Router(_NAME, setup)
        self._route = self._router.route
        self._closed = False

    @property
    def pool(self) -> SyncPool:
        """The :class:`conpool.SyncPool` of the direct requests (all of
        them, unless proxies come from the environment: see :attr:`pools`)."""
        return self._pool

    @property
    def pools(self) -> Mapping[Proxy | None, SyncPool]:
        """A copy of the transport's pools, keyed by their ``Config.proxy``
        (``None``: direct); the environment's proxies each add one when
        first used."""
        with self._making:
            return self._pools.copy()

    def __repr__(self) -> str:
        proxies = [str(p) for p in self._pools if p is not None]
        env = self._env is not None
        return f"<{_NAME} owned={self._owned} proxies={proxies!r} trust_env_proxies={env}>"

    def __enter__(self) -> Transport:
        if self._owned and self._closed:
            raise RuntimeError(
                f"this {_NAME} was closed with its pool: make a new transport for a new client"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pools the transport owns (a shared pool stays open)."""
        if self._owned:
            with self._making:
                self._closed = True
                pools = list(self._pools.values())
            for pool in pools:
                pool.close()

    def _proxy_pool(self, proxy: Proxy, request: httpx.Request) -> SyncPool:
        """The owned pool of the requests through ``proxy``, made on first use."""
        with self._making:
            if self._closed:
                raise http.transport_closed(
                    _NAME, "is closed", "with httpx.Client(transport=...)", request, proxy
                )
            pool = self._pools.get(proxy)
            if pool is None:
                pool = SyncPool(
                    self._setup.proxy_config(proxy), resolver=self._resolver, tracer=self._tracer
                )
                self._pools[proxy] = pool
        return pool

    # -- a request ---------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        endpoint, proxy = self._route(request)
        pool = self._pool if proxy is None else self._pools.get(proxy)
        if pool is None:
            assert proxy is not None
            pool = self._proxy_pool(proxy, request)
        limits = http.timeouts(request)
        try:
            return self._send(request, pool, endpoint, limits, False)
        except http.Failed as failed:
            retry = http.Retries(self._retries)
            retry.after(failed, request)
        # Sent again on a new connection, for as long as the retries allow.
        while True:
            try:
                return self._send(request, pool, endpoint, limits, True)
            except http.Failed as failed:
                retry.after(failed, request)

    def _send(
        self,
        request: httpx.Request,
        pool: SyncPool,
        endpoint: Endpoint,
        limits: Mapping[str, float | None],
        fresh: bool,
    ) -> httpx.Response:
        try:
            conn = pool.acquire(
                endpoint,
                fresh=fresh,
                timeout=limits.get("pool"),
                connect_timeout=limits.get("connect"),
            )
        except (PoolTimeout, ConnectError, PoolClosed) as exc:
            raise http.acquire_error(exc, request, self._retries) from exc
        # From here the connection is ours until the response is done with:
        # every way out either hands it to the response or gives it back.
        try:
            return _exchange(pool, conn, request, limits, self._heads)
        except BaseException:
            _discard(pool, conn)
            raise


def _exchange(
    pool: SyncPool,
    conn: SyncConnection,
    request: httpx.Request,
    limits: Mapping[str, float | None],
    heads: http.RequestHeads | None = None,
) -> httpx.Response:
    response, data, framer = http.begin(request, conn, heads)
    write_t = limits.get("write")
    write_failed: OSError | None = None
    conn.settimeout(write_t)
    try:
        _send_body(conn, framer, data, request)
    except TimeoutError:
        assert write_t is not None
        raise http.write_timeout(request, conn, write_t) from None
    except OSError as exc:
        # The server may have answered early (a 413, say) and closed: read
        # what it said before giving up.
        write_failed = exc
    except h11.LocalProtocolError as exc:
        raise http.local_error(exc, request, conn) from exc
    read_t = limits.get("read")
    conn.settimeout(read_t)
    got_bytes, failure = _read_head(conn, response)
    if failure is not None:
        if isinstance(failure, TimeoutError):
            assert read_t is not None
            raise http.read_timeout(request, conn, read_t) from None
        raise http.no_head(failure, write_failed, got_bytes, conn.uses > 1, request, conn)
    status, headers, extensions = response.parts()
    if http.is_upgrade(request, status):
        conn.settimeout(None)
        extensions["network_stream"] = _NetworkStream(pool, conn, response.leading)
        return httpx.Response(
            status, headers=headers, stream=httpx.ByteStream(b""), extensions=extensions
        )
    body = _ResponseStream(pool, conn, response, request, read_t)
    # Whatever of the body came with the head: a small response gives its
    # connection back before the caller reads it.
    if response.complete:
        body._finish()
    return httpx.Response(status, headers=headers, stream=body, extensions=extensions)


def _send_body(
    conn: SyncConnection, framer: http.Framer | None, data: bytes, request: httpx.Request
) -> None:
    """Send the request's first bytes, then (with a ``framer``) its body."""
    send = conn.send
    send(data)
    if framer is None:
        return
    for chunk in request.stream:  # type: ignore[union-attr]
        if chunk:
            send(framer.data(chunk))
    if out := framer.end():
        send(out)


def _read_head(conn: SyncConnection, response: http.Response) -> tuple[bool, BaseException | None]:
    """Read up to the final response head: ``(got_bytes, failure)``, what
    stopped the read before the head or None (the async twin's contract)."""
    got_bytes = False
    receive = conn.receive
    try:
        while not response.head:
            data = receive(READ_SIZE)
            if not data:
                return got_bytes, anyio.EndOfStream()
            got_bytes = True
            response.feed(data)
    except (http.ProtocolError, OSError) as exc:
        return got_bytes, exc
    return True, None


READ_SIZE: Final = http.READ_SIZE


def _discard(pool: SyncPool, conn: SyncConnection) -> None:
    """Close a connection whose HTTP state is unknown and give it back."""
    try:
        conn._close_now()
    finally:
        pool.release(conn)


class _ResponseStream(http.Body[SyncPool, SyncConnection], httpx.SyncByteStream):
    """A response body read from a pooled connection: back to the pool at
    its end (if the response says it is reusable), closed and given back when closed
    early with more to come or when reading fails.  A response dropped
    without being closed drops the connection with it: the pool's leak
    detection reclaims and reports it."""

    def _finish(self, done: tuple[SyncConnection, bool] | None = None) -> None:
        if done is None:
            done = self._done()
            if done is None:
                return
        conn, reuse = done
        if reuse:
            self._pool.release(conn)
        else:
            # Connection: close, HTTP/1.0, closed early or by the server: retire.
            _discard(self._pool, conn)

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._chunks
        while chunks:
            yield chunks.pop(0)
        conn = self._conn
        if conn is None:
            return
        response = self._response
        while not response.complete:
            try:
                data = conn.receive(READ_SIZE)
                if data:
                    response.feed(data)
                else:
                    response.eof()
            except BaseException as exc:
                error = self._failed(exc, conn)
                _discard(self._pool, conn)
                if error is None:
                    raise
                raise error from (None if isinstance(exc, TimeoutError) else exc)
            while chunks:
                yield chunks.pop(0)
        self._finish()

    def close(self) -> None:
        done = self._closing()
        if done is not None:
            self._finish(done)


class _NetworkStream(http.Handed[SyncPool, SyncConnection]):
    """The connection after a ``101 Switching Protocols`` or a ``CONNECT``:
    the caller's, through ``response.extensions["network_stream"]``.  It
    never goes back to the pool for reuse: closing it closes the connection
    (and frees its slot)."""

    def _held(self) -> SyncConnection:
        if self._conn is None:
            raise OSError("the network stream is closed")
        return self._conn

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._leading:
            return self._take_leading(max_bytes)
        conn = self._held()
        try:
            conn.settimeout(timeout)
            return conn.receive(max_bytes)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"timed out after {timeout:g} s") from exc
        except OSError as exc:
            raise httpx.ReadError(http.describe(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        conn = self._held()
        try:
            conn.settimeout(timeout)
            conn.send(buffer)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(f"timed out after {timeout:g} s") from exc
        except OSError as exc:
            raise httpx.WriteError(http.describe(exc)) from exc

    def get_extra_info(self, info: str) -> Any:
        conn = self._held()
        sock = conn.socket
        if info == "client_addr":
            return sock.getsockname()
        if info == "server_addr":
            return sock.getpeername()
        if info == "ssl_object":
            return conn.ssl_object
        if info == "socket":
            return sock
        if info == "connection":
            return conn
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _discard(self._pool, conn)
