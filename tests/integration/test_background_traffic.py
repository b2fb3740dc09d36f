"""`traffic = "background"` against a real queueing server on loopback (tests/support/queueing_upstream.py),
through the real HTTP backend and scheduler: a dedicated backend fills the server's queue, a background one
keeps it short, with the delay signal alone and with the server's load signal; and vLLM's `priority`
reaches the server. The bounds are the server's own queue lengths, with wide margins (no timing asserted)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from overnight.backends.http import HttpBackend
from overnight.config import BackendConfig
from overnight.domain.clock import SystemClock
from overnight.domain.models import ResultKind, ResultRow
from overnight.engine.background_traffic import TrafficSettings
from overnight.engine.feed import Feed
from overnight.engine.load_signals import LoadPoller, LoadSignals, LoadSource
from overnight.engine.neighbour import LoadReading
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from support.queueing_upstream import QueueingUpstream

SLOTS = 4
SERVICE_S = 0.02
MAX_CONCURRENCY = 64
LINES = 400
BACKGROUND = TrafficSettings(background=True, target_queue_delay_s=0.005)


def body(index: int, **extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": f"line {index}"}], **extra}


async def lines_of(bodies: list[dict[str, object]]) -> AsyncIterator[tuple[int, bytes]]:
    for number, request in enumerate(bodies, start=1):
        line = {"custom_id": f"c{number}", "method": "POST", "url": "/v1/chat/completions", "body": request}
        yield number, json.dumps(line).encode()


async def run_batch(
    upstream: QueueingUpstream,
    traffic: TrafficSettings | None,
    bodies: list[dict[str, object]],
    load: Callable[[], LoadReading | None] = lambda: None,
    deadline: int = 2**40,
) -> tuple[list[ResultRow], BackendScheduler]:
    config = BackendConfig(name="q", base_url=upstream.base_url, max_concurrency=MAX_CONCURRENCY)
    backend = HttpBackend(config, api_key=None, timeout_s=60)
    await backend.start()
    scheduler = BackendScheduler(
        backend, SystemClock(), retry=RetryPolicy(max_attempts=2), traffic=traffic, load=load
    )
    rows: list[ResultRow] = []
    feed = Feed(
        batch_id="batch_q",
        project="p",
        deadline=deadline,
        endpoint="/v1/chat/completions",
        lines=lines_of(bodies),
        line_id=lambda number: f"batch_q-{number}",
        sink=rows.append,
        lines_left=len(bodies),
    )
    try:
        assert await scheduler.run(feed)
    finally:
        await scheduler.close()
        await backend.close()
    assert sorted(row.line_no for row in rows) == list(range(1, len(bodies) + 1))
    assert all(row.kind is ResultKind.SUCCEEDED for row in rows)
    return rows, scheduler


async def test_a_dedicated_backend_fills_the_servers_queue() -> None:
    async with QueueingUpstream(SLOTS, SERVICE_S) as upstream:
        await run_batch(upstream, None, [body(i) for i in range(LINES)])
    assert upstream.max_waiting >= 40  # its 64 in flight: 60 of them wait at the server
    assert set(upstream.priorities) == {None}  # no priority unless configured


async def test_a_background_backend_keeps_the_servers_queue_short_on_the_delay_signal() -> None:
    async with QueueingUpstream(SLOTS, SERVICE_S) as upstream:
        _rows, scheduler = await run_batch(upstream, BACKGROUND, [body(i) for i in range(LINES)])
    assert upstream.max_waiting <= 16  # against ~60 dedicated
    assert scheduler.background is not None
    assert scheduler.background.window.signal == "delay"
    assert 1 <= scheduler.background.limit <= 16


async def test_a_background_backend_follows_the_servers_load_signal() -> None:
    async with QueueingUpstream(SLOTS, SERVICE_S) as upstream:
        poller = LoadPoller(LoadSource("q", upstream.metrics_url, "vllm"), interval_s=0.05)
        signals = LoadSignals([poller])
        reading = asyncio.create_task(signals.run())
        try:
            _rows, scheduler = await run_batch(
                upstream, BACKGROUND, [body(i) for i in range(LINES)], load=lambda: signals.reading("q")
            )
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    assert upstream.max_waiting <= 16
    assert scheduler.background is not None
    assert scheduler.background.window.signal == "load"
    assert scheduler.background.window.slots.count == SLOTS  # learned from the server's `running`


async def test_the_priority_field_reaches_the_server() -> None:
    bodies = [body(0), body(1, priority=50), body(2, priority=-5), body(3)]
    async with QueueingUpstream(SLOTS, SERVICE_S) as upstream:
        rows, _ = await run_batch(upstream, TrafficSettings(priority=10), bodies)
    # each line once; its own later priority kept, an earlier one raised to the backend's
    assert sorted(upstream.priorities) == [10, 10, 10, 50]
    assert len(rows) == 4


async def test_a_batch_whose_deadline_nears_takes_what_it_needs_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's every reading shows it full with a long queue (online traffic that never leaves): the
    window alone would stay at 1, and 200 lines of 20 ms would take 4 s; the deadline is 2 s away."""
    readings = itertools.count(1)

    def always_full() -> LoadReading:
        return LoadReading(waiting=50, number=next(readings), running=SLOTS)

    caplog.set_level(logging.INFO, logger="overnight.engine")
    async with QueueingUpstream(SLOTS, SERVICE_S) as upstream:
        _rows, scheduler = await run_batch(
            upstream, BACKGROUND, [body(i) for i in range(200)], always_full, deadline=int(time.time()) + 2
        )
    assert scheduler.background is not None
    said = [r for r in caplog.records if "cannot finish by its deadline" in r.getMessage()]
    assert said
    assert all(r.levelno == logging.WARNING for r in said)
    assert upstream.max_at_once > 1  # more than the full server's window of 1 (and every line ran)
