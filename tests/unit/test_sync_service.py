"""The synchronous requests' service (services/sync.py) over a real scheduler and a scripted backend:
`service_tier` kept or removed per backend, which failures Overnight tries again, what an open breaker and a
flex wait that runs out answer, and a stream's slot and usage, read to the end or given up unread."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from overnight.backends.base import Attempt, Backend, StreamAnswer
from overnight.domain.clock import SystemClock
from overnight.domain.errors import NotFound, ServiceUnavailable, TooManyRequests
from overnight.domain.models import Usage
from overnight.domain.sync import CHAT, Tier
from overnight.engine.control import CircuitBreaker
from overnight.engine.online import Lane
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler
from overnight.services.sync import StreamedAnswer, SyncService, SyncSettings, WholeAnswer
from overnight.services.sync_usage import SyncUsageRecorder
from overnight.store.sqlite import SqliteStore

OK = b'{"object":"chat.completion","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
EVENTS = [
    b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}\n\n',
    b"data: [DONE]\n\n",
]
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002)


@dataclass
class Scripted:
    """Answers from `answers` in turn (then 200), keeps every body it was sent; streams EVENTS."""

    name: str = "scripted"
    max_concurrency: int = 2
    answers: list[Attempt] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    closed_streams: int = 0

    def serves(self, model: str) -> bool:
        return model != "nobody"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        self.bodies.append(body)
        return self.answers.pop(0) if self.answers else Attempt(200, OK, "up-1")

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        self.bodies.append(body)
        if self.answers:
            return self.answers.pop(0)

        async def chunks() -> AsyncIterator[bytes]:
            for event in EVENTS:
                yield event

        async def close() -> None:
            self.closed_streams += 1

        return StreamAnswer(200, "up-2", "text/event-stream", chunks(), close)


@dataclass
class Setup:
    service: SyncService
    backend: Scripted
    scheduler: BackendScheduler
    store: SqliteStore


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    backend = Scripted()
    clock = SystemClock()
    breaker = CircuitBreaker(threshold=3, open_s=30.0)
    scheduler = BackendScheduler(backend, clock, retry=FAST, breaker=breaker)
    store = SqliteStore(tmp_path / "db.sqlite3")
    recorder = SyncUsageRecorder(store, clock, interval_s=3600)
    settings = SyncSettings(flex_timeout_s=0.05, tier_forwarded=frozenset({"forwarding"}), retry=FAST)

    def route(model: str) -> Backend | None:
        return backend if backend.serves(model) else None

    return Setup(
        SyncService(route, lambda _b: scheduler, clock, recorder, settings), backend, scheduler, store
    )


def body(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": [], **fields}).encode()


async def run(setup: Setup, raw: bytes) -> WholeAnswer | StreamedAnswer:
    return await setup.service.run("p", setup.service.read(CHAT, raw), raw)


async def test_a_whole_answer_comes_back_and_counts(setup: Setup) -> None:
    answer = await run(setup, body())
    assert isinstance(answer, WholeAnswer)
    assert (answer.status, answer.body) == (200, OK)
    assert ("x-upstream-request-id", "up-1") in answer.headers
    assert setup.scheduler.in_flight == 0
    assert setup.service.usage.pending == 1


async def test_service_tier_is_removed_unless_the_backend_forwards_it(setup: Setup) -> None:
    await run(setup, body(service_tier="flex", temperature=1))
    assert json.loads(setup.backend.bodies[-1]) == {"model": "m", "messages": [], "temperature": 1}
    setup.backend.name = "forwarding"
    raw = body(service_tier="flex")
    await run(setup, raw)
    assert setup.backend.bodies[-1] == raw  # byte for byte


async def test_a_model_nobody_serves(setup: Setup) -> None:
    with pytest.raises(NotFound) as refused:
        await run(setup, json.dumps({"model": "nobody"}).encode())
    assert refused.value.code == "model_not_found"


async def test_only_an_unreached_upstream_is_tried_again(setup: Setup) -> None:
    unreached = Attempt(502, b'{"error":{"message":"refused"}}', "r", answered=False, reached=False)
    setup.backend.answers = [unreached, unreached]
    answer = await run(setup, body())
    assert isinstance(answer, WholeAnswer)
    assert answer.status == 200
    assert len(setup.backend.bodies) == 3
    setup.backend.answers = [Attempt(500, b'{"error":{"message":"no"}}', "r", retry_after=1.5)]
    failed = await run(setup, body())
    assert isinstance(failed, WholeAnswer)
    assert failed.status == 500  # once: the client's policy decides about another
    assert len(setup.backend.bodies) == 4
    assert ("retry-after-ms", "1500") in failed.headers
    assert ("retry-after", "2") in failed.headers
    assert setup.service.usage.pending == 1  # the failure is not counted as usage


async def test_an_open_breaker_answers_503_at_once(setup: Setup) -> None:
    for _ in range(3):  # three different requests in a row: the backend looks down
        setup.backend.answers = [Attempt(503, b'{"error":{"message":"down"}}', "r")]
        failed = await run(setup, body())
        assert isinstance(failed, WholeAnswer)
        assert failed.status == 503
    with pytest.raises(ServiceUnavailable) as refused:
        await run(setup, body())
    assert refused.value.code == "backend_unavailable"
    assert dict(refused.value.headers)["x-should-retry"] == "true"
    assert int(dict(refused.value.headers)["retry-after"]) >= 1


async def test_flex_without_a_slot_in_time_is_resource_unavailable(setup: Setup) -> None:
    holders = [await setup.scheduler.admit(Lane.ONLINE, 1) for _ in range(2)]  # the backend is full
    with pytest.raises(TooManyRequests) as refused:
        await run(setup, body(service_tier="flex"))
    assert refused.value.code == "resource_unavailable"
    assert dict(refused.value.headers)["x-should-retry"] == "true"
    for ticket in holders:
        setup.scheduler.release(ticket)
    assert setup.service.usage.pending == 0


async def test_a_stream_is_relayed_and_counts_its_usage(setup: Setup) -> None:
    answer = await run(setup, body(stream=True))
    assert isinstance(answer, StreamedAnswer)
    assert setup.scheduler.in_flight == 1  # the slot is held while the stream lasts
    chunks = [chunk async for chunk in answer.chunks]
    await answer.chunks.aclose()
    await answer.chunks.aclose()  # twice is once
    assert chunks == EVENTS
    assert setup.scheduler.in_flight == 0
    assert setup.backend.closed_streams == 1
    await setup.store.open()
    try:
        await setup.service.usage.flush()
        (row,) = await setup.store.sync_usage_by_day(None, 0, 2**62)
    finally:
        await setup.store.close()
    assert (row.tier, row.requests, row.usage) == (Tier.DEFAULT, 1, Usage(4, 6))


async def test_a_stream_given_up_unread_frees_its_slot(setup: Setup) -> None:
    answer = await run(setup, body(stream=True))
    assert isinstance(answer, StreamedAnswer)
    await answer.chunks.aclose()
    assert setup.scheduler.in_flight == 0
    assert setup.backend.closed_streams == 1


async def test_a_stream_cut_off_ends_with_an_error_event(setup: Setup) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield EVENTS[0]
        raise ConnectionError("reset")

    async def close() -> None:
        return None

    async def stream(endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return StreamAnswer(200, "up-3", "text/event-stream", broken(), close)

    setup.backend.stream = stream  # type: ignore[method-assign]
    answer = await run(setup, body(stream=True))
    assert isinstance(answer, StreamedAnswer)
    chunks = [chunk async for chunk in answer.chunks]
    await answer.chunks.aclose()
    assert chunks[0] == EVENTS[0]
    assert json.loads(chunks[1].removeprefix(b"data: "))["error"]["code"] == "stream_interrupted"
    assert setup.scheduler.in_flight == 0


async def test_a_cancelled_request_gives_its_slot_back(setup: Setup) -> None:
    gate, sent = asyncio.Event(), asyncio.Event()

    async def attempt(endpoint: str, body: bytes) -> Attempt:
        sent.set()
        await gate.wait()
        return Attempt(200, OK, "r")

    setup.backend.attempt = attempt  # type: ignore[method-assign]
    task = asyncio.create_task(run(setup, body()))
    await sent.wait()
    assert setup.scheduler.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert setup.scheduler.in_flight == 0
