"""The store's usage and budget methods (usage_by_day, enqueued_tokens, list_batches of every project),
on every implementation (see conftest.py)."""

from __future__ import annotations

import dataclasses

from overnight.domain.lifecycle import transition
from overnight.domain.models import (
    Batch,
    BatchStatus,
    DailyUsage,
    RequestCounts,
    ResultKind,
    ResultRow,
    Usage,
)
from overnight.store.base import MetadataStore

S = BatchStatus
DAY = 86400
MONDAY = 1_700_006_400  # 2023-11-15 00:00:00 UTC, the first second of a day
A, B = "proj_a", "proj_b"


def a_batch(
    batch_id: str,
    project: str = A,
    *,
    created_at: int = MONDAY,
    model: str | None = "gpt-4o-mini",
    enqueued_tokens: int = 0,
) -> Batch:
    return Batch(
        batch_id,
        project,
        "/v1/chat/completions",
        "file-in",
        "24h",
        S.VALIDATING,
        created_at,
        created_at + DAY,
        model=model,
        enqueued_tokens=enqueued_tokens,
    )


async def add_with_usage(store: MetadataStore, batch: Batch, *usages: Usage) -> None:
    await store.add_batch(batch)
    rows = [
        ResultRow(line_no, ResultKind.SUCCEEDED, b'{"line":%d}' % line_no, usage)
        for line_no, usage in enumerate(usages, 1)
    ]
    await store.record_results(batch.id, rows)


async def test_enqueued_tokens_round_trip_and_survive_transitions(store: MetadataStore) -> None:
    batch = a_batch("batch_1", enqueued_tokens=1234)
    await store.add_batch(batch)
    assert await store.get_batch("batch_1") == batch
    started = transition(batch, S.IN_PROGRESS, now=MONDAY + 1, request_counts=RequestCounts(total=3))
    assert await store.transition_batch(started, [S.VALIDATING])
    stored = await store.get_batch("batch_1")
    assert stored is not None
    assert stored.enqueued_tokens == 1234
    assert (await store.list_batches(A, after=None, limit=10)).items[0].enqueued_tokens == 1234


async def test_usage_by_day_groups_by_utc_day_project_and_model(store: MetadataStore) -> None:
    await add_with_usage(store, a_batch("batch_1"), Usage(10, 5, 2, 1), Usage(20, 6, 0, 0))
    await add_with_usage(store, a_batch("batch_2", created_at=MONDAY + DAY - 1), Usage(1, 1, 1, 1))
    await add_with_usage(store, a_batch("batch_3", model="other"), Usage(7, 0, 0, 0))
    await add_with_usage(store, a_batch("batch_4", B), Usage(100, 50, 0, 3))
    await add_with_usage(store, a_batch("batch_5", created_at=MONDAY + DAY), Usage(3, 3, 0, 0))
    await store.add_batch(a_batch("batch_6", model=None))  # failed validation: no model, no usage
    await add_with_usage(store, a_batch("batch_7", created_at=MONDAY - 1), Usage(9, 9, 9, 9))  # before

    rows = await store.usage_by_day(None, MONDAY, MONDAY + 2 * DAY)
    assert rows == [
        DailyUsage(MONDAY, A, "gpt-4o-mini", 2, Usage(31, 12, 3, 2)),
        DailyUsage(MONDAY, A, "other", 1, Usage(7, 0, 0, 0)),
        DailyUsage(MONDAY, A, None, 1, Usage()),
        DailyUsage(MONDAY, B, "gpt-4o-mini", 1, Usage(100, 50, 0, 3)),
        DailyUsage(MONDAY + DAY, A, "gpt-4o-mini", 1, Usage(3, 3, 0, 0)),
    ]
    assert await store.usage_by_day(B, MONDAY, MONDAY + 2 * DAY) == [rows[3]]
    # [start, end): the end is left out, the start kept
    assert await store.usage_by_day(A, MONDAY + DAY, MONDAY + DAY + 1) == [rows[4]]
    assert await store.usage_by_day(A, MONDAY + DAY + 1, MONDAY + 2 * DAY) == []
    assert await store.usage_by_day("nobody", 0, 2**40) == []


async def test_usage_is_what_record_results_counted_once(store: MetadataStore) -> None:
    await add_with_usage(store, a_batch("batch_1"), Usage(10, 5, 2, 1), Usage(20, 6, 0, 0))
    again = [ResultRow(1, ResultKind.SUCCEEDED, b'{"line":1}', Usage(999, 999, 0, 0))]
    assert await store.record_results("batch_1", again) == 0  # a line recorded twice counts once
    [row] = await store.usage_by_day(A, MONDAY, MONDAY + DAY)
    assert row.usage == Usage(30, 11, 2, 1)
    batch = await store.get_batch("batch_1")
    assert batch is not None
    assert batch.usage == row.usage


async def test_enqueued_tokens_count_only_unfinished_batches_of_the_project(store: MetadataStore) -> None:
    assert await store.enqueued_tokens(A) == 0
    now = MONDAY + 10
    validating = a_batch("batch_1", enqueued_tokens=100)
    running = transition(a_batch("batch_2", enqueued_tokens=20), S.IN_PROGRESS, now)
    finalizing = transition(running, S.FINALIZING, now)
    cancelling = transition(a_batch("batch_3", enqueued_tokens=3), S.CANCELLING, now)
    for batch in (validating, dataclasses.replace(finalizing, id="batch_2"), cancelling):
        await store.add_batch(batch)
    ended = [
        transition(a_batch("batch_4", enqueued_tokens=1000), S.FAILED, now),
        transition(transition(a_batch("batch_5", enqueued_tokens=1000), S.CANCELLING, now), S.CANCELLED, now),
        transition(a_batch("batch_6", enqueued_tokens=1000), S.EXPIRED, now),
    ]
    for batch in ended:
        await store.add_batch(batch)
    await store.add_batch(a_batch("batch_7", B, enqueued_tokens=5000))
    assert await store.enqueued_tokens(A) == 123
    assert await store.enqueued_tokens(B) == 5000

    # a batch that ends releases its tokens
    finished = transition(finalizing, S.COMPLETED, now + 1)
    assert await store.transition_batch(finished, [S.FINALIZING])
    assert await store.enqueued_tokens(A) == 103
    started = transition(validating, S.IN_PROGRESS, now + 1)
    assert await store.transition_batch(started, [S.VALIDATING])
    assert await store.enqueued_tokens(A) == 103  # running still holds them


async def test_list_batches_of_every_project(store: MetadataStore) -> None:
    for batch_id, project in [("batch_1", A), ("batch_3", B), ("batch_2", A), ("batch_4", B)]:
        await store.add_batch(a_batch(batch_id, project))
    first = await store.list_batches(None, after=None, limit=3)
    assert ([b.id for b in first.items], first.has_more) == (["batch_4", "batch_3", "batch_2"], True)
    assert {b.project for b in first.items} == {A, B}
    rest = await store.list_batches(None, after="batch_2", limit=3)
    assert ([b.id for b in rest.items], rest.has_more) == (["batch_1"], False)
    own = await store.list_batches(A, after=None, limit=10)
    assert [b.id for b in own.items] == ["batch_2", "batch_1"]
