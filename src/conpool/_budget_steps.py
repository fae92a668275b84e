"""The steps of a dial's wait for the fleet budget that both pool shells
take the same way (the async :class:`~conpool.Pool` as they are, the threaded
:class:`~conpool.SyncPool` under its lock): plain functions around the state
machine's decisions (:meth:`PoolState.wait_budget`,
:meth:`PoolState.budget_over`), with no waiting in them.  How the dial waits
for the lease, and for a slot when the lease came without one, is each
shell's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import PoolClosed, PoolTimeout
from ._state import Answer, ConnRecord, EndpointState, Waiter

if TYPE_CHECKING:
    from ._budget_core import Lease
    from ._shell import Shell

__all__ = ["budget_failed", "budget_over", "wait_in_line"]

Ep = EndpointState[Any, Any]
Wait = Waiter[Any, Any]


def wait_in_line(shell: Shell[Any], ep: Ep, since: float) -> Wait:
    """The dial in ``ep``'s slot cannot have a lease at once: it gives the
    slot up and waits in the machine's line (served first come, first
    served with the endpoint's other waiters)."""
    w = shell._state.wait_budget(ep, shell._new_parked(), since)
    shell._flush()
    return w


def budget_over(shell: Shell[Any], w: Wait) -> ConnRecord[Any, Any] | Answer:
    """The dial's wait for the lease ended (granted, or served meanwhile):
    what the machine makes of it (see :meth:`PoolState.budget_over`).

    :raises PoolClosed: the pool was closed meanwhile.
    """
    got = shell._state.budget_over(w)
    shell._flush()
    return got


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
        state.cancel(w, shell._clock())
    elif isinstance(exc, Exception) and not isinstance(exc, PoolTimeout):
        state.dial_failed(ep)
    else:
        state.dial_abandoned(ep)  # no budget in time, or cancelled: not a connect failure
    shell._flush()
    if isinstance(exc, Exception) and not isinstance(exc, PoolTimeout | PoolClosed):
        shell._emit("acquire.failed", ep.key, detail=str(exc))
