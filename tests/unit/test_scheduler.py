"""The per-backend scheduler: deadline order, project fairness, retries, the breaker and AIMD."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from overnight.backends.base import Attempt, UpstreamResponse
from overnight.domain.clock import ManualClock, SystemClock
from overnight.domain.models import ResultKind, ResultRow
from overnight.engine.control import CircuitBreaker
from overnight.engine.scheduler import BackendScheduler, Feed, RetryPolicy

OK_BODY = b'{"object":"chat.completion","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'


def line(custom_id: str) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": custom_id}]}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


def custom_id_of(body: bytes) -> str:
    content: str = json.loads(body)["messages"][0]["content"]
    return content


async def lines_of(ids: list[str]) -> AsyncIterator[tuple[int, bytes]]:
    for number, custom_id in enumerate(ids, start=1):
        yield number, line(custom_id)


@dataclass
class ScriptedBackend:
    """Answers from a script per custom_id (a list of statuses, then 200); may hold requests at a gate."""

    max_concurrency: int = 1
    name: str = "scripted"
    script: dict[str, list[int]] = field(default_factory=dict)
    unreachable: int = 0  # the first N attempts get no connection
    overload_above: int | None = None  # answer 429 when more than this many are in flight
    gate: asyncio.Event | None = None
    sent: list[str] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    refused: int = 0

    def serves(self, model: str) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, endpoint: str, body: bytes) -> UpstreamResponse:
        raise NotImplementedError

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        custom_id = custom_id_of(body)
        self.sent.append(custom_id)
        self.attempts[custom_id] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if self.unreachable > 0:
                self.unreachable -= 1
                return Attempt(502, b'{"error":{"message":"refused"}}', "r", answered=False)
            if self.overload_above is not None and self.in_flight > self.overload_above:
                self.refused += 1
                return Attempt(429, b'{"error":{"message":"slow down"}}', "r", retry_after=0.0)
            planned = self.script.get(custom_id)
            status = planned.pop(0) if planned else 200
            body_out = OK_BODY if status == 200 else b'{"error":{"message":"no"}}'
            return Attempt(status, body_out, "r")
        finally:
            self.in_flight -= 1


def make_feed(
    batch_id: str, ids: list[str], rows: list[ResultRow], *, deadline: int = 1000, project: str = "p"
) -> Feed:
    return Feed(
        batch_id=batch_id,
        project=project,
        deadline=deadline,
        endpoint="/v1/chat/completions",
        lines=lines_of(ids),
        line_id=lambda number: f"{batch_id}-{number}",
        sink=rows.append,
    )


async def until(condition: Callable[[], bool], steps: int = 100_000) -> None:
    """Let other tasks run until `condition` holds (no wall-clock time involved)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


FAST_RETRY = RetryPolicy(max_attempts=3, base_delay_s=0.001, max_delay_s=0.002)


async def test_every_line_gets_exactly_one_result() -> None:
    backend = ScriptedBackend(max_concurrency=4, script={"b": [500, 500, 500], "c": [503, 200], "d": [400]})
    scheduler = BackendScheduler(backend, ManualClock(), retry=FAST_RETRY)
    rows: list[ResultRow] = []
    ids = ["a", "b", "c", "d", "e"]
    assert await scheduler.run(make_feed("batch_1", ids, rows))
    await scheduler.close()
    assert sorted(row.line_no for row in rows) == [1, 2, 3, 4, 5]
    kinds = {row.line_no: row.kind for row in rows}
    assert kinds == {
        1: ResultKind.SUCCEEDED,
        2: ResultKind.FAILED,
        3: ResultKind.SUCCEEDED,
        4: ResultKind.FAILED,
        5: ResultKind.SUCCEEDED,
    }
    assert backend.attempts == Counter({"a": 1, "b": 3, "c": 2, "d": 1, "e": 1})


