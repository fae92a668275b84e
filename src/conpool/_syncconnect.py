"""Making one pooled connection from a thread: :class:`SyncConnector`.

The same plan as the async shell's (:mod:`conpool._connect`): the state
machine picks each attempt's address, :mod:`conpool._dialplan` decides
rounds, retries, backoff and the Happy Eyeballs race, and the story of every
attempt is the shared :class:`~conpool._connect.Dialer`'s.  What differs is
how the attempts run: with no event loop and no thread per attempt, a round
starts non-blocking connects and waits for them on one selector (the first
at once, the second family after ``happy_eyeballs_delay`` or as soon as the
first fails, RFC 8305 section 5), each bounded by ``connect_timeout``.  The
first TCP connect to complete wins; the other is closed; then TLS runs on the
winner alone (bounded by what is left of its attempt's time).
"""

from __future__ import annotations

import math
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from ._backends._sockets import timeout_error
from ._backends._threads import connect_result, start_connect, tls_handshake
from ._connect import Dialer
from ._dialplan import DialPlan, Race, should_race
from ._endpoint import Endpoint
from ._errors import describe
from ._proxy import Proxy, ProxyError, unreachable
from ._state import EndpointState
from ._syncconnection import SyncConnection
from ._tunnel import run_handshake_blocking

__all__ = ["SyncConnector"]

Ep = EndpointState[Endpoint, SyncConnection]


class _Attempt:
    __slots__ = ("deadline", "ip", "sock", "start")

    def __init__(self, ip: str, sock: socket.socket, start: int, deadline: float) -> None:
        self.ip = ip
        self.sock = sock
        self.start = start
        self.deadline = deadline


