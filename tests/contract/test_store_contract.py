"""The MetadataStore contract: every implementation passes every test here (see conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overnight.domain.lifecycle import TERMINAL, transition
from overnight.domain.models import (
    Batch,
    BatchError,
    BatchStatus,
    FileObject,
    RequestCounts,
    ResultKind,
    ResultRow,
    Usage,
)
from overnight.store.base import MetadataStore, Order
from overnight.store.schema import SchemaTooNew, load_migrations
from overnight.store.sqlite import SqliteStore

StoreFactory = Callable[[], MetadataStore]  # as conftest.store_factory provides
S = BatchStatus
K = ResultKind
PROJECT = "proj_a"
OTHER = "proj_b"
_unique = itertools.count()
SHARED_STORE = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def a_file(
    file_id: str, project: str = PROJECT, *, purpose: str = "batch", expires_at: int | None = None
) -> FileObject:
    return FileObject(file_id, project, 123, 1_700_000_000, f"{file_id}.jsonl", purpose, expires_at)


async def line_numbers(store: MetadataStore, batch_id: str, kinds: list[ResultKind]) -> list[int]:
    """The line numbers of the streamed result lines (rows made by `a_row` hold their number)."""
    data = b"".join([chunk async for chunk in store.result_lines(batch_id, kinds)])
    return [int(line.removeprefix(b'{"line":').removesuffix(b"}")) for line in data.splitlines()]


def a_batch(
    batch_id: str,
    project: str = PROJECT,
    *,
    status: BatchStatus = S.VALIDATING,
    input_file_id: str = "file-in",
) -> Batch:
    return Batch(
        batch_id, project, "/v1/chat/completions", input_file_id, "24h", status, 1_700_000_000, 1_700_086_400
    )


def a_row(line_no: int, kind: ResultKind = K.SUCCEEDED, usage: Usage | None = None) -> ResultRow:
    return ResultRow(line_no, kind, b'{"line":%d}' % line_no, usage or Usage(10, 5, 2, 1))


def fresh(prefix: str) -> str:
    """A token no other Hypothesis example used, so examples sharing one store never collide."""
    return f"{prefix}{next(_unique):06d}"


# -- files ---------------------------------------------------------------------------------------


async def test_file_round_trips_and_is_project_scoped(store: MetadataStore) -> None:
    file = a_file("file-1", expires_at=1_700_003_600)
    await store.add_file(file)
    assert await store.get_file(PROJECT, "file-1") == file
    assert await store.get_file(OTHER, "file-1") is None
    assert await store.get_file(PROJECT, "file-2") is None


async def test_an_upload_is_abandoned_until_its_record_is_added(store: MetadataStore) -> None:
    await store.begin_upload("file-up1", 100)
    await store.begin_upload("file-up2", 200)
    await store.begin_upload("file-up3", 300)
    await store.begin_upload("file-up1", 150)  # again: harmless, the first start stands
    assert await store.abandoned_uploads(started_before=250, limit=10) == ["file-up1", "file-up2"]
    assert await store.abandoned_uploads(started_before=1000, limit=1) == ["file-up1"]
    await store.add_file(a_file("file-up1"))  # the record ends the upload
    await store.end_upload("file-up2")  # discarded
    await store.end_upload("file-never")  # absent is fine
    assert await store.abandoned_uploads(started_before=1000, limit=10) == ["file-up3"]


async def test_list_files_filters_by_project_and_purpose(store: MetadataStore) -> None:
    for file in [a_file("file-1"), a_file("file-2", purpose="batch_output"), a_file("file-3", OTHER)]:
        await store.add_file(file)
    everything = await store.list_files(PROJECT, purpose=None, after=None, limit=10, order="asc")
    assert [f.id for f in everything.items] == ["file-1", "file-2"]
    assert not everything.has_more
    outputs = await store.list_files(PROJECT, purpose="batch_output", after=None, limit=10, order="desc")
    assert [f.id for f in outputs.items] == ["file-2"]


async def test_add_file_again_replaces_the_record(store: MetadataStore) -> None:
    await store.add_file(a_file("file-1"))
    await store.add_file(a_file("file-1", purpose="batch_output"))
    stored = await store.get_file(PROJECT, "file-1")
    assert stored is not None
    assert stored.purpose == "batch_output"
    listed = await store.list_files(PROJECT, purpose=None, after=None, limit=10, order="asc")
    assert [f.id for f in listed.items] == ["file-1"]


async def test_delete_file_only_removes_own_existing_file(store: MetadataStore) -> None:
    await store.add_file(a_file("file-1"))
    assert not await store.delete_file(OTHER, "file-1")
    assert await store.delete_file(PROJECT, "file-1")
    assert not await store.delete_file(PROJECT, "file-1")
    assert await store.get_file(PROJECT, "file-1") is None


async def test_files_expired_before_includes_the_boundary_across_projects(store: MetadataStore) -> None:
    for file in [
        a_file("file-1", expires_at=100),
        a_file("file-2", OTHER, expires_at=200),
        a_file("file-3", expires_at=201),
        a_file("file-4"),
    ]:
        await store.add_file(file)
    assert [f.id for f in await store.files_expired_before(200, limit=10)] == ["file-1", "file-2"]
    assert len(await store.files_expired_before(10_000, limit=1)) == 1


async def test_file_in_use_while_a_live_batch_reads_it(store: MetadataStore) -> None:
    batch = a_batch("batch_1", input_file_id="file-in")
    await store.add_batch(batch)
    assert await store.file_in_use("file-in")
    assert not await store.file_in_use("file-other")
    assert await store.transition_batch(transition(batch, S.FAILED, now=5), [S.VALIDATING])
    assert not await store.file_in_use("file-in")


@pytest.mark.parametrize("status", sorted(S))
async def test_file_in_use_follows_terminal_statuses(store: MetadataStore, status: BatchStatus) -> None:
    await store.add_batch(a_batch("batch_1", status=status))
    assert await store.file_in_use("file-in") is (status not in TERMINAL)


# -- batches -------------------------------------------------------------------------------------


async def test_batch_round_trips_every_field(store: MetadataStore) -> None:
    batch = dataclasses.replace(
        a_batch("batch_1", status=S.CANCELLED),
        metadata={"team": "ml", "note": "é ünïcode"},
        output_expires_after=86_400,
        model="gpt-x",
        errors=(BatchError("invalid_json", "bad line", "body", 3), BatchError("other", "msg")),
        output_file_id="file-out",
        error_file_id="file-err",
        in_progress_at=1,
        finalizing_at=2,
        completed_at=3,
        failed_at=4,
        expired_at=5,
        cancelling_at=6,
        cancelled_at=7,
        request_counts=RequestCounts(total=9),
    )
    await store.add_batch(batch)
    assert await store.get_batch("batch_1") == batch
    assert await store.get_batch("batch_1", PROJECT) == batch
    assert await store.get_batch("batch_1", OTHER) is None
    assert await store.get_batch("batch_2") is None


async def test_list_batches_is_newest_first_and_project_scoped(store: MetadataStore) -> None:
    for batch_id in ["batch_1", "batch_3", "batch_2"]:
        await store.add_batch(a_batch(batch_id))
    await store.add_batch(a_batch("batch_4", OTHER))
    first = await store.list_batches(PROJECT, after=None, limit=2)
    assert ([b.id for b in first.items], first.has_more) == (["batch_3", "batch_2"], True)
    rest = await store.list_batches(PROJECT, after="batch_2", limit=2)
    assert ([b.id for b in rest.items], rest.has_more) == (["batch_1"], False)


async def test_transition_is_a_compare_and_set(store: MetadataStore) -> None:
    batch = a_batch("batch_1")
    await store.add_batch(batch)
    started = transition(batch, S.IN_PROGRESS, now=10, model="gpt-x", request_counts=RequestCounts(total=4))
    assert await store.transition_batch(started, [S.VALIDATING, S.CANCELLING])
    assert await store.get_batch("batch_1") == started
    failed = transition(batch, S.FAILED, now=11)
    assert not await store.transition_batch(failed, [S.VALIDATING])
    assert not await store.transition_batch(failed, [])
    assert not await store.transition_batch(a_batch("batch_missing"), [S.VALIDATING])
    assert await store.get_batch("batch_1") == started


async def test_only_one_of_racing_transitions_wins(store: MetadataStore) -> None:
    batch = transition(a_batch("batch_1"), S.IN_PROGRESS, now=1)
    await store.add_batch(batch)
    moves = [transition(batch, target, now=2) for target in (S.FINALIZING, S.CANCELLING, S.EXPIRED) * 5]
    won = await asyncio.gather(*(store.transition_batch(move, [S.IN_PROGRESS]) for move in moves))
    assert sum(won) == 1
    stored = await store.get_batch("batch_1")
    assert stored is not None
    assert stored.status is moves[won.index(True)].status


async def test_transition_writes_its_fields_but_never_the_counters(store: MetadataStore) -> None:
    batch = transition(a_batch("batch_1"), S.IN_PROGRESS, now=1, request_counts=RequestCounts(total=3))
    await store.add_batch(batch)
    await store.record_results("batch_1", [a_row(1), a_row(2, K.FAILED)])
    stale = transition(
        batch,
        S.FINALIZING,
        now=2,
        output_file_id="file-out",
        error_file_id="file-err",
        errors=(BatchError("x", "y"),),
        request_counts=RequestCounts(total=5, completed=99, failed=99),
        usage=Usage(99, 99, 99, 99),
    )
    assert await store.transition_batch(stale, [S.IN_PROGRESS])
    stored = await store.get_batch("batch_1")
    assert stored == dataclasses.replace(
        stale, request_counts=RequestCounts(total=5, completed=1, failed=1), usage=Usage(20, 10, 4, 2)
    )


async def test_batches_in_is_oldest_first_across_projects(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_3", status=S.IN_PROGRESS))
    await store.add_batch(a_batch("batch_1", OTHER, status=S.CANCELLING))
    await store.add_batch(a_batch("batch_2", status=S.COMPLETED))
    await store.add_batch(a_batch("batch_0", status=S.IN_PROGRESS))
    found = await store.batches_in([S.IN_PROGRESS, S.CANCELLING])
    assert [b.id for b in found] == ["batch_0", "batch_1", "batch_3"]
    assert await store.batches_in([]) == []


# -- results -------------------------------------------------------------------------------------


async def test_record_results_counts_only_new_rows(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    first = [a_row(1), a_row(2, K.FAILED), a_row(3, K.NOT_RUN, Usage()), a_row(1, K.FAILED)]
    assert await store.record_results("batch_1", first) == 3
    again = [a_row(2), a_row(3), a_row(4, usage=Usage(100, 0, 0, 0))]
    assert await store.record_results("batch_1", again) == 1
    assert await store.record_results("batch_1", []) == 0
    batch = await store.get_batch("batch_1")
    assert batch is not None
    assert batch.request_counts == RequestCounts(total=0, completed=2, failed=1)
    assert batch.usage == Usage(120, 10, 4, 2)
    assert await store.finished_lines("batch_1") == {1, 2, 3, 4}
    assert await line_numbers(store, "batch_1", [K.SUCCEEDED]) == [1, 4]
    assert await line_numbers(store, "batch_1", [K.FAILED]) == [2]
    assert await line_numbers(store, "batch_1", [K.NOT_RUN]) == [3]


async def test_results_stream_in_line_order_and_filter_by_kind(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    await store.add_batch(a_batch("batch_2", status=S.IN_PROGRESS))
    lines = list(range(1, 2_501))
    shuffled = lines[1::2] + lines[::2]
    kinds = {n: (K.SUCCEEDED, K.FAILED, K.NOT_RUN)[n % 3] for n in lines}
    for start in range(0, len(shuffled), 400):
        rows = [a_row(n, kinds[n]) for n in shuffled[start : start + 400]]
        await store.record_results("batch_1", rows)
    await store.record_results("batch_2", [a_row(1), a_row(5000)])
    assert await line_numbers(store, "batch_1", list(K)) == lines
    errors = await line_numbers(store, "batch_1", [K.FAILED, K.NOT_RUN])
    assert errors == [n for n in lines if kinds[n] is not K.SUCCEEDED]
    assert await line_numbers(store, "batch_1", []) == []
    assert await line_numbers(store, "batch_none", list(K)) == []


async def test_ended_batches_with_results(store: MetadataStore) -> None:
    ended = (S.COMPLETED, S.CANCELLED, S.EXPIRED, S.FAILED)
    for batch_id, status in [
        ("batch_a", S.COMPLETED),
        ("batch_b", S.CANCELLED),
        ("batch_c", S.IN_PROGRESS),
        ("batch_d", S.COMPLETED),
        ("batch_e", S.EXPIRED),
    ]:
        await store.add_batch(a_batch(batch_id, status=status))
    for batch_id in ("batch_a", "batch_b", "batch_c", "batch_e"):
        await store.record_results(batch_id, [a_row(1), a_row(2)])
    assert await store.ended_batches_with_results(ended, limit=10) == ["batch_a", "batch_b", "batch_e"]
    assert await store.ended_batches_with_results(ended, limit=2) == ["batch_a", "batch_b"]
    assert await store.ended_batches_with_results([S.CANCELLED], limit=10) == ["batch_b"]
    assert await store.ended_batches_with_results([], limit=10) == []
    await store.delete_results("batch_a")
    assert await store.ended_batches_with_results(ended, limit=10) == ["batch_b", "batch_e"]


async def test_delete_results(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    await store.add_batch(a_batch("batch_2", status=S.IN_PROGRESS))
    await store.record_results("batch_1", [a_row(1), a_row(2)])
    await store.record_results("batch_2", [a_row(1)])
    await store.delete_results("batch_1")
    assert await store.finished_lines("batch_1") == set()
    assert await store.finished_lines("batch_2") == {1}


async def test_concurrent_recording_counts_each_line_once(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    groups = [[a_row(n) for n in range(start, start + 300)] for start in range(1, 3000, 150)]
    new = await asyncio.gather(*(store.record_results("batch_1", group) for group in groups))
    assert sum(new) == 3_150  # lines 1..3150, most of them sent twice
    batch = await store.get_batch("batch_1")
    assert batch is not None
    assert batch.request_counts.completed == 3_150


@SHARED_STORE
@given(
    groups=st.lists(
        st.lists(st.tuples(st.integers(1, 30), st.sampled_from(list(K)), st.integers(0, 50)), max_size=12),
        max_size=6,
    )
)
async def test_counters_follow_the_first_row_of_each_line(
    store: MetadataStore, groups: list[list[tuple[int, ResultKind, int]]]
) -> None:
    batch_id = fresh("batch_")
    await store.add_batch(a_batch(batch_id, status=S.IN_PROGRESS))
    first: dict[int, tuple[ResultKind, int]] = {}
    for group in groups:
        new = await store.record_results(
            batch_id, [a_row(n, kind, Usage(tokens, 1)) for n, kind, tokens in group]
        )
        before = len(first)
        for n, kind, tokens in group:
            first.setdefault(n, (kind, tokens))
        assert new == len(first) - before
    batch = await store.get_batch(batch_id)
    assert batch is not None
    completed = sum(kind is K.SUCCEEDED for kind, _ in first.values())
    failed = sum(kind is K.FAILED for kind, _ in first.values())
    assert batch.request_counts == RequestCounts(0, completed, failed)
    assert batch.usage == Usage(sum(tokens for _, tokens in first.values()), len(first))


# -- pagination ----------------------------------------------------------------------------------


@SHARED_STORE
@given(
    numbers=st.sets(st.integers(0, 5_000), max_size=25),
    limit=st.integers(1, 7),
    order=st.sampled_from(["asc", "desc"]),
    start=st.none() | st.integers(-1, 5_001),
)
async def test_walking_files_yields_each_once(
    store: MetadataStore, numbers: set[int], limit: int, order: Order, start: int | None
) -> None:
    project, prefix = fresh("proj_"), fresh("file-")
    ids = {f"{prefix}{n:08x}" for n in numbers}
    for file_id in ids:
        await store.add_file(a_file(file_id, project))
    await store.add_file(a_file(fresh("file-"), fresh("proj_")))  # another project's file
    after = None if start is None else f"{prefix}{start:08x}"  # may be an id that does not exist
    expected = sorted(i for i in ids if after is None or (i > after if order == "asc" else i < after))
    if order == "desc":
        expected.reverse()
    walked: list[str] = []
    while True:
        page = await store.list_files(project, purpose=None, after=after, limit=limit, order=order)
        assert len(page.items) <= limit
        walked += [f.id for f in page.items]
        if not page.has_more:
            break
        assert len(page.items) == limit
        after = page.items[-1].id
    assert walked == expected


@SHARED_STORE
@given(numbers=st.sets(st.integers(0, 5_000), max_size=25), limit=st.integers(1, 7))
async def test_walking_batches_yields_each_once(store: MetadataStore, numbers: set[int], limit: int) -> None:
    project, prefix = fresh("proj_"), fresh("batch_")
    ids = {f"{prefix}{n:08x}" for n in numbers}
    for batch_id in ids:
        await store.add_batch(a_batch(batch_id, project))
    await store.add_batch(a_batch(fresh("batch_"), fresh("proj_")))
    walked: list[str] = []
    after: str | None = None
    while True:
        page = await store.list_batches(project, after=after, limit=limit)
        walked += [b.id for b in page.items]
        if not page.has_more:
            break
        assert len(page.items) == limit
        after = page.items[-1].id
    assert walked == sorted(ids, reverse=True)


# -- lifecycle of the store itself ---------------------------------------------------------------


async def test_data_survives_close_and_reopen(store_factory: StoreFactory) -> None:
    first = store_factory()
    await first.open()
    await first.add_file(a_file("file-1"))
    await first.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    await first.record_results("batch_1", [a_row(1), a_row(2, K.FAILED)])
    await first.close()
    await first.close()  # closing twice is harmless
    for _ in range(2):  # re-opening an up-to-date database applies nothing and fails nothing
        again = store_factory()
        await again.open()
        assert await again.get_file(PROJECT, "file-1") == a_file("file-1")
        batch = await again.get_batch("batch_1")
        assert batch is not None
        assert batch.request_counts == RequestCounts(0, 1, 1)
        assert await line_numbers(again, "batch_1", list(K)) == [1, 2]
        await again.close()


# -- SQLite specifics ----------------------------------------------------------------------------


async def test_sqlite_records_migrations_and_uses_wal(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        shipped = [migration.version for migration in load_migrations()]
        assert [row[0] for row in conn.execute("SELECT version FROM schema_migrations")] == shipped
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_sqlite_upgrades_a_version_1_database_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.add_batch(a_batch("batch_1"))
    await store.close()
    with sqlite3.connect(path) as conn:  # turn it back into what release 1 left on disk
        conn.execute("ALTER TABLE batches DROP COLUMN worker_id")
        conn.execute("ALTER TABLE batches DROP COLUMN lease_expires_at")
        conn.execute("DELETE FROM schema_migrations WHERE version = 2")
    conn.close()
    upgraded = SqliteStore(path)
    await upgraded.open()
    try:
        assert (await upgraded.get_batch("batch_1")) is not None
        assert await upgraded.claim_batch("batch_1", "w1", now=1, lease_s=30)
    finally:
        await upgraded.close()


async def test_sqlite_refuses_a_database_from_a_newer_release(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "db.sqlite3") as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
    conn.close()
    with pytest.raises(SchemaTooNew):
        await SqliteStore(tmp_path / "db.sqlite3").open()


async def test_sqlite_store_must_be_open(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await SqliteStore(tmp_path / "db.sqlite3").get_file(PROJECT, "file-1")


async def test_count_batches_by_status(store: MetadataStore) -> None:
    assert await store.count_batches() == {}
    await store.add_batch(a_batch("batch_1"))
    await store.add_batch(a_batch("batch_2", OTHER))
    await store.add_batch(a_batch("batch_3", status=S.IN_PROGRESS))
    assert await store.count_batches() == {S.VALIDATING: 2, S.IN_PROGRESS: 1}


async def test_a_batch_lease_has_one_holder_until_it_runs_out(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1"))
    assert await store.claim_batch("batch_1", "w1", now=100, lease_s=30)
    assert not await store.claim_batch("batch_1", "w2", now=129, lease_s=30)
    assert await store.claim_batch("batch_1", "w1", now=129, lease_s=30)  # renewal, to 159
    assert not await store.claim_batch("batch_1", "w2", now=158, lease_s=30)
    assert await store.claim_batch("batch_1", "w2", now=159, lease_s=30)  # w1 presumed dead
    assert not await store.claim_batch("batch_1", "w1", now=160, lease_s=30)


async def test_released_leases_can_be_taken_at_once(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1"))
    await store.add_batch(a_batch("batch_2"))
    assert await store.claim_batch("batch_1", "w1", now=100, lease_s=30)
    assert await store.claim_batch("batch_2", "w1", now=100, lease_s=30)
    await store.release_batch("batch_1", "w2")  # not the holder: nothing happens
    assert not await store.claim_batch("batch_1", "w2", now=101, lease_s=30)
    await store.release_batch("batch_1", "w1")
    assert await store.claim_batch("batch_1", "w2", now=101, lease_s=30)
    await store.release_all_leases()
    assert await store.claim_batch("batch_2", "w3", now=101, lease_s=30)


async def test_transitions_keep_the_lease(store: MetadataStore) -> None:
    batch = a_batch("batch_1")
    await store.add_batch(batch)
    assert await store.claim_batch("batch_1", "w1", now=100, lease_s=30)
    moved = dataclasses.replace(batch, status=S.IN_PROGRESS, in_progress_at=101)
    assert await store.transition_batch(moved, expected=(S.VALIDATING,))
    assert not await store.claim_batch("batch_1", "w2", now=101, lease_s=30)


async def test_deleting_many_results_removes_them_all(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1"))
    await store.add_batch(a_batch("batch_2"))
    await store.record_results("batch_1", [a_row(n) for n in range(12_345)])
    await store.record_results("batch_2", [a_row(1)])
    await store.delete_results("batch_1")
    assert await store.finished_lines("batch_1") == set()
    assert await store.finished_lines("batch_2") == {1}
    batch = await store.get_batch("batch_1")
    assert batch is not None
    assert batch.request_counts.completed == 12_345  # counters outlive the scratch rows


async def test_a_group_with_some_lines_already_recorded_counts_only_the_new(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1"))
    assert await store.record_results("batch_1", [a_row(1), a_row(2, K.FAILED)]) == 2
    assert await store.record_results("batch_1", [a_row(2), a_row(3, K.FAILED), a_row(4)]) == 2
    batch = await store.get_batch("batch_1")
    assert batch is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 2)
    assert batch.usage.input_tokens == 40


async def test_result_lines_stream_each_line_in_order_with_a_newline(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1"))
    kinds = [K.SUCCEEDED, K.FAILED, K.NOT_RUN]
    await store.record_results("batch_1", [a_row(n, kinds[n % 3]) for n in range(12_001, 0, -1)])
    chunks = [chunk async for chunk in store.result_lines("batch_1", [K.FAILED, K.NOT_RUN])]
    assert len(chunks) > 1
    expected = [b'{"line":%d}' % n for n in range(1, 12_002) if n % 3 != 0]
    assert b"".join(chunks) == b"".join(line + b"\n" for line in expected)
    assert [chunk async for chunk in store.result_lines("batch_1", [])] == []
    assert [chunk async for chunk in store.result_lines("batch_none", kinds)] == []
