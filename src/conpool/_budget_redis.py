"""The fleet budget's Redis side: one Lua script, two clients, the tasks.

Imported only when a pool with a :class:`~conpool.RedisBudget` starts, so
``import conpool`` does not need redis-py.

The data, per budget key (an endpoint's ``host:port``) under the namespace:

* ``NS:budget:{KEY}:held``, a hash: participant id -> leases it holds;
* ``NS:budget:{KEY}:exp``, a sorted set: participant id scored by the
  expiry of its leases (milliseconds of Redis' own clock);
* ``NS:budget:{KEY}:wait``, a sorted set: participants waiting for a lease,
  scored by the expiry of that registration;
* ``NS:budget:{KEY}:events``, the pub/sub channel: ``want ID`` when a
  participant starts waiting (holders above their share then check whether to
  give back), ``free ID`` when a lease freed while someone waits.

Why a Lua script rather than MULTI/EXEC: an acquire must read every
participant's count, prune the expired ones and decide, then write, as one
step.  MULTI cannot branch on what it read, so it would need WATCH and retries
under contention, several round trips each; a script runs atomically on the
server in one (``EVALSHA``).  Why one lease entry per participant rather
than a sorted set of one entry per connection: renewal then costs one script
call per key and participant, however many connections it holds, and a
participant's expired entry takes all its leases with it at once.  The script
reads Redis' ``TIME``, so participants' clocks need not agree.

Every call *sets* the caller's count to its own truth (see
:mod:`conpool._budget_core`), so calls lost to a timeout, a cancellation or
an outage are corrected by the next one.  Calls are serialised per
participant (one lock, one command connection): each carries the count as
it is when the call is sent, never an older one overtaking a newer one.

Clients.  On asyncio and uvloop, redis-py's asyncio client.  redis-py's
asyncio client does not run on trio, so there its synchronous client runs in
worker threads (:func:`anyio.to_thread.run_sync`), one call at a time, and
pub/sub in a thread of its own that hands messages back to trio.  A call in a
worker thread cannot be interrupted: cancelling a task waiting for budget on
trio takes effect when the call ends (within the budget's ``timeout``).

The budget's Redis connections (one for commands, one for pub/sub per
participant) are redis-py's own, not conpool's: redis-py's asyncio
connection reads through :class:`asyncio.StreamReader`, which a conpool
stream is not (an adapter would re-implement the stream reader's buffering
under redis-py's parser), its sync client needs a blocking socket, and a
pool whose budget connections went through a budgeted pool would be circular.
Two long-lived connections per participant need no pooling.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

import anyio
import anyio.to_thread
import redis
import redis.asyncio
from anyio.abc import TaskStatus
from redis.backoff import NoBackoff

from ._budget_core import (
    FAIL_OPEN,
    BudgetBook,
    GaveUp,
    KeyBook,
    Lease,
    Snapshot,
    parse_reply,
)
from ._endpoint import Endpoint
from ._errors import ConnectError, PoolTimeout, describe

__all__ = [
    "REDIS_ERRORS",
    "SYNC_SCRIPT",
    "Membership",
    "Participant",
    "RedisFailure",
    "budget_key",
    "channel_key",
    "listen_blocking",
    "redis_keys",
    "sync_clients",
]

logger = logging.getLogger("conpool")

_monotonic = time.monotonic

#: Seconds between a connection's close and its lease's return to the fleet:
#: enough for the server to see the close (a FIN crosses loopback in
#: microseconds, but the server's thread or process must run to notice).
CLOSE_GRACE = 0.05

#: KEYS: held, exp, wait.  ARGV: participant id, "acquire" or "set", our count,
#: "1" if we (still) wait, lease ttl in ms, limit, channel.
#: Returns ``[granted, before, n, p1, c1, ..., pn, cn, waiter1, ...]``.
SYNC_SCRIPT = """
local held_key, exp_key, wait_key = KEYS[1], KEYS[2], KEYS[3]
local me = ARGV[1]
local acquire = ARGV[2] == 'acquire'
local mine = tonumber(ARGV[3])
local waiting = ARGV[4] == '1'
local ttl = tonumber(ARGV[5])
local limit = tonumber(ARGV[6])
local channel = ARGV[7]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Participants whose leases expired (killed, or stalled past the ttl).
local dead = redis.call('ZRANGEBYSCORE', exp_key, '-inf', now)
for _, p in ipairs(dead) do redis.call('HDEL', held_key, p) end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', exp_key, '-inf', now) end
redis.call('ZREMRANGEBYSCORE', wait_key, '-inf', now)

