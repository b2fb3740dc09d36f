"""The per-backend scheduler: deadline order, project fairness, retries, the breaker and AIMD."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from overnight.backends.base import Attempt, StreamAnswer
from overnight.domain.clock import ManualClock, SystemClock
from overnight.domain.models import ResultKind, ResultRow
from overnight.engine.control import BreakerState, CircuitBreaker
from overnight.engine.feed import Feed
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler

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
    """Answers from a script per custom_id (a list of statuses, then 200; "timeout" for no answer,
    "refused" for no connection); `always` answers a custom_id the same for ever. May hold requests
    at a gate."""

    max_concurrency: int = 1
    name: str = "scripted"
    script: dict[str, list[int | str]] = field(default_factory=dict)
    always: dict[str, int | str] = field(default_factory=dict)
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
                return Attempt(502, b'{"error":{"message":"refused"}}', "r", answered=False, reached=False)
            if self.overload_above is not None and self.in_flight > self.overload_above:
                self.refused += 1
                return Attempt(429, b'{"error":{"message":"slow down"}}', "r", retry_after=0.0)
            planned = self.script.get(custom_id)
            status = planned.pop(0) if planned else self.always.get(custom_id, 200)
            if status == "timeout":
                return Attempt(504, b'{"error":{"message":"no answer within 1 s"}}', "r", answered=False)
            if status == "refused":
                return Attempt(502, b'{"error":{"message":"refused"}}', "r", answered=False, reached=False)
            assert isinstance(status, int)
            body_out = OK_BODY if status == 200 else b'{"error":{"message":"no"}}'
            return Attempt(status, body_out, "r")
        finally:
            self.in_flight -= 1

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return await self.attempt(endpoint, body)  # answers whole


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
    scheduler = BackendScheduler(backend, SystemClock(), retry=FAST_RETRY)
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


# -- sick requests and sick backends (engine/retry.py) ------------------------------------------------


def rows_by_id(rows: list[ResultRow]) -> dict[str, dict[str, object]]:
    decoded = [json.loads(row.line) for row in rows]
    return {line["custom_id"]: line for line in decoded}


@pytest.mark.parametrize("status", [500, 503, 400])
async def test_lines_the_upstream_always_refuses_fail_within_their_budget(status: int) -> None:
    poison = [f"p{i}" for i in range(5)]
    healthy = [f"h{i}" for i in range(10)]
    backend = ScriptedBackend(max_concurrency=4, always=dict.fromkeys(poison, status))
    breaker = CircuitBreaker(threshold=3, open_s=0.001, max_open_s=0.004)
    scheduler = BackendScheduler(backend, SystemClock(), retry=FAST_RETRY, breaker=breaker)
    first: list[ResultRow] = []
    second: list[ResultRow] = []
    runs = [
        scheduler.run(make_feed("poisoned", poison, first, deadline=100)),
        scheduler.run(make_feed("healthy", healthy, second, deadline=200)),
    ]
    assert all(await asyncio.wait_for(asyncio.gather(*runs), 60))
    await scheduler.close()
    failed = rows_by_id(first)
    assert sorted(failed) == poison
    for line in failed.values():
        response = line["response"]
        assert isinstance(response, dict)
        assert response["status_code"] == status
        assert response["body"] == {"error": {"message": "no"}}  # the upstream's own body
    expected = 1 if status == 400 else FAST_RETRY.max_attempts  # a 400 is final at once
    assert all(backend.attempts[name] == expected for name in poison)
    assert all(row.kind is ResultKind.SUCCEEDED for row in second)
    assert len(second) == len(healthy)


async def test_one_request_that_keeps_timing_out_is_charged_and_never_opens_the_breaker() -> None:
    backend = ScriptedBackend(max_concurrency=2, always={"stuck": "timeout"})
    breaker = CircuitBreaker(threshold=2, open_s=3600.0)  # were it to open, the test would hang
    scheduler = BackendScheduler(backend, SystemClock(), retry=FAST_RETRY, breaker=breaker)
    rows: list[ResultRow] = []
    assert await asyncio.wait_for(scheduler.run(make_feed("b", ["stuck", "fine"], rows)), 60)
    await scheduler.close()
    lines = rows_by_id(rows)
    stuck = lines["stuck"]["response"]
    assert isinstance(stuck, dict)
    assert stuck["status_code"] == 504
    assert backend.attempts["stuck"] == FAST_RETRY.max_attempts
    assert breaker.state is BreakerState.CLOSED


async def test_probes_rotate_so_a_batch_of_bad_lines_never_blocks_another() -> None:
    # The earliest-deadline batch can never be served (its requests never get through); the
    # other's requests fail once each and then succeed. Probes must reach the second batch.
    stuck = [f"s{i}" for i in range(6)]
    fine = [f"f{i}" for i in range(6)]
    script: dict[str, list[int | str]] = {name: ["refused"] for name in fine}
    backend = ScriptedBackend(max_concurrency=2, script=script, always=dict.fromkeys(stuck, "refused"))
    breaker = CircuitBreaker(threshold=3, open_s=0.001, max_open_s=0.002)
    scheduler = BackendScheduler(backend, SystemClock(), retry=FAST_RETRY, breaker=breaker)
    blocked_rows: list[ResultRow] = []
    fine_rows: list[ResultRow] = []
    blocked = make_feed("blocked", stuck, blocked_rows, deadline=100)
    blocked_run = asyncio.create_task(scheduler.run(blocked))
    fine_run = scheduler.run(make_feed("fine", fine, fine_rows, deadline=200))
    assert await asyncio.wait_for(fine_run, 60)
    assert sorted(rows_by_id(fine_rows)) == fine
    assert all(row.kind is ResultKind.SUCCEEDED for row in fine_rows)
    assert blocked_rows == []  # never charged: they wait for a backend they never reached
    scheduler.stop(blocked)
    assert await blocked_run is False
    assert set(blocked.last_failures) == set(range(1, 7))  # what each stopped line last met
    await scheduler.close()


async def test_the_breaker_lets_go_at_once_when_the_backend_answers() -> None:
    # Backoffs of a minute: were any request still waiting for its own backoff after the backend
    # came back, the test would time out.
    slow = RetryPolicy(max_attempts=3, base_delay_s=60.0, max_delay_s=60.0)
    backend = ScriptedBackend(max_concurrency=8, unreachable=6)
    breaker = CircuitBreaker(threshold=3, open_s=0.001, max_open_s=0.002)
    scheduler = BackendScheduler(backend, SystemClock(), retry=slow, breaker=breaker)
    rows: list[ResultRow] = []
    assert await asyncio.wait_for(scheduler.run(make_feed("b", [f"x{i}" for i in range(8)], rows)), 30)
    await scheduler.close()
    assert len(rows) == 8
    assert all(row.kind is ResultKind.SUCCEEDED for row in rows)


async def test_answers_are_charged_while_the_breaker_is_open() -> None:
    # The backend is down for everyone (three different requests refused), then answers 503 to one
    # request for ever: that request fails within its budget even though the breaker keeps opening.
    backend = ScriptedBackend(max_concurrency=1, unreachable=3, always={"bad": 503})
    breaker = CircuitBreaker(threshold=3, open_s=0.001, max_open_s=0.002)
    scheduler = BackendScheduler(backend, SystemClock(), retry=FAST_RETRY, breaker=breaker)
    rows: list[ResultRow] = []
    ids = ["a", "b", "c", "bad"]
    assert await asyncio.wait_for(scheduler.run(make_feed("b", ids, rows)), 60)
    await scheduler.close()
    kinds = {json.loads(row.line)["custom_id"]: row.kind for row in rows}
    assert kinds == {
        "a": ResultKind.SUCCEEDED,
        "b": ResultKind.SUCCEEDED,
        "c": ResultKind.SUCCEEDED,
        "bad": ResultKind.FAILED,
    }
    assert backend.attempts["bad"] == FAST_RETRY.max_attempts


async def test_retries_wait_on_the_injected_clock() -> None:
    clock = ManualClock()
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0)
    backend = ScriptedBackend(max_concurrency=1, script={"a": [500, 500]})
    scheduler = BackendScheduler(backend, clock, retry=retry)
    rows: list[ResultRow] = []
    assert await asyncio.wait_for(scheduler.run(make_feed("b", ["a"], rows)), 30)
    await scheduler.close()
    assert backend.attempts["a"] == 3  # due at once on a clock that never moved
    assert rows[0].kind is ResultKind.SUCCEEDED
