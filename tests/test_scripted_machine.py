"""A hypothesis state machine over the real pool shell on the scripted
backend: random interleavings of acquires, releases (clean, broken or
closed), dials that fail or hang, cancelled waiters and dials, time passing,
peers hanging up, DNS answers changing, and the pool closing, with the
accounting checked after every step.

Each rule hands the driver task (which owns the pool) a command, then lets
the virtual loop run until nothing is ready (``settle``) or until some
virtual time has passed (``advance``), so every check sees the pool at rest:
per address, per endpoint and in total, pending + active + idle add up and
stay within the limits; every task the test started is exactly one of
holding a connection, dialling (a pending slot) or queued (a waiter), or it
has finished; no waiter is both served and queued; the network's open
connections are the pool's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import conpool
from scripted import Network, Outcome, ScriptedResolver, VirtualLoop, scripted_pool

V4A, V4B, V4C, V6A = "10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"
LITERAL = "10.0.0.9"
ADDRESSES = [V4A, V4B, V4C, V6A, LITERAL]
ENDPOINTS = [
    conpool.Endpoint("a.test", 80),
    conpool.Endpoint("a.test", 443),  # the same name: one answer for both
    conpool.Endpoint("b.test", 80),
    conpool.Endpoint(LITERAL, 80),
]
NAMES = ["a.test", "b.test"]

CONFIG = conpool.Config(
    max_connections_per_endpoint=2,
    max_connections=5,
    max_waiters=6,
    max_idle_time=3.0,
    max_connection_uses=4,
    connect_timeout=1.0,
    connect_retries=1,
    retry_backoff=0.05,
    retry_backoff_max=0.1,
    happy_eyeballs_delay=0.1,
    eject_after_failures=2,
    balance_seed=0,
)

Command = Callable[[], Awaitable[None]]


class Task:
    """One acquire the test started, and what became of it."""

    def __init__(self, ident: int, endpoint: conpool.Endpoint) -> None:
        self.id = ident
        self.endpoint = endpoint
        # (Made in the task itself: a cancel scope belongs to the loop.)
        self.scope: anyio.CancelScope | None = None
        self.conn: conpool.Connection | None = None
        #: "running", "holding", "released", "failed", "cancelled".
        self.status = "running"


class ScriptedPool(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualLoop()
        self.net = Network()
        self.resolver = ScriptedResolver(
            {"a.test": [V6A, V4A], "b.test": [V4B]}, ttl=2.0, delay=0.02
        )
        self.tasks: dict[int, Task] = {}
        self.commands: asyncio.Queue[Command | None] = asyncio.Queue()
        self.closed = False
        self.pool: conpool.Pool | None = None
        self.driver = self.loop.create_task(self._drive())
        self.loop.settle()
        assert self.pool is not None

    # -- the driver: owns the pool, runs commands ---------------------------------

    async def _drive(self) -> None:
        pool = self.pool = scripted_pool(self.net, CONFIG, resolver=self.resolver)
        async with pool, anyio.create_task_group() as tg:
            self.tg = tg
            while (command := await self.commands.get()) is not None:
                await command()
            tg.cancel_scope.cancel()

    def do(self, command: Command) -> None:
        self.commands.put_nowait(command)
        self.loop.settle()

    async def _acquirer(self, task: Task) -> None:
        assert self.pool is not None
        with anyio.CancelScope() as task.scope:
            try:
                task.conn = await self.pool.acquire(task.endpoint)
            except conpool.PoolError:
                task.status = "failed"
                return
            task.status = "holding"
        if task.status == "running":
            task.status = "cancelled"

    def running(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.status == "running"]

    def holding(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.status == "holding"]

    # -- rules ----------------------------------------------------------------------

    @precondition(lambda self: len(self.running()) < 8)
    @rule(endpoint=st.sampled_from(ENDPOINTS))
    def acquire(self, endpoint: conpool.Endpoint) -> None:
        task = Task(len(self.tasks), endpoint)
        self.tasks[task.id] = task

        async def start() -> None:
            self.tg.start_soon(self._acquirer, task)

        self.do(start)

    @precondition(lambda self: bool(self.holding()))
    @rule(data=st.data(), how=st.sampled_from(["clean", "broken", "closed"]))
    def release(self, data: st.DataObject, how: str) -> None:
        self.give_back(data.draw(st.sampled_from(self.holding())), how)

    def give_back(self, task: Task, how: str = "clean") -> None:
        conn = task.conn
        assert conn is not None and self.pool is not None
        pool = self.pool

        async def give_back() -> None:
            if how == "broken":
                conn._broken = True  # what an exception in the lease does
            elif how == "closed":
                await conn.aclose()
            await pool.release(conn)

        task.status = "released"
        task.conn = None
        self.do(give_back)

    @precondition(lambda self: bool(self.running()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel an acquire that is waiting or dialling."""
        task = data.draw(st.sampled_from(self.running()))

        async def cancel() -> None:
            assert task.scope is not None
            task.scope.cancel()

        self.do(cancel)

    @rule(
        ip=st.sampled_from(ADDRESSES),
        outcome=st.sampled_from(["accept", "refuse", "hang"]),
        after=st.sampled_from([0.0, 0.05, 0.5]),
    )
    def script_address(self, ip: str, outcome: Outcome, after: float) -> None:
        """What the next dials of an address do (fail, hang, or work)."""
        self.net.set(ip, outcome, after)

    @rule(seconds=st.sampled_from([0.01, 0.1, 0.3, 1.0, 4.0]))
    def advance(self, seconds: float) -> None:
        self.loop.advance(seconds)

    @precondition(lambda self: bool(self.net.open_wires()))
    @rule(data=st.data())
    def hang_up(self, data: st.DataObject) -> None:
        """A server closes one of its connections (idle or in use)."""
        wire = data.draw(st.sampled_from(self.net.open_wires()))
        wire.hang_up()
        self.loop.settle()

    @rule(
        name=st.sampled_from(NAMES),
        ips=st.lists(st.sampled_from([V4A, V4B, V4C, V6A]), min_size=1, max_size=3, unique=True),
    )
    def change_answer(self, name: str, ips: list[str]) -> None:
        self.resolver.table[name] = ips

    @precondition(lambda self: not self.closed)
    @rule()
    def close_pool(self) -> None:
        assert self.pool is not None
        pool = self.pool
        self.closed = True
        self.do(pool.aclose)

    # -- the accounting, after every step ----------------------------------------

    @invariant()
    def accounts_add_up(self) -> None:
        assert self.pool is not None
        state = self.pool._state
        total = 0
        for key, ep in state.endpoints.items():
            addrs = ep.addresses.values()
            assert ep.open == sum(a.open for a in addrs)
            assert ep.idle == sum(len(a.idle) for a in addrs)
            # Per address only once the dial picked its address, and a Happy
            # Eyeballs race has two attempts in flight for its one slot.
            assert sum(a.pending for a in addrs) <= 2 * ep.pending
            assert 0 <= ep.idle <= ep.open and ep.pending >= 0
            assert ep.total <= CONFIG.max_connections_per_endpoint
            for a in addrs:
                assert a.pending >= 0 and 0 <= len(a.idle) <= a.open
                for rec in a.idle:
                    assert rec.conn is not None and rec.ep is ep and rec.addr is a
            # Each task of this endpoint still in acquire is a waiter or a dial.
            running = [t for t in self.running() if t.endpoint == key]
            assert len(running) == len(ep.waiters) + ep.pending, (key, running, ep)
            holding = [t for t in self.holding() if t.endpoint == key]
            assert len(holding) == ep.active, (key, ep)
            for w in ep.waiters:
                assert w.grant is None  # queued means not served
                assert w.ep is ep
            total += ep.total
        assert state.total == total
        assert CONFIG.max_connections is not None and total <= CONFIG.max_connections
        assert state.n_waiters == sum(len(ep.waiters) for ep in state.endpoints.values())
        assert CONFIG.max_waiters is not None and state.n_waiters <= CONFIG.max_waiters
        assert not state.to_close and not state.to_wake  # the shell drained them

    @invariant()
    def the_network_agrees(self) -> None:
        assert self.pool is not None
        s = self.pool.stats()
        assert s.active + s.idle == len(self.net.open_wires())
        assert s.active == len(self.holding())
        # Every attempt in progress is one pending count on its address.
        connecting = [w for w in self.net.unclosed() if not w.connected]
        pending = sum(
            a.pending for ep in self.pool._state.endpoints.values() for a in ep.addresses.values()
        )
        assert len(connecting) == pending
        if self.closed:
            assert s.idle == 0 and s.waiting == 0

    def teardown(self) -> None:
        try:
            # (Giving one back may serve a waiter, which then holds one.)
            while held := self.holding():
                self.give_back(held[0])
            self.commands.put_nowait(None)
            self.loop.advance(5.0)
            assert self.driver.done()
            self.driver.result()
            # Nothing left open: every connection was released or closed, and
            # every attempt's socket closed with it.
            assert self.net.unclosed() == []
        finally:
            self.loop.close()


ScriptedPool.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestScriptedPool = ScriptedPool.TestCase


def test_the_machine_sees_a_full_pool() -> None:
    """(The rules reach the interesting states: a direct run that fills the
    limits, queues waiters and fails dials, checked by the same invariants.)"""
    machine = ScriptedPool()
    try:
        for endpoint in ENDPOINTS[:3] * 2 + ENDPOINTS[:2]:
            machine.acquire(endpoint)
            machine.accounts_add_up()
        assert machine.pool is not None
        assert machine.pool.stats().pending == 5  # resolving
        machine.advance(0.1)
        machine.accounts_add_up()
        s = machine.pool.stats()
        assert s.active == 5 and s.waiting == 3  # max_connections=5
        machine.net.set(V4B, "refuse")
        machine.change_answer("b.test", [V4B])
        machine.give_back(machine.holding()[0], "broken")
        machine.advance(1.0)
        machine.accounts_add_up()
        machine.the_network_agrees()
        machine.close_pool()
        machine.accounts_add_up()
        machine.the_network_agrees()
    finally:
        machine.teardown()