local before = tonumber(redis.call('HGET', held_key, me) or '0')
local counts = {}
local total = 0
local flat = redis.call('HGETALL', held_key)
for i = 1, #flat, 2 do
  local c = tonumber(flat[i + 1])
  counts[flat[i]] = c
  total = total + c
end
-- Our count is what we say it is, whatever Redis remembered.
total = total - before + mine
local waiters = redis.call('ZRANGE', wait_key, 0, -1)

local granted = 0
if acquire then
  -- conpool._budget_core.may_grant, the same rule.
  local members, n = {}, 0
  for p, c in pairs(counts) do if c > 0 then members[p] = true end end
  for _, w in ipairs(waiters) do members[w] = true end
  members[me] = true
  for _ in pairs(members) do n = n + 1 end
  local floor = math.max(1, math.floor(limit / n))
  if total + 1 <= limit then
    local starved = false
    if mine >= floor then
      for _, w in ipairs(waiters) do
        if w ~= me and (counts[w] or 0) < floor then starved = true break end
      end
    end
    if not starved then
      granted = 1
      mine = mine + 1
      total = total + 1
    end
  end
  if granted == 0 then waiting = true end
end

if mine > 0 then
  redis.call('HSET', held_key, me, mine)
  redis.call('ZADD', exp_key, now + ttl, me)
else
  redis.call('HDEL', held_key, me)
  redis.call('ZREM', exp_key, me)
end
counts[me] = mine
local was_waiting = redis.call('ZSCORE', wait_key, me)
if waiting then
  redis.call('ZADD', wait_key, now + ttl, me)
  if not was_waiting then redis.call('PUBLISH', channel, 'want ' .. me) end
elseif was_waiting then
  redis.call('ZREM', wait_key, me)
end
if (mine < before or #dead > 0) and total < limit then
  for _, w in ipairs(waiters) do
    if w ~= me then redis.call('PUBLISH', channel, 'free ' .. me) break end
  end
end
-- Keys of endpoints nobody uses any more fade away.
for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, 3 * ttl) end

