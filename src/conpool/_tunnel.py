"""The I/O of going through a proxy: connect to it, run the handshake of
:mod:`conpool._proxy` on the raw socket, and hand the socket on.

It works on a connected non-blocking socket with :func:`anyio.wait_readable`
and :func:`anyio.wait_writable`, so one function serves every backend: on
asyncio and uvloop the socket then goes to ``loop.create_connection(sock=)``,
on trio into the trio connection, exactly as a direct connection's would;
TLS to the target (by the endpoint's name) follows inside the tunnel the
same way.  The handshake peeks before it takes, so the target's first bytes
stay in the kernel for the connection.

A blocking socket (a threaded shell) drives :class:`conpool._proxy.Handshake`
with the same loop; see that module's docstring.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import ssl
import time
from collections.abc import Callable

import anyio
from anyio.abc import ByteStream, SocketStream
from anyio.streams.tls import TLSStream

from ._errors import describe
from ._proxy import Handshake, Proxy, ProxyError, unreachable

__all__ = [
    "ProxyAttempt",
    "Trace",
    "run_handshake",
    "run_handshake_blocking",
    "run_handshake_stream",
]

#: ``trace(kind, duration_ns, detail)``: one trace event about this attempt.
Trace = Callable[[str, "int | None", str], None]

_PEEK = 65536


async def run_handshake(sock: socket.socket, handshake: Handshake) -> None:
    """Drive *handshake* on the connected non-blocking *sock* until the tunnel
    is open.

    :raises ProxyError: the proxy refused, broke the protocol, or closed.
    """
    while True:
        out = handshake.data_to_send()
        if out:
            try:
                await _send_all(sock, out)
            except OSError as exc:
                raise handshake.closed() from exc
        if handshake.done:
            return
        try:
            data = await _peek(sock)
        except OSError as exc:
            raise handshake.closed() from exc
        if not data:
            raise handshake.closed()
        used = handshake.feed(data)
        # Take off the socket exactly the bytes the handshake used; what
        # follows is the target's.
        while used:
            used -= len(sock.recv(used))


async def run_handshake_stream(stream: ByteStream, handshake: Handshake) -> None:
    """Drive *handshake* over a byte stream that cannot peek (TLS to an
    ``https://`` proxy): it asks for no more than :meth:`Handshake.wants`,
    so it never reads the tunnel's first bytes.

    :raises ProxyError: the proxy refused, broke the protocol, or closed.
    """
    while True:
        out = handshake.data_to_send()
        try:
            if out:
                await stream.send(out)
            if handshake.done:
                return
            data = await stream.receive(handshake.wants())
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            raise handshake.closed() from exc
        handshake.feed(data)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


async def _peek(sock: socket.socket) -> bytes:
    while True:
        try:
            return sock.recv(_PEEK, socket.MSG_PEEK)
        except BlockingIOError:
            await anyio.wait_readable(sock)


def _new_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


async def _proxy_address(proxy: Proxy) -> tuple[int, tuple[str, int]]:
    """(family, sockaddr) of the proxy; a name is resolved by the system,
    first answer first (a proxy is one service, not a pool of targets)."""
    host = proxy.host
    if ":" in host:
        return socket.AF_INET6, (host, proxy.port)
    if host.replace(".", "").isdigit():
        return socket.AF_INET, (host, proxy.port)
    infos = await anyio.getaddrinfo(host, proxy.port, type=socket.SOCK_STREAM)
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


@functools.cache
def _default_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class ProxyAttempt:
    """One connection through *proxy* to ``host:port`` (the address the pool
    chose, or the name for ``socks5h``/``socks4a``).

    :meth:`open` returns the socket with the tunnel open; the caller goes on
    with it as with a directly connected socket and, on any failure
    (cancellation included), closes :attr:`sock` and passes the exception
    through :meth:`failed`.
    """

    def __init__(self, proxy: Proxy, host: str, port: int, trace: Trace | None) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.trace = trace
        self.sock: socket.socket | None = None
        self.handshake: Handshake | None = None
        self.started_ns = 0
        self.finished = False
        # For an https:// proxy: the socket stream and the TLS stream to it.
        self.raw: SocketStream | None = None
        self.stream: TLSStream | None = None

    async def open(self) -> socket.socket:
        proxy = self.proxy
        sock = await self._connect()
        self.started_ns = time.monotonic_ns()
        self._trace("proxy.handshake.started", None, str(proxy))
        handshake = self.handshake = proxy.handshake(self.host, self.port)
        await run_handshake(sock, handshake)
        self.finished = True
        self._trace("proxy.handshake.complete", time.monotonic_ns() - self.started_ns, str(proxy))
        return sock

    async def open_tls(self) -> tuple[TLSStream, socket.socket]:
        """As :meth:`open`, for an ``https://`` proxy: TLS to the proxy
        (verified against its host), then the handshake inside it.  Returns
        the TLS stream with the tunnel open, and the raw socket."""
        proxy = self.proxy
        sock = await self._connect()
        self.started_ns = time.monotonic_ns()
        self._trace("proxy.handshake.started", None, str(proxy))
        handshake = self.handshake = proxy.handshake(self.host, self.port)
        raw = self.raw = await SocketStream.from_socket(sock)
        try:
            context = proxy.tls_context or _default_context()
            stream = await TLSStream.wrap(
                raw, hostname=proxy.host, ssl_context=context, standard_compatible=False
            )
        except ssl.SSLError as exc:
            await anyio.aclose_forcefully(raw)
            raise ProxyError(
                f"TLS to the proxy {proxy} failed: {describe(exc)}", proxy=proxy
            ) from exc
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            await anyio.aclose_forcefully(raw)
            raise handshake.closed() from exc
        except BaseException:
            await anyio.aclose_forcefully(raw)
            raise
        self.stream = stream
        await run_handshake_stream(stream, handshake)
        self.finished = True
        self._trace("proxy.handshake.complete", time.monotonic_ns() - self.started_ns, str(proxy))
        return stream, sock

    async def _connect(self) -> socket.socket:
        proxy = self.proxy
        try:
            family, address = await _proxy_address(proxy)
            sock = self.sock = _new_socket(family)
            err = sock.connect_ex(address)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            raise unreachable(proxy, exc) from exc
        return sock

    def failed(self, exc: BaseException, timeout: float | None) -> BaseException:
        """What to raise for *exc*, which ended the attempt: a timeout of
        ours (``connect_timeout``, given as *timeout*) that struck while
        talking to the proxy becomes the proxy's error; the handshake's own
        failure is traced.  Anything after the tunnel opened (the TLS
        handshake with the target) is returned as it is."""
        if self.finished:
            return exc
        ours = isinstance(exc, TimeoutError) and exc.errno is None and timeout is not None
        if ours and timeout is not None:
            if self.handshake is None:
                exc = unreachable(
                    self.proxy, TimeoutError(f"TCP connect timed out after {timeout:g} s")
                )
            else:
                exc = self.handshake.stalled(timeout)
        if self.started_ns and isinstance(exc, ProxyError):
            self._trace("proxy.handshake.failed", time.monotonic_ns() - self.started_ns, str(exc))
        elif self.started_ns and not isinstance(exc, Exception):
            self._trace(
                "proxy.handshake.failed",
                time.monotonic_ns() - self.started_ns,
                type(exc).__name__,
            )
        return exc

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    async def aclose(self) -> None:
        if self.stream is not None:
            await anyio.aclose_forcefully(self.stream)
        self.close()

    def _trace(self, kind: str, duration_ns: int | None, detail: str) -> None:
        if self.trace is not None:
            self.trace(kind, duration_ns, detail)


def run_handshake_blocking(
    sock: socket.socket, handshake: Handshake, timeout: float | None = None
) -> None:
    """Drive *handshake* on a connected **blocking** socket (a threaded
    shell's), the same way :func:`run_handshake` does on the event loops:
    peek, feed, take only what the handshake used.  On an
    :class:`ssl.SSLSocket` (an ``https://`` proxy), which cannot peek, it
    reads :meth:`~conpool._proxy.Handshake.wants` bytes at a time instead.

    :param timeout: seconds for the whole handshake, or ``None`` to leave
        the socket's own timeout as it is; the socket's timeout is restored
        afterwards.
    :raises ProxyError: the proxy refused, broke the protocol, closed, or
        did not finish within *timeout*.
    """
    previous = sock.gettimeout()
    tls = isinstance(sock, ssl.SSLSocket)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise handshake.stalled(timeout or 0.0)
                sock.settimeout(left)
            try:
                out = handshake.data_to_send()
                if out:
                    sock.sendall(out)
                if handshake.done:
                    return
                if tls:
                    # TLS to an https:// proxy cannot peek: read no more
                    # than the handshake wants, which never reaches past it.
                    data = sock.recv(handshake.wants())
                else:
                    data = sock.recv(_PEEK, socket.MSG_PEEK)
            except TimeoutError:
                raise handshake.stalled(timeout or 0.0) from None
            except OSError as exc:
                raise handshake.closed() from exc
            if not data:
                raise handshake.closed()
            used = handshake.feed(data)
            while used and not tls:
                used -= len(sock.recv(used))
    finally:
        sock.settimeout(previous)
