"""wait_event: a timed wait on an event that never loses a cancellation (CPython gh-86296)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from overnight.engine.waiting import wait_event

Waiter = Callable[[asyncio.Event, float], Coroutine[Any, Any, bool]]


async def cancelled_while_ending(waiter: Waiter, steps: int) -> str:
    """Set the event, let `steps` loop iterations pass, cancel the waiting task: what it did."""
    event = asyncio.Event()
    task = asyncio.create_task(waiter(event, 10.0))
    await asyncio.sleep(0)  # it waits
    event.set()
    for _ in range(steps):
        await asyncio.sleep(0)
    finished_first = task.done()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return "finished first" if finished_first else "cancellation lost"


@pytest.mark.parametrize("steps", range(5))
async def test_a_cancellation_as_the_event_is_set_is_never_lost(steps: int) -> None:
    assert await cancelled_while_ending(wait_event, steps) in ("cancelled", "finished first")


async def test_it_times_out_and_says_whether_the_event_is_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.001) is False
    event.set()
    assert await wait_event(event, 0.001) is True
