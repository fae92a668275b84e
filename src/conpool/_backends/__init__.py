"""The pool shell's view of an event loop: one small interface, one module
per backend.

The shell (:mod:`conpool._pool`) needs five things from the loop it runs on,
and asks them only through :class:`Backend`:

* ``clock()``: the time, in seconds, that every deadline is measured in;
* ``open(endpoint, ip, port, connect_timeout)``: one connection attempt to one
  address (TCP or a Unix socket's path, then TLS if the endpoint asks for
  it), returning an unregistered :class:`~conpool.Connection` or raising
  :class:`OSError`; with ``proxy=`` and ``trace=``, through that proxy; with
  ``sockets=``, on a socket it made (``Config.socket_options``,
  ``Config.local_address``);
* ``park()`` / ``wake(waiters)``: what a waiting task awaits (made in that
  task; awaiting it is the whole wait, so the contended path resumes through
  no coroutine of ours), and waking the waiters the state machine served;
* ``wait(parked, seconds)``: the same wait with a timer armed (for
  ``acquire_timeout``);
* ``call_soon_threadsafe(fn, *args)``: run ``fn`` on the loop soon, from
  anywhere (another thread, or a garbage-collector callback in the middle of
  a transition).

Tasks, sleeps and cancel scopes come from anyio, which runs on every backend.

What stays outside this interface is the core: the state machine
(:mod:`conpool._state`), the dial's plan (:mod:`conpool._dialplan`) and the
balancing policies take events and the time and answer with actions, and
know nothing of any loop.  A threaded shell reuses them as they are, with a
lock around each transition (they never block) and its own blocking
counterparts of what it needs here: a socket connect, a condition or event per
waiter, a timed wait, and ``time.monotonic``.

:func:`current_backend` picks the one for the running loop: asyncio (and
uvloop, which is asyncio's loop API) in :mod:`._asyncio`, trio in
:mod:`._trio`.  The scripted test backend (``tests/scripted.py``) implements the same
interface over in-memory streams and an asyncio loop on a virtual clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import sniffio

if TYPE_CHECKING:
    from .._connection import Connection
    from .._endpoint import Endpoint
    from .._proxy import Proxy
    from .._records import Waiter
    from .._tunnel import Trace
    from ._sockets import SocketFactory

__all__ = ["Backend", "current_backend"]


class Backend(Protocol):
    """What the pool shell asks of the event loop it runs on."""

    #: "asyncio", "trio", or a test backend's name.
    name: str

    @property
    def clock(self) -> Callable[[], float]:
        """The pool's clock: monotonic seconds."""
        ...

    @property
    def park(self) -> Callable[[], Awaitable[None]]:
        """Make, in the task that will wait, what it awaits until woken."""
        ...

    def wake(self, waiters: Sequence[Waiter[Any, Any]]) -> None:
        """Wake the tasks parked on these waiters' handles (a handle whose
        task gave up in the meantime is left alone)."""
        ...

    async def wait(self, parked: Awaitable[None], seconds: float) -> None:
        """Await ``parked`` for at most ``seconds``; return either way
        (the caller tells from the waiter's grant which it was)."""
        ...

    async def open(
        self,
        endpoint: Endpoint,
        ip: str,
        port: int,
        connect_timeout: float | None,
        *,
        proxy: Proxy | None = None,
        trace: Trace | None = None,
        sockets: SocketFactory | None = None,
    ) -> Connection:
        """One connection attempt; :class:`OSError` when it fails.

        With *proxy* (only then are the keywords passed), the attempt goes
        through it to ``ip:port``: a backend runs
        :class:`conpool._tunnel.ProxyAttempt` on its socket before it builds
        the connection, and reports the handshake span through *trace*."""
        ...

    def call_soon_threadsafe(self, fn: Callable[..., object], /, *args: Any) -> object:
        """Run ``fn(*args)`` on the loop soon; callable from any thread.
        :raises RuntimeError: the loop is gone."""
        ...


def current_backend() -> Backend:
    """The backend of the running event loop.

    :raises RuntimeError: not called from asyncio or trio.
    """
    library = sniffio.current_async_library()
    if library == "asyncio":
        from ._asyncio import AsyncioBackend

        return AsyncioBackend()
    if library == "trio":
        from ._trio import TrioBackend  # trio is an optional extra

        return TrioBackend()
    raise RuntimeError(f"conpool runs on asyncio, uvloop or trio, not on {library}")
