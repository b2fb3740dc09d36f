"""ResultSpool on the real local blob store (the result files written while a batch runs), and the
recorder that feeds it, on the real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from pathlib import Path

from overnight.blobs.local import TEMP_PREFIX, LocalBlobStore
from overnight.domain.ids import error_file_id, output_file_id, part_key
from overnight.domain.models import Batch, BatchStatus, ResultKind, ResultRow
from overnight.engine.recorder import ResultRecorder
from overnight.engine.spool import QUEUED_CHUNKS, ResultSpool
from overnight.store.sqlite import SqliteStore

BATCH = "batch_spool"
OUTPUT = output_file_id(BATCH)
ERRORS = error_file_id(BATCH)
PART = "0-test"


def row(line_no: int, kind: ResultKind = ResultKind.SUCCEEDED) -> ResultRow:
    return ResultRow(line_no, kind, f'{{"line":{line_no},"kind":"{kind}"}}'.encode())


async def content(blobs: LocalBlobStore, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in blobs.read(part_key(file_id, PART))])


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob(f"{TEMP_PREFIX}*"))


async def test_rows_land_in_their_file_in_the_order_recorded(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    spool = ResultSpool(blobs, BATCH, PART)
    first = [row(3), row(1, ResultKind.FAILED), row(2)]
    second = [row(5, ResultKind.NOT_RUN), row(4)]
    await spool.add(first, recorded=3)
    await spool.add(second, recorded=2)
    sizes = await spool.finish()

    assert sizes is not None
    expected_output = b"".join(r.line + b"\n" for r in (row(3), row(2), row(4)))
    expected_errors = b"".join(
        r.line + b"\n" for r in (row(1, ResultKind.FAILED), row(5, ResultKind.NOT_RUN))
    )
    assert await content(blobs, OUTPUT) == expected_output
    assert await content(blobs, ERRORS) == expected_errors
    assert sizes == {OUTPUT: len(expected_output), ERRORS: len(expected_errors)}
    assert temp_files(tmp_path) == []


async def test_a_file_without_rows_is_not_written(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    spool = ResultSpool(blobs, BATCH, PART)
    await spool.add([row(1), row(2)], recorded=2)
    assert list(await spool.finish() or {}) == [OUTPUT]
    assert not await blobs.exists(part_key(ERRORS, PART))
    assert await ResultSpool(blobs, "batch_empty", PART).finish() == {}


async def test_rows_the_store_already_had_make_it_give_up_and_leave_nothing(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    spool = ResultSpool(blobs, BATCH, PART)
    await spool.add([row(1), row(2, ResultKind.FAILED)], recorded=2)
    await spool.add([row(3), row(1)], recorded=1)  # line 1 was recorded before: by another worker
    assert not spool.usable
    await spool.add([row(4)], recorded=1)  # ignored from now on

    assert await spool.finish() is None
    assert not await blobs.exists(part_key(OUTPUT, PART))
    assert not await blobs.exists(part_key(ERRORS, PART))
    assert temp_files(tmp_path) == []


async def test_discard_removes_the_unfinished_files(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    spool = ResultSpool(blobs, BATCH, PART)
    await spool.add([row(1), row(2, ResultKind.FAILED)], recorded=2)
    await spool.discard()
    assert temp_files(tmp_path) == []
    assert not await blobs.exists(part_key(OUTPUT, PART))


class FailingBlobs(LocalBlobStore):
    """Puts fail after `good_chunks` chunks, as a full disk would."""

    def __init__(self, root: Path, good_chunks: int) -> None:
        super().__init__(root)
        self.good_chunks = good_chunks

    async def put(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        async def failing() -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in chunks:
                seen += 1
                if seen > self.good_chunks:
                    raise OSError(28, "No space left on device")
                yield chunk

        return await super().put(key, failing(), max_bytes)


async def test_a_failing_blob_store_makes_it_give_up(tmp_path: Path) -> None:
    blobs = FailingBlobs(tmp_path, good_chunks=1)
    spool = ResultSpool(blobs, BATCH, PART)
    for line_no in range(1, QUEUED_CHUNKS + 10):  # enough to see the failure even through the queue
        await spool.add([row(line_no)], recorded=1)
        if not spool.usable:
            break
    assert await spool.finish() is None
    assert temp_files(tmp_path) == []
    assert not await blobs.exists(part_key(OUTPUT, PART))


class SlowStore(SqliteStore):
    """The real SQLite store; recording results first waits for `gate` (and says it is waiting)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        self.entered.set()
        await self.gate.wait()
        return await super().record_results(batch_id, rows)


async def test_leaving_the_recorder_waits_for_a_flush_under_way(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        await store.add_batch(
            Batch(BATCH, "proj", "/v1/chat/completions", "file-in", "24h", BatchStatus.IN_PROGRESS, 1, 2)
        )
        blobs = LocalBlobStore(tmp_path / "blobs")
        spool = ResultSpool(blobs, BATCH, PART)
        recorder = ResultRecorder(store, BATCH, interval_s=0.001, spool=spool)
        await recorder.__aenter__()
        recorder.add(row(1))
        await store.entered.wait()  # the periodic flush is inside the store
        leaving = asyncio.create_task(recorder.__aexit__(None, None, None))
        await asyncio.sleep(0)  # one step: leaving now waits on the flush's lock (it used to cancel it)
        store.gate.set()
        await leaving

        assert spool.usable
        assert await spool.finish() == {OUTPUT: len(row(1).line) + 1}
        assert await content(blobs, OUTPUT) == row(1).line + b"\n"
    finally:
        await store.close()