local out = {granted, before, 0}
local n = 0
for p, c in pairs(counts) do
  if c > 0 then
    out[#out + 1] = p
    out[#out + 1] = c
    n = n + 1
  end
end
out[3] = n
for _, w in ipairs(redis.call('ZRANGE', wait_key, 0, -1)) do out[#out + 1] = w end
return out
"""

#: What a Redis call can fail with (redis-py wraps socket errors; OSError and
#: TimeoutError for what reaches us unwrapped).
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)


def budget_key(endpoint: Endpoint) -> str:
    """An endpoint's budget key: ``host:port`` (its ``str``), shared by its
    plain and TLS variants, since the server's limit is per server."""
    return str(endpoint)


def redis_keys(namespace: str, key: str) -> list[str]:
    # The braces are a Redis Cluster hash tag: a key's three entries share a slot.
    base = f"{namespace}:budget:{{{key}}}"
    return [f"{base}:held", f"{base}:exp", f"{base}:wait"]


def channel_name(namespace: str, key: str) -> str:
    return f"{namespace}:budget:{{{key}}}:events"


def channel_pattern(namespace: str) -> str:
    escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in namespace)
    return f"{escaped}:budget:{{*}}:events"


def channel_key(namespace: str, channel: str) -> str | None:
    """The budget key a channel of the namespace is about, or None."""
    prefix = f"{namespace}:budget:{{"
    suffix = "}:events"
    if channel.startswith(prefix) and channel.endswith(suffix):
        return channel[len(prefix) : -len(suffix)]
    return None


class _IO(Protocol):
    async def call(self, keys: Sequence[str], args: Sequence[str | int]) -> object: ...

    async def listen(
        self, pattern: str, deliver: Callable[[str, str], None], ready: Callable[[], None]
    ) -> None: ...

    async def aclose(self) -> None: ...


def _client_options(
    timeout: float, retry: Callable[[NoBackoff, int], object], *, commands: bool
) -> dict[str, Any]:
    """redis-py's options for the command client (``commands``) or the
    pub/sub one, on either of its clients (``retry``: that client's ``Retry``).

    No retries inside redis-py: the budget's own policy (fail open or closed,
    try again later) decides, and a retry would multiply the time a dial
    waits on an unreachable Redis.  The pub/sub connection has no read
    timeout: it waits for messages as long as none come.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "retry": retry(NoBackoff(), 0),
        "decode_responses": True,
    }
    if commands:
        options.update(single_connection_client=True, socket_timeout=timeout)
    return options


class AsyncioIO:
    """redis-py's asyncio client: one command connection, one for pub/sub."""

    def __init__(self, url: str, timeout: float) -> None:
        from redis.asyncio.retry import Retry

        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, **_client_options(timeout, Retry, commands=True)
        )
        self.subscriber: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, **_client_options(timeout, Retry, commands=False)
        )
        self.script = self.client.register_script(SYNC_SCRIPT)
        self.timeout = timeout

    async def call(self, keys: Sequence[str], args: Sequence[str | int]) -> object:
        return await self.script(keys=keys, args=args)

    async def listen(
        self, pattern: str, deliver: Callable[[str, str], None], ready: Callable[[], None]
    ) -> None:
        pubsub = self.subscriber.pubsub(ignore_subscribe_messages=True)
        # (redis-py leaves this PubSub.aclose unannotated; this is its type.)
        close_pubsub: Callable[[], Awaitable[None]] = pubsub.aclose
        try:
            await pubsub.psubscribe(pattern)
            # (The subscription is confirmed once a read returns its reply.)
            await pubsub.get_message(timeout=self.timeout)
            ready()
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None and msg.get("type") == "pmessage":
                    deliver(str(msg["channel"]), str(msg["data"]))
        finally:
            with anyio.CancelScope(shield=True):
                await close_pubsub()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.client.aclose()
            await self.subscriber.aclose()


def sync_clients(url: str, timeout: float) -> tuple[redis.Redis, redis.Redis]:
    """redis-py's sync clients: one for commands, one for pub/sub."""
    from redis.retry import Retry

    client = redis.Redis.from_url(url, **_client_options(timeout, Retry, commands=True))
    subscriber = redis.Redis.from_url(url, **_client_options(timeout, Retry, commands=False))
    return client, subscriber


def listen_blocking(
    subscriber: redis.Redis,
    pattern: str,
    timeout: float,
    deliver: Callable[[str, str], None],
    ready: Callable[[], None],
    stop: threading.Event,
) -> None:
    """Subscribe with redis-py's sync client and hand every message of the
    budget's channels to ``deliver`` until ``stop`` is set (looking up every
    0.2 s for it); ``ready`` once subscribed.  A Redis error ends it."""
    # (redis-py leaves the sync Redis.pubsub unannotated; this is its type.)
    new_pubsub: Callable[..., redis.client.PubSub] = subscriber.pubsub
    pubsub = new_pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.psubscribe(pattern)
        pubsub.get_message(timeout=timeout)  # the confirmation
        ready()
        while not stop.is_set():
            msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is not None and msg.get("type") == "pmessage":
                deliver(str(msg["channel"]), str(msg["data"]))
    finally:
        pubsub.close()


class _Abandoned(Exception):
    """The trio run a pub/sub thread reports to is over."""


