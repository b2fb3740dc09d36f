"""BatchesService and the enqueued-token budget, in-process on a real SQLite store and local blobs: the
input is read only for a project with a budget, a refused batch is failed at once with its webhook event,
and two creates at once in one process never both pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overnight.blobs.local import LocalBlobStore
from overnight.domain.clock import ManualClock
from overnight.domain.events import Subscription, Subscriptions
from overnight.domain.ids import IdGenerator, blob_key
from overnight.domain.models import BatchStatus, FileObject
from overnight.domain.tokens import TokenBudgets
from overnight.services.batches import BatchesService
from overnight.store.sqlite import SqliteStore

S = BatchStatus
HOOK = Subscription("hook", "https://hooks.example.com/x", frozenset({"batch.failed"}), None)


@dataclass
class World:
    store: SqliteStore
    blobs: LocalBlobStore
    batches: BatchesService
    ids: IdGenerator


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = ManualClock()
    store = SqliteStore(tmp_path / "overnight.db", clock=clock)
    await store.open()
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.open()
    ids = IdGenerator(clock)
    batches = BatchesService(
        store,
        ids,
        clock,
        ["24h"],
        on_change=lambda: None,
        blobs=blobs,
        budgets=TokenBudgets({"small": 250}),
        subscriptions=Subscriptions([HOOK]),
    )
    try:
        yield World(store, blobs, batches, ids)
    finally:
        await store.close()
        await blobs.close()


async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):  # small chunks: lines cross them
        yield data[start : start + size]


async def input_file(world: World, project: str, tokens_per_line: list[int]) -> str:
    file_id = world.ids.file_id()
    lines = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "x" * (4 * tokens)}]},
        }
        for i, tokens in enumerate(tokens_per_line)
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    size = await world.blobs.put(blob_key(file_id), chunks(data))
    await world.store.add_file(FileObject(file_id, project, size, 0, "in.jsonl", "batch"))
    return file_id


def params(file_id: str) -> dict[str, str]:
    return {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}


async def test_an_accepted_batch_holds_its_estimate(world: World) -> None:
    batch = await world.batches.create("small", params(await input_file(world, "small", [100, 50])))
    assert (batch.status, batch.enqueued_tokens) == (S.VALIDATING, 150)
    assert await world.store.enqueued_tokens("small") == 150
    assert await world.store.pending_deliveries() == 0


async def test_a_refused_batch_is_failed_at_once_and_its_webhook_recorded(world: World) -> None:
    await world.batches.create("small", params(await input_file(world, "small", [200])))
    refused = await world.batches.create("small", params(await input_file(world, "small", [30, 30])))
    assert refused.status is S.FAILED
    assert refused.failed_at is not None
    assert [error.code for error in refused.errors] == ["token_limit_exceeded"]
    assert "Limit: 250 enqueued tokens" in refused.errors[0].message
    assert refused.enqueued_tokens == 0
    assert await world.store.get_batch(refused.id) == refused
    assert await world.store.enqueued_tokens("small") == 200
    assert await world.store.pending_deliveries() == 1  # its batch.failed event, in the same transaction


async def test_a_project_without_a_budget_is_not_read(world: World) -> None:
    file_id = await input_file(world, "big", [10_000])
    await world.blobs.delete(blob_key(file_id))  # reading it would find nothing; it is not read at all
    batch = await world.batches.create("big", params(file_id))
    assert (batch.status, batch.enqueued_tokens) == (S.VALIDATING, 0)


async def test_two_creates_at_once_in_one_process_never_both_pass(world: World) -> None:
    files = [await input_file(world, "small", [150]) for _ in range(2)]
    made = await asyncio.gather(*(world.batches.create("small", params(file_id)) for file_id in files))
    assert sorted(batch.status for batch in made) == sorted([S.VALIDATING, S.FAILED])
    assert await world.store.enqueued_tokens("small") == 150
