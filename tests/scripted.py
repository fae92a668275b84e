"""The scripted test tier: the real :class:`conpool.Pool` shell over in-memory
connections and a virtual clock, deterministic and fast.

* :class:`VirtualLoop` is an asyncio event loop whose clock is virtual: when
  nothing is ready to run, time jumps to the next timer instead of waiting
  (``run``), or the loop stops (``settle``), or it runs up to a given time
  (``advance``).  anyio's sleeps, deadlines and cancel scopes, and the pool's
  own clock, all read it.
* :class:`Network` scripts what each address does when the pool connects to
  it (accept, refuse, hang, fail TLS, each after a virtual delay) and logs
  every attempt with its times and outcome; the connections are in-memory
  echo streams (:class:`ScriptedConnection`) whose far end the test can close.
* :class:`ScriptedBackend` is the pool's backend over both
  (:class:`conpool._backends.Backend`); :class:`ScriptedResolver` answers
  names from a table the test changes, with TTLs and delays.

Nothing here touches a socket or sleeps for real.
"""

from __future__ import annotations

import asyncio
import selectors
import ssl
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel

import conpool
from conpool._backends._asyncio import AsyncioBackend
from conpool._backends._sockets import SocketFactory
from conpool._connection import Connection
from conpool._tunnel import Trace

T = TypeVar("T")

Outcome = Literal["accept", "refuse", "hang", "tls"]


# -- the virtual clock -------------------------------------------------------------


