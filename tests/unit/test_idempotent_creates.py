"""IdempotentCreates on the real SqliteStore with a clock the test moves: one object per key, the
request that races waits for it, a failed or dead request frees its key, and keys are swept after a day."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overnight.domain.clock import ManualClock
from overnight.domain.errors import ApiError, Conflict, NotFound
from overnight.domain.idempotency import KEY_TTL_S, STALE_S, KeyRecord, KeyReused
from overnight.services.idempotency import IdempotentCreates
from overnight.store.sqlite import SqliteStore


class Objects:
    """A stand-in for the objects a create makes: ids to names, in memory."""

    def __init__(self) -> None:
        self.made: dict[str, str] = {}
        self._ids = (f"obj_{n}" for n in itertools.count(1))

    def new_id(self) -> str:
        return next(self._ids)

    async def find(self, object_id: str) -> str | None:
        return self.made.get(object_id)

    @staticmethod
    def gone(object_id: str) -> ApiError:
        return NotFound(f"{object_id} is gone")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "overnight.db")
    await opened.open()
    yield opened
    await opened.close()


async def _create(
    creates: IdempotentCreates, objects: Objects, fingerprint: str, name: str
) -> tuple[str, bool]:
    async def make(object_id: str) -> str:
        objects.made[object_id] = name
        return name

    outcome = await creates.create(
        "proj", "key", fingerprint, new_id=objects.new_id, create=make, find=objects.find, gone=objects.gone
    )
    return outcome.value, outcome.created


async def test_a_key_makes_one_object_and_refuses_another_request(store: SqliteStore) -> None:
    creates, objects = IdempotentCreates(store, ManualClock()), Objects()
    assert await _create(creates, objects, "fp", "first") == ("first", True)
    assert await _create(creates, objects, "fp", "second") == ("first", False)
    with pytest.raises(KeyReused):
        await _create(creates, objects, "other", "third")
    assert list(objects.made) == ["obj_1"]


async def test_a_racing_request_waits_for_the_object(store: SqliteStore) -> None:
    creates, objects = IdempotentCreates(store, ManualClock()), Objects()
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow(object_id: str) -> str:
        started.set()
        await finish.wait()
        objects.made[object_id] = "slow"
        return "slow"

    first = asyncio.create_task(
        creates.create(
            "proj", "key", "fp", new_id=objects.new_id, create=slow, find=objects.find, gone=objects.gone
        )
    )
    await started.wait()
    second = asyncio.create_task(_create(creates, objects, "fp", "never"))
    await asyncio.sleep(0.2)
    assert not second.done()  # waiting for the first request's object
    finish.set()
    assert (await first).value == "slow"
    assert await second == ("slow", False)


async def test_a_failed_request_frees_its_key(store: SqliteStore) -> None:
    creates, objects = IdempotentCreates(store, ManualClock()), Objects()

    async def refused(object_id: str) -> str:
        raise NotFound("no such input")

    with pytest.raises(NotFound):
        await creates.create(
            "proj", "key", "fp", new_id=objects.new_id, create=refused, find=objects.find, gone=objects.gone
        )
    assert await store.get_key("proj", "key") is None
    assert await _create(creates, objects, "fp", "later") == ("later", True)


async def test_a_key_whose_request_died_is_busy_then_taken_over(store: SqliteStore) -> None:
    clock = ManualClock()
    creates, objects = IdempotentCreates(store, clock, wait_s=0.2), Objects()
    await store.remember_key(KeyRecord("proj", "key", "fp", "obj_dead", int(clock.now())))
    with pytest.raises(Conflict) as busy:
        await _create(creates, objects, "fp", "too soon")
    assert busy.value.code == "idempotency_key_in_use"
    clock.advance(STALE_S)
    assert await _create(creates, objects, "fp", "taken over") == ("taken over", True)
    found = await store.get_key("proj", "key")
    assert found is not None
    assert found.object_id != "obj_dead"
    assert found.completed_at == int(clock.now())


async def test_a_deleted_object_is_gone_and_keys_are_swept_after_a_day(store: SqliteStore) -> None:
    clock = ManualClock()
    creates, objects = IdempotentCreates(store, clock), Objects()
    await _create(creates, objects, "fp", "doomed")
    objects.made.clear()
    with pytest.raises(NotFound):
        await _create(creates, objects, "fp", "again")
    clock.advance(KEY_TTL_S - 1)
    assert await creates.sweep() == 0
    clock.advance(2)
    assert await creates.sweep() == 1
    assert await _create(creates, objects, "fp", "fresh") == ("fresh", True)