class ThreadIO:
    """redis-py's sync client in worker threads, for trio (where its asyncio
    client does not run)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.client, self.subscriber = sync_clients(url, timeout)
        self.script = self.client.register_script(SYNC_SCRIPT)
        self.timeout = timeout
        # One call at a time: the participant's lock already serialises
        # them; this keeps a thread per call from queueing behind others'.
        self.limiter = anyio.CapacityLimiter(1)
        self.listen_limiter = anyio.CapacityLimiter(1)

    async def call(self, keys: Sequence[str], args: Sequence[str | int]) -> object:
        script = self.script
        return await anyio.to_thread.run_sync(
            lambda: script(keys=keys, args=args),
            limiter=self.limiter,
        )

    async def listen(
        self, pattern: str, deliver: Callable[[str, str], None], ready: Callable[[], None]
    ) -> None:
        stop = threading.Event()
        from anyio import from_thread

        def to_trio(channel: str, data: str) -> None:
            try:
                from_thread.run_sync(deliver, channel, data)
            except RuntimeError:
                raise _Abandoned from None  # trio's run is over (or the task abandoned us)

        def run() -> None:
            try:
                listen_blocking(
                    self.subscriber,
                    pattern,
                    self.timeout,
                    to_trio,
                    lambda: from_thread.run_sync(ready),
                    stop,
                )
            except _Abandoned:
                return

        try:
            await anyio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self.listen_limiter)
        finally:
            stop.set()  # an abandoned thread ends within its 0.2 s poll

    async def aclose(self) -> None:
        client, subscriber = self.client, self.subscriber

        def close() -> None:
            client.close()
            subscriber.close()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)


GiveBack = Callable[[Endpoint, int], int]
Emit = Callable[..., None]


class Membership(abc.ABC):
    """What both kinds of participant do the same way: the async
    :class:`Participant` (for :class:`~conpool.Pool`) and the threaded
    :class:`conpool._budget_sync.SyncParticipant` (for
    :class:`~conpool.SyncPool`).

    No waiting and no I/O here: the arguments of a script call, what its
    reply or its failure means (counted, logged, traced), the policy when
    Redis is unavailable, the give-back, pub/sub messages, the leases of
    closed connections.  A subclass provides how a key's waiters are woken
    (:meth:`_wake_key`) and how the flush is asked for (:meth:`_flush_soon`).

    :param give_back: ``give_back(endpoint, n) -> int``: the pool closes up
        to ``n`` connections of ``endpoint`` for the fleet (idle ones now, in
        use ones when released) and says how many it will.
    :param emit: the pool's trace point, ``emit(kind, endpoint, detail=...)``.
    """

    def __init__(
        self,
        *,
        url: str,
        label: str,
        namespace: str,
        limit: int,
        lease_ttl: float,
        timeout: float,
        policy: str,
        give_back: GiveBack,
        emit: Emit,
    ) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.url = url
        self.label = label
        self.namespace = namespace
        self.limit = limit
        self.ttl_ms = round(lease_ttl * 1000)
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        #: Seconds between renewals: a third of the ttl, so two may fail in a
        #: row before the leases expire.
        self.renew_every = lease_ttl / 3
        #: Seconds a waiting acquire waits for a pub/sub message before asking
        #: again (the polling fallback).
        self.poll_every = min(lease_ttl / 4, 0.5)
        self.retry_after = min(self.renew_every, 1.0)
        self.book = BudgetBook(self.id, limit, policy, self.retry_after)
        self.give_back_cb = give_back
        self.emit = emit
        self.pattern = channel_pattern(namespace)
        # Leases of connections that closed, returned after CLOSE_GRACE.
        self.closing: list[tuple[float, Lease]] = []
        self.closed = False
        #: What guards the book where threads share it (the threaded
        #: participant's lock; nothing on an event loop).
        self.mutex: AbstractContextManager[object] = nullcontext()

    @abc.abstractmethod
    def _wake_key(self, key: str) -> None:
        """A share of ``key`` may be free: wake its waiting dials."""

    @abc.abstractmethod
    def _flush_soon(self) -> None:
        """Closed leases wait to be returned: have them flushed soon."""

    def _forget_key(self, key: str) -> None:  # noqa: B027 (a hook; most keep no state)
        """``key`` is forgotten: drop the subclass's own state of it."""

    # -- a dial's story, traced and counted ----------------------------------------

    def _granted(self, endpoint: Endpoint, start: float, waited: bool, queued: bool) -> None:
        if waited or queued:
            self.emit(
                "budget.granted",
                endpoint,
                duration_ns=int((_monotonic() - start) * 1e9),
                detail="after waiting" if waited else "after queueing",
            )
        elif self.emit_granted:
            self.emit("budget.granted", endpoint)

    def _queued(self, endpoint: Endpoint) -> None:
        self.emit("budget.queued", endpoint, detail="behind another dial of its server")

    def _must_wait(self, endpoint: Endpoint) -> None:
        """The fleet is at its limit: the dial's first wait."""
        self.book.counters.waited += 1
        self.emit("budget.waited", endpoint, detail=f"fleet at its limit of {self.limit}")

    def _gave_up(self, endpoint: object, start: float) -> GaveUp:
        self.emit(
            "budget.gave_up",
            endpoint,
            duration_ns=max(1, int((_monotonic() - start) * 1e9)),
            detail="one of the pool's own connections came back for it",
        )
        return GaveUp()

    def _timed_out(
        self, key: str, endpoint: Endpoint, start: float, max_wait: float, name: str | None
    ) -> PoolTimeout:
        self.book.counters.timeouts += 1
        waited = _monotonic() - start
        self.emit("budget.timeout", endpoint, duration_ns=int(waited * 1e9))
        within = name or f"acquire_timeout={max_wait:g} s"
        return PoolTimeout(
            f"no connection budget for {key} within {within}: the "
            f"fleet holds its limit of {self.limit} ({self.label})"
        )

    #: Trace every grant (off: a grant is already a connect.* event's neighbour).
    emit_granted = True

    def _unavailable(self, kb: KeyBook, endpoint: Endpoint) -> Lease:
        book = self.book
        if book.policy == FAIL_OPEN:
            lease = book.grant_unaccounted(kb)
            detail = f"Redis unavailable: {book.last_error}"
            self.emit("budget.unaccounted", endpoint, detail=detail)
            self._flush_soon()
            return lease
        book.refuse()
        self.emit("budget.denied", endpoint, detail=f"Redis unavailable: {book.last_error}")
        raise ConnectError(
            f"the connection budget {self.label} is unavailable (on_unavailable="
            f"'fail-closed'): {book.last_error}",
            endpoint=endpoint,
            context=[f"asking the budget for a lease of {kb.key}", f"connecting to {endpoint}"],
        )

    # -- releasing -------------------------------------------------------------------

    def release(self, lease: Lease) -> None:
        """A connection with ``lease`` closed (or its dial failed): tell the
        fleet soon, without waiting for Redis.

        The lease returns :data:`CLOSE_GRACE` seconds later, together with
        those of the connections that closed meanwhile (one call per key for
        all of them): the server must see the close before someone else's
        dial arrives, or it counts one connection too many for a moment.
        """
        if not lease.released:
            self.closing.append((_monotonic() + CLOSE_GRACE, lease))
            self._flush_soon()

    def _return_closed(self, until: float) -> None:
        """Free the leases of connections closed before ``until`` - grace."""
        closing = self.closing
        n = 0
        while n < len(closing) and closing[n][0] <= until:
            n += 1
        returned, self.closing = closing[:n], closing[n:]
        for _, lease in returned:
            kb = self.book.release(lease)
            if kb is not None and kb.waiting:
                # A local task waits for this key: our own close makes room.
                self._wake_key(kb.key)

    # -- one script call: its arguments, its reply, its failure ------------------------

    def _call_args(self, kb: KeyBook, acquire: bool) -> tuple[list[str], list[str | int], int]:
        """The script's keys and arguments for a call about ``kb`` sent now,
        and the count it carries (read when it is sent: see the module
        docstring)."""
        if acquire:
            mine, still = self.book.acquire_args(kb)
        else:
            mine, still = kb.held, kb.waiting > 0
        args: list[str | int] = [self.id, "acquire" if acquire else "set", mine, int(still)]
        args += [self.ttl_ms, self.limit, channel_name(self.namespace, kb.key)]
        return redis_keys(self.namespace, kb.key), args, mine

    def _answered(
        self, kb: KeyBook, reply: object, mine: int, acquire: bool
    ) -> tuple[Lease | None, Snapshot, bool]:
        """Record a reply: the lease (for a granted acquire), what Redis
        holds, and whether Redis had lost our leases."""
        snap = parse_reply(reply)
        lost = self.book.counters.lost
        lease = self.book.answered(kb, snap, mine, acquire)
        return lease, snap, self.book.counters.lost != lost

    def _after_reply(self, kb: KeyBook, snap: Snapshot, lost: bool) -> None:
        """What follows a reply, outside the call's lock: an outage's end,
        lost leases, the give-back."""
        if self.book.succeeded():
            logger.warning("conpool: the connection budget %s is available again", self.label)
            self.emit("budget.available", detail=self.label)
            self._flush_soon()  # every key: the truth, at once
        if lost:
            logger.warning(
                "conpool: the connection budget %s had lost this pool's leases of %s "
                "(expired or Redis restarted); registered them again",
                self.label,
                kb.key,
            )
            self.emit("budget.lease_lost", kb.key, detail=f"held {kb.held}")
        self._fairness(kb, snap)

    def _failed(self, exc: BaseException) -> None:
        error = describe(exc)
        self.emit("budget.redis_error", detail=error)
        if self.book.failed(_monotonic(), error):
            if self.book.policy == FAIL_OPEN:
                logger.warning(
                    "conpool: the connection budget %s is unavailable (%s): dialling within "
                    "the pool's own limits only until it is back",
                    self.label,
                    error,
                )
            else:
                logger.warning(
                    "conpool: the connection budget %s is unavailable (%s): dials fail "
                    "until it is back",
                    self.label,
                    error,
                )
            self.emit("budget.unavailable", detail=error)

    def _fairness(self, kb: KeyBook, snap: Snapshot) -> None:
        # (The pool's give-back takes the threaded pool's lock: never
        # called holding the participant's own.)
        with self.mutex:
            n = self.book.give_back(kb, snap)
            if n <= 0:
                return
            kb.retiring += n
            endpoints = list(kb.endpoints)
        done = 0
        for endpoint in endpoints:
            if done >= n:
                break
            done += self.give_back_cb(endpoint, n - done)
        with self.mutex:
            self.book.giving_back(kb, n, done)
        if done:
            self.emit(
                "budget.give_back",
                kb.key,
                detail=f"{done} connection(s) for participants below their fair share",
            )

    # -- the fleet's messages, and forgetting ------------------------------------------

    def deliver(self, channel: str, data: str) -> None:
        """A pub/sub message (on the event loop's thread, or under the
        threaded participant's lock)."""
        key = channel_key(self.namespace, channel)
        if key is None:
            return
        kb = self.book.keys.get(key)
        if kb is None:
            return
        kind, _, sender = data.partition(" ")
        if sender == self.id:
            return
        if kind == "free" and kb.waiting:
            self._wake_key(key)
        elif kind == "want" and kb.held:
            # Someone waits: a sync fetches the key's counts, and the
            # fairness check that follows gives back what is due.
            kb.stale = True
            self._flush_soon()

    def _forget_unused(self) -> None:
        for key, kb in list(self.book.keys.items()):
            if not (kb.held or kb.waiting or kb.dirty or kb.reported):
                del self.book.keys[key]
                self._forget_key(key)


