"""conpool._backends._trio.Parked, what a waiting task parks on under trio: woken
once by set(), whether set() comes before the await, during it, or after the
task was cancelled."""

from __future__ import annotations

import trio
import trio.testing

from conpool._backends._trio import Parked


def flags(parked: Parked) -> tuple[bool, bool]:
    """(parked, is_set)."""
    return parked.parked, parked.is_set


def test_set_before_the_await_returns_at_the_first_checkpoint() -> None:
    async def main() -> None:
        parked = Parked()
        parked.set()
        assert flags(parked) == (False, True)
        with trio.testing.assert_checkpoints():
            await parked

    trio.run(main)


def test_set_while_parked_wakes_the_task_once() -> None:
    woken: list[str] = []

    async def main() -> None:
        holder: list[Parked] = []

        async def waiter() -> None:
            parked = Parked()
            holder.append(parked)
            await parked
            woken.append("woken")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            (parked,) = holder
            assert flags(parked) == (True, False)
            parked.set()
            parked.set()  # a second set is a no-op, not a second wake-up
            assert flags(parked) == (False, True)
        assert woken == ["woken"]

    trio.run(main)


def test_set_after_the_task_was_cancelled_does_nothing() -> None:
    async def main() -> None:
        holder: list[Parked] = []
        outcome: list[str] = []
        scope = trio.CancelScope()

        async def waiter() -> None:
            with scope:
                parked = Parked()
                holder.append(parked)
                try:
                    await parked
                except trio.Cancelled:
                    outcome.append("cancelled")
                    raise

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert flags(holder[0]) == (True, False)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == ["cancelled"]
            # The cancelled task is not woken by set(): rescheduling it a
            # second time would be an error inside trio.
            holder[0].set()
            assert flags(holder[0]) == (False, True)

    trio.run(main)
