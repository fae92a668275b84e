"""The fleet budget for :class:`~conpool.SyncPool`: a participant on
redis-py's sync client, with threads instead of tasks.

The same Lua script, keys, channels and decisions as the async participant
(:mod:`conpool._budget_redis`: :class:`~conpool._budget_redis.Membership`
holds what both do the same way; :mod:`conpool._budget_core` the rules).
Only the waiting and the background work are this module's:

* a dial's thread waits for its turn among the key's dials (first come,
  first served) and then for a share, on one condition variable: woken by a
  ``free`` message, a local close, a nudge from the pool (a connection came
  back for the dial) or a turn passing on, and polling every
  ``poll_every`` as the fallback;
* one daemon thread renews the leases every ``lease_ttl / 3`` and flushes
  releases (each a :data:`~conpool._budget_redis.CLOSE_GRACE` after its
  close); one more listens on pub/sub.  Both stop when the pool closes, or
  when it is garbage-collected unclosed.

Locks: the participant's own (``mutex``) guards its book and is held only
for book-keeping, never while Redis is asked nor while the pool is called
(the pool's lock is taken first when both are: the pool calls
:meth:`SyncParticipant.release` and :meth:`SyncParticipant.idle_now` under
its own); ``call_lock`` serialises the Redis calls, so that each carries the
count current when it is sent.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._budget_core import KeyBook, Lease
from ._budget_redis import (
    REDIS_ERRORS,
    SYNC_SCRIPT,
    Membership,
    RedisFailure,
    budget_key,
    listen_blocking,
    logger,
    sync_clients,
)
from ._endpoint import Endpoint

__all__ = ["SyncParticipant"]

_monotonic = time.monotonic


class SyncParticipant(Membership):
    """One :class:`~conpool.SyncPool`'s membership in the fleet (see
    :class:`~conpool._budget_redis.Membership` for the parameters).  Its
    threads start with :meth:`start`; :meth:`close` flushes and stops them."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.client, self.subscriber = sync_clients(self.url, self.timeout)
        self.script = self.client.register_script(SYNC_SCRIPT)
        self.mutex = lock = threading.RLock()
        self.cond = threading.Condition(lock)
        self.call_lock = threading.Lock()
        # Per key: the dials asking for a lease, in the order they came
        # (only the first asks Redis), and a count bumped when a share of
        # the key may be free.
        self.lines: dict[str, deque[object]] = {}
        self.frees: dict[str, int] = {}
        self.flush_needed = threading.Event()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    # -- the two call points ---------------------------------------------------------

    def acquire(
        self,
        endpoint: Endpoint,
        max_wait: float | None,
        give_up: Callable[[], bool] | None = None,
        on_wait: Callable[[], None] | None = None,
        timeout_name: str | None = None,
    ) -> Lease:
        """A lease for one connection to ``endpoint``, blocking while the
        fleet is at its limit; the parameters are those of the async
        participant's :meth:`~conpool._budget_redis.Participant.acquire`.

        :raises PoolTimeout: no lease within ``max_wait`` seconds.
        :raises ConnectError: Redis is unavailable and the policy is fail-closed.
        :raises GaveUp: ``give_up()`` said so.
        """
        key = budget_key(endpoint)
        start = _monotonic()
        deadline = math.inf if max_wait is None else start + max_wait
        ticket = object()
        with self.mutex:
            kb = self.book.book(key)
            if endpoint not in kb.endpoints:
                kb.endpoints.append(endpoint)
            kb.waiting += 1
            line = self.lines.get(key)
            if line is None:
                line = self.lines[key] = deque()
            line.append(ticket)
            queued = line[0] is not ticket
        # What a wait needs to end itself: the deadline, and what a timeout
        # names.
        wait = (deadline, endpoint, start, timeout_name)
        try:
            if queued:
                self._queued(endpoint)
                if on_wait is not None:
                    on_wait()
                self._block(lambda: line[0] is ticket, give_up, math.inf, wait)
            waited = False
            while True:
                if not self.book.should_try(_monotonic()):
                    with self.mutex:
                        return self._unavailable(kb, endpoint)
                with self.mutex:
                    seen = self.frees.get(key, 0)
                try:
                    lease = self._sync(kb, acquire=True)
                except RedisFailure:
                    with self.mutex:
                        return self._unavailable(kb, endpoint)
                if lease is not None:
                    self._granted(endpoint, start, waited, queued)
                    return lease
                if not waited:
                    waited = True
                    with self.mutex:
                        self._must_wait(endpoint)
                    if on_wait is not None and not queued:
                        on_wait()
                # Until a share frees, the poll interval passes, or the pool
                # has a connection for the dial (give_up).
                poll_end = _monotonic() + self.poll_every
                self._block(self._freed_since(key, seen), give_up, poll_end, wait)
        finally:
            with self.mutex:
                line.remove(ticket)
                if not line and self.lines.get(key) is line:
                    del self.lines[key]
                kb.waiting -= 1
                dirty = kb.dirty
                self.cond.notify_all()  # the next dial's turn
            if dirty:
                self._flush_soon()

    def _block(
        self,
        done: Callable[[], bool],
        give_up: Callable[[], bool] | None,
        until: float,
        wait: tuple[float, Endpoint, float, str | None],
    ) -> None:
        """Wait on the condition until ``done()`` or time ``until``;
        raises :class:`~conpool._budget_core.GaveUp` when ``give_up()`` says
        so, PoolTimeout at the acquire's deadline."""
        deadline, endpoint, start, timeout_name = wait
        with self.cond:
            while not done():
                if give_up is not None and give_up():
                    raise self._gave_up(endpoint, start)
                now = _monotonic()
                if now >= deadline:
                    key = budget_key(endpoint)
                    raise self._timed_out(key, endpoint, start, deadline - start, timeout_name)
                if now >= until:
                    return
                self.cond.wait(min(until, deadline, now + self.poll_every) - now)

    def _freed_since(self, key: str, seen: int) -> Callable[[], bool]:
        """Whether a share of ``key`` may have freed since the count ``seen``."""
        return lambda: self.frees.get(key, 0) != seen

    def idle_now(self, endpoint: object) -> None:
        """The pool served one of the dials waiting for budget (called
        under the pool's lock): every waiting dial asks its ``give_up()``."""
        with self.cond:
            self.cond.notify_all()

    def release(self, lease: Lease) -> None:
        with self.mutex:
            super().release(lease)

    # -- talking to Redis ------------------------------------------------------------

    def _sync(self, kb: KeyBook, *, acquire: bool) -> Lease | None:
        """One script call about ``kb``: an acquire, or telling Redis our truth."""
        with self.call_lock:
            with self.mutex:
                keys, args, mine = self._call_args(kb, acquire)
            try:
                reply = self.script(keys=keys, args=args)
                with self.mutex:
                    lease, snap, lost = self._answered(kb, reply, mine, acquire)
            except REDIS_ERRORS as exc:
                with self.mutex:
                    self.book.unsure(kb)
                    self._failed(exc)
                raise RedisFailure from exc
            except BaseException:
                with self.mutex:
                    self.book.unsure(kb)
                raise
        self._after_reply(kb, snap, lost)
        return lease

    def _wake_key(self, key: str) -> None:
        # (Under the mutex: from a close's return or a message.)
        self.frees[key] = self.frees.get(key, 0) + 1
        self.cond.notify_all()

    def _forget_key(self, key: str) -> None:
        self.frees.pop(key, None)

    def _flush_soon(self) -> None:
        self.flush_needed.set()

    def flush(self, *, now: bool = False) -> None:
        """Free the leases of connections closed a grace ago (all of them
        with ``now``) and tell Redis the truth of every key it may have wrong."""
        with self.mutex:
            self._return_closed(math.inf if now else _monotonic())
            keys = self.book.to_flush()
        if not self.book.should_try(_monotonic()):
            return  # the renewals try again when the outage may be over
        for kb in keys:
            try:
                self._sync(kb, acquire=False)
            except RedisFailure:
                return
        with self.mutex:
            self._forget_unused()

    def _renew(self) -> None:
        with self.mutex:
            keys = self.book.to_renew()
        for kb in keys:
            try:
                self._sync(kb, acquire=False)
            except RedisFailure:
                break
            if kb.held:
                with self.mutex:
                    self.book.counters.renewed += 1
        with self.mutex:
            self._forget_unused()

    # -- the threads -----------------------------------------------------------------

    def start(self) -> None:
        """Start renewing, flushing and listening; returns once subscribed
        to the fleet's messages (or after twice ``timeout``: the polling
        fallback covers a Redis that does not answer)."""
        subscribed = threading.Event()
        for target, name, args in (
            (self._background, "conpool budget", ()),
            (self._listener, "conpool budget listener", (subscribed.set,)),
        ):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)
        subscribed.wait(2 * self.timeout)

    def stop(self) -> None:
        """Ask the threads to end (the background thread then closes the
        clients); safe from a finalizer, never blocks."""
        self.stopping.set()
        self.flush_needed.set()

    def close(self) -> None:
        """Tell Redis of the connections closed (at once), stop the threads
        and wait for them (each ends within its next look-up)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush(now=True)
        finally:
            self.stop()
            for thread in self.threads:
                if thread is not threading.current_thread():
                    thread.join(2 * self.timeout + 1.0)

    def _background(self) -> None:
        renew_at = _monotonic() + self.renew_every
        try:
            while not self.stopping.is_set():
                with self.mutex:
                    first_close = self.closing[0][0] if self.closing else math.inf
                wake_at = min(renew_at, first_close)
                self.flush_needed.wait(max(0.0, wake_at - _monotonic()))
                self.flush_needed.clear()
                if self.stopping.is_set():
                    break
                try:
                    self.flush()
                    if _monotonic() >= renew_at:
                        self._renew()
                        pause = self.renew_every if self.book.available else self.retry_after
                        renew_at = _monotonic() + pause
                except Exception:
                    # A bug here must not stop the renewals for good.
                    logger.exception("conpool: the connection budget's background work failed")
                    self.stopping.wait(self.retry_after)
        finally:
            self.client.close()

    def _listener(self, ready: Callable[[], None]) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    listen_blocking(
                        self.subscriber,
                        self.pattern,
                        self.timeout,
                        self._deliver,
                        ready,
                        self.stopping,
                    )
                except REDIS_ERRORS:
                    pass  # the waiters poll meanwhile
                self.stopping.wait(self.retry_after)
        finally:
            self.subscriber.close()

    def _deliver(self, channel: str, data: str) -> None:
        with self.mutex:
            self.deliver(channel, data)
