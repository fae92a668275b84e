"""Small helpers shared by the pool shell tests (test_pool, test_lifecycle,
test_errors, test_tls, test_cancel): async polling, servers that stall or
misbehave on purpose, resolvers that stall, and the invariants every pool
must satisfy between operations.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

import conpool
from servers import LOOPBACK, EchoServer, unused_port


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def socket_inodes() -> set[int]:
    """The inode of every socket this process has open (``socket:[N]``)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor, say)
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def socket_inode(conn: anyio.abc.ByteStream) -> int:
    """The inode of the socket under a connection, to check later that it
    was really closed (an inode, unlike a descriptor number, is not reused
    at once)."""
    sock = conn.extra(anyio.abc.SocketAttribute.raw_socket)
    return os.fstat(sock.fileno()).st_ino


async def eventually(
    condition: Callable[[], bool], within: float = 5.0, *, what: str = "condition"
) -> None:
    """Poll *condition* without blocking the event loop; fail after *within* s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} still false after {within} s")
        await anyio.sleep(0.005)


async def fd_baseline() -> int:
    """The descriptor count to come back to, taken once the event loop has
    opened what it opens lazily on its first connection (uvloop keeps a
    descriptor on /dev/null from then on)."""
    with EchoServer() as server:
        async with await anyio.connect_tcp(server.host, server.port) as stream:
            await stream.send(b"warm-up")
            await stream.receive()
        async with (
            conpool.Pool() as pool,
            pool.connection(conpool.Endpoint(server.host, server.port)) as conn,
        ):
            assert await echo(conn, b"warm-up") == b"warm-up"
    await anyio.sleep(0.01)
    return fd_count()


async def fds_back_to(baseline: int, within: float = 3.0) -> None:
    """Wait for the process's descriptor count to return to *baseline*.

    Server threads close their side of a connection a moment after the
    client does, and event loops close sockets a callback later.
    """
    await eventually(
        lambda: fd_count() == baseline,
        within,
        what=f"fd count back to {baseline} (now {fd_count()})",
    )


async def echo(conn: anyio.abc.ByteStream, payload: bytes) -> bytes:
    """Send *payload* and read until as many bytes came back."""
    await conn.send(payload)
    received = bytearray()
    while len(received) < len(payload):
        received += await conn.receive()
    return bytes(received)


# --------------------------------------------------------------------------
# Servers that stall or misbehave


def fill_backlog(host: str, port: int, *, limit: int = 16) -> list[socket.socket]:
    """Fill the accept queue of a listener that does not accept (listen(0)).

    Connects until one connect no longer completes: from then on the kernel
    drops SYNs to that port and every new connect hangs until its timeout.
    Returns every socket it opened (the last one still connecting); the
    caller closes them.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(limit):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setblocking(False)
            sock.connect_ex((host, port))
            _, writable, _ = select.select([], [sock], [], 0.1)
            if not writable:
                return sockets
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        sock.close()
    raise AssertionError(f"connects to {host}:{port} kept completing: backlog not full")


def open_gate(server: EchoServer) -> None:
    """Let a server that was created but not started accept from now on,
    with a normal backlog (Linux applies a second ``listen()`` at once)."""
    server._listener.listen(128)
    server.start()


class Blackhole:
    """A port where TCP connects hang (a full backlog nobody accepts from).

    :meth:`open` turns it into a working :class:`EchoServer` on the same port,
    so a test can first stall the pool there and then check it recovers.
    """

    def __init__(self) -> None:
        self.server = EchoServer(backlog=0)
        self.host = self.server.host
        self.port = self.server.port
        self._fillers: list[socket.socket] = []

    def __enter__(self) -> Self:
        try:
            self._fillers = fill_backlog(self.host, self.port)
        except BaseException:
            self.server.stop()
            raise
        return self

    def open(self) -> None:
        open_gate(self.server)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sock in self._fillers:
            sock.close()
        self._fillers = []
        self.server.stop()