async def test_earliest_deadline_goes_first() -> None:
    gate = asyncio.Event()
    backend = ScriptedBackend(max_concurrency=1, gate=gate)
    scheduler = BackendScheduler(backend, ManualClock(), retry=FAST_RETRY, prefetch=100)
    rows: list[ResultRow] = []
    week = make_feed("week", [f"w{i}" for i in range(10)], rows, deadline=7 * 86400)
    day = make_feed("day", [f"d{i}" for i in range(10)], rows, deadline=86400)
    hour = make_feed("hour", [f"h{i}" for i in range(10)], rows, deadline=3600)
    runs = [asyncio.create_task(scheduler.run(feed)) for feed in (week, day, hour)]
    await until(
        lambda: sum(len(feed.ready) for feed in (week, day, hour)) == 29
    )  # all but the one at the gate
    gate.set()
    assert all(await asyncio.gather(*runs))
    await scheduler.close()
    order = [custom_id[0] for custom_id in backend.sent[1:]]  # the first went before the others queued
    assert order == sorted(order, key="hdw".index)


async def test_projects_share_fairly_at_equal_deadlines() -> None:
    gate = asyncio.Event()
    backend = ScriptedBackend(max_concurrency=1, gate=gate)
    scheduler = BackendScheduler(backend, ManualClock(), retry=FAST_RETRY, prefetch=100)
    rows: list[ResultRow] = []
    big = make_feed("big", [f"a{i}" for i in range(20)], rows, project="alpha")
    small = make_feed("small", [f"b{i}" for i in range(5)], rows, project="beta")
    runs = [asyncio.create_task(scheduler.run(feed)) for feed in (big, small)]
    await until(lambda: len(big.ready) + len(small.ready) == 24)
    gate.set()
    await asyncio.gather(*runs)
    await scheduler.close()
    first_ten = [custom_id[0] for custom_id in backend.sent[1:11]]
    assert first_ten.count("b") >= 4  # beta's five lines are not stuck behind alpha's twenty


async def test_stop_abandons_queued_and_in_flight_lines() -> None:
    gate = asyncio.Event()
    backend = ScriptedBackend(max_concurrency=2, gate=gate)
    scheduler = BackendScheduler(backend, ManualClock(), retry=FAST_RETRY)
    rows: list[ResultRow] = []
    feed = make_feed("b", [f"x{i}" for i in range(10)], rows)
    run = asyncio.create_task(scheduler.run(feed))
    await until(lambda: backend.in_flight == 2)
    scheduler.stop(feed)
    assert await run is False
    await scheduler.close()
    assert rows == []
    assert scheduler.in_flight == 0


async def test_an_unreachable_backend_does_not_burn_lines() -> None:
    backend = ScriptedBackend(max_concurrency=4, unreachable=30)
    breaker = CircuitBreaker(threshold=3, open_s=0.001, max_open_s=0.004)
    scheduler = BackendScheduler(backend, SystemClock(), retry=FAST_RETRY, breaker=breaker)
    rows: list[ResultRow] = []
    assert await scheduler.run(make_feed("b", [f"x{i}" for i in range(8)], rows))
    await scheduler.close()
    assert len(rows) == 8
    assert all(row.kind is ResultKind.SUCCEEDED for row in rows)
    assert sum(backend.attempts.values()) >= 8 + 30


async def test_window_settles_under_an_overloaded_backend() -> None:
    backend = ScriptedBackend(max_concurrency=32, overload_above=4)
    retry = RetryPolicy(max_attempts=50, base_delay_s=0.0005, max_delay_s=0.001)
    scheduler = BackendScheduler(backend, SystemClock(), retry=retry, prefetch=64)
    rows: list[ResultRow] = []
    assert await scheduler.run(make_feed("b", [f"x{i}" for i in range(400)], rows))
    await scheduler.close()
    assert all(row.kind is ResultKind.SUCCEEDED for row in rows)
    assert scheduler.window.limit <= 16
    assert backend.refused < len(rows)  # it backed off instead of hammering at 32 in flight
