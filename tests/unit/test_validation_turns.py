"""The engine validates a batch's input in slices, letting the event loop turn between them, so the API
and the running batches are not held up for a whole chunk of the file (thousands of lines) at once."""

from __future__ import annotations

import asyncio

import pytest

import overnight.engine.worker as worker_module
from overnight.domain.models import BatchStatus
from overnight.domain.validation import BatchValidator
from overnight.engine.worker import VALIDATE_LINES_PER_TURN
from unit.test_engine import GatedBackend, World, settle, world

__all__ = ["world"]  # the fixture, used by name


async def test_validation_lets_the_loop_turn_every_few_hundred_lines(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = 0

    class CountingValidator(BatchValidator):
        def check_line(self, line_no: int, raw: bytes) -> None:
            nonlocal checked
            checked += 1
            super().check_line(line_no, raw)

    monkeypatch.setattr(worker_module, "BatchValidator", CountingValidator)
    lines = 3 * VALIDATE_LINES_PER_TURN + 7  # one chunk of the blob: the old code checked them all at once
    engine = world.engine(GatedBackend(max_concurrency=64))
    created = await world.submit([f"line-{i}" for i in range(lines)])
    longest, stop = 0, asyncio.Event()

    async def watch_turns() -> None:
        nonlocal longest
        last = checked
        while not stop.is_set():
            longest, last = max(longest, checked - last), checked
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch_turns())
    await settle(engine, engine.tick)
    stop.set()
    await watcher

    assert checked == lines
    assert 0 < longest <= VALIDATE_LINES_PER_TURN
    batch = await world.batch(created.id)
    assert batch.status is BatchStatus.COMPLETED
    assert batch.request_counts.total == batch.request_counts.completed == lines
