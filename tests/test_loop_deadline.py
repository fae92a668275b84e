"""LoopDeadline, the httpx transport's per-request deadline on asyncio and
uvloop: it ends the block when it passes, swallows only its own
cancellation, never leaves one behind, and moves; a loop's deadlines share
one timer, and each still fires on time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from conpool._backends._deadline import LoopDeadline, loop_timers
from servers import skip_or_fail


def _run(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            skip_or_fail("uvloop is not installed")
        uvloop.run(main())
    else:
        asyncio.run(main())


LOOPS = ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_deadline_ends_the_block_and_leaves_no_cancellation(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        reached = False
        with LoopDeadline(loop_timers(loop), loop.time() + 0.05) as d:
            await asyncio.sleep(30)
            reached = True
        assert not reached
        assert d.cancelled_caught
        assert task.cancelling() == 0
        # Nothing left pending: the next await completes.
        await asyncio.sleep(0.01)

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_block_done_in_time_is_untouched_and_left_alone_later(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with LoopDeadline(loop_timers(loop), loop.time() + 0.05) as d:
            await asyncio.sleep(0)
        assert not d.cancelled_caught
        # Past the old deadline: the shared timer fires and finds it gone.
        await asyncio.sleep(0.15)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_reset_moves_the_deadline(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with LoopDeadline(loop_timers(loop), loop.time() + 0.05) as d:
            d.reset(5.0)
            await asyncio.sleep(0.15)  # past the first deadline
            d.reset(None)
            assert d.deadline == float("inf")
            await asyncio.sleep(0.05)
            d.reset(0.05)
            await asyncio.sleep(30)
        assert d.cancelled_caught

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_an_outside_cancellation_goes_through(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        with pytest.raises(asyncio.CancelledError):
            with LoopDeadline(loop_timers(loop), loop.time() + 30) as d:
                loop.call_later(0.02, task.cancel)
                await asyncio.sleep(30)
        assert not d.cancelled_caught
        assert task.uncancel() == 0

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_an_outside_cancellation_with_the_deadline_is_not_swallowed(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        with pytest.raises(asyncio.CancelledError):
            # Due at once, and a cancellation from outside queued before the
            # task can resume: both land on the same await.
            with LoopDeadline(loop_timers(loop), loop.time()) as d:
                loop.call_soon(task.cancel)
                await asyncio.sleep(30)
        assert not d.cancelled_caught
        # The outside one is still the task's: one cancellation requested.
        assert task.uncancel() == 0

    _run(loop_name, main)


def test_needs_a_task() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="running task"):
            with LoopDeadline(loop_timers(loop), 0.0):
                pass
    finally:
        loop.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_deadlines_on_one_timer_each_fire_at_their_own_time(loop_name: str) -> None:
    # Entered latest-first, so every new block's deadline is earlier than
    # the one the timer is armed for; one block ends in time.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        ended: dict[str, tuple[bool, float]] = {}

        async def block(name: str, after: float, work: float) -> None:
            with LoopDeadline(loop_timers(loop), start + after) as d:
                await asyncio.sleep(work)
            ended[name] = (d.cancelled_caught, loop.time() - start)

        async with asyncio.TaskGroup() as tg:
            for name, after, work in [
                ("late", 0.45, 30),
                ("in-time", 0.30, 0.1),
                ("middle", 0.25, 30),
                ("early", 0.10, 30),
            ]:
                tg.create_task(block(name, after, work))
                await asyncio.sleep(0)
        assert {name: caught for name, (caught, _) in ended.items()} == {
            "late": True,
            "in-time": False,
            "middle": True,
            "early": True,
        }
        for name, after in [("early", 0.10), ("middle", 0.25), ("late", 0.45)]:
            took = ended[name][1]
            assert after <= took + 0.002, (name, took)
            assert took < after + 0.1, (name, took)
        timers = loop_timers(loop)
        assert len(timers) == 0 and not timers.armed

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_many_blocks_that_end_in_time_keep_one_timer(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = loop_timers(loop)
        assert loop_timers(loop) is timers

        async def request() -> None:
            with LoopDeadline(timers, loop.time() + 5.0) as d:
                await asyncio.sleep(0)
                d.reset(5.0)  # (the write limit moved to the read limit)
                await asyncio.sleep(0)
            assert not d.cancelled_caught

        for _ in range(20):
            async with asyncio.TaskGroup() as tg:
                for _ in range(50):
                    tg.create_task(request())
        assert len(timers) == 0
        assert timers.armed  # (for a block already left: it fires, finds none)
        if loop_name == "asyncio":
            live = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
            assert len(live) == 1

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_deadline_moved_earlier_fires_at_the_new_time(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with LoopDeadline(loop_timers(loop), start + 30) as d:
            d.deadline = start + 0.05
            await asyncio.sleep(30)
        assert d.cancelled_caught
        assert loop.time() - start < 1

    _run(loop_name, main)


def test_each_loop_has_its_own_timers_dropped_with_it() -> None:
    import gc
    import weakref

    first = asyncio.new_event_loop()
    second = asyncio.new_event_loop()
    try:
        timers = loop_timers(first)
        assert loop_timers(second) is not timers
        gone = weakref.ref(timers)
    finally:
        first.close()
        second.close()
    del timers, first
    gc.collect()
    assert gone() is None
