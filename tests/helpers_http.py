"""Loopback HTTP servers that send fixed bytes, for the transports' tests
of what a real server may send that nginx never does."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@contextlib.contextmanager
def answering(*replies: bytes) -> Iterator[int]:
    """A loopback server that answers each connection's first request with
    the next of ``replies`` and closes it; yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        for reply in replies:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                buf = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in buf and (data := conn.recv(4096)):
                        buf += data
                    conn.sendall(reply)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield sock.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        th.join(5)


@dataclass
class Replying:
    """What a :func:`replying` server saw: its port, the connections it
    accepted and the request heads of each, in order."""

    port: int
    heads: list[list[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def replying(reply: bytes) -> Iterator[Replying]:
    """A loopback server that answers every request head (bodiless
    requests only) with ``reply`` and keeps the connection open until the
    client closes it; one thread per connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    seen = Replying(sock.getsockname()[1])
    threads: list[threading.Thread] = []

    def handle(conn: socket.socket, heads: list[bytes]) -> None:
        with conn:
            conn.settimeout(10)
            buf = b""
            with contextlib.suppress(OSError):
                while data := conn.recv(4096):
                    buf += data
                    while (end := buf.find(b"\r\n\r\n")) >= 0:
                        heads.append(buf[:end])
                        buf = buf[end + 4 :]
                        conn.sendall(reply)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            heads: list[bytes] = []
            seen.heads.append(heads)
            th = threading.Thread(target=handle, args=(conn, heads), daemon=True)
            th.start()
            threads.append(th)

    accept = threading.Thread(target=serve, daemon=True)
    accept.start()
    try:
        yield seen
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        accept.join(5)
        for th in threads:
            th.join(5)
