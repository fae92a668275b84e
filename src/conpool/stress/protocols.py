"""What the stress clients say over a pooled connection: one request, one whole answer.

Each protocol sends a request and reads exactly its answer, so that the
connection is in step for the next request when it goes back to the pool.  A
wrong or incomplete answer raises :class:`ProtocolError`; a server that asks
to close the connection (``Connection: close``) gets it closed, so the pool
does not reuse it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from anyio.abc import ByteStream

__all__ = [
    "PROTOCOLS",
    "EchoProtocol",
    "HTTPProtocol",
    "Protocol",
    "ProtocolError",
    "RedisProtocol",
]


class ProtocolError(Exception):
    """The server's answer was not the expected one."""


class Protocol(ABC):
    """One request/response exchange over a byte stream."""

    name = "?"

    @abstractmethod
    async def exchange(self, conn: ByteStream) -> None:
        """Send one request and read its whole answer.

        :raises ProtocolError: the answer is wrong.
        :raises anyio.EndOfStream: the server closed the connection first.
        """

    @abstractmethod
    def describe(self) -> str:
        """One line for the report: what this protocol sends."""


class EchoProtocol(Protocol):
    """Send ``size`` bytes, read the same bytes back."""

    name = "echo"

    def __init__(self, size: int = 64) -> None:
        self.payload = bytes(i % 251 for i in range(size))

    async def exchange(self, conn: ByteStream) -> None:
        await conn.send(self.payload)
        want = len(self.payload)
        got = await conn.receive(want)
        if len(got) < want:
            parts = [got]
            n = len(got)
            while n < want:
                chunk = await conn.receive(want - n)
                parts.append(chunk)
                n += len(chunk)
            got = b"".join(parts)
        if got != self.payload:
            raise ProtocolError(f"echo answered {len(got)} bytes that differ from the request")

    def describe(self) -> str:
        return f"echo, {len(self.payload)}-byte messages"


class HTTPProtocol(Protocol):
    """``GET path HTTP/1.1`` with keep-alive; reads a Content-Length or chunked body."""

    name = "http"

    def __init__(self, host: str, path: str = "/") -> None:
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: conpool-stress\r\n\r\n"
        self.raw = self.request.encode("ascii")

    async def exchange(self, conn: ByteStream) -> None:
        await conn.send(self.raw)
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > 65536:
                raise ProtocolError("HTTP response headers longer than 64 KiB")
            buf += await conn.receive()
        head, rest = buf[:end].decode("latin-1"), buf[end + 4 :]
        lines = head.split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
            # Never quote what the server sent: reports carry no payload bytes.
            raise ProtocolError(f"not an HTTP response ({len(lines[0])}-byte first line)")
        try:
            status = int(status_line[1])
        except ValueError:
            raise ProtocolError("bad HTTP status line (status is not a number)") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        keep_alive = status_line[0] == "HTTP/1.1"
        connection = headers.get("connection", "").lower()
        if "close" in connection:
            keep_alive = False
        elif "keep-alive" in connection:
            keep_alive = True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            rest = await self._chunked(conn, rest)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length (not a number)") from None
            while len(rest) < length:
                rest += await conn.receive()
            rest = rest[length:]
        elif status not in (204, 304) and not 100 <= status < 200:
            raise ProtocolError("HTTP response without Content-Length or chunked body")
        if rest:
            raise ProtocolError(f"{len(rest)} bytes after the HTTP response")
        if not keep_alive:
            await conn.aclose()
        if status >= 400:
            raise ProtocolError(f"HTTP status {status}")

    async def _chunked(self, conn: ByteStream, buf: bytes) -> bytes:
        while True:
            while b"\r\n" not in buf:
                buf += await conn.receive()
            size_line, _, buf = buf.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                raise ProtocolError("bad chunk size (not hexadecimal)") from None
            if size == 0:
                # Trailers end with an empty line.
                while b"\r\n\r\n" not in b"\r\n" + buf:
                    buf += await conn.receive()
                _, _, rest = (b"\r\n" + buf).partition(b"\r\n\r\n")
                return rest
            while len(buf) < size + 2:
                buf += await conn.receive()
            buf = buf[size + 2 :]

    def describe(self) -> str:
        return "HTTP/1.1 keep-alive, GET /"


class RedisProtocol(Protocol):
    """``PING`` as a RESP array; expects ``+PONG``."""

    name = "redis"
    request = b"*1\r\n$4\r\nPING\r\n"

    async def exchange(self, conn: ByteStream) -> None:
        await conn.send(self.request)
        buf = b""
        while not buf.endswith(b"\r\n"):
            if len(buf) > 4096:
                raise ProtocolError("redis answer longer than 4 KiB")
            buf += await conn.receive()
        if buf != b"+PONG\r\n":
            raise ProtocolError(f"unexpected redis answer to PING ({len(buf)} bytes)")

    def describe(self) -> str:
        return "redis RESP, PING"


PROTOCOLS = ("echo", "http", "redis")


def make_protocol(name: str, host: str) -> Protocol:
    """The client side of protocol ``name``; ``host`` goes in HTTP's Host header."""
    if name == "echo":
        return EchoProtocol()
    if name == "http":
        return HTTPProtocol(host)
    if name == "redis":
        return RedisProtocol()
    raise ValueError(f"unknown protocol {name!r} (choose from: {', '.join(PROTOCOLS)})")
