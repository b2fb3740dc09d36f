"""What a worker records for the dashboard: samples at an adaptive interval, backend reports every ~2 s."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overnight.backends.base import Attempt, StreamAnswer
from overnight.domain.clock import ManualClock
from overnight.domain.models import Batch, BatchStatus, RequestCounts
from overnight.domain.progress import Sample
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from overnight.engine.stats import BackendReporter, ProgressSampler, backend_status
from overnight.store.sqlite import SqliteStore

START = 1_700_000_000


class IdleBackend:
    name = "gpu"
    max_concurrency = 16

    def serves(self, model: str) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        return Attempt(200, b"{}", "req")

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return await self.attempt(endpoint, body)  # answers whole


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "db.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


def a_batch(completed: int = 0) -> Batch:
    return Batch(
        "batch_sampled",
        "proj",
        "/v1/chat/completions",
        "file-in",
        "24h",
        BatchStatus.IN_PROGRESS,
        START,
        START + 86400,
        in_progress_at=START,
        request_counts=RequestCounts(1000, completed, 0),
    )


async def test_samples_are_taken_at_the_start_then_every_few_seconds(store: SqliteStore) -> None:
    clock = ManualClock(START)
    await store.add_batch(a_batch())
    sampler = ProgressSampler(store, clock)
    await sampler.sample(a_batch(0))  # the start
    for second in range(1, 13):
        clock.advance(1)
        await sampler.sample(a_batch(10 * second))
    clock.advance(1)
    await sampler.sample(a_batch(135), force=True)  # the end
    assert await store.progress_samples("batch_sampled") == [
        Sample(START, 0, 0),
        Sample(START + 5, 50, 0),
        Sample(START + 10, 100, 0),
        Sample(START + 13, 135, 0),
    ]


async def test_an_old_batch_is_sampled_less_often(store: SqliteStore) -> None:
    clock = ManualClock(START + 20_000)  # age 20,000 s: a sample every 400 s
    await store.add_batch(a_batch())
    sampler = ProgressSampler(store, clock)
    for step in range(100):
        await sampler.sample(a_batch(step))
        clock.advance(10)
    assert len(await store.progress_samples("batch_sampled")) == 3


async def test_counts_standing_still_write_nothing_until_they_move(store: SqliteStore) -> None:
    clock = ManualClock(START)
    await store.add_batch(a_batch())
    sampler = ProgressSampler(store, clock)
    await sampler.sample(a_batch(10))
    for _ in range(6):  # a minute waiting for the upstream: nothing is written
        clock.advance(10)
        await sampler.sample(a_batch(10))
    assert await store.progress_samples("batch_sampled") == [Sample(START, 10, 0)]
    clock.advance(10)
    await sampler.sample(a_batch(30))  # moving again: the last still moment first, then now
    assert await store.progress_samples("batch_sampled") == [
        Sample(START, 10, 0),
        Sample(START + 60, 10, 0),
        Sample(START + 70, 30, 0),
    ]


async def test_backends_are_reported_every_couple_of_seconds(store: SqliteStore) -> None:
    clock = ManualClock(START)
    scheduler = BackendScheduler(IdleBackend(), clock, retry=RetryPolicy())
    scheduler.set_cap(6)
    scheduler.recent.note(START - 1, True)
    scheduler.recent.note(START, False)
    reporter = BackendReporter(store, "w1", clock)
    await reporter.report({"gpu": scheduler})
    clock.advance(1)
    scheduler.recent.note(START + 1, False)
    await reporter.report({"gpu": scheduler})  # too soon: not reported
    expected = backend_status(scheduler, "w1", START)
    assert expected.window == 6
    assert expected.limit == 16
    assert expected.breaker == "closed"
    assert await store.backend_reports(since=0) == [dataclasses.replace(expected, attempts=2, failures=1)]
    clock.advance(1)
    await reporter.report({"gpu": scheduler})
    [latest] = await store.backend_reports(since=0)
    assert (latest.reported_at, latest.attempts, latest.failures) == (START + 2, 3, 1)
