"""The steps of a dial's wait for the fleet budget that both pool shells
take the same way (the async :class:`~conpool.Pool` as they are, the threaded
:class:`~conpool.SyncPool` under its lock): plain functions around the state
machine's decisions (:meth:`PoolState.wait_budget`,
:meth:`PoolState.budget_over`), with no waiting in them.  How the dial waits
for the lease, and for a slot when the lease came without one, is each
shell's own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from ._errors import PoolClosed, PoolTimeout
from ._state import DIAL, Answer, ConnRecord, EndpointState, Waiter

if TYPE_CHECKING:
    from ._budget_core import Lease
    from ._shell import Shell

__all__ = ["Line", "budget_failed", "budget_over"]

Ep = EndpointState[Any, Any]
Wait = Waiter[Any, Any]


class Line:
    """A dial's place in the machine's line while it waits for budget: none
    until :meth:`join` (the participant's ``on_wait``), then its waiter.

    :param lock: what the shell holds around the machine (the threaded
        pool's lock; nothing on an event loop).
    :param after: what the shell does once it let go of ``lock`` (the
        threaded pool closes the sockets the machine retired).
    """

    __slots__ = ("after", "ep", "lock", "shell", "since", "w")

    def __init__(
        self,
        shell: Shell[Any],
        ep: Ep,
        lock: AbstractContextManager[object] | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        self.shell = shell
        self.ep = ep
        self.lock = lock if lock is not None else nullcontext()
        self.after = after
        self.since = shell._clock()
        self.w: Wait | None = None

    def join(self) -> None:
        """The dial cannot have a lease at once: it gives its slot up and
        waits in the machine's line (served first come, first served with
        the endpoint's other waiters)."""
        shell = self.shell
        with self.lock:
            self.w = shell._state.wait_budget(self.ep, shell._new_parked(), self.since)
            shell._flush()
        if self.after is not None:
            self.after()

    def served(self) -> bool:
        """Whether the machine served the dial meanwhile (a connection came
        back for it, or the pool closed): its wait for the lease then ends."""
        w = self.w
        return w is not None and (w.grant is not None or self.shell._state.closed)


def budget_over(
    shell: Shell[Any], w: Wait, lease: Lease | None
) -> tuple[ConnRecord[Any, Any] | Answer, Lease | None]:
    """The dial's wait for the lease ended (granted: ``lease``; or served
    meanwhile): what the machine makes of it (see
    :meth:`PoolState.budget_over`), and the lease the dial now holds.

    A lease granted to a dial that a release served meanwhile goes to the
    next dial waiting for budget (:meth:`PoolState.pass_lease`) rather than
    back to the fleet; a dial given one that way dials with it.

    :raises PoolClosed: the pool was closed meanwhile.
    """
    state = shell._state
    got = state.budget_over(w)
    passed = shell._passed.pop(w, None)
    if got is DIAL:
        if passed is not None:
            shell._return_lease(lease)  # (its own, granted as well)
            lease = passed
    elif lease is not None and isinstance(got, ConnRecord):
        taker = state.pass_lease(w.ep)
        if taker is not None:
            shell._passed[taker] = lease
            lease = None
    shell._flush()
    return got, lease


def budget_failed(
    shell: Shell[Any], ep: Ep, w: Wait | None, lease: Lease | None, exc: BaseException
) -> None:
    """The wait for budget failed with ``exc`` (a timeout, Redis refused
    under fail-closed, the pool closed, a cancellation): whatever the dial
    held goes back: its lease, and its slot (``w`` None: it had not waited
    in line yet) or its place in line (a connection served to it meanwhile
    goes to the next waiter)."""
    shell._return_lease(lease)
    state = shell._state
    if w is not None:
        shell._return_lease(shell._passed.pop(w, None))
        state.cancel(w, shell._clock())
    elif isinstance(exc, Exception) and not isinstance(exc, PoolTimeout):
        state.dial_failed(ep)
    else:
        state.dial_abandoned(ep)  # no budget in time, or cancelled: not a connect failure
    shell._flush()
    if isinstance(exc, Exception) and not isinstance(exc, PoolTimeout | PoolClosed):
        shell._emit("acquire.failed", ep.key, detail=str(exc))
