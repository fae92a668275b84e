"""Opening one connection to one address: TCP connect, TLS, per-attempt timeout.

The retry loop that chooses addresses lives in the pool shell, because the
choice is the state machine's; this module does the I/O of a single attempt
and the arithmetic of waiting between attempts.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import ssl
import time

import anyio
from anyio.abc import SocketStream
from anyio.streams.tls import TLSStream

from ._connection import Connection, ProtocolConnection, StreamConnection
from ._endpoint import Endpoint

__all__ = ["backoff_delay", "open_anyio", "open_asyncio", "retryable", "tls_failure"]


class NotTLSError(ssl.SSLError):
    """What listens there spoke first, so it is not a TLS server."""

    def __str__(self) -> str:
        return str(self.args[0])


def tls_failure(exc: BaseException) -> bool:
    """Whether an attempt failed in the TLS handshake (for the trace)."""
    return isinstance(exc, ssl.SSLError) or (
        isinstance(exc, TimeoutError) and str(exc).startswith("TLS handshake")
    )


def retryable(exc: BaseException) -> bool:
    """Whether another attempt could succeed where this one failed.

    A TLS error (a certificate that does not verify, a server that does not
    speak TLS) will fail the same way on every attempt: retrying only delays
    the error and hammers the server.
    """
    return isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    "Full jitter" from the AWS Architecture Blog's *Exponential Backoff And
    Jitter* (Brooker, 2015): uniform in ``[0, min(cap, base * 2**(retry-1))]``.
    Spreading retries over the whole window avoids synchronised retry storms
    when many tasks lose the same server at once.
    """
    if base <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(retry - 1, 62))
    return rng.uniform(0.0, ceiling)


def _socket(ip: str) -> socket.socket:
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


def _tls_timed(exc: BaseException, tls_start: int) -> BaseException:
    """Note on a failure in the TLS handshake how long the handshake ran,
    for the ``tls.failed`` trace event."""
    if tls_start and isinstance(exc, OSError):
        exc.conpool_tls_ns = time.monotonic_ns() - tls_start  # type: ignore[attr-defined]
    return exc


def _closed_in_handshake() -> ConnectionResetError:
    return ConnectionResetError("connection closed by the peer during the TLS handshake")


def _timeout_error(what: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"{what} timed out after {timeout:g} s")


async def open_asyncio(
    endpoint: Endpoint, ip: str, port: int, connect_timeout: float | None
) -> ProtocolConnection:
    """One attempt on asyncio/uvloop: a native protocol-backed connection."""
    loop = asyncio.get_running_loop()
    sock = _socket(ip)
    transport: asyncio.Transport | None = None
    tls = endpoint.tls
    stage = "TCP connect"
    tls_start = 0  # set when the handshake starts
    try:
        with anyio.fail_after(connect_timeout):
            await loop.sock_connect(sock, (ip, port))
            raw, protocol = await loop.create_connection(
                ProtocolConnection.protocol_factory(tls is not None), sock=sock
            )
            transport = raw
            if tls is not None:
                stage = "TLS handshake"
                tls_start = time.monotonic_ns()
                if protocol.buffer:
                    # A TLS server waits for our hello; bytes before it mean
                    # whatever listens there does not speak TLS.
                    raise NotTLSError(
                        f"the server sent {protocol.buffered} bytes before the TLS handshake"
                    )
                if transport.is_closing() or protocol.eof or protocol.lost:
                    # Hung up before we said a word (uvloop would report a
                    # fatal error from a handshake on a closed transport).
                    raise _closed_in_handshake()
                # start_tls on a transport we own, rather than
                # create_connection(ssl=...): cancelled mid-handshake, the
                # latter leaves a half-built TLS transport registered on a
                # socket we close (asyncio then trips over the reused fd,
                # uvloop reports a fatal SSL error); here the raw transport
                # is ours to abort.
                tls_transport = await loop.start_tls(
                    transport,
                    protocol,
                    tls.ssl_context,
                    server_hostname=tls.server_name_for(endpoint.host),
                    # asyncio insists on a handshake timeout of its own; make
                    # it later than ours so that fail_after decides.
                    ssl_handshake_timeout=(connect_timeout or 60.0) * 2 + 1,
                )
                if tls_transport is None or tls_transport.get_extra_info("socket") is None:
                    # uvloop hands back a dead transport when the peer hung
                    # up during the handshake.
                    raise _closed_in_handshake()
                transport = tls_transport
    except TimeoutError as exc:
        _abort(transport, sock)
        if exc.errno is not None or connect_timeout is None:  # not our deadline
            raise
        raise _tls_timed(_timeout_error(stage, connect_timeout), tls_start) from None
    except ConnectionError as exc:
        _abort(transport, sock)
        if tls_start and not exc.args:
            # asyncio's TLS layer raises a bare ConnectionResetError when the
            # peer hangs up mid-handshake: say what happened.
            raise _tls_timed(_closed_in_handshake(), tls_start) from exc
        _tls_timed(exc, tls_start)
        raise
    except BaseException as exc:
        _abort(transport, sock)
        _tls_timed(exc, tls_start)
        raise
    conn = ProtocolConnection(endpoint, (ip, port), transport, protocol, tls is not None)
    if tls is not None:
        conn.tls_ns = time.monotonic_ns() - tls_start
    return conn


def _abort(transport: asyncio.Transport | None, sock: socket.socket) -> None:
    if transport is not None:
        transport.abort()
    sock.close()


async def open_anyio(
    endpoint: Endpoint, ip: str, port: int, connect_timeout: float | None
) -> Connection:
    """One attempt on trio: the socket itself for plain TCP (see
    :mod:`conpool._trio`), an anyio socket stream wrapped in TLS otherwise."""
    sock = _socket(ip)
    stream: SocketStream | None = None
    tls = endpoint.tls
    stage = "TCP connect"
    tls_start = 0  # set when the handshake starts
    try:
        with anyio.fail_after(connect_timeout):
            err = sock.connect_ex((ip, port))
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if tls is None:
                # Plain TCP on trio (the only backend that comes here) goes
                # straight on the socket; trio is an optional extra.
                from ._trio import SocketConnection

                return SocketConnection(endpoint, (ip, port), sock)
            stream = await SocketStream.from_socket(sock)
            stage = "TLS handshake"
            tls_start = time.monotonic_ns()
            try:
                wrapped = await TLSStream.wrap(
                    stream,
                    hostname=tls.server_name_for(endpoint.host),
                    ssl_context=tls.ssl_context,
                    standard_compatible=False,
                )
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                # anyio's words for a peer that hung up mid-handshake; the
                # pool (and its retries) deal in OSErrors.
                raise _closed_in_handshake() from exc
            conn = StreamConnection(endpoint, (ip, port), wrapped, sock)
            conn.tls_ns = time.monotonic_ns() - tls_start
            return conn
    except TimeoutError as exc:
        await _aclose_quietly(stream, sock)
        if exc.errno is not None or connect_timeout is None:  # not our deadline
            raise
        raise _tls_timed(_timeout_error(stage, connect_timeout), tls_start) from None
    except BaseException as exc:
        await _aclose_quietly(stream, sock)
        _tls_timed(exc, tls_start)
        raise


async def _aclose_quietly(stream: SocketStream | None, sock: socket.socket) -> None:
    if stream is not None:
        await anyio.aclose_forcefully(stream)
    else:
        sock.close()
