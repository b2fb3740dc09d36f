"""FilesService.sweep_expired on the real SqliteStore and LocalBlobStore, with a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from overnight.blobs.local import LocalBlobStore
from overnight.domain import limits
from overnight.domain.clock import ManualClock
from overnight.domain.errors import NotFound
from overnight.domain.ids import IdGenerator, blob_key
from overnight.domain.models import Batch, BatchStatus, FileObject
from overnight.services.files import FilesService
from overnight.store.sqlite import SqliteStore
from support.uploads import form_parts

PROJECT = "proj"
HOUR = 3600
DAY = 86_400


@dataclass
class Env:
    clock: ManualClock
    store: SqliteStore
    blobs: LocalBlobStore
    ids: IdGenerator
    files: FilesService


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = ManualClock()
    store = SqliteStore(tmp_path / "overnight.db", clock=clock)
    await store.open()
    blobs = LocalBlobStore(tmp_path / "blobs")
    ids = IdGenerator(clock)
    try:
        yield Env(clock, store, blobs, ids, FilesService(store, blobs, ids, clock))
    finally:
        await store.close()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _upload(env: Env, purpose: str, *, seconds: int | None = None, name: str = "f.jsonl") -> FileObject:
    expiry = (
        {}
        if seconds is None
        else {"expires_after[anchor]": "created_at", "expires_after[seconds]": str(seconds)}
    )
    parts = form_parts(b'{"x": 1}\n', filename=name, purpose=purpose, **expiry)
    return await env.files.upload(PROJECT, parts)


async def _present(env: Env, file: FileObject) -> tuple[bool, bool]:
    """(record still there, content still there)."""
    record = await env.store.get_file(PROJECT, file.id) is not None
    return record, await env.blobs.exists(blob_key(file.id))


async def _batch_reading(env: Env, file: FileObject, status: BatchStatus) -> Batch:
    now = int(env.clock.now())
    batch = Batch(
        id=env.ids.batch_id(),
        project=PROJECT,
        endpoint="/v1/chat/completions",
        input_file_id=file.id,
        completion_window="24h",
        status=status,
        created_at=now,
        expires_at=now + DAY,
    )
    await env.store.add_batch(batch)
    return batch


async def test_nothing_is_swept_before_it_is_due(env: Env) -> None:
    short = await _upload(env, "user_data", seconds=HOUR, name="short.txt")
    await _upload(env, "batch")
    await _upload(env, "user_data", name="forever.txt")
    assert await env.files.sweep_expired() == 0
    env.clock.advance(HOUR - 1)
    assert await env.files.sweep_expired() == 0
    assert await _present(env, short) == (True, True)


async def test_expired_files_and_their_blobs_go_unexpired_stay(env: Env) -> None:
    short = await _upload(env, "user_data", seconds=HOUR, name="short.txt")
    day = await _upload(env, "vision", seconds=DAY, name="day.png")
    batch_input = await _upload(env, "batch")
    forever = await _upload(env, "user_data", name="forever.txt")
    assert short.expires_at == short.created_at + HOUR
    assert batch_input.expires_at == batch_input.created_at + limits.BATCH_FILE_DEFAULT_TTL_SECONDS
    assert forever.expires_at is None

    env.clock.advance(HOUR)  # exactly at expires_at: due
    assert await env.files.sweep_expired() == 1
    assert await _present(env, short) == (False, False)
    assert await _present(env, day) == (True, True)
    with pytest.raises(NotFound):
        await env.files.retrieve(PROJECT, short.id)

    env.clock.advance(limits.BATCH_FILE_DEFAULT_TTL_SECONDS)
    assert await env.files.sweep_expired() == 2
    assert await _present(env, day) == (False, False)
    assert await _present(env, batch_input) == (False, False)
    assert await _present(env, forever) == (True, True)

    env.clock.advance(10 * 365 * DAY)
    assert await env.files.sweep_expired() == 0
    assert await _present(env, forever) == (True, True)


async def test_sweep_drains_more_than_one_batch_of_due_files(env: Env) -> None:
    due = [await _upload(env, "user_data", seconds=HOUR, name=f"{i}.txt") for i in range(7)]
    later = await _upload(env, "user_data", seconds=2 * HOUR, name="later.txt")
    env.clock.advance(HOUR)
    assert await env.files.sweep_expired(batch_size=2) == 7
    for file in due:
        assert await _present(env, file) == (False, False)
    assert await _present(env, later) == (True, True)


@pytest.mark.parametrize("status", [BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING])
async def test_input_of_an_active_batch_loses_its_record_but_keeps_its_content(
    env: Env, status: BatchStatus
) -> None:
    used = await _upload(env, "batch", seconds=HOUR, name="used.jsonl")
    idle = await _upload(env, "batch", seconds=HOUR, name="idle.jsonl")
    await _batch_reading(env, used, status)

    env.clock.advance(HOUR)
    assert await env.files.sweep_expired() == 2
    assert await _present(env, idle) == (False, False)
    assert await _present(env, used) == (False, True)  # the running batch still reads it
    with pytest.raises(NotFound):
        await env.files.retrieve(PROJECT, used.id)
    with pytest.raises(NotFound):
        await env.files.content(PROJECT, used.id)

    # Later sweeps neither count it again nor take the content from under the batch.
    env.clock.advance(DAY)
    assert await env.files.sweep_expired() == 0
    assert await _present(env, used) == (False, True)


async def test_input_of_a_finished_batch_is_swept_with_its_content(env: Env) -> None:
    used = await _upload(env, "batch", seconds=HOUR, name="used.jsonl")
    batch = await _batch_reading(env, used, BatchStatus.IN_PROGRESS)
    assert await env.store.file_in_use(used.id)
    ended = await env.store.transition_batch(
        replace(batch, status=BatchStatus.COMPLETED, completed_at=int(env.clock.now())),
        expected=(BatchStatus.IN_PROGRESS,),
    )
    assert ended
    assert not await env.store.file_in_use(used.id)

    env.clock.advance(HOUR)
    assert await env.files.sweep_expired() == 1
    assert await _present(env, used) == (False, False)
