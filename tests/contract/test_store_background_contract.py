"""The store's background-response methods (add_background_response, get_background_response,
delete_background_response) and the lists that leave those responses' batches and files out, on every
implementation (see conftest.py)."""

from __future__ import annotations

import pytest

from overnight.domain.background import MARKER, StoredResponse, created_response
from overnight.domain.lifecycle import transition
from overnight.domain.models import (
    Batch,
    BatchStatus,
    FileObject,
    RequestCounts,
    ResultKind,
    ResultRow,
    Shard,
)
from overnight.domain.progress import Sample
from overnight.store.base import MetadataStore

S = BatchStatus
NOW = 1_700_000_000
A, B = "proj_a", "proj_b"


def a_batch(batch_id: str, project: str = A, *, background: bool = False) -> Batch:
    suffix = batch_id.removeprefix("batch_")
    return Batch(
        batch_id,
        project,
        "/v1/responses",
        f"file-{suffix}i",
        "24h",
        S.VALIDATING,
        NOW,
        NOW + 86400,
        metadata={MARKER: f"resp_{suffix}"} if background else None,
        output_expires_after=3600 if background else None,
    )


def a_file(file_id: str, project: str = A) -> FileObject:
    return FileObject(file_id, project, 10, NOW, f"{file_id}.jsonl", "batch", NOW + 3600)


async def add_response(store: MetadataStore, suffix: str, project: str = A) -> StoredResponse:
    batch = a_batch(f"batch_{suffix}", project, background=True)
    created = created_response(f"resp_{suffix}", {"model": "fake-chat", "temperature": 0.5}, NOW)
    stored = StoredResponse(batch, created)
    hidden = [f"file-{suffix}i", f"file-{suffix}o", f"file-{suffix}e"]
    await store.add_background_response(stored, a_file(f"file-{suffix}i", project), hidden)
    return stored


async def test_a_background_response_round_trips_with_its_batch(store: MetadataStore) -> None:
    stored = await add_response(store, "01")
    assert await store.get_background_response("batch_01", A) == stored
    assert await store.get_batch("batch_01", A) == stored.batch  # the engine runs it as any batch
    assert await store.get_file(A, "file-01i") == a_file("file-01i")
    assert await store.file_in_use("file-01i")


async def test_another_projects_or_a_plain_batch_is_no_background_response(store: MetadataStore) -> None:
    await add_response(store, "01")
    await store.add_batch(a_batch("batch_02"))
    assert await store.get_background_response("batch_01", B) is None
    assert await store.get_background_response("batch_02", A) is None
    assert await store.get_background_response("batch_03", A) is None


async def test_it_follows_its_batch_through_transitions(store: MetadataStore) -> None:
    stored = await add_response(store, "01")
    started = transition(
        stored.batch, S.IN_PROGRESS, NOW + 1, model="fake-chat", request_counts=RequestCounts(1)
    )
    assert await store.transition_batch(started, [S.VALIDATING])
    found = await store.get_background_response("batch_01", A)
    assert found is not None
    assert found.batch == started
    assert found.created == stored.created


