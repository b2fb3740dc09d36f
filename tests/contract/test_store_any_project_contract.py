"""The store's look-ups with a project of None, "of any project" (an admin key's, docs/auth.md):
get_file, list_files, delete_file and get_background_response, on every implementation (see conftest.py).
With a project they stay scoped to it (test_store_contract.py, test_store_background_contract.py)."""

from __future__ import annotations

import pytest

from overnight.domain.background import MARKER, StoredResponse, created_response
from overnight.domain.models import Batch, BatchStatus, FileObject
from overnight.store.base import MetadataStore, Order

NOW = 1_700_000_000
A, B = "proj_a", "proj_b"


def a_file(file_id: str, project: str, *, purpose: str = "batch") -> FileObject:
    return FileObject(file_id, project, 10, NOW, f"{file_id}.jsonl", purpose, NOW + 3600)


async def add_files(store: MetadataStore) -> list[FileObject]:
    """Files of two projects, interleaved by id, one of them a batch output."""
    files = [
        a_file("file-1", A),
        a_file("file-2", B),
        a_file("file-3", A, purpose="batch_output"),
        a_file("file-4", B, purpose="batch_output"),
        a_file("file-5", A),
    ]
    for file in files:
        await store.add_file(file)
    return files


async def listed(
    store: MetadataStore,
    project: str | None,
    *,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10,
    order: Order = "asc",
) -> tuple[list[str], bool]:
    page = await store.list_files(project, purpose=purpose, after=after, limit=limit, order=order)
    return [file.id for file in page.items], page.has_more


async def test_get_file_of_any_project(store: MetadataStore) -> None:
    files = await add_files(store)
    for file in files:
        assert await store.get_file(None, file.id) == file
    assert await store.get_file(None, "file-9") is None
    assert await store.get_file(A, "file-2") is None  # a project still scopes


async def test_list_files_of_every_project(store: MetadataStore) -> None:
    await add_files(store)
    assert await listed(store, None) == (["file-1", "file-2", "file-3", "file-4", "file-5"], False)
    assert await listed(store, None, order="desc") == (
        ["file-5", "file-4", "file-3", "file-2", "file-1"],
        False,
    )
    assert await listed(store, A) == (["file-1", "file-3", "file-5"], False)


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_list_files_of_every_project_pages_and_filters(store: MetadataStore, order: Order) -> None:
    await add_files(store)
    ids = ["file-1", "file-2", "file-3", "file-4", "file-5"]
    if order == "desc":
        ids.reverse()
    assert await listed(store, None, limit=2, order=order) == (ids[:2], True)
    assert await listed(store, None, after=ids[1], limit=2, order=order) == (ids[2:4], True)
    assert await listed(store, None, after=ids[3], limit=2, order=order) == (ids[4:], False)
    outputs = ["file-3", "file-4"] if order == "asc" else ["file-4", "file-3"]
    assert await listed(store, None, purpose="batch_output", order=order) == (outputs, False)
    assert await listed(store, None, purpose="batch_output", after=outputs[0], order=order) == (
        outputs[1:],
        False,
    )


async def test_delete_file_of_any_project(store: MetadataStore) -> None:
    await add_files(store)
    assert not await store.delete_file(A, "file-2")  # B's: a project still scopes
    assert await store.delete_file(None, "file-2")
    assert not await store.delete_file(None, "file-2")  # gone now
    assert await store.get_file(None, "file-2") is None
    assert await listed(store, None) == (["file-1", "file-3", "file-4", "file-5"], False)


async def test_background_responses_and_their_files_of_any_project(store: MetadataStore) -> None:
    batch = Batch(
        "batch_01",
        B,
        "/v1/responses",
        "file-01i",
        "24h",
        BatchStatus.VALIDATING,
        NOW,
        NOW + 86400,
        metadata={MARKER: "resp_01"},
        output_expires_after=3600,
    )
    stored = StoredResponse(batch, created_response("resp_01", {"model": "fake-chat"}, NOW))
    await store.add_background_response(stored, a_file("file-01i", B), ["file-01i"])
    await store.add_batch(
        Batch("batch_02", A, "/v1/chat/completions", "file-1", "24h", BatchStatus.VALIDATING, NOW, NOW)
    )
    await store.add_file(a_file("file-1", A))
    assert await store.get_background_response("batch_01", None) == stored
    assert await store.get_background_response("batch_01", A) is None
    assert await store.get_background_response("batch_02", None) is None  # a plain batch
    assert await store.get_file(None, "file-01i") == a_file("file-01i", B)  # by its id: found
    assert await listed(store, None) == (["file-1"], False)  # but never listed
