"""httpx on conpool: ``httpx.AsyncClient(transport=conpool.httpx.AsyncTransport())``,
and ``httpx.Client(transport=conpool.httpx.Transport())`` on threads (the
twin over :class:`~conpool.SyncPool`, in :mod:`conpool._httpx_sync`).

HTTP/1.1: responses are parsed by httptools (the binding of llhttp, the C
parser of Node.js), one parser per response; request heads are checked and
written by h11, once per distinct head, kept by the transport.  Everything below HTTP
(names, addresses, balancing, lifetimes, ejection, limits, tracing, leak
detection) is the pool's.

This module needs the ``httpx`` extra (``pip install 'conpool[httpx]'``);
``import conpool`` never imports it.

What to send, what the response's bytes say, whether a failure may be retried and
what an error says are decided without I/O in :mod:`conpool._http11`, which
the threaded transport shares; the classes here do the I/O on the pool.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import anyio
import h11
import httpx

from ._backends._asyncio import ProtocolConnection
from ._backends._deadline import LoopDeadline
from ._config import Config
from ._connection import Connection
from ._endpoint import TLS, Endpoint
from ._errors import ConnectError, PoolClosed, PoolTimeout
from ._http11 import (
    READ_SIZE,
    Body,
    Failed,
    Handed,
    ProtocolError,
    RequestHeads,
    Response,
    Retries,
    Router,
    Setup,
    acquire_error,
    begin,
    describe,
    is_upgrade,
    local_error,
    no_head,
    read_timeout,
    timeouts,
    transport_closed,
    write_timeout,
)
from ._httpx_sync import Transport as Transport
from ._pool import Pool
from ._proxy import Proxy
from ._resolve import Resolver
from ._trace import Tracer

__all__ = ["AsyncTransport", "Transport"]


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
        setup = Setup(
            Pool, "conpool.Pool", pool, config, resolver, tracer, verify, retries, proxy, trust_env
        )
        if pool is None:
            pool = Pool(setup.config, resolver=resolver, tracer=tracer)
        self._setup = setup
        self._owned = setup.owned
        #: Routing by the environment's proxies (owned pools only), or None.
        self._env = setup.env
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
        self._pool = pool
        self._retries = setup.retries
        #: Framed request heads, kept across requests (see start_request).
        self._heads: RequestHeads = {}
        self._router = Router("conpool.httpx.AsyncTransport", setup)
        self._endpoint = self._router.route
        self._entered = False
        self._closed = False

    @property
    def _tls(self) -> TLS:
        """The TLS settings of https endpoints (ALPN http/1.1, SNI by name)."""
        return self._router.tls

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
            raise transport_closed(
                "conpool.httpx.AsyncTransport",
                why,
                "async with httpx.AsyncClient(transport=...)",
                request,
                proxy,
            )
        async with lock:
            pool = self._pools.get(proxy)
            if pool is None:
                config = self._setup.proxy_config(proxy)
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        endpoint, proxy = self._endpoint(request)
        if proxy is None:
            pool = self._pool
        else:
            found = self._pools.get(proxy)
            pool = found if found is not None else await self._proxy_pool(proxy, request)
        limits = timeouts(request)
        retry: Retries | None = None
        fresh = False
        while True:
            try:
                return await self._send(request, pool, endpoint, limits, fresh)
            except Failed as failed:
                if retry is None:
                    retry = Retries(self._retries)
                retry.after(failed, request)
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
            # (acquire(fresh=, timeout=, connect_timeout=) without the
            # keywords' dict; the same timeouts are checked once.)
            conn = await pool._acquire_given(
                endpoint, fresh, limits.get("pool"), limits.get("connect")
            )
        except (PoolTimeout, ConnectError, PoolClosed) as exc:
            raise acquire_error(exc, request, self._retries) from exc
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
        response, data, framer = begin(request, conn, self._heads)
        write_t = limits.get("write")
        read_t = limits.get("read")
        write_failed: BaseException | None = None
        # One deadline for the request, moved from the write limit to the
        # read limit (not a cancel scope per read or write).
        phase = "write"
        with _deadline(conn, write_t) as scope:
            try:
                await conn.send(data)
                if framer is not None:
                    async for chunk in request.stream:  # type: ignore[union-attr]
                        if chunk:
                            out = framer.data(chunk)
                            scope.reset(write_t)
                            await conn.send(out)
                    out = framer.end()
                    if out:
                        await conn.send(out)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                # The server may have answered early (a 413, say) and closed:
                # read what it said before giving up.
                write_failed = exc
            except h11.LocalProtocolError as exc:
                raise local_error(exc, request, conn) from exc
            phase = "read"
            scope.reset(read_t)
            got_bytes, failure = await _read_head(conn, response)
        if scope.cancelled_caught:
            if phase == "write":
                assert write_t is not None
                raise write_timeout(request, conn, write_t)
            assert read_t is not None
            raise read_timeout(request, conn, read_t)
        if failure is not None:
            raise no_head(failure, write_failed, got_bytes, conn.uses > 1, request, conn)
        status, headers, extensions = response.parts()
        if is_upgrade(request, status):
            extensions["network_stream"] = _NetworkStream(pool, conn, response.leading)
            # The response itself has no body: what follows is the new protocol's.
            return httpx.Response(
                status, headers=headers, stream=httpx.ByteStream(b""), extensions=extensions
            )
        if response.complete:
            # All of the body came with the head (a small response): the
            # connection goes back now, and httpx reads the body from memory.
            if response.reusable():
                await pool.release(conn)
            else:
                # Connection: close, HTTP/1.0, or the server closed after: retire.
                await _discard(pool, conn)
            chunks = response.chunks
            return httpx.Response(
                status,
                headers=headers,
                stream=httpx.ByteStream(chunks[0] if len(chunks) == 1 else b"".join(chunks)),
                extensions=extensions,
            )
        body = _ResponseStream(pool, conn, response, request, read_t)
        return httpx.Response(status, headers=headers, stream=body, extensions=extensions)


class _AnyioDeadline:
    """:class:`~conpool._backends._deadline.LoopDeadline`'s interface on an
    anyio cancel scope: for trio, and for connections that are not asyncio
    protocols (TLS through an https proxy)."""

    __slots__ = ("_scope",)

    def __init__(self, seconds: float | None) -> None:
        self._scope = anyio.CancelScope(
            deadline=_INF if seconds is None else anyio.current_time() + seconds
        )

    def __enter__(self) -> _AnyioDeadline:
        self._scope.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> bool:
        return bool(self._scope.__exit__(exc_type, exc, tb))

    def reset(self, seconds: float | None) -> None:
        """From now on, ``seconds`` (None: no limit)."""
        self._scope.deadline = _INF if seconds is None else anyio.current_time() + seconds

    @property
    def cancelled_caught(self) -> bool:
        return self._scope.cancelled_caught


_INF = float("inf")


def _deadline(conn: Connection, seconds: float | None) -> LoopDeadline | _AnyioDeadline:
    """A deadline ``seconds`` from now (None: none) for a block of I/O on
    ``conn``: on the loop's shared timer on asyncio and uvloop, a cancel
    scope on trio."""
    if type(conn) is ProtocolConnection:
        return LoopDeadline(conn._timers, _INF if seconds is None else conn._loop.time() + seconds)
    return _AnyioDeadline(seconds)


async def _read_head(conn: Connection, response: Response) -> tuple[bool, BaseException | None]:
    """Read up to the final response head (skipping 1xx but a 101).

    :returns: ``(got_bytes, failure)``: whether any response byte arrived,
        and what stopped the read before the head (None: the head is in).
    """
    got_bytes = False
    while True:
        try:
            data = await conn.receive(READ_SIZE)
        except anyio.EndOfStream as exc:
            return got_bytes, exc
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            return got_bytes, exc
        got_bytes = True
        try:
            response.feed(data)
        except ProtocolError as exc:
            return True, exc
        if response.head:
            return True, None


async def _discard(pool: Pool, conn: Connection) -> None:
    """Close a connection whose HTTP state is unknown and give it back.

    Neither step suspends on asyncio; on trio the close is shielded, and the
    release runs whatever happens to it."""
    try:
        with anyio.CancelScope(shield=True):
            await conn.aclose()
    finally:
        await pool.release(conn)


class _ResponseStream(Body[Pool, Connection], httpx.AsyncByteStream):
    """A response body read from a pooled connection (one that did not
    come whole with its head).

    The connection goes back to the pool when the body ends (reusable, if
    the response says so), and is closed and given back when the body is closed
    early (unless the rest has already arrived), when reading it fails, or
    when the reading task is cancelled.  A response dropped without being
    closed drops the connection with it: the pool's leak detection reclaims
    and reports it.
    """

    async def _finish(self) -> None:
        await self._give_back(self._done())

    async def _give_back(self, done: tuple[Connection, bool] | None) -> None:
        if done is not None:
            conn, reuse = done
            if reuse:
                await self._pool.release(conn)
            else:
                # Connection: close, HTTP/1.0, closed early or by the server: retire.
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
        response = self._response
        try:
            with _deadline(conn, self._read) as scope:
                while not response.complete:
                    try:
                        data = await conn.receive(READ_SIZE)
                    except anyio.EndOfStream:
                        response.eof()
                    else:
                        response.feed(data)
                    if chunks:
                        break
            if scope.cancelled_caught:
                raise TimeoutError
        except BaseException as exc:
            error = self._failed(exc, conn)
            await _discard(self._pool, conn)
            if error is None:
                raise
            if isinstance(exc, TimeoutError):
                raise error from None
            raise error from exc
        if chunks:
            return chunks.pop(0)
        await self._finish()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self._give_back(self._closing())


class _NetworkStream(Handed[Pool, Connection]):
    """The connection after a ``101 Switching Protocols`` or a ``CONNECT``:
    the caller's, through ``response.extensions["network_stream"]``.  It
    never goes back to the pool for reuse: closing it closes the connection
    (and frees its slot)."""

    def _held(self) -> Connection:
        conn = self._conn
        if conn is None:
            raise anyio.ClosedResourceError
        return conn

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._leading:
            return self._take_leading(max_bytes)
        conn = self._held()
        try:
            with anyio.fail_after(timeout):
                return await conn.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"timed out after {timeout:g} s") from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise httpx.ReadError(describe(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        conn = self._held()
        try:
            with anyio.fail_after(timeout):
                await conn.send(buffer)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(f"timed out after {timeout:g} s") from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise httpx.WriteError(describe(exc)) from exc

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