async def test_lists_leave_background_responses_out(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_01"))
    await add_response(store, "02")
    await store.add_batch(a_batch("batch_03"))
    await add_response(store, "04", project=B)
    for project in (A, None):
        page = await store.list_batches(project, after=None, limit=10)
        assert [batch.id for batch in page.items] == ["batch_03", "batch_01"]
        after = await store.list_batches(project, after="batch_03", limit=1)
        assert [batch.id for batch in after.items] == ["batch_01"]
        assert not after.has_more
    # Their files too: the input record, and the output and error files the engine registers later.
    await store.add_file(a_file("file-01x"))
    await store.add_file(FileObject("file-02o", A, 5, NOW + 5, "batch_02_output.jsonl", "batch_output"))
    for order in ("asc", "desc"):
        files = await store.list_files(A, purpose=None, after=None, limit=10, order=order)
        assert [file.id for file in files.items] == ["file-01x"]
    assert (await store.list_files(A, purpose="batch_output", after=None, limit=10, order="asc")).items == []
    assert await store.get_file(A, "file-02o") is not None  # hidden from lists, not from its id


async def test_the_whole_response_is_stored_or_nothing(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_01"))  # the id is taken: the batch insert fails
    clash = StoredResponse(a_batch("batch_01", background=True), {"id": "resp_01"})
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver raises its own integrity error
        await store.add_background_response(clash, a_file("file-01i"), ["file-01i"])
    assert await store.get_file(A, "file-01i") is None
    assert await store.get_background_response("batch_01", A) is None


async def ran_to(store: MetadataStore, stored: StoredResponse, end: BatchStatus) -> Batch:
    """Run the response's batch as the engine does, leaving rows of every kind, and end it in `end`."""
    batch = stored.batch
    suffix = batch.id.removeprefix("batch_")
    started = transition(batch, S.IN_PROGRESS, NOW + 1, model="fake-chat", request_counts=RequestCounts(1))
    assert await store.transition_batch(started, [S.VALIDATING])
    await store.add_shards([Shard(batch.id, 0, 1, 2, 0, 1)])
    await store.record_results(batch.id, [ResultRow(1, ResultKind.FAILED, b"{}", error_code="x")])
    await store.record_progress(batch.id, Sample(NOW + 2, 0, 1))
    await store.add_file(FileObject(f"file-{suffix}e", batch.project, 2, NOW + 3, "e.jsonl", "batch_output"))
    middle = transition(started, S.CANCELLING if end is S.CANCELLED else S.FINALIZING, NOW + 3)
    assert await store.transition_batch(middle, [S.IN_PROGRESS])
    ended = transition(middle, end, NOW + 4, error_file_id=f"file-{suffix}e")
    assert await store.transition_batch(ended, [middle.status])
    assert (await store.finished_lines(batch.id), len(await store.error_groups(batch.id))) == ({1}, 1)
    assert len(await store.progress_samples(batch.id)) == len(await store.shards_of(batch.id)) == 1
    return ended


@pytest.mark.parametrize("end", [S.COMPLETED, S.CANCELLED, S.FAILED])
async def test_deleting_an_ended_response_leaves_nothing_of_it(
    store: MetadataStore, end: BatchStatus
) -> None:
    stored = await add_response(store, "01")
    if end is S.FAILED:
        assert await store.transition_batch(transition(stored.batch, S.FAILED, NOW + 1), [S.VALIDATING])
    else:
        await ran_to(store, stored, end)
    other = await add_response(store, "02")
    await store.add_batch(a_batch("batch_03"))
    assert await store.delete_background_response("batch_01", A)
    assert await store.get_background_response("batch_01", A) is None
    assert await store.get_batch("batch_01") is None
    for file_id in ("file-01i", "file-01o", "file-01e"):
        assert await store.get_file(None, file_id) is None
    assert await store.finished_lines("batch_01") == set()
    assert await store.shards_of("batch_01") == []
    assert await store.progress_samples("batch_01") == []
    assert await store.error_groups("batch_01") == []
    assert not await store.delete_background_response("batch_01", A)  # gone: as one never stored
    # Its ids are free again: a plain batch and file of the same ids are listed (no hidden row is left).
    await store.add_batch(a_batch("batch_01"))
    await store.add_file(a_file("file-01e"))
    batches = await store.list_batches(A, after=None, limit=10)
    assert [batch.id for batch in batches.items] == ["batch_03", "batch_01"]
    files = await store.list_files(A, purpose=None, after=None, limit=10, order="asc")
    assert [file.id for file in files.items] == ["file-01e"]
    # The rest is as it was.
    assert await store.get_background_response("batch_02", A) == other
    assert await store.get_file(A, "file-02i") == a_file("file-02i")


async def test_only_an_ended_response_of_the_project_is_deleted(store: MetadataStore) -> None:
    queued = await add_response(store, "01")
    assert not await store.delete_background_response("batch_01", A)  # not ended: it may still run
    cancelling = transition(queued.batch, S.CANCELLING, NOW + 1)
    assert await store.transition_batch(cancelling, [S.VALIDATING])
    assert not await store.delete_background_response("batch_01", A)  # the engine has not ended it yet
    assert await store.get_background_response("batch_01", A) is not None
    assert await store.transition_batch(transition(cancelling, S.CANCELLED, NOW + 2), [S.CANCELLING])
    assert not await store.delete_background_response("batch_01", B)  # another project's
    assert await store.get_background_response("batch_01", A) is not None
    plain = a_batch("batch_02")
    await store.add_batch(plain)
    assert await store.transition_batch(transition(plain, S.FAILED, NOW + 1), [S.VALIDATING])
    assert not await store.delete_background_response("batch_02", None)  # a batch of the Batch API
    assert await store.get_batch("batch_02") is not None
    assert await store.delete_background_response("batch_01", None)  # of any project (an admin)
    assert await store.get_background_response("batch_01", None) is None
