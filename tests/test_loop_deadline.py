"""LoopDeadline, the httpx transport's per-request deadline on asyncio and
uvloop: it ends the block when it passes, swallows only its own
cancellation, never leaves one behind, and moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from conpool._backends._asyncio import LoopDeadline
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
        with LoopDeadline(loop, loop.time() + 0.05) as d:
            await asyncio.sleep(30)
            reached = True
        assert not reached
        assert d.cancelled_caught
        assert task.cancelling() == 0
        # Nothing left pending: the next await completes.
        await asyncio.sleep(0.01)

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_block_done_in_time_is_untouched_and_its_timer_gone(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with LoopDeadline(loop, loop.time() + 0.05) as d:
            await asyncio.sleep(0)
        assert not d.cancelled_caught
        # Past the old deadline: its timer was cancelled on the way out.
        await asyncio.sleep(0.15)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

    _run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_reset_moves_the_deadline(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with LoopDeadline(loop, loop.time() + 0.05) as d:
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
            with LoopDeadline(loop, loop.time() + 30) as d:
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
            with LoopDeadline(loop, loop.time()) as d:
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
            with LoopDeadline(loop, 0.0):
                pass
    finally:
        loop.close()
