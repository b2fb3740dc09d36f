"""The store's per-project limit queries (stored_bytes, nth_latest_batch_created_at: docs/limits.md), on
every implementation (see conftest.py)."""

from __future__ import annotations

from overnight.domain.background import MARKER, StoredResponse, created_response
from overnight.domain.models import Batch, BatchStatus, FileObject
from overnight.store.base import MetadataStore

NOW = 1_700_000_000
HOUR = 3600
A, B = "proj_a", "proj_b"


def a_file(
    file_id: str, project: str = A, size: int = 100, expires_at: int | None = None, purpose: str = "batch"
) -> FileObject:
    return FileObject(file_id, project, size, NOW - 10, f"{file_id}.jsonl", purpose, expires_at)


def a_batch(
    batch_id: str, created_at: int, project: str = A, metadata: dict[str, str] | None = None
) -> Batch:
    return Batch(
        batch_id,
        project,
        "/v1/chat/completions",
        "file-in",
        "24h",
        BatchStatus.VALIDATING,
        created_at,
        created_at + 86400,
        metadata=metadata,
    )


async def test_stored_bytes_sums_the_projects_live_files(store: MetadataStore) -> None:
    assert await store.stored_bytes(A, NOW) == 0
    await store.add_file(a_file("file-1", size=100))
    await store.add_file(a_file("file-2", size=250, expires_at=NOW + 1, purpose="batch_output"))
    await store.add_file(a_file("file-3", size=7, purpose="user_data"))
    await store.add_file(a_file("file-4", B, size=10_000))  # another project's
    assert await store.stored_bytes(A, NOW) == 357
    assert await store.stored_bytes(B, NOW) == 10_000
    assert await store.stored_bytes("proj_none", NOW) == 0


async def test_stored_bytes_leaves_out_expired_and_deleted_files(store: MetadataStore) -> None:
    await store.add_file(a_file("file-1", size=100, expires_at=NOW))  # expired at this very second
    await store.add_file(a_file("file-2", size=20, expires_at=NOW + 60))
    await store.add_file(a_file("file-3", size=3))
    assert await store.stored_bytes(A, NOW) == 23
    assert await store.stored_bytes(A, NOW - 1) == 123
    assert await store.delete_file(A, "file-3")
    assert await store.stored_bytes(A, NOW) == 20


async def test_stored_bytes_does_not_count_uploads_still_streaming(store: MetadataStore) -> None:
    await store.begin_upload("file-9", NOW)
    assert await store.stored_bytes(A, NOW) == 0


async def test_stored_bytes_counts_big_files_without_overflow(store: MetadataStore) -> None:
    big = 3 * 1024**4  # 3 TiB each, past 32 bits many times over
    for index in range(3):
        await store.add_file(a_file(f"file-{index}", size=big))
    assert await store.stored_bytes(A, NOW) == 3 * big


async def test_nth_latest_batch_counts_back_from_the_newest(store: MetadataStore) -> None:
    for index, created_at in enumerate([NOW - 7200, NOW - 3000, NOW - 2000, NOW - 1000, NOW]):
        await store.add_batch(a_batch(f"batch_{index}", created_at))
    since = NOW - HOUR
    assert await store.nth_latest_batch_created_at(A, since, 1) == NOW
    assert await store.nth_latest_batch_created_at(A, since, 2) == NOW - 1000
    assert await store.nth_latest_batch_created_at(A, since, 4) == NOW - 3000
    assert await store.nth_latest_batch_created_at(A, since, 5) is None  # one is older than `since`
    assert await store.nth_latest_batch_created_at(A, NOW - 7200, 5) == NOW - 7200  # `since` included


async def test_nth_latest_batch_is_per_project(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_a1", NOW - 10))
    await store.add_batch(a_batch("batch_b1", NOW - 5, B))
    await store.add_batch(a_batch("batch_b2", NOW - 1, B))
    assert await store.nth_latest_batch_created_at(A, NOW - HOUR, 1) == NOW - 10
    assert await store.nth_latest_batch_created_at(A, NOW - HOUR, 2) is None
    assert await store.nth_latest_batch_created_at(B, NOW - HOUR, 2) == NOW - 5
    assert await store.nth_latest_batch_created_at("proj_none", NOW - HOUR, 1) is None


async def test_nth_latest_batch_counts_batches_of_one_second_each(store: MetadataStore) -> None:
    for index in range(3):
        await store.add_batch(a_batch(f"batch_{index}", NOW))
    assert await store.nth_latest_batch_created_at(A, NOW, 3) == NOW
    assert await store.nth_latest_batch_created_at(A, NOW, 4) is None


async def test_nth_latest_batch_leaves_background_responses_out(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", NOW - 100))
    hidden = a_batch("batch_2", NOW - 50, metadata={MARKER: "resp_2"})
    response = StoredResponse(hidden, created_response("resp_2", {"model": "fake-chat"}, NOW - 50))
    input_file = a_file("file-2i")
    await store.add_background_response(response, input_file, ["file-2i", "file-2o", "file-2e"])
    assert await store.nth_latest_batch_created_at(A, NOW - HOUR, 1) == NOW - 100
    assert await store.nth_latest_batch_created_at(A, NOW - HOUR, 2) is None
