"""The background responses' service on a real SQLite store and blob folder: what it stores for the
engine to run, and what it sends upstream of `service_tier`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overnight.blobs.local import LocalBlobStore
from overnight.domain.background import MARKER, batch_id_of_response
from overnight.domain.clock import ManualClock
from overnight.domain.ids import IdGenerator, blob_key
from overnight.domain.models import BatchStatus
from overnight.services.background import BackgroundResponses
from overnight.services.batches import BatchesService
from overnight.store.sqlite import SqliteStore

BODY = {"model": "fake-chat", "input": "hi", "background": True, "service_tier": "flex", "temperature": 0.3}


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, LocalBlobStore, ManualClock]]:
    store, blobs = SqliteStore(tmp_path / "db.sqlite3"), LocalBlobStore(tmp_path / "blobs")
    await store.open()
    await blobs.open()
    yield store, blobs, ManualClock(1_700_000_000)
    await blobs.close()
    await store.close()


def service(parts: tuple[SqliteStore, LocalBlobStore, ManualClock], *, keeps: bool) -> BackgroundResponses:
    store, blobs, clock = parts
    ids = IdGenerator(clock)
    batches = BatchesService(store, ids, clock, ["24h"], on_change=lambda: None)
    return BackgroundResponses(
        store,
        blobs,
        batches,
        ids,
        clock,
        lambda model: True,
        lambda: None,
        keeps_service_tier=lambda m: keeps,
    )


async def sent_line(blobs: LocalBlobStore, input_file_id: str) -> dict[str, object]:
    content = b"".join([chunk async for chunk in blobs.read(blob_key(input_file_id))])
    line: dict[str, object] = json.loads(content)
    return line


@pytest.mark.parametrize("keeps", [False, True])
async def test_create_stores_a_queued_one_line_batch(
    parts: tuple[SqliteStore, LocalBlobStore, ManualClock], keeps: bool
) -> None:
    store, blobs, _clock = parts
    created = await service(parts, keeps=keeps).create("proj", BODY)
    assert (created["status"], created["service_tier"], created["temperature"]) == ("queued", "flex", 0.3)
    batch_id = batch_id_of_response(created["id"])
    assert batch_id is not None
    stored = await store.get_background_response(batch_id, "proj")
    assert stored is not None
    assert stored.created == created
    batch = stored.batch
    assert (batch.status, batch.endpoint, batch.metadata) == (
        BatchStatus.VALIDATING,
        "/v1/responses",
        {MARKER: created["id"]},
    )
    assert batch.expires_at - batch.created_at == 86400
    line = await sent_line(blobs, batch.input_file_id)
    expected = {key: value for key, value in BODY.items() if key != "background"}
    if not keeps:
        del expected["service_tier"]
    assert line == {"custom_id": created["id"], "method": "POST", "url": "/v1/responses", "body": expected}
    assert await store.abandoned_uploads(started_before=2_000_000_000, limit=10) == []
    assert (await store.list_batches("proj", after=None, limit=10)).items == []