class SyncConnector(Dialer[SyncConnection]):
    """Opens connections in slots the state machine reserved, from the
    calling thread (see the module docstring).

    :param gen: the fork generation stamped on new connections.
    :param closing: set when the pool closes (a backoff sleep ends early).
    """

    gen: Callable[[], int]
    closing: threading.Event

    def connect(self, ep: Ep, connect_timeout: float | None) -> SyncConnection:
        """A registered connection (its record active), or :class:`ConnectError`."""
        plan = self._plan(connect_timeout)
        while (delay := plan.next_round()) is not None:
            if plan.round > 1:
                self._retrying(ep, plan, delay)
                self.closing.wait(delay)
            conn = self._round(ep, plan, connect_timeout)
            if conn is not None:
                return self._register(ep, conn)
        raise self._gave_up(ep, plan)

    def open_one(self, ep: Ep, ip: str, timeout: float | None) -> SyncConnection:
        """One attempt to ``ip``, not registered (the warm floor's refills):
        TCP (or the proxy's tunnel), then TLS.  :class:`OSError` when it fails."""
        plan = self._plan(timeout)
        proxy = self._proxy(ep.key)
        if proxy is not None:
            conn = self._via_proxy(ep, ip, plan, timeout, proxy, quiet=True)
        else:
            start = time.monotonic_ns()
            sock, done = start_connect(self.sockets, ep.key, ip, ep.key.port)
            deadline = math.inf if timeout is None else time.monotonic() + timeout
            try:
                if not done:
                    with selectors.DefaultSelector() as sel:
                        sel.register(sock, selectors.EVENT_WRITE)
                        if not sel.select(None if timeout is None else timeout):
                            assert timeout is not None
                            raise timeout_error("TCP connect", timeout)
                    err = connect_result(sock)
                    if err is not None:
                        raise err
            except BaseException:
                sock.close()
                raise
            conn = self._finish(ep, _Attempt(ip, sock, start, deadline), plan, timeout, quiet=True)
        if conn is None:
            raise plan.errors[-1][1]
        return conn

    def _start(self, ep: Ep, ip: str, plan: DialPlan, timeout: float | None) -> _Attempt | None:
        """Start an attempt to ``ip``; None when it failed at once."""
        self.emit("connect.started", ep.key, ip)
        start = time.monotonic_ns()
        try:
            sock, _done = start_connect(self.sockets, ep.key, ip, ep.key.port)
        except OSError as exc:
            self._failed(ep, ip, plan, exc, time.monotonic_ns() - start)
            return None
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        return _Attempt(ip, sock, start, deadline)

    def _round(self, ep: Ep, plan: DialPlan, timeout: float | None) -> SyncConnection | None:
        first = self._no_address(ep, plan)
        proxy = self._proxy(ep.key)
        if proxy is not None:
            return self._via_proxy(ep, first, plan, timeout, proxy)
        race = Race(first) if should_race(a.ip for a in ep.listed) else None
        second_at = time.monotonic() + self.config.happy_eyeballs_delay if race else math.inf
        running: dict[int, _Attempt] = {}
        won: _Attempt | None = None
        raced = False
        with selectors.DefaultSelector() as sel:
            try:
                a = self._start(ep, first, plan, timeout)
                if a is not None:
                    running[a.sock.fileno()] = a
                    sel.register(a.sock, selectors.EVENT_WRITE)
                while won is None:
                    now = time.monotonic()
                    if race is not None and not raced and (now >= second_at or not running):
                        raced = True
                        second_at = math.inf
                        with self.lock:
                            second = self.state.pick_address(
                                ep, self.clock(), [*plan.tried, first], family=race.second_family()
                            )
                        if second is not None:
                            race.second = second
                            self.emit("connect.race", ep.key, second, detail=f"racing {first}")
                            b = self._start(ep, second, plan, timeout)
                            if b is not None:
                                running[b.sock.fileno()] = b
                                sel.register(b.sock, selectors.EVENT_WRITE)
                    if not running:
                        return None
                    until = min(min(x.deadline for x in running.values()), second_at)
                    ready = sel.select(None if until == math.inf else max(until - now, 0.0))
                    for key, _ in ready:
                        x = running.pop(key.fd)
                        sel.unregister(x.sock)
                        err = connect_result(x.sock)
                        if err is not None:
                            x.sock.close()
                            self._failed(ep, x.ip, plan, err, time.monotonic_ns() - x.start)
                        elif race is None or race.won(x.ip):
                            won = x
                            break
                        else:
                            x.sock.close()
                    now = time.monotonic()
                    for fd, x in list(running.items()):
                        if won is None and now >= x.deadline:
                            del running[fd]
                            sel.unregister(x.sock)
                            x.sock.close()
                            assert timeout is not None
                            exc = timeout_error("TCP connect", timeout)
                            self._failed(ep, x.ip, plan, exc, time.monotonic_ns() - x.start)
            finally:
                # The losers (and everything, if this thread was interrupted).
                for x in running.values():
                    x.sock.close()
                    why = "lost the race" if won is not None else "KeyboardInterrupt"
                    self._cancelled(ep, x.ip, why, time.monotonic_ns() - x.start, race)
        assert won is not None
        return self._finish(ep, won, plan, timeout)

    def _via_proxy(
        self,
        ep: Ep,
        ip: str,
        plan: DialPlan,
        timeout: float | None,
        proxy: Proxy,
        quiet: bool = False,
    ) -> SyncConnection | None:
        """One attempt through ``proxy`` to ``ip``: connect to the proxy
        (TLS to it for ``https://``), the proxy's handshake on the blocking
        socket (:func:`conpool._tunnel.run_handshake_blocking`), then TLS to
        the target as on a direct connection.  No race: every attempt goes
        to the same proxy."""
        endpoint = ep.key
        self.emit("connect.started", endpoint, ip)
        start = time.monotonic_ns()
        deadline = math.inf if timeout is None else time.monotonic() + timeout

        def trace(kind: str, duration_ns: int | None, detail: str) -> None:
            self.emit(kind, endpoint, ip, duration_ns=duration_ns, detail=detail)

        sock: socket.socket | None = None
        try:
            try:
                sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except TimeoutError:
                assert timeout is not None
                raise unreachable(proxy, timeout_error("TCP connect", timeout)) from None
            except OSError as exc:
                raise unreachable(proxy, exc) from exc
            if proxy.is_tls:
                context = proxy.tls_context or ssl.create_default_context()
                try:
                    sock = context.wrap_socket(sock, server_hostname=proxy.host)
                except (ssl.SSLError, OSError) as exc:
                    raise ProxyError(
                        f"TLS to the proxy {proxy} failed: {describe(exc)}", proxy=proxy
                    ) from exc
            shake_start = time.monotonic_ns()
            trace("proxy.handshake.started", None, str(proxy))
            left = None if timeout is None else max(deadline - time.monotonic(), 0.001)
            try:
                run_handshake_blocking(sock, proxy.handshake(ip, endpoint.port), left)
            except ProxyError as exc:
                trace("proxy.handshake.failed", time.monotonic_ns() - shake_start, str(exc))
                raise
            trace("proxy.handshake.complete", time.monotonic_ns() - shake_start, str(proxy))
            sock.settimeout(None)
        except OSError as exc:
            if sock is not None:
                sock.close()
            if quiet:
                plan.failed(ip, exc)
            else:
                self._failed(ep, ip, plan, exc, time.monotonic_ns() - start)
            return None
        except BaseException:
            if sock is not None:
                sock.close()
            if not quiet:
                self._cancelled(ep, ip, "KeyboardInterrupt", time.monotonic_ns() - start, None)
            raise
        return self._finish(ep, _Attempt(ip, sock, start, deadline), plan, timeout, quiet)

    def _finish(
        self, ep: Ep, a: _Attempt, plan: DialPlan, timeout: float | None, quiet: bool = False
    ) -> SyncConnection | None:
        """TCP (or a proxy's tunnel) is up: TLS if asked (inside the
        tunnel's TLS for an https:// proxy), then the unregistered connection."""
        endpoint = ep.key
        sock: Any = a.sock
        tls_ns: int | None = None
        try:
            sock.setblocking(True)
            if endpoint.tls is not None:
                deadline = None if timeout is None else a.deadline
                sock, tls_ns = tls_handshake(sock, endpoint, deadline, timeout)
        except OSError as exc:
            if quiet:
                plan.failed(a.ip, exc)
            else:
                self._failed(ep, a.ip, plan, exc, time.monotonic_ns() - a.start)
            return None
        except BaseException:
            sock.close()
            if not quiet:
                self._cancelled(ep, a.ip, "KeyboardInterrupt", time.monotonic_ns() - a.start, None)
            raise
        conn = SyncConnection(endpoint, (a.ip, endpoint.port), sock, self.gen())
        conn._tls_ns = tls_ns
        if quiet:
            conn._connect_ns = time.monotonic_ns() - a.start
        else:
            self._connected(ep, conn, a.start)
        return conn