class Participant(Membership):
    """One :class:`~conpool.Pool`'s membership in the fleet: what the pool
    calls at a dial (:meth:`acquire`) and a close (:meth:`release`), and the
    background tasks that renew leases, flush releases and listen for the
    fleet (see :class:`Membership` for the parameters; ``library``: the
    pool's event loop, which picks the Redis client)."""

    def __init__(self, *, library: str, **settings: Any) -> None:
        super().__init__(**settings)
        self.io: _IO = (ThreadIO if library == "trio" else AsyncioIO)(self.url, self.timeout)
        self.lock = anyio.Lock()
        self.key_locks: dict[str, anyio.Lock] = {}
        self.wakes: dict[str, anyio.Event] = {}
        #: Per endpoint, the waits of dials that can give up (see
        #: :meth:`idle_now`); an endpoint is here only while one waits.
        self.nudges: dict[object, set[anyio.CancelScope]] = {}
        self.flush_needed = anyio.Event()

    # -- the two call points ------------------------------------------------

    async def acquire(
        self,
        endpoint: Endpoint,
        max_wait: float | None,
        give_up: Callable[[], bool] | None = None,
        on_wait: Callable[[], None] | None = None,
        timeout_name: str | None = None,
    ) -> Lease:
        """A lease for one connection to ``endpoint``, waiting while the fleet
        is at its limit.

        :param give_up: asked before every wait and whenever it wakes up (a
            freed share, a nudge from :meth:`idle_now`, or every poll
            interval): True ends the wait with :class:`GaveUp` (the pool has
            a connection for the caller by now).
        :param on_wait: called once, when the lease cannot be had at once
            (another dial of the key asks first, or the fleet is at its
            limit): the pool then stops holding a slot for the dial and puts
            it in its line of waiters.
        :param timeout_name: how the timeout names ``max_wait`` (the
            acquire's timeout: ``"acquire_timeout=2 s"``).
        :raises PoolTimeout: no lease within ``max_wait`` seconds (what is
            left of the acquire's timeout; None waits as long as it takes).
        :raises ConnectError: Redis is unavailable and the policy is fail-closed.
        :raises GaveUp: ``give_up()`` said so.
        """
        key = budget_key(endpoint)
        kb = self.book.book(key)
        if endpoint not in kb.endpoints:
            kb.endpoints.append(endpoint)
        kb.waiting += 1
        start = _monotonic()
        try:
            with anyio.fail_after(max_wait):
                lock = self.key_locks.get(key)
                if lock is None:
                    lock = self.key_locks[key] = anyio.Lock()
                # One attempt at a time per key: a freed lease wakes the
                # first local waiter, not all of them at once.
                queued = lock.locked()
                if queued:
                    self._queued(endpoint)
                    if on_wait is not None:
                        on_wait()
                acquired = False
                while not acquired:
                    if give_up is not None and give_up():
                        raise self._gave_up(endpoint, start)
                    with self._nudgeable(endpoint, give_up, self.poll_every):
                        await lock.acquire()
                        acquired = True
                try:
                    return await self._acquire(
                        kb, endpoint, start, give_up, queued, None if queued else on_wait
                    )
                finally:
                    lock.release()
        except TimeoutError:
            # (Only fail_after raises it here: Redis timeouts are handled
            # inside, by the policy.)
            assert max_wait is not None
            raise self._timed_out(key, endpoint, start, max_wait, timeout_name) from None
        finally:
            kb.waiting -= 1
            if kb.dirty:
                self._flush_soon()

    async def _acquire(
        self,
        kb: KeyBook,
        endpoint: Endpoint,
        start: float,
        give_up: Callable[[], bool] | None,
        queued: bool,
        on_wait: Callable[[], None] | None,
    ) -> Lease:
        """The attempts of the dial holding the key's lock (``on_wait``:
        still to call when it must wait, or None)."""
        waited = False
        while True:
            if not self.book.should_try(_monotonic()):
                return self._unavailable(kb, endpoint)
            wake = self.wakes.get(kb.key)
            if wake is None or wake.is_set():
                wake = self.wakes[kb.key] = anyio.Event()
            try:
                lease = await self._sync(kb, acquire=True)
            except RedisFailure:
                return self._unavailable(kb, endpoint)
            if lease is not None:
                self._granted(endpoint, start, waited, queued)
                return lease
            if not waited:
                waited = True
                self._must_wait(endpoint)
                if on_wait is not None:
                    on_wait()
            # Until a share frees (the wake event) or the poll interval
            # passes; a nudge (one of the pool's own connections came back
            # idle) only asks give_up() again, without a Redis call.
            deadline = anyio.current_time() + self.poll_every
            while True:
                if give_up is not None and give_up():
                    raise self._gave_up(endpoint, start)
                left = deadline - anyio.current_time()
                if wake.is_set() or left <= 0:
                    break
                with self._nudgeable(endpoint, give_up, left):
                    await wake.wait()

    @contextmanager
    def _nudgeable(
        self, endpoint: object, give_up: Callable[[], bool] | None, seconds: float
    ) -> Iterator[None]:
        """A wait of at most ``seconds`` that :meth:`idle_now` cuts short for
        ``endpoint`` when the waiter can give up (has a ``give_up``)."""
        with anyio.move_on_after(seconds) as scope:
            if give_up is None:
                yield
                return
            scopes = self.nudges.get(endpoint)
            if scopes is None:
                scopes = self.nudges[endpoint] = set()
            scopes.add(scope)
            try:
                yield
            finally:
                scopes.discard(scope)
                if not scopes and self.nudges.get(endpoint) is scopes:
                    del self.nudges[endpoint]

    def idle_now(self, endpoint: object) -> None:
        """One of the pool's own connections to ``endpoint`` is idle: every
        dial of it waiting for budget (for the key's lock or for a share)
        asks its ``give_up()`` now rather than at its next poll.

        The pool calls it only while :attr:`nudges` is non-empty, so a pool
        whose dials do not wait pays a truth test per release, and a pool
        without a budget nothing.
        """
        scopes = self.nudges.get(endpoint)
        if scopes:
            for scope in list(scopes):
                scope.cancel()

    async def _sync(self, kb: KeyBook, *, acquire: bool) -> Lease | None:
        """One script call about ``kb``: an acquire, or telling Redis our truth."""
        async with self.lock:
            keys, args, mine = self._call_args(kb, acquire)
            try:
                reply = await self.io.call(keys, args)
                lease, snap, lost = self._answered(kb, reply, mine, acquire)
            except REDIS_ERRORS as exc:
                self.book.unsure(kb)
                self._failed(exc)
                raise RedisFailure from exc
            except BaseException:
                self.book.unsure(kb)
                raise
        self._after_reply(kb, snap, lost)
        return lease

    def _flush_soon(self) -> None:
        self.flush_needed.set()

    def _wake_key(self, key: str) -> None:
        wake = self.wakes.get(key)
        if wake is not None:
            wake.set()

    def _forget_key(self, key: str) -> None:
        self.key_locks.pop(key, None)
        self.wakes.pop(key, None)

    # -- background tasks --------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew, flush and listen until cancelled (in the pool's task group);
        :meth:`aclose` then closes the clients.

        Started once subscribed to the fleet's messages, so that a pool
        entered before another starts waiting hears it wait; or after
        ``timeout`` if Redis does not answer (the polling fallback covers it).
        """
        subscribed = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renewer, name="conpool budget renewer")
            tg.start_soon(self._flusher, name="conpool budget flusher")
            tg.start_soon(self._listener, subscribed.set, name="conpool budget listener")
            with anyio.move_on_after(2 * self.timeout):
                await subscribed.wait()
            task_status.started()

    async def aclose(self) -> None:
        """Close the Redis clients: after :meth:`run` ended and the pool's
        last :meth:`flush` (which, on a cancelled exit, races :meth:`run`'s
        cancellation: the clients stay open for it)."""
        await self.io.aclose()

    async def _flusher(self) -> None:
        while True:
            await self.flush_needed.wait()
            self.flush_needed = anyio.Event()
            while self.closing:
                await anyio.sleep(max(0.0, self.closing[0][0] - _monotonic()))
                await self.flush()
            await self.flush()

    async def flush(self, *, now: bool = False) -> None:
        """Free the leases of connections closed a grace ago (all of them
        with ``now``) and tell Redis the truth of every key it may have wrong."""
        self._return_closed(math.inf if now else _monotonic())
        if not self.book.should_try(_monotonic()):
            return  # the renewer tries again when the outage may be over
        for kb in self.book.to_flush():
            try:
                await self._sync(kb, acquire=False)
            except RedisFailure:
                return
        self._forget_unused()

    async def _renewer(self) -> None:
        book = self.book
        while True:
            await anyio.sleep(self.renew_every if book.available else self.retry_after)
            for kb in book.to_renew():
                try:
                    await self._sync(kb, acquire=False)
                except RedisFailure:
                    break
                if kb.held:
                    book.counters.renewed += 1
            self._forget_unused()

    async def _listener(self, ready: Callable[[], None]) -> None:
        while True:
            try:
                await self.io.listen(self.pattern, self.deliver, ready)
            except REDIS_ERRORS:
                pass  # the waiters poll meanwhile
            await anyio.sleep(self.retry_after)


class RedisFailure(Exception):
    """A Redis call failed (already counted and logged)."""