class MisbehavingServer:
    """A threaded TCP server that accepts and then, by *mode*:

    * ``"garbage"``: writes *payload* (not TLS) and keeps the connection open;
    * ``"close"``: closes the connection at once (EOF during a handshake);
    * ``"silent"``: reads and never answers.
    """

    def __init__(self, mode: str, payload: bytes = b"HTTP/1.1 400 Bad Request\r\n\r\n") -> None:
        if mode not in ("garbage", "close", "silent"):
            raise ValueError(mode)
        self.mode = mode
        self.payload = payload
        self.host = LOOPBACK
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, unused_port(self.host)))
        self._listener.listen(64)
        self._listener.settimeout(0.02)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._accepted += 1
            if self.mode == "close":
                sock.close()
                continue
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(0.02)
            with contextlib.suppress(OSError):
                if self.mode == "garbage":
                    sock.sendall(self.payload)
                while not self._stopping.is_set():
                    try:
                        if not sock.recv(65536):
                            return
                    except TimeoutError:
                        continue

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)


# --------------------------------------------------------------------------
# Resolvers


class StallingResolver:
    """Answers from a fixed table after ``delay`` seconds (set it to 0 to
    stop stalling); ``fail_next`` makes the next *n* lookups raise OSError.

    :param ttl: the TTL it reports; small values make the pool look up again.
    """

    def __init__(
        self, table: dict[str, Sequence[str]], *, delay: float = 0.0, ttl: float | None = None
    ) -> None:
        self.table = table
        self.delay = delay
        self.ttl = ttl
        self.fail_next = 0
        self.calls = 0
        self.started = 0
        self.finished = 0

    async def resolve(self, host: str) -> list[conpool.ResolvedAddress]:
        self.calls += 1
        self.started += 1
        if self.delay:
            await anyio.sleep(self.delay)
        self.finished += 1
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(f"lookup of {host!r} failed on purpose")
        return [conpool.ResolvedAddress(ip, self.ttl) for ip in self.table[host]]


# --------------------------------------------------------------------------
# Invariants


def check_consistent(pool: conpool.Pool | conpool.SyncPool) -> conpool.PoolStats:
    """Assert that every count in ``pool.stats()`` adds up, and return it.

    * pool totals are the sums over endpoints;
    * an endpoint's active and idle counts are the sums over its addresses;
    * every connection ever created is open (active or idle) or closed;
    * per address, ``created`` sums to the endpoint's ``created`` (the
      endpoints these tests use keep their addresses listed).
    """
    stats = pool.stats()
    eps = stats.endpoints.values()
    assert stats.active == sum(e.active for e in eps), stats
    assert stats.idle == sum(e.idle for e in eps), stats
    assert stats.pending == sum(e.pending for e in eps), stats
    assert stats.waiting == sum(e.waiting for e in eps), stats
    for ep, e in stats.endpoints.items():
        where = f"{ep}: {e}"
        counts = (e.active, e.idle, e.pending, e.waiting, e.created, e.reused, e.closed)
        assert min(counts) >= 0, where
        addrs = e.addresses.values()
        assert e.active == sum(a.active for a in addrs), where
        assert e.idle == sum(a.idle for a in addrs), where
        assert sum(a.pending for a in addrs) <= e.pending, where
        assert e.created == sum(a.created for a in addrs), where
        assert e.created - e.closed == e.active + e.idle, where
    return stats


def check_quiet(pool: conpool.Pool | conpool.SyncPool) -> conpool.PoolStats:
    """:func:`check_consistent`, and nothing is in use, dialling or waiting."""
    stats = check_consistent(pool)
    assert (stats.active, stats.pending, stats.waiting) == (0, 0, 0), stats
    for ep, e in stats.endpoints.items():
        for ip, a in e.addresses.items():
            assert (a.active, a.pending) == (0, 0), (ep, ip, a)
    return stats
