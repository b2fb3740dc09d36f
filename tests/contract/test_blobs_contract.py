"""The BlobStore contract: every implementation passes every test here (see conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overnight.blobs.base import BlobStore, BlobTooLarge
from overnight.blobs.local import TEMP_PREFIX, LocalBlobStore
from overnight.domain.lines import split_lines


async def stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def failing_stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    async for chunk in stream(chunks):
        yield chunk
    raise ConnectionResetError("the client went away")


async def content(blobs: BlobStore, key: str, chunk_size: int = 1 << 20, start: int = 0) -> bytes:
    return b"".join([chunk async for chunk in blobs.read(key, chunk_size, start=start)])


async def test_put_returns_the_size_and_read_returns_the_bytes(blobs: BlobStore) -> None:
    assert await blobs.put("files/file-1", stream([b"hello ", b"", b"world"])) == 11
    assert await blobs.exists("files/file-1")
    assert await content(blobs, "files/file-1") == b"hello world"


async def test_empty_blob(blobs: BlobStore) -> None:
    assert await blobs.put("empty", stream([])) == 0
    assert await blobs.exists("empty")
    assert await content(blobs, "empty") == b""


async def test_read_honours_the_chunk_size(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 40
    await blobs.put("a/b/c/deep", stream([data]))
    chunks = [chunk async for chunk in blobs.read("a/b/c/deep", chunk_size=1000)]
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= 1000 for chunk in chunks)


async def test_put_replaces_an_existing_blob(blobs: BlobStore) -> None:
    await blobs.put("k", stream([b"old content that is longer"]))
    assert await blobs.put("k", stream([b"new"])) == 3
    assert await content(blobs, "k") == b"new"


async def test_keys_are_independent(blobs: BlobStore) -> None:
    await blobs.put("files/a", stream([b"a"]))
    await blobs.put("files/b", stream([b"b"]))
    await blobs.delete("files/a")
    assert not await blobs.exists("files/a")
    assert await content(blobs, "files/b") == b"b"


async def test_the_folders_of_a_key_are_no_blobs(blobs: BlobStore) -> None:
    await blobs.put("a/b/c", stream([b"deep"]))
    assert not await blobs.exists("a/b")
    assert not await blobs.exists("a")
    with pytest.raises(FileNotFoundError):
        await content(blobs, "a/b")
    await blobs.delete("a/b")
    assert await content(blobs, "a/b/c") == b"deep"


async def test_a_store_closed_and_opened_again_keeps_its_blobs(blobs: BlobStore) -> None:
    await blobs.put("files/k", stream([b"kept"]))
    await blobs.close()
    await blobs.open()
    assert await content(blobs, "files/k") == b"kept"


async def test_missing_blobs(blobs: BlobStore) -> None:
    assert not await blobs.exists("files/none")
    await blobs.delete("files/none")  # absent is fine
    with pytest.raises(FileNotFoundError):
        await content(blobs, "files/none")


async def test_max_bytes_is_inclusive(blobs: BlobStore) -> None:
    assert await blobs.put("k", stream([b"12345", b"67890"]), max_bytes=10) == 10
    assert await content(blobs, "k") == b"1234567890"


async def test_too_large_stores_nothing(blobs: BlobStore) -> None:
    with pytest.raises(BlobTooLarge) as raised:
        await blobs.put("k", stream([b"12345", b"67890", b"x"]), max_bytes=10)
    assert raised.value.limit == 10
    assert not await blobs.exists("k")


async def test_too_large_stops_reading_as_soon_as_the_limit_is_passed(blobs: BlobStore) -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            sent.append(1)
            yield b"x" * 100

    with pytest.raises(BlobTooLarge):
        await blobs.put("k", endless(), max_bytes=1_000)
    assert len(sent) == 11


async def test_a_failed_put_leaves_the_existing_blob_untouched(blobs: BlobStore) -> None:
    await blobs.put("files/k", stream([b"original"]))
    with pytest.raises(BlobTooLarge):
        await blobs.put("files/k", stream([b"x" * 50]), max_bytes=20)
    with pytest.raises(ConnectionResetError):
        await blobs.put("files/k", failing_stream([b"partial"]))
    assert await content(blobs, "files/k") == b"original"


async def test_a_cancelled_put_stores_nothing(blobs: BlobStore) -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b"some"
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(blobs.put("k", stalled()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await blobs.exists("k")


async def test_read_from_a_start_offset(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 40
    await blobs.put("files/ranged", stream([data[:3000], data[3000:]]))
    assert await content(blobs, "files/ranged", start=0) == data
    chunks = [chunk async for chunk in blobs.read("files/ranged", 1000, start=4321)]
    assert b"".join(chunks) == data[4321:]
    assert all(0 < len(chunk) <= 1000 for chunk in chunks)
    assert await content(blobs, "files/ranged", start=len(data) - 1) == data[-1:]


async def test_read_from_the_end_is_empty(blobs: BlobStore) -> None:
    await blobs.put("files/short", stream([b"0123456789"]))
    assert await content(blobs, "files/short", start=10) == b""
    assert await content(blobs, "files/short", start=11) == b""
    await blobs.put("files/empty", stream([]))
    assert await content(blobs, "files/empty", start=0) == b""


async def test_read_from_a_start_offset_of_a_missing_blob(blobs: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        await content(blobs, "files/none", start=5)


async def test_a_negative_start_is_rejected(blobs: BlobStore) -> None:
    await blobs.put("files/k", stream([b"data"]))
    with pytest.raises(ValueError, match="start"):
        await content(blobs, "files/k", start=-1)


async def test_discarding_unfinished_writes_keeps_finished_blobs(blobs: BlobStore) -> None:
    await blobs.put("files/a", stream([b"kept"]))
    assert await blobs.discard_unfinished() == 0
    assert await content(blobs, "files/a") == b"kept"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a/"])
async def test_unsafe_keys_are_rejected(blobs: BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        await blobs.put(key, stream([b"x"]))


async def test_read_lines_numbers_every_line(blobs: BlobStore) -> None:
    await blobs.put("lines", stream([b"one\ntw", b"o\n\nfour"]))
    lines = [(n, line) async for n, line in split_lines(blobs.read("lines"))]
    assert lines == [(1, b"one"), (2, b"two"), (3, b""), (4, b"four")]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chunks=st.lists(st.binary(max_size=3_000), max_size=8),
    chunk_size=st.integers(1, 4_096),
    start=st.integers(0, 25_000),
)
async def test_any_stream_round_trips(
    blobs: BlobStore, chunks: list[bytes], chunk_size: int, start: int
) -> None:
    size = await blobs.put("prop/blob", stream(chunks))
    assert size == sum(map(len, chunks))
    assert await content(blobs, "prop/blob", chunk_size) == b"".join(chunks)
    assert await content(blobs, "prop/blob", chunk_size, start=start) == b"".join(chunks)[start:]


# -- local specifics -----------------------------------------------------------------------------


async def test_local_failed_puts_leave_no_temp_files(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    await blobs.put("files/k", stream([b"original"]))
    with pytest.raises(BlobTooLarge):
        await blobs.put("files/k", stream([b"x" * 50]), max_bytes=20)
    with pytest.raises(ConnectionResetError):
        await blobs.put("files/other", failing_stream([b"partial"]))
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["k"]


async def test_local_discards_the_temp_files_a_crash_left(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    await blobs.put("files/k", stream([b"kept"]))
    (tmp_path / "files" / f"{TEMP_PREFIX}crashed").write_bytes(b"half a file")
    (tmp_path / f"{TEMP_PREFIX}other").write_bytes(b"")
    assert await blobs.discard_unfinished() == 2
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["k"]
    assert await content(blobs, "files/k") == b"kept"


async def test_local_large_blob_in_small_chunks(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    data = bytes(range(256)) * 12_000  # about 3 MiB in 4 KiB pieces: crosses the write buffer
    assert await blobs.put("big", stream(data[i : i + 4096] for i in range(0, len(data), 4096))) == len(data)
    assert (tmp_path / "big").read_bytes() == data


async def test_compose_joins_parts_in_order_and_removes_them(blobs: BlobStore) -> None:
    await blobs.put("files/out.0", stream([b"a\n", b"b\n"]))
    await blobs.put("files/out.2", stream([b"c\n"]))
    size = await blobs.compose("files/out", ["files/out.0", "files/out.1", "files/out.2"])  # .1 is absent
    assert size == 6
    assert await content(blobs, "files/out") == b"a\nb\nc\n"
    assert not await blobs.exists("files/out.0")
    assert not await blobs.exists("files/out.2")


async def test_compose_of_one_part_moves_it(blobs: BlobStore) -> None:
    await blobs.put("files/old", stream([b"replaced"]))
    await blobs.put("files/one.0", stream([b"x" * 1000]))
    assert await blobs.compose("files/old", ["files/one.0"]) == 1000
    assert await content(blobs, "files/old") == b"x" * 1000
    assert not await blobs.exists("files/one.0")


async def test_compose_of_nothing_stores_nothing(blobs: BlobStore) -> None:
    await blobs.put("files/empty.0", stream([]))
    assert await blobs.compose("files/none", ["files/empty.0", "files/absent.1"]) == 0
    assert not await blobs.exists("files/none")


async def test_discarding_unfinished_writes_can_spare_recent_ones(blobs: BlobStore) -> None:
    gate, under_way = asyncio.Event(), asyncio.Event()

    async def held() -> AsyncIterator[bytes]:
        yield b"x" * (9 << 20)  # past one S3 part: when the next is asked for, a multipart upload is open
        under_way.set()
        await gate.wait()
        yield b"y"

    writing = asyncio.create_task(blobs.put("files/live", held()))
    await asyncio.wait_for(under_way.wait(), 60)
    assert await blobs.discard_unfinished(started_before=time.time() - 3600) == 0  # recent: spared
    gate.set()
    assert await writing == (9 << 20) + 1
    assert await content(blobs, "files/live") == b"x" * (9 << 20) + b"y"
