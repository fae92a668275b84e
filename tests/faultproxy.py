"""A loopback TCP proxy that injects faults, for the reliability tests.

:class:`FaultProxy` listens on a loopback address and forwards every accepted
connection to one upstream ``(host, port)``.  Its behaviour is switched at run
time with :meth:`FaultProxy.set_mode`, from any thread:

* ``"pass"``: plain pass-through;
* ``latency=`` (seconds, with any data mode): every chunk is held that long,
  in each direction;
* ``rate=`` (bytes per second, with any data mode): each direction of each
  connection is limited to that throughput;
* ``"reset_after"``: after ``after`` bytes (both directions together, counted
  from the moment the mode was set) both sides are reset (``SO_LINGER`` 0,
  so ``close()`` sends RST);
* ``"close_after"``: the same, but with a FIN to both sides (what arrives
  after the FIN is read and dropped, so the close never turns into a reset);
* ``"blackhole"``: new connections are accepted but never connected upstream;
  open connections stop forwarding.  What arrives is read and dropped;
* ``"accept_close"``: new connections are accepted and closed at once (a FIN,
  or a reset if the client had already sent bytes); open connections are left
  alone.

It is built on blocking sockets and threads, like the servers in
``servers.py``, so it behaves the same whatever async backend the test runs.
Each proxied connection is served by one thread that owns both of its sockets
(no socket is ever closed under another thread's feet); it multiplexes the two
directions with ``select`` and forwards each chunk when it falls due, which is
how latency and the rate limit are applied without one timer per chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import struct
import threading
import time
from collections import deque
from types import TracebackType
from typing import Literal, Self

__all__ = ["FaultProxy", "Kind", "Mode"]

Kind = Literal["pass", "reset_after", "close_after", "blackhole", "accept_close"]
_KINDS: tuple[Kind, ...] = ("pass", "reset_after", "close_after", "blackhole", "accept_close")

# How often threads look up from select()/accept() for a stop or a mode change.
_TICK = 0.02
# At most this much is read per recv, and at most this much may wait in one
# direction's queue (a slow or rate-limited link stops reading beyond it).
_CHUNK = 65536
_MAX_QUEUED = 1 << 20
# After a FIN in "close_after" mode, what the peers still send is drained for
# at most this long before the sockets are closed.
_DRAIN_FOR = 1.0
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclasses.dataclass(frozen=True)
class Mode:
    """What the proxy does; replaced as a whole by :meth:`FaultProxy.set_mode`."""

    kind: Kind = "pass"
    latency: float = 0.0
    rate: float | None = None
    after: int = 0


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class _Direction:
    """One direction of a link: chunks waiting for their due time."""

    def __init__(self, src: socket.socket | None, dst: socket.socket | None, up: bool) -> None:
        self.src = src
        self.dst = dst
        self.up = up
        # (due, chunk); chunk None is the EOF, forwarded as shutdown(SHUT_WR).
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.next_free = 0.0  # when the rate limit lets the next byte out
        self.eof_read = False
        self.eof_sent = False

    def wants_read(self) -> bool:
        return self.src is not None and not self.eof_read and self.queued < _MAX_QUEUED


class _Link(threading.Thread):
    """One accepted connection and (unless black-holed) its upstream one."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream_ok: bool) -> None:
        super().__init__(name=f"faultproxy-{client.getpeername()[1]}", daemon=True)
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.blackholed = not upstream_ok
        self.mode = proxy.mode
        self.counted = 0  # bytes forwarded under self.mode

    # -- lifecycle ---------------------------------------------------------

    def run(self) -> None:
        try:
            if not self.blackholed and not self._connect_upstream():
                return
            self._pump()
        except OSError:
            pass  # a peer went away: the link just ends
        except Exception as exc:  # a bug in the proxy: make the test see it
            self.proxy.errors.append(exc)
        finally:
            for sock in (self.client, self.upstream):
                if sock is not None:
                    sock.close()
            self.proxy._link_done(self)

    def _connect_upstream(self) -> bool:
        host, port = self.proxy.upstream
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect((host, port))
        except OSError:
            sock.close()
            # Upstream down: the client sees a reset, as with a refusal.
            _reset(self.client)
            self.proxy._count("upstream_failures")
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = sock
        return True

    # -- the loop ------------------------------------------------------------

    def _pump(self) -> None:
        client, upstream = self.client, self.upstream
        client.setblocking(False)
        if upstream is not None:
            upstream.setblocking(False)
        up = _Direction(client, upstream, True)
        down = _Direction(upstream, client, False)
        directions = (up, down)
        stopping = self.proxy._stopping
        while not stopping.is_set():
            now = time.monotonic()
            for d in directions:
                if not self._deliver(d, now):
                    return
            if all(d.eof_sent or d.src is None for d in directions):
                return  # both sides closed their writing half
            readers = [d.src for d in directions if d.src is not None and d.wants_read()]
            due = [d.queue[0][0] for d in directions if d.queue]
            timeout = min([_TICK, *(max(0.0, t - now) for t in due)])
            readable, _, _ = select.select(readers, [], [], timeout)
            for d in directions:
                if d.src in readable and not self._read(d):
                    return

    def _current_mode(self) -> Mode:
        # Looked up at every read and every delivery, so a set_mode() applies
        # to the very next chunk; the byte count restarts with each new mode.
        mode = self.proxy.mode
        if mode is not self.mode:
            self.mode, self.counted = mode, 0
        return mode

    def _read(self, d: _Direction) -> bool:
        """Take what ``d.src`` has; False when the link is over (a reset)."""
        assert d.src is not None
        try:
            data = d.src.recv(_CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            # A reset from one side: pass it on to the other as a reset.
            if d.dst is not None:
                _reset(d.dst)
            return False
        mode = self._current_mode()
        now = time.monotonic()
        if not data:
            d.eof_read = True
            if d.dst is None:
                return False  # a black-holed client hung up
            d.queue.append((max(now + mode.latency, d.next_free), None))
            return True
        self.proxy._count("bytes_up" if d.up else "bytes_down", len(data))
        if self.blackholed or mode.kind == "blackhole" or d.dst is None:
            return True  # read and dropped
        # Split into pieces so that a rate limit lets bytes out steadily.
        piece = len(data) if mode.rate is None else max(1, int(mode.rate / 50))
        for start in range(0, len(data), piece):
            chunk = data[start : start + piece]
            due = now + mode.latency
            if mode.rate is not None:
                d.next_free = max(d.next_free, now) + len(chunk) / mode.rate
                due = max(due, d.next_free)
            d.queue.append((due, chunk))
            d.queued += len(chunk)
        return True

    def _deliver(self, d: _Direction, now: float) -> bool:
        """Forward what fell due; False when the link is over."""
        while d.queue and d.queue[0][0] <= now:
            _due, chunk = d.queue.popleft()
            assert d.dst is not None
            if chunk is None:
                with contextlib.suppress(OSError):
                    d.dst.shutdown(socket.SHUT_WR)
                d.eof_sent = True
                continue
            d.queued -= len(chunk)
            mode = self._current_mode()
            if mode.kind in ("reset_after", "close_after"):
                room = mode.after - self.counted
                if len(chunk) >= room:
                    self._send(d.dst, chunk[:room])
                    self.counted += room
                    self._fault(mode.kind)
                    return False
            self._send(d.dst, chunk)
            self.counted += len(chunk)
        return True

    def _send(self, sock: socket.socket, data: bytes) -> None:
        if not data:
            return
        # Blocking for the rare case the peer's buffer is full; bounded.
        sock.settimeout(5.0)
        try:
            sock.sendall(data)
        finally:
            sock.setblocking(False)

    def _fault(self, kind: str) -> None:
        socks = [s for s in (self.client, self.upstream) if s is not None]
        if kind == "reset_after":
            self.proxy._count("resets")
            for sock in socks:
                _reset(sock)
            return
        self.proxy._count("closes")
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        # Drop what still arrives until both peers close (or time runs out):
        # closing with unread bytes would send a reset instead of the FIN.
        deadline = time.monotonic() + _DRAIN_FOR
        open_socks = list(socks)
        while open_socks and time.monotonic() < deadline and not self.proxy._stopping.is_set():
            readable, _, _ = select.select(open_socks, [], [], _TICK)
            for sock in readable:
                try:
                    if not sock.recv(_CHUNK):
                        open_socks.remove(sock)
                except BlockingIOError:
                    pass
                except OSError:
                    open_socks.remove(sock)


class FaultProxy:
    """A threaded loopback TCP proxy in front of ``upstream`` that injects faults.

    :param upstream: ``(host, port)`` to forward to.
    :param host: the loopback address to listen on.
    :param port: the port to listen on; 0 lets the kernel choose.

    Counters (read them any time): :attr:`accepted`, :attr:`bytes_up` (client
    to upstream), :attr:`bytes_down`, :attr:`resets`, :attr:`closes`,
    :attr:`refused` (connections closed by ``"accept_close"``),
    :attr:`upstream_failures`, and :attr:`current` (connections open now).
    Usable as a context manager; :meth:`close` stops everything and joins
    every thread.
    """

    def __init__(
        self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = upstream
        self.host = host
        self._listener = socket.socket(_family(host), socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(128)
            self._listener.settimeout(_TICK)
        except BaseException:
            self._listener.close()
            raise
        self.port: int = self._listener.getsockname()[1]
        self.mode = Mode()
        #: Unexpected exceptions from the proxy's threads (a test should assert it is empty).
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._counts: dict[str, int] = dict.fromkeys(
            ("accepted", "bytes_up", "bytes_down", "resets", "closes", "refused"), 0
        )
        self._counts["upstream_failures"] = 0
        self._links: set[_Link] = set()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="faultproxy-accept", daemon=True
        )
        self._started = False

    # -- control -------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> None:
        self._accept_thread.start()
        self._started = True

    def set_mode(
        self,
        kind: Kind = "pass",
        *,
        latency: float = 0.0,
        rate: float | None = None,
        after: int | None = None,
    ) -> None:
        """Switch behaviour, for new and (where it applies) open connections.

        :param kind: ``"pass"``, ``"reset_after"``, ``"close_after"``,
            ``"blackhole"`` or ``"accept_close"``.
        :param latency: seconds added to every chunk, in each direction.
        :param rate: bytes per second, per direction and connection.
        :param after: for ``reset_after`` / ``close_after``: bytes forwarded
            (both directions, counted from now) before the fault.
        :raises ValueError: a bad combination.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        if latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency!r}")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        needs_after = kind in ("reset_after", "close_after")
        if needs_after != (after is not None):
            raise ValueError(f"after= goes with reset_after/close_after only, got {kind!r}")
        if after is not None and after < 0:
            raise ValueError(f"after must be >= 0, got {after!r}")
        # One attribute store: link threads see the old or the new mode, never a mix.
        self.mode = Mode(kind, latency, rate, after or 0)

    def passthrough(self) -> None:
        """Back to a plain pass-through."""
        self.set_mode("pass")

    # -- counters --------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    @property
    def accepted(self) -> int:
        return self._get("accepted")

    @property
    def bytes_up(self) -> int:
        return self._get("bytes_up")

    @property
    def bytes_down(self) -> int:
        return self._get("bytes_down")

    @property
    def resets(self) -> int:
        return self._get("resets")

    @property
    def closes(self) -> int:
        return self._get("closes")

    @property
    def refused(self) -> int:
        return self._get("refused")

    @property
    def upstream_failures(self) -> int:
        return self._get("upstream_failures")

    @property
    def current(self) -> int:
        with self._lock:
            return len(self._links)

    # -- threads ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stopping.is_set():
                    self.errors.append(exc)
                return
            self._count("accepted")
            kind = self.mode.kind
            if kind == "accept_close":
                self._count("refused")
                sock.close()
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                link = _Link(self, sock, upstream_ok=kind != "blackhole")
            except OSError:
                sock.close()  # the client is already gone
                continue
            with self._lock:
                self._links.add(link)
            link.start()

    def _link_done(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, join every thread. Idempotent."""
        self._stopping.set()
        if self._started:
            self._accept_thread.join(timeout)
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.upstream[0]}:{self.upstream[1]}"
            f" {self.mode} accepted={self.accepted} current={self.current}>"
        )
