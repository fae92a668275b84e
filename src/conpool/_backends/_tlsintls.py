"""TLS inside TLS on a blocking socket: the target's TLS through an
``https://`` proxy's tunnel, for the threaded shell.

:meth:`ssl.SSLContext.wrap_socket` needs a real socket, and the tunnel is
itself an :class:`ssl.SSLSocket`; so the inner TLS is an
:class:`ssl.SSLObject` over two memory BIOs, its records carried by the
outer socket (as urllib3's ``SSLTransport`` does).  :class:`TLSInTLS` offers
the few socket methods :class:`~conpool.SyncConnection` uses; timeouts are
the outer socket's.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["TLSInTLS"]

T = TypeVar("T")

#: Bytes read from the outer socket per step.
_RECORD = 16 * 1024 + 256


class TLSInTLS:
    """A TLS session whose records travel over ``outer`` (a connected,
    blocking socket: an :class:`ssl.SSLSocket` to the proxy).  Made before
    the handshake; call :meth:`do_handshake`."""

    __slots__ = ("_in", "_obj", "_out", "outer")

    def __init__(self, outer: socket.socket, context: ssl.SSLContext, server_hostname: str | None):
        self.outer = outer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    def _io(self, step: Callable[..., T], *args: Any) -> T:
        """Run one SSLObject call to completion: send what it wrote, feed it
        what the outer socket reads until it no longer wants more."""
        obj_in, obj_out, outer = self._in, self._out, self.outer
        while True:
            try:
                result = step(*args)
            except ssl.SSLWantReadError:
                want = True
            else:
                want = False
            out = obj_out.read()
            if out:
                outer.sendall(out)
            if not want:
                return result
            data = outer.recv(_RECORD)
            if data:
                obj_in.write(data)
            else:
                obj_in.write_eof()

    def do_handshake(self) -> None:
        self._io(self._obj.do_handshake)

    def recv(self, max_bytes: int) -> bytes:
        try:
            return self._io(self._obj.read, max_bytes)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            # A close_notify, or the tunnel's end without one (a ragged
            # EOF, as SSLSocket's suppress_ragged_eofs treats it): the end.
            return b""

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        write = self._obj.write
        while view:
            n = self._io(write, view)
            view = view[n:]

    def settimeout(self, seconds: float | None) -> None:
        self.outer.settimeout(seconds)

    def gettimeout(self) -> float | None:
        return self.outer.gettimeout()

    def fileno(self) -> int:
        return self.outer.fileno()

    def getsockname(self) -> Any:
        return self.outer.getsockname()

    def getpeername(self) -> Any:
        return self.outer.getpeername()

    def pending(self) -> int:
        return self._obj.pending()

    def shutdown(self, how: int) -> None:
        self.outer.shutdown(how)

    def close(self) -> None:
        self.outer.close()

    def __repr__(self) -> str:
        return f"<conpool TLS inside {self.outer!r}>"
