"""Results while a batch runs (recorded order, the files' order) and Idempotency-Key records, on every
store (migration 0009)."""

from __future__ import annotations

import asyncio
import random

from overnight.domain.idempotency import KeyRecord
from overnight.domain.models import Batch, BatchStatus, ResultKind, ResultRow, Usage
from overnight.domain.partial import ResultOrder
from overnight.store.base import MetadataStore

K = ResultKind
NOW = 1_700_000_000
OUTPUT = (K.SUCCEEDED,)
ERRORS = (K.FAILED, K.NOT_RUN)


def a_batch(batch_id: str) -> Batch:
    return Batch(
        batch_id, "proj", "/v1/chat/completions", "file-in", "24h", BatchStatus.IN_PROGRESS, NOW, NOW + 86400
    )


def ok_row(line_no: int) -> ResultRow:
    return ResultRow(line_no, K.SUCCEEDED, b'{"ok":%d}' % line_no, Usage(1, 1))


def failed_row(line_no: int) -> ResultRow:
    return ResultRow(
        line_no, K.FAILED, b'{"failed":%d}' % line_no, error_code="server_error", upstream_status=500
    )


def lines_of(page: list[tuple[int, bytes]]) -> list[bytes]:
    return [line for _, line in page]


# -- the recorded order ------------------------------------------------------------------------------


