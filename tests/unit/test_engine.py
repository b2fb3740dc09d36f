"""The Engine in-process: real SQLite store, local blobs and services; a gated backend double; a manual clock.

Every test drives `engine.tick()` itself and waits on conditions (events, store state), never on sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overnight.backends.base import Attempt, StreamAnswer
from overnight.backends.router import Router
from overnight.blobs.local import LocalBlobStore
from overnight.domain.clock import ManualClock
from overnight.domain.ids import IdGenerator
from overnight.domain.models import Batch, BatchStatus, ResultKind, ResultRow
from overnight.engine.retry import RetryPolicy
from overnight.engine.worker import Engine, EngineSettings
from overnight.services.batches import BatchesService
from overnight.services.files import FilesService
from overnight.store.sqlite import SqliteStore
from support.uploads import form_parts

PROJECT = "proj_engine"
MODEL = "fake-chat"
WINDOW_S = 3600
CONDITION_TIMEOUT_S = 30.0
S = BatchStatus


class GatedBackend:
    """A Backend double: lines named in `held` wait for `release()`; others answer at once.

    Each request is identified by its custom_id, which the tests put in the message content.
    """

    name = "gated"

    def __init__(
        self,
        *,
        held: set[str] | None = None,
        statuses: dict[str, int] | None = None,
        max_concurrency: int = 4,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.held = set(held or ())
        self.statuses = dict(statuses or {})
        self.calls: Counter[str] = Counter()
        self.order: list[str] = []
        self.cancelled: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self._gate = asyncio.Event()
        self._changed = asyncio.Condition()

    def serves(self, model: str) -> bool:
        return model == MODEL

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._gate.set()

    def release(self) -> None:
        self._gate.set()

    async def wait_for_calls(self, predicate: Callable[[Counter[str]], bool]) -> None:
        async def waited() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.calls))

        await asyncio.wait_for(waited(), CONDITION_TIMEOUT_S)

    async def _answer(self, body: bytes) -> tuple[int, bytes, str]:
        custom_id: str = json.loads(body)["messages"][0]["content"]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer_in_flight(custom_id)
        finally:
            self.in_flight -= 1

    async def _answer_in_flight(self, custom_id: str) -> tuple[int, bytes, str]:
        self.calls[custom_id] += 1
        self.order.append(custom_id)
        async with self._changed:
            self._changed.notify_all()
        try:
            if custom_id in self.held:
                await self._gate.wait()
        except asyncio.CancelledError:
            self.cancelled[custom_id] += 1
            raise
        status = self.statuses.get(custom_id, 200)
        if status >= 400:
            error = {"message": f"told to fail {status}", "type": "invalid_request_error"}
            answer: dict[str, Any] = {"error": {**error, "param": None, "code": None}}
        else:
            answer = {
                "id": f"chatcmpl-{custom_id}",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            }
        return status, json.dumps(answer).encode(), f"req-{custom_id}"

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        return Attempt(*await self._answer(body))

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return await self.attempt(endpoint, body)  # answers whole


class NotifyingStore(SqliteStore):
    """The real SQLite store, plus an event set whenever results are recorded (for waiting on them)."""

    def __init__(self, path: Path, clock: ManualClock) -> None:
        super().__init__(path, clock=clock)
        self.recorded = asyncio.Event()

    async def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        new = await super().record_results(batch_id, rows)
        self.recorded.set()
        return new


@dataclass
class World:
    store: NotifyingStore
    blobs: LocalBlobStore
    clock: ManualClock
    files: FilesService
    batches: BatchesService
    engines: list[Engine]

    def engine(self, backend: GatedBackend, **overrides: Any) -> Engine:
        settings = EngineSettings(
            flush_interval_s=0.005,
            poll_interval_s=3600.0,  # never used: the tests call tick() themselves
            # Retries and the circuit breaker wait on the manual clock: retries are due at once, and
            # no test fails 5 requests in a row (an open breaker would wait for the clock to move).
            retry=RetryPolicy(max_attempts=2, base_delay_s=0.0, max_delay_s=0.0),
            cleanup_delay_s=0,
        )
        settings = dataclasses.replace(settings, **overrides)
        engine = Engine(self.store, self.blobs, Router([backend]), self.clock, settings)
        self.engines.append(engine)
        return engine

    async def submit(self, custom_ids: list[str], window: str = "1h") -> Batch:
        content = b"".join(json.dumps(request_line(cid)).encode() + b"\n" for cid in custom_ids)

        file = await self.files.upload(PROJECT, form_parts(content, purpose="batch"))
        params = {"input_file_id": file.id, "endpoint": "/v1/chat/completions", "completion_window": window}
        return await self.batches.create(PROJECT, params)

    async def batch(self, batch_id: str) -> Batch:
        return await self.batches.retrieve(PROJECT, batch_id)

    async def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        _file, chunks = await self.files.content(PROJECT, file_id)
        data = b"".join([chunk async for chunk in chunks])
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    async def wait_until(self, batch_id: str, predicate: Callable[[Batch], bool]) -> Batch:
        """Wait until the batch satisfies `predicate`, looking again after each recording of results."""

        async def waited() -> Batch:
            while True:
                self.store.recorded.clear()
                batch = await self.batch(batch_id)
                if predicate(batch):
                    return batch
                await self.store.recorded.wait()

        return await asyncio.wait_for(waited(), CONDITION_TIMEOUT_S)


def request_line(custom_id: str) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": custom_id}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = ManualClock()
    store = NotifyingStore(tmp_path / "overnight.db", clock)
    await store.open()
    blobs = LocalBlobStore(tmp_path / "blobs")
    ids = IdGenerator(clock)
    engines: list[Engine] = []
    batches = BatchesService(store, ids, clock, ["24h", "1h", "7d"], on_change=lambda: None)
    built = World(store, blobs, clock, FilesService(store, blobs, ids, clock), batches, engines)
    try:
        yield built
    finally:
        for engine in engines:
            await engine.shutdown()
        await store.close()


async def settle(engine: Engine, *steps: Callable[[], Awaitable[None]]) -> None:
    """Let every running driver finish (it ends on its own at a terminal status)."""
    for step in steps:
        await step()
    await asyncio.wait_for(engine.idle(), CONDITION_TIMEOUT_S)


def ids_of(lines: list[dict[str, Any]]) -> list[str]:
    return sorted(line["custom_id"] for line in lines)


async def test_happy_path_completes_with_an_output_file(world: World) -> None:
    names = [f"ok-{i}" for i in range(10)]
    backend = GatedBackend()
    engine = world.engine(backend)
    created = await world.submit(names)
    await settle(engine, engine.tick)

    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert batch.model == MODEL
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        10,
        10,
        0,
    )
    assert batch.usage.input_tokens == 30
    assert batch.usage.output_tokens == 20
    assert batch.in_progress_at is not None
    assert batch.finalizing_at is not None
    assert batch.completed_at is not None
    assert batch.error_file_id is None
    output = await world.lines(batch.output_file_id)
    assert ids_of(output) == sorted(names)
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    assert len({line["id"] for line in output}) == 10
    assert backend.calls == Counter(names)


async def test_non_2xx_answers_go_to_the_error_file(world: World) -> None:
    statuses = {"bad-400": 400, "bad-404": 404, "bad-500": 500}
    backend = GatedBackend(statuses=statuses)
    engine = world.engine(backend)
    created = await world.submit(["good-1", "bad-400", "good-2", "bad-404", "bad-500"])
    await settle(engine, engine.tick)

    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 3)
    assert ids_of(await world.lines(batch.output_file_id)) == ["good-1", "good-2"]
    errors = {line["custom_id"]: line for line in await world.lines(batch.error_file_id)}
    assert sorted(errors) == sorted(statuses)
    for name, status in statuses.items():
        assert errors[name]["error"] is None
        assert errors[name]["response"]["status_code"] == status
        assert "error" in errors[name]["response"]["body"]
    # 4xx answers are final; a 5xx is retried up to max_attempts, then recorded as it answered
    assert backend.calls == Counter({"good-1": 1, "good-2": 1, "bad-400": 1, "bad-404": 1, "bad-500": 2})


async def test_expiry_marks_unfinished_lines_batch_expired(world: World) -> None:
    fast = [f"fast-{i}" for i in range(3)]
    slow = [f"slow-{i}" for i in range(6)]
    backend = GatedBackend(held=set(slow), max_concurrency=8)
    engine = world.engine(backend)
    created = await world.submit(fast + slow)
    await engine.tick()
    await world.wait_until(created.id, lambda b: b.request_counts.completed == len(fast))
    await backend.wait_for_calls(lambda calls: all(calls[name] for name in slow))

    world.clock.advance(WINDOW_S - 1)
    await engine.tick()  # not yet due: nothing changes
    assert (await world.batch(created.id)).status is S.IN_PROGRESS
    world.clock.advance(1)
    await settle(engine, engine.tick)

    batch = await world.batch(created.id)
    assert batch.status is S.EXPIRED
    assert batch.expired_at == created.expires_at
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 0)
    assert ids_of(await world.lines(batch.output_file_id)) == sorted(fast)
    errors = await world.lines(batch.error_file_id)
    assert ids_of(errors) == sorted(slow)
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"
    assert backend.cancelled == Counter(slow)  # in-flight requests were abandoned, not awaited


async def test_expiry_before_validation_runs_no_request(world: World) -> None:
    backend = GatedBackend()
    engine = world.engine(backend)
    created = await world.submit(["never"])
    world.clock.advance(WINDOW_S)
    await settle(engine, engine.tick)

    batch = await world.batch(created.id)
    assert batch.status is S.EXPIRED
    assert backend.calls == Counter()
    assert batch.output_file_id is None


async def test_cancel_mid_batch(world: World) -> None:
    fast = [f"fast-{i}" for i in range(2)]
    slow = [f"slow-{i}" for i in range(12)]  # more than the window: some never reach the backend
    backend = GatedBackend(held=set(slow), max_concurrency=3)
    engine = world.engine(backend)
    created = await world.submit(fast + slow)
    await engine.tick()
    await world.wait_until(created.id, lambda b: b.request_counts.completed == len(fast))
    await backend.wait_for_calls(lambda calls: sum(calls[name] for name in slow) == 3)

    cancelling = await world.batches.cancel(PROJECT, created.id)
    assert cancelling.status is S.CANCELLING
    assert cancelling.cancelling_at is not None
    await settle(engine, engine.tick)

    batch = await world.batch(created.id)
    assert batch.status is S.CANCELLED
    assert batch.cancelled_at is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 0)
    assert ids_of(await world.lines(batch.output_file_id)) == sorted(fast)
    errors = await world.lines(batch.error_file_id)
    assert ids_of(errors) == sorted(slow)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    assert sum(backend.calls.values()) < len(fast) + len(slow)
    again = await world.batches.cancel(PROJECT, created.id)  # idempotent once cancelled
    assert again.status is S.CANCELLED


async def test_new_engine_resumes_only_lines_without_results(world: World) -> None:
    fast = [f"fast-{i}" for i in range(5)]
    slow = [f"slow-{i}" for i in range(4)]
    first = GatedBackend(held=set(slow), max_concurrency=4)
    engine = world.engine(first)
    created = await world.submit(fast + slow)
    await engine.tick()
    await world.wait_until(created.id, lambda b: b.request_counts.completed == len(fast))
    await first.wait_for_calls(lambda calls: all(calls[name] for name in slow))
    await engine.shutdown()  # as on a stop: in-flight requests are abandoned
    assert (await world.batch(created.id)).status is S.IN_PROGRESS
    assert first.cancelled == Counter(slow)

    second = GatedBackend()
    resumed = world.engine(second)
    await settle(resumed, resumed.tick)

    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert batch.request_counts.completed == len(fast) + len(slow)
    assert second.calls == Counter(slow)  # the recorded lines did not run again
    output = await world.lines(batch.output_file_id)
    # assembled from the store at the end (this engine did not see the batch start): in line order
    assert [line["custom_id"] for line in output] == fast + slow
    assert batch.error_file_id is None


async def test_a_batch_run_from_its_start_writes_its_files_as_results_arrive(world: World) -> None:
    backend = GatedBackend(held={"first"})
    engine = world.engine(backend)
    created = await world.submit(["first", "second", "third"])
    await engine.tick()
    await world.wait_until(created.id, lambda b: b.request_counts.completed == 2)
    backend.release()
    await settle(engine)

    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    output = await world.lines(batch.output_file_id)
    assert [line["custom_id"] for line in output] == ["second", "third", "first"]  # as they answered


async def test_a_dead_workers_batch_is_taken_over_when_its_lease_runs_out(world: World) -> None:
    created = await world.submit(["a", "b", "c"])
    now = int(world.clock.now())
    assert await world.store.claim_batch(created.id, "worker-that-died", now, lease_s=30)
    backend = GatedBackend()
    engine = world.engine(backend)

    await engine.tick()
    await engine.idle()
    assert backend.calls == Counter()  # still someone else's
    assert (await world.batch(created.id)).status is S.VALIDATING

    world.clock.advance(30)
    await settle(engine, engine.tick)
    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert backend.calls == Counter(["a", "b", "c"])
    assert await world.store.claim_batch(created.id, "anyone", int(world.clock.now()), lease_s=30)  # released


async def test_a_worker_that_lost_its_leases_stops_driving(world: World) -> None:
    backend = GatedBackend(held={"x"})
    engine = world.engine(backend)
    created = await world.submit(["x"])
    await engine.tick()
    await backend.wait_for_calls(lambda calls: calls["x"] == 1)
    world.clock.advance(31)  # the leases ran out and another worker took them
    now = int(world.clock.now())
    assert await world.store.claim_batch(created.id, "other-worker", now, lease_s=30)
    taken = await world.store.claim_shard("other-worker", now, lease_s=30)
    assert taken is not None
    assert taken.batch_id == created.id
    await engine.tick()
    await asyncio.wait_for(engine.idle(), CONDITION_TIMEOUT_S)
    assert backend.cancelled == Counter(["x"])


async def test_batches_sharing_a_backend_run_earliest_deadline_first(world: World) -> None:
    """Three batches with different windows share a one-slot backend: once all are queued, lines go
    out earliest deadline first (the 1h batch, then 24h, then 7d), whichever batch started first."""
    backend = GatedBackend(held={"w0", "d0", "h0"}, max_concurrency=1)
    engine = world.engine(backend)
    week = await world.submit([f"w{i}" for i in range(8)], window="7d")
    day = await world.submit([f"d{i}" for i in range(8)], window="24h")
    hour = await world.submit([f"h{i}" for i in range(8)], window="1h")
    await engine.tick()
    await backend.wait_for_calls(lambda calls: sum(calls.values()) == 1)  # one first line holds the slot
    for _ in range(3000):  # wait (bounded) until the three batches are validated and queued
        if engine.schedulers["gated"].queued == 23:
            break
        await asyncio.sleep(0.01)
    assert engine.schedulers["gated"].queued == 23
    backend.release()
    await asyncio.wait_for(engine.idle(), CONDITION_TIMEOUT_S)
    for batch in (week, day, hour):
        assert (await world.batch(batch.id)).status is S.COMPLETED
    after_first = [custom_id[0] for custom_id in backend.order[1:]]
    assert len(after_first) == 23
    assert after_first == sorted(after_first, key="hdw".index)


async def test_an_ended_batchs_results_and_deleted_input_are_cleaned_up(world: World) -> None:
    backend = GatedBackend(held={"held"})
    engine = world.engine(backend)
    created = await world.submit(["held", "other"])
    await engine.tick()
    await backend.wait_for_calls(lambda calls: calls["held"] == 1)
    await world.files.delete(PROJECT, created.input_file_id)  # the running batch still reads it
    assert await world.blobs.exists(f"files/{created.input_file_id}")
    backend.release()
    await settle(engine)
    await engine.janitor.settle()

    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert ids_of(await world.lines(batch.output_file_id)) == ["held", "other"]
    assert await world.store.finished_lines(created.id) == set()
    assert not await world.blobs.exists(f"files/{created.input_file_id}")


async def test_the_sweep_cleans_up_what_an_earlier_run_left(world: World) -> None:
    backend = GatedBackend()
    engine = world.engine(backend)
    created = await world.submit(["a", "b"])
    await settle(engine, engine.tick)
    await engine.janitor.settle()
    leftover = ResultRow(1, ResultKind.SUCCEEDED, b"{}")  # as if the server had stopped before cleaning
    await world.store.record_results(created.id, [leftover])
    assert await world.store.finished_lines(created.id) == {1}

    await world.engine(backend).janitor.sweep()
    assert await world.store.finished_lines(created.id) == set()


# -- one batch, many workers ------------------------------------------------------------------------


async def polled_until_completed(world: World, batch_id: str, *engines: Engine) -> None:
    """Poll every engine, as their loops would, until the batch is completed and they are idle: each
    poll renews the slots and moves them to whoever still has work."""
    deadline = asyncio.get_running_loop().time() + CONDITION_TIMEOUT_S
    while (await world.batch(batch_id)).status is not S.COMPLETED:
        assert asyncio.get_running_loop().time() < deadline, "the batch never completed"
        await asyncio.gather(*(engine.tick() for engine in engines))
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*(engine.idle() for engine in engines)), CONDITION_TIMEOUT_S)


async def test_two_workers_share_one_batch_by_shards(world: World) -> None:
    names = [f"s{i:02d}" for i in range(20)]
    backend = GatedBackend(max_concurrency=8)
    first = world.engine(backend, worker_id="w1", lines_per_shard=5, max_shards=2)
    second = world.engine(backend, worker_id="w2", lines_per_shard=5, max_shards=2)
    created = await world.submit(names)
    await first.tick()  # validates: 4 shards of 5 lines; w1 takes two at once
    await second.tick()  # w2 takes the other two
    await polled_until_completed(world, created.id, first, second)

    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert (batch.request_counts.completed, batch.request_counts.failed) == (20, 0)
    output = await world.lines(batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == names  # each exactly once
    assert backend.calls == Counter(names)
    shards = await world.store.shards_of(created.id)
    assert [(s.first_line, s.done) for s in shards] == [(1, True), (6, True), (11, True), (16, True)]
    assert all(s.part is not None for s in shards)  # every part was spooled: the files were joined


async def test_a_dead_workers_shard_is_taken_over_without_running_its_lines_again(world: World) -> None:
    names = [f"t{i}" for i in range(6)]
    backend = GatedBackend(held={"t4", "t5"})
    dying = world.engine(backend, worker_id="dying")
    created = await world.submit(names)
    await dying.tick()
    await world.wait_until(created.id, lambda b: b.request_counts.completed == 4)
    await backend.wait_for_calls(lambda calls: calls["t4"] == 1 and calls["t5"] == 1)
    await dying.shutdown()
    world.engines.remove(dying)
    now = int(world.clock.now())  # a kill -9 gives nothing back: hold its leases again, until now + 30
    assert await world.store.claim_batch(created.id, "dying", now, lease_s=30)
    assert await world.store.claim_shard("dying", now, lease_s=30) is not None
    world.clock.advance(31)
    backend.release()
    heir = world.engine(backend, worker_id="heir")
    await settle(heir, heir.tick, heir.tick)

    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert ids_of(await world.lines(batch.output_file_id)) == sorted(names)
    assert backend.calls == Counter(
        {**dict.fromkeys(names[:4], 1), "t4": 2, "t5": 2}
    )  # only what was in flight
    (shard,) = await world.store.shards_of(created.id)
    assert shard.part is None  # the heir started with results: the file came from the store


async def test_two_workers_never_send_more_than_the_backends_limit_together(world: World) -> None:
    names = [f"g{i:02d}" for i in range(20)]
    backend = GatedBackend(held=set(names), max_concurrency=4)
    first = world.engine(backend, worker_id="w1", lines_per_shard=5, max_shards=2)
    second = world.engine(backend, worker_id="w2", lines_per_shard=5, max_shards=2)
    created = await world.submit(names)
    await first.tick()  # validates; w1 alone wants slots: all four are its share
    await backend.wait_for_calls(lambda calls: sum(calls.values()) == 4)
    await second.tick()  # w2 takes the other shards, but no slot is free: it sends nothing
    for _ in range(200):
        await asyncio.sleep(0)
    assert backend.in_flight == 4
    caps = [engine.schedulers["gated"].cap for engine in (first, second) if "gated" in engine.schedulers]
    assert sum(caps) <= 4
    backend.release()
    await polled_until_completed(world, created.id, first, second)
    batch = await world.batch(created.id)
    assert batch.status is S.COMPLETED
    assert backend.max_in_flight == 4
    assert backend.calls == Counter(names)
