"""Timing inside a client process: running a coroutine on each loop, and C
tasks that loop.

C worker tasks loop until ``meter.stop`` is set, adding one to ``meter.n``
per operation; the main task sleeps through the warmup, reads the count and
the clocks, sleeps through the measured phase, reads them again and stops
the workers.  Only the way tasks are spawned differs (asyncio.TaskGroup, an
anyio task group, a trio nursery), as each implementation's users spawn them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple, TypeVar

from bench.base import Metrics

T = TypeVar("T")


class Meter:
    """Shared by the workers of one phase: the count and the stop flag."""

    __slots__ = ("n", "stop")

    def __init__(self) -> None:
        self.n = 0
        self.stop = False


Worker = Callable[[Meter], Coroutine[Any, Any, None]]
Driver = Callable[[Worker, int, float, float], Awaitable["Sample"]]


class Sample(NamedTuple):
    """One measured phase: operations, wall seconds, the CPU seconds this
    process used meanwhile, and the operations of the whole run (warmup
    included).  CPU time is the noise-robust figure on a shared machine:
    another process on the core stretches the wall time, not the CPU time."""

    n: int
    wall: float
    cpu: float
    total: int

    def per_op_us(self) -> tuple[float, float]:
        """(wall, CPU) microseconds per operation."""
        if self.n == 0:
            raise RuntimeError(f"no operation completed in the {self.wall:.3f} s measured")
        return self.wall / self.n * 1e6, self.cpu / self.n * 1e6

    def throughput(self) -> Metrics:
        """Requests/s and client CPU per request of C tasks."""
        _, cpu_us = self.per_op_us()
        return {
            "rps": self.n / self.wall,
            "cpu_us": cpu_us,
            "cpu_share": self.cpu / self.wall,  # of the client's core
            "requests": float(self.n),
            "seconds": self.wall,
        }


# Called with True when a measured phase starts and False when it ends
# (bench.profiling counts instructions of the measured phases apart).
PHASE_HOOKS: list[Callable[[bool], None]] = []


def _phase(started: bool) -> None:
    for hook in PHASE_HOOKS:
        hook(started)


async def _measure(
    sleep: Callable[[float], Awaitable[None]], meter: Meter, warmup: float, duration: float
) -> Sample:
    await sleep(warmup)
    _phase(True)
    n0, t0, c0 = meter.n, time.perf_counter(), time.process_time()
    await sleep(duration)
    n1, t1, c1 = meter.n, time.perf_counter(), time.process_time()
    _phase(False)
    meter.stop = True
    return Sample(n1 - n0, t1 - t0, c1 - c0, n1)


async def _drive(
    group: AbstractAsyncContextManager[Any],
    spawn: Callable[[Any, Worker, Meter], object],
    sleep: Callable[[float], Awaitable[None]],
    worker: Worker,
    conc: int,
    warmup: float,
    duration: float,
) -> Sample:
    meter = Meter()
    async with group as tasks:
        for _ in range(conc):
            spawn(tasks, worker, meter)
        result = await _measure(sleep, meter, warmup, duration)
    return result._replace(total=meter.n)


def drive_asyncio(worker: Worker, conc: int, warmup: float, duration: float) -> Awaitable[Sample]:
    """The measured phase of ``conc`` asyncio tasks in an asyncio.TaskGroup."""

    def spawn(tg: asyncio.TaskGroup, worker: Worker, meter: Meter) -> object:
        return tg.create_task(worker(meter))

    return _drive(asyncio.TaskGroup(), spawn, asyncio.sleep, worker, conc, warmup, duration)


def drive_anyio(worker: Worker, conc: int, warmup: float, duration: float) -> Awaitable[Sample]:
    """The same in an anyio task group (asyncio, uvloop or trio backend)."""
    import anyio

    group = anyio.create_task_group()
    return _drive(group, _start_soon, anyio.sleep, worker, conc, warmup, duration)


def drive_trio(worker: Worker, conc: int, warmup: float, duration: float) -> Awaitable[Sample]:
    """The same in a trio nursery."""
    import trio

    return _drive(trio.open_nursery(), _start_soon, trio.sleep, worker, conc, warmup, duration)


def _start_soon(group: Any, worker: Worker, meter: Meter) -> object:
    return group.start_soon(worker, meter)


async def time_batches(
    batch: Callable[[int], Awaitable[None]], warmup: float, duration: float, size: int = 1000
) -> Sample:
    """One task: ``batch(size)`` through the warmup, then whole batches until
    ``duration`` has passed."""
    clock = time.perf_counter
    total = 0
    end = clock() + warmup
    while clock() < end:
        await batch(size)
        total += size
    n = 0
    _phase(True)
    t0, c0 = clock(), time.process_time()
    end = t0 + duration
    while True:
        await batch(size)
        n += size
        t = clock()
        if t >= end:
            sample = Sample(n, t - t0, time.process_time() - c0, total + n)
            _phase(False)
            return sample


def time_sync(batch: Callable[[int], None], warmup: float, duration: float) -> tuple[float, float]:
    """(wall µs, CPU µs) per operation of ``batch(1000)`` calls, after a warmup."""
    clock = time.perf_counter
    end = clock() + warmup
    while clock() < end:
        batch(1000)
    n = 0
    t0, c0 = clock(), time.process_time()
    end = t0 + duration
    while True:
        batch(1000)
        n += 1000
        t = clock()
        if t >= end:
            return (t - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6


def run_asyncio(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run on the stock asyncio loop, or on uvloop's."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    if loop != "asyncio":
        raise ValueError(f"not an asyncio loop: {loop!r}")
    return asyncio.run(main())


def run_anyio(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``anyio.run`` on the backend the loop names."""
    import anyio

    if loop == "trio":
        return anyio.run(main, backend="trio")
    return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": loop == "uvloop"})


def run_trio(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    import trio

    return trio.run(main)


def run_native(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """trio.run on trio, else asyncio (or uvloop)."""
    return run_trio(main) if loop == "trio" else run_asyncio(loop, main)


def drive_native(loop: str) -> Driver:
    return drive_trio if loop == "trio" else drive_asyncio