async def test_results_come_back_in_the_order_they_were_recorded(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_r1"))
    await store.record_results("batch_r1", [ok_row(7), failed_row(3), ok_row(5)])
    await store.record_results("batch_r1", [ok_row(1), ok_row(9)])
    await store.record_results("batch_r1", [failed_row(2)])
    page = await store.recorded_results("batch_r1", OUTPUT, limit=100)
    # PostgreSQL numbers a group in line order, SQLite in the order given: either way, group by group.
    assert sorted(lines_of(page)[:2]) == [b'{"ok":5}', b'{"ok":7}']
    assert sorted(lines_of(page)[2:]) == [b'{"ok":1}', b'{"ok":9}']
    seqs = [seq for seq, _ in page]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    assert lines_of(await store.recorded_results("batch_r1", ERRORS, limit=100)) == [
        b'{"failed":3}',
        b'{"failed":2}',
    ]


async def test_skip_limit_and_after_seq_page_through_them(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_r2"))
    for first in range(1, 31, 10):
        await store.record_results("batch_r2", [ok_row(n) for n in range(first, first + 10)])
    everything = await store.recorded_results("batch_r2", OUTPUT, limit=1000)
    assert len(everything) == 30
    assert await store.recorded_results("batch_r2", OUTPUT, skip=12, limit=5) == everything[12:17]
    after = everything[19][0]
    assert await store.recorded_results("batch_r2", OUTPUT, after_seq=after, limit=4) == everything[20:24]
    assert (
        await store.recorded_results("batch_r2", OUTPUT, after_seq=after, skip=8, limit=4) == everything[28:]
    )
    assert await store.recorded_results("batch_r2", OUTPUT, skip=30, limit=4) == []
    assert await store.recorded_results("batch_r2", OUTPUT, limit=0) == []
    assert await store.recorded_results("batch_r2", (), limit=10) == []
    assert await store.recorded_results("batch_none", OUTPUT, limit=10) == []


async def test_a_line_recorded_again_keeps_its_place(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_r3"))
    await store.record_results("batch_r3", [ok_row(1), ok_row(2)])
    before = await store.recorded_results("batch_r3", OUTPUT, limit=10)
    assert await store.record_results("batch_r3", [ok_row(2), ok_row(3), ok_row(1)]) == 1
    after = await store.recorded_results("batch_r3", OUTPUT, limit=10)
    assert after[:2] == before
    assert lines_of(after[2:]) == [b'{"ok":3}']
    batch = await store.get_batch("batch_r3")
    assert batch is not None
    assert batch.request_counts.completed == 3


async def test_a_reader_following_an_offset_never_sees_a_line_twice(store: MetadataStore) -> None:
    """Writers record groups of one batch at once (PostgreSQL: on several connections); a reader that
    asks for the lines after those it has read, by count, sees each line once, and all of them."""
    await store.add_batch(a_batch("batch_r4"))
    lines = list(range(1, 1201))
    random.Random(4).shuffle(lines)
    groups = [lines[i : i + 25] for i in range(0, len(lines), 25)]
    seen: list[bytes] = []
    done = asyncio.Event()

    async def write(mine: list[list[int]]) -> None:
        for group in mine:
            await store.record_results("batch_r4", [ok_row(n) for n in group])
            await asyncio.sleep(0)

    async def read() -> None:
        while True:
            finished = done.is_set()
            page = await store.recorded_results("batch_r4", OUTPUT, skip=len(seen), limit=100)
            seen.extend(lines_of(page))
            if finished and not page:
                return
            await asyncio.sleep(0)

    reader = asyncio.create_task(read())
    await asyncio.gather(*(write(groups[w::4]) for w in range(4)))
    done.set()
    await reader
    assert len(seen) == len(set(seen)) == len(lines)
    assert lines_of(await store.recorded_results("batch_r4", OUTPUT, limit=5000)) == seen


# -- the files' order ---------------------------------------------------------------------------------


async def test_the_first_claim_of_the_order_holds(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_o1"))
    await store.add_batch(a_batch("batch_o2"))
    assert await store.claim_result_order("batch_o1", ResultOrder.RECORDED) is ResultOrder.RECORDED
    assert await store.claim_result_order("batch_o1", ResultOrder.FILES) is ResultOrder.RECORDED
    assert await store.claim_result_order("batch_o2", ResultOrder.FILES) is ResultOrder.FILES
    assert await store.claim_result_order("batch_o2", ResultOrder.RECORDED) is ResultOrder.FILES
    assert await store.claim_result_order("batch_none", ResultOrder.FILES) is None


async def test_racing_claims_of_the_order_agree(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_o3"))
    wanted = [ResultOrder.RECORDED, ResultOrder.FILES] * 4
    got = await asyncio.gather(*(store.claim_result_order("batch_o3", order) for order in wanted))
    assert len(set(got)) == 1
    assert got[0] in (ResultOrder.RECORDED, ResultOrder.FILES)


# -- Idempotency-Key records ------------------------------------------------------------------------


def a_key(object_id: str, *, project: str = "proj", key: str = "k1", fingerprint: str = "fp") -> KeyRecord:
    return KeyRecord(project, key, fingerprint, object_id, NOW)


async def test_a_key_is_stored_once_per_project(store: MetadataStore) -> None:
    first = await store.remember_key(a_key("batch_1"))
    assert first == a_key("batch_1")
    assert await store.remember_key(a_key("batch_2", fingerprint="other")) == first
    other = await store.remember_key(a_key("batch_3", project="proj2"))
    assert other.object_id == "batch_3"
    assert await store.get_key("proj", "k1") == first
    assert await store.get_key("proj", "k2") is None
    assert await store.get_key("proj3", "k1") is None


async def test_racing_requests_with_one_key_see_one_winner(store: MetadataStore) -> None:
    records = await asyncio.gather(*(store.remember_key(a_key(f"batch_{n}")) for n in range(8)))
    assert len({record.object_id for record in records}) == 1
    assert await store.get_key("proj", "k1") == records[0]


async def test_a_key_is_completed_and_forgotten_only_for_its_object(store: MetadataStore) -> None:
    await store.remember_key(a_key("batch_1"))
    await store.key_done("proj", "k1", "batch_other", NOW + 1)
    found = await store.get_key("proj", "k1")
    assert found is not None
    assert found.completed_at is None
    await store.key_done("proj", "k1", "batch_1", NOW + 2)
    found = await store.get_key("proj", "k1")
    assert found is not None
    assert found.completed_at == NOW + 2
    assert not await store.forget_key("proj", "k1", "batch_other")
    assert await store.forget_key("proj", "k1", "batch_1")
    assert await store.get_key("proj", "k1") is None
    assert not await store.forget_key("proj", "k1", "batch_1")


async def test_old_keys_are_swept(store: MetadataStore) -> None:
    await store.remember_key(KeyRecord("proj", "old", "fp", "file-1", NOW - 90_000))
    await store.remember_key(KeyRecord("proj", "new", "fp", "file-2", NOW))
    assert await store.forget_keys_before(NOW - 86_400) == 1
    assert await store.get_key("proj", "old") is None
    assert await store.get_key("proj", "new") is not None
    assert await store.forget_keys_before(NOW - 86_400) == 0