class _Selector(selectors.DefaultSelector):
    """Never blocks: asked to wait, it moves the loop's virtual clock instead
    (or stops the loop, per the loop's mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        loop = self.loop
        if loop is None:
            return ready
        loop._spins += 1
        if loop._spins > loop.spin_limit:
            raise Deadlock(f"the loop ran {loop.spin_limit} iterations without time passing")
        if ready or timeout == 0:
            return ready
        return loop._idle(timeout)


class Deadlock(RuntimeError):
    """Nothing can run and no timer is armed: the scenario waits forever."""


class VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a virtual clock that starts at 0.0."""

    #: Virtual seconds a scenario may last: past them the loop raises
    #: :class:`Deadlock` (the pool's sweeper always has a timer armed, so a
    #: scenario that waits forever would otherwise run forever).
    limit = 3600.0
    #: Loop iterations without the clock moving past which it raises
    #: :class:`Deadlock` (something reschedules itself forever).
    spin_limit = 200_000

    def __init__(self) -> None:
        self._now = 0.0
        self._spins = 0
        self._mode: Literal["jump", "settle", "until"] = "jump"
        self._until = 0.0
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._now

    def _idle(self, timeout: float | None) -> list[Any]:
        """The loop has nothing ready; the next timer is ``timeout`` away."""
        if self._mode == "settle":
            self.stop()
        elif self._mode == "until":
            if timeout is None or self._now + timeout > self._until:
                self._now = max(self._now, self._until)
                self.stop()
            else:
                self._now += timeout
                self._spins = 0
        elif timeout is None:
            raise Deadlock("nothing is ready and no timer is armed")
        else:
            self._now += timeout
            self._spins = 0
            if self._now > self.limit:
                raise Deadlock(f"still waiting after {self.limit:g} virtual seconds")
        return []

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to its end, jumping over every wait."""
        self._mode = "jump"
        return self.run_until_complete(main)

    def settle(self) -> None:
        """Run what is ready, and what that makes ready, without moving the
        clock."""
        self._mode = "settle"
        self._spins = 0
        self.run_forever()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, running every timer due in
        them, then settle."""
        self._mode = "until"
        self._until = self._now + seconds
        self.run_forever()
        self.settle()


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a scenario on a fresh virtual loop."""
    loop = VirtualLoop()
    try:
        return loop.run(main())
    finally:
        loop.close()


# -- the network --------------------------------------------------------------------


@dataclass
class Plan:
    """What an attempt to an address does, after ``after`` seconds."""

    outcome: Outcome = "accept"
    after: float = 0.0


@dataclass
class Attempt:
    """One connection attempt, as the network saw it."""

    ip: str
    port: int
    started: float
    #: Its socket: made when the attempt starts, closed when it fails.
    wire: Wire
    ended: float | None = None
    #: "connected", "refused", "tls", "cancelled" (timed out or abandoned).
    result: str = ""


class Wire:
    """Both ends of one in-memory connection; the far end echoes."""

    def __init__(self, network: Network, ip: str, port: int) -> None:
        self.network = network
        self.ip = ip
        self.port = port
        self.inbound: list[bytes] = []
        #: False while the attempt that made it is in progress.
        self.connected = False
        self.closed = False
        self.peer_closed = False
        self.reader: asyncio.Future[None] | None = None
        network.wires.append(self)

    def close(self) -> None:
        """Our end closes (what the pool calls for a connection it closes,
        or one garbage-collected without release)."""
        if not self.closed:
            self.closed = True
            self._wake()

    def hang_up(self) -> None:
        """The far end closes (a server timing out an idle connection)."""
        self.peer_closed = True
        self._wake()

    def _wake(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)


class Network:
    """What each address does when the pool dials it.

    :param default: the plan of an address with none of its own.
    """

    def __init__(self, default: Plan | None = None) -> None:
        self.default = default or Plan()
        # Per address: plans for the next attempts in order, then "always".
        self.queued: dict[str, list[Plan]] = {}
        self.always: dict[str, Plan] = {}
        self.attempts: list[Attempt] = []
        self.wires: list[Wire] = []

    def set(self, ip: str, outcome: Outcome, after: float = 0.0) -> None:
        """Every attempt to ``ip`` from now on."""
        self.queued.pop(ip, None)
        self.always[ip] = Plan(outcome, after)

    def then(self, ip: str, *plans: Plan) -> None:
        """The next attempts to ``ip``, in order (then its usual plan)."""
        self.queued.setdefault(ip, []).extend(plans)

    def plan(self, ip: str) -> Plan:
        queued = self.queued.get(ip)
        if queued:
            return queued.pop(0)
        return self.always.get(ip, self.default)

    def open_wires(self) -> list[Wire]:
        """The established connections not closed yet."""
        return [w for w in self.wires if w.connected and not w.closed]

    def unclosed(self) -> list[Wire]:
        """Every socket not closed yet, attempts in progress included."""
        return [w for w in self.wires if not w.closed]

    def to(self, ip: str) -> list[Attempt]:
        return [a for a in self.attempts if a.ip == ip]


class ScriptedConnection(Connection):
    """A pooled connection over a :class:`Wire`."""

    __slots__ = ("_loop", "_wire")

    def __init__(self, endpoint: conpool.Endpoint, wire: Wire) -> None:
        super().__init__(endpoint, (wire.ip, wire.port))
        self._wire = wire
        self._loop = asyncio.get_running_loop()

    @property
    def wire(self) -> Wire:
        return self._wire

    async def send(self, item: bytes) -> None:
        if self._rec.conn is not None:
            raise self._released()
        wire = self._wire
        if self._closed:
            raise anyio.ClosedResourceError
        if wire.peer_closed:
            self._broken = True
            raise anyio.BrokenResourceError
        await anyio.lowlevel.checkpoint()
        wire.inbound.append(bytes(item))  # the echo
        wire._wake()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._rec.conn is not None:
            raise self._released()
        wire = self._wire
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            if wire.inbound:
                chunk = wire.inbound.pop(0)
                if len(chunk) > max_bytes:
                    wire.inbound.insert(0, chunk[max_bytes:])
                    chunk = chunk[:max_bytes]
                await anyio.lowlevel.checkpoint()
                return chunk
            if wire.peer_closed:
                self._broken = True
                raise anyio.EndOfStream
            fut = wire.reader = self._loop.create_future()
            try:
                await fut
            except BaseException:
                self._broken = True
                raise
            finally:
                wire.reader = None

    async def send_eof(self) -> None:
        self._broken = True
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._close_now()
        await anyio.lowlevel.checkpoint()

    def _close_now(self) -> None:
        self._closed = self._broken = True
        self._wire.close()

    def _closer(self) -> Callable[[], None]:
        return self._wire.close

    def _usable(self, idle: float) -> bool:
        wire = self._wire
        return not (self._broken or wire.peer_closed or wire.inbound)

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


class ScriptedBackend(AsyncioBackend):
    """The pool's backend over a :class:`Network` and the loop's virtual clock
    (which must be a :class:`VirtualLoop`'s)."""

    name = "scripted"

    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network
        self.clock = self._loop.time
        self.open = self._open

    async def _open(
        self,
        endpoint: conpool.Endpoint,
        ip: str,
        port: int,
        connect_timeout: float | None,
        *,
        proxy: conpool.Proxy | None = None,
        trace: Trace | None = None,
        sockets: SocketFactory | None = None,  # (no sockets on a scripted wire)
    ) -> Connection:
        if proxy is not None:
            raise NotImplementedError("the scripted network has no proxies (yet)")
        network = self.network
        wire = Wire(network, ip, port)
        attempt = Attempt(ip, port, self._loop.time(), wire)
        network.attempts.append(attempt)
        plan = network.plan(ip)
        try:
            with anyio.fail_after(connect_timeout):
                if plan.outcome == "hang":
                    await anyio.sleep_forever()
                await anyio.sleep(plan.after)
        except TimeoutError:
            wire.close()
            attempt.ended, attempt.result = self._loop.time(), "cancelled"
            raise TimeoutError(f"TCP connect timed out after {connect_timeout:g} s") from None
        except BaseException:
            wire.close()
            attempt.ended, attempt.result = self._loop.time(), "cancelled"
            raise
        attempt.ended = self._loop.time()
        if plan.outcome == "refuse":
            wire.close()
            attempt.result = "refused"
            raise ConnectionRefusedError(111, "Connection refused")
        if plan.outcome == "tls":
            wire.close()
            attempt.result = "tls"
            raise ssl.SSLCertVerificationError("certificate verify failed (scripted)")
        attempt.result = "connected"
        wire.connected = True
        return ScriptedConnection(endpoint, wire)


# -- names --------------------------------------------------------------------------


@dataclass
class ScriptedResolver:
    """Answers names from ``table`` (change it at will) after ``delay``
    virtual seconds, with ``ttl``; ``fail_next`` lookups raise OSError."""

    table: dict[str, Sequence[str]] = field(default_factory=dict)
    ttl: float | None = None
    delay: float = 0.0
    fail_next: int = 0
    lookups: list[tuple[str, float]] = field(default_factory=list)

    async def resolve(self, host: str) -> list[conpool.ResolvedAddress]:
        self.lookups.append((host, anyio.current_time()))
        await anyio.sleep(self.delay)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(f"lookup of {host!r} failed (scripted)")
        ips = self.table.get(host)
        if not ips:
            raise OSError(f"{host!r} is not in the scripted table")
        return [conpool.ResolvedAddress(ip, self.ttl) for ip in ips]


def scripted_pool(
    network: Network,
    config: conpool.Config | None = None,
    *,
    resolver: conpool.Resolver | None = None,
    tracer: conpool.Tracer | None = None,
) -> conpool.Pool:
    """A real pool on the scripted backend; call it in a coroutine that runs
    on a :class:`VirtualLoop`."""
    pool = conpool.Pool(config, resolver=resolver or ScriptedResolver(), tracer=tracer)
    pool._backend = ScriptedBackend(network)
    return pool
