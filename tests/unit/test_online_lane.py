"""The scheduler's lane for synchronous requests (engine/online.py): online tickets before batch lines,
flex tickets in deadline order with them, and what a ticket's answer and release do to the limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from overnight.backends.base import Attempt, StreamAnswer
from overnight.domain.clock import ManualClock, SystemClock
from overnight.domain.models import ResultRow, Usage
from overnight.engine.control import BreakerState, CircuitBreaker
from overnight.engine.feed import RateLimits
from overnight.engine.online import Lane, NoSlot, Ticket
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from unit.test_scheduler import OK_BODY, custom_id_of, make_feed, until

HOUR = 3600


@dataclass
class HeldBackend:
    """Every attempt waits until the test lets it go (`release`), in the order they came."""

    max_concurrency: int = 2
    name: str = "held"
    sent: list[str] = field(default_factory=list)
    waiting: list[asyncio.Future[None]] = field(default_factory=list)

    def serves(self, model: str) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        self.sent.append(custom_id_of(body))
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(gate)
        await gate
        return Attempt(200, OK_BODY, "r")

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return await self.attempt(endpoint, body)

    def release(self, count: int = 1) -> None:
        for gate in [gate for gate in self.waiting if not gate.done()][:count]:
            gate.set_result(None)


def a_scheduler(backend: HeldBackend, clock: ManualClock | SystemClock | None = None) -> BackendScheduler:
    return BackendScheduler(backend, clock or ManualClock(), retry=RetryPolicy(), prefetch=100)


def ok() -> Attempt:
    return Attempt(200, OK_BODY, "sync")


async def test_an_online_ticket_takes_the_next_free_slot_before_queued_batch_lines() -> None:
    backend = HeldBackend(max_concurrency=2)
    scheduler = a_scheduler(backend)
    rows: list[ResultRow] = []
    feed = make_feed("batch_1", [f"b{i}" for i in range(20)], rows, deadline=HOUR)
    run = asyncio.create_task(scheduler.run(feed))
    await until(lambda: len(backend.sent) == 2 and len(feed.ready) == 18)
    admit = asyncio.create_task(scheduler.admit(Lane.ONLINE, 10))
    await until(lambda: scheduler.tickets.waiting)
    assert not admit.done()  # every slot is taken: it waits for one, not behind the 18 queued lines
    backend.release(1)
    ticket = await admit
    assert len(backend.sent) == 2  # the freed slot went to the online request, not to line 3
    assert scheduler.in_flight == 2
    scheduler.answered(ticket, ok(), 0.01)
    scheduler.release(ticket, Usage(3, 2))
    await until(lambda: len(backend.sent) == 3)  # its slot goes back to the batch
    backend.release(100)
    while not run.done():
        backend.release(100)
        await asyncio.sleep(0)
    assert await run
    await scheduler.close()
    assert len(rows) == 20


async def test_online_tickets_go_in_arrival_order() -> None:
    backend = HeldBackend(max_concurrency=1)
    scheduler = a_scheduler(backend)
    rows: list[ResultRow] = []
    feed = make_feed("batch_1", ["b0", "b1"], rows)
    run = asyncio.create_task(scheduler.run(feed))
    await until(lambda: len(backend.sent) == 1)
    first = asyncio.create_task(scheduler.admit(Lane.ONLINE, 1))
    await until(lambda: len(scheduler.tickets.online) == 1)
    second = asyncio.create_task(scheduler.admit(Lane.ONLINE, 1))
    await until(lambda: len(scheduler.tickets.online) == 2)
    backend.release(1)
    ticket = await first
    assert not second.done()
    scheduler.release(ticket)
    scheduler.release(await second)
    backend.release(10)
    while not run.done():
        backend.release(10)
        await asyncio.sleep(0)
    await scheduler.close()


@pytest.mark.parametrize(("flex_deadline", "goes_first"), [(60.0, True), (2 * HOUR, False)])
async def test_a_flex_ticket_queues_with_the_batches_by_deadline(
    flex_deadline: float, goes_first: bool
) -> None:
    clock = ManualClock()
    backend = HeldBackend(max_concurrency=1)
    scheduler = a_scheduler(backend, clock)
    rows: list[ResultRow] = []
    feed = make_feed("batch_1", ["b0", "b1", "b2"], rows, deadline=int(clock.now()) + HOUR)
    run = asyncio.create_task(scheduler.run(feed))
    await until(lambda: len(backend.sent) == 1 and len(feed.ready) == 2)
    admit = asyncio.create_task(scheduler.admit(Lane.FLEX, 1, clock.now() + flex_deadline))
    await until(lambda: scheduler.tickets.waiting)
    backend.release(1)
    if goes_first:
        ticket = await admit
        assert backend.sent == ["b0"]
    else:
        await until(lambda: len(backend.sent) == 2)
        assert backend.sent == ["b0", "b1"]  # the batch's earlier deadline went first
        assert not admit.done()
        while not admit.done():  # once the batch has no line left, the flex ticket's turn comes
            backend.release(1)
            await asyncio.sleep(0)
        ticket = await admit
    scheduler.release(ticket)
    while not run.done():
        backend.release(10)
        await asyncio.sleep(0)
    await scheduler.close()


async def test_online_goes_before_flex() -> None:
    clock = ManualClock()
    backend = HeldBackend(max_concurrency=1)
    scheduler = a_scheduler(backend, clock)
    holder = await scheduler.admit(Lane.ONLINE, 1)
    flex = asyncio.create_task(scheduler.admit(Lane.FLEX, 1, clock.now() + 60))
    await until(lambda: len(scheduler.tickets.flex) == 1)
    online = asyncio.create_task(scheduler.admit(Lane.ONLINE, 1))
    await until(lambda: len(scheduler.tickets.online) == 1)
    scheduler.release(holder)
    granted = await online
    assert not flex.done()
    scheduler.release(granted)
    scheduler.release(await flex)
    await scheduler.close()


async def test_a_flex_ticket_that_finds_no_slot_in_time_gets_no_slot_and_leaves() -> None:
    clock = SystemClock()  # the wait is bounded in real time
    backend = HeldBackend(max_concurrency=1)
    scheduler = a_scheduler(backend, clock)
    holder = await scheduler.admit(Lane.ONLINE, 1)
    with pytest.raises(NoSlot):
        await scheduler.admit(Lane.FLEX, 1, clock.now() + 0.05)
    assert not scheduler.tickets.waiting
    scheduler.release(holder)
    assert scheduler.in_flight == 0
    await scheduler.close()


async def test_an_online_ticket_meets_an_open_breaker_at_once() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=1, open_s=5.0)
    scheduler = BackendScheduler(HeldBackend(), clock, retry=RetryPolicy(), breaker=breaker)
    ticket = await scheduler.admit(Lane.ONLINE, 1)
    scheduler.answered(ticket, Attempt(503, b'{"error":{"message":"down"}}', "r"), 0.01)
    scheduler.release(ticket)
    assert not breaker.allows(clock.now())  # open
    with pytest.raises(NoSlot) as refused:
        await scheduler.admit(Lane.ONLINE, 1)
    assert refused.value.retry_in == pytest.approx(5.0)
    clock.advance(5.0)
    probe = await scheduler.admit(Lane.ONLINE, 1)  # half open: this one is the probe
    assert breaker.state.value == "half_open"
    scheduler.release(probe)  # given up before any answer: another probe may go
    again = await scheduler.admit(Lane.ONLINE, 1)
    scheduler.answered(again, ok(), 0.01)
    scheduler.release(again)
    assert breaker.state is BreakerState.CLOSED
    await scheduler.close()


async def test_an_overload_answer_shrinks_the_window() -> None:
    scheduler = a_scheduler(HeldBackend(max_concurrency=8))
    ticket = await scheduler.admit(Lane.ONLINE, 1)
    scheduler.answered(ticket, Attempt(429, b'{"error":{"message":"slow"}}', "r"), 0.01)
    scheduler.release(ticket)
    assert scheduler.window.limit == 4
    await scheduler.close()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    backend = HeldBackend(max_concurrency=1)
    scheduler = a_scheduler(backend)
    holder = await scheduler.admit(Lane.ONLINE, 1)
    waiter = asyncio.create_task(scheduler.admit(Lane.ONLINE, 1))
    await until(lambda: scheduler.tickets.waiting)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not scheduler.tickets.waiting
    scheduler.release(holder)
    scheduler.release(holder)  # twice is once
    assert scheduler.in_flight == 0
    assert not scheduler.tickets.busy
    await scheduler.close()


async def test_tickets_make_the_scheduler_want_slots() -> None:
    scheduler = a_scheduler(HeldBackend())
    scheduler.demand_changed.clear()
    wants: Callable[[], bool] = lambda: scheduler.wants_slots  # noqa: E731 (read afresh each time)
    assert not wants()
    ticket = await scheduler.admit(Lane.ONLINE, 1)
    assert scheduler.demand_changed.is_set()
    assert wants()
    scheduler.release(ticket)
    assert not wants()
    await scheduler.close()


async def test_tickets_wait_for_a_share_of_the_slots() -> None:
    scheduler = a_scheduler(HeldBackend(max_concurrency=4))
    scheduler.set_cap(0)  # a SlotKeeper has not granted this process any slot yet
    admit: asyncio.Task[Ticket] = asyncio.create_task(scheduler.admit(Lane.ONLINE, 1))
    await until(lambda: scheduler.tickets.waiting)
    assert not admit.done()
    scheduler.set_cap(1)
    scheduler.release(await admit)
    await scheduler.close()


async def test_tickets_keep_to_the_rate_limits() -> None:
    clock = ManualClock()
    scheduler = BackendScheduler(
        HeldBackend(max_concurrency=4), clock, retry=RetryPolicy(), rates=RateLimits(requests_per_minute=60)
    )
    first = await scheduler.admit(Lane.ONLINE, 1)  # the bucket holds one request
    second = asyncio.create_task(scheduler.admit(Lane.ONLINE, 1))
    await until(lambda: scheduler.tickets.waiting)
    for _ in range(100):
        await asyncio.sleep(0)
    assert not second.done()  # a slot is free, but the budget is not
    clock.advance(1.0)
    scheduler.release(first)  # wakes the pump, which finds the budget refilled
    scheduler.release(await second)
    await scheduler.close()
