"""What only the S3 blob store has: credentials, multipart uploads, and what a crash leaves on the server.

These run against the real SeaweedFS server of conftest.py's `seaweed` fixture; each test has a prefix of
its own.
"""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator

import pytest

from overnight.blobs.base import BlobStoreUnavailable, BlobTooLarge
from overnight.blobs.s3 import MIN_PART_SIZE, S3BlobStore
from support.seaweed import SeaweedS3
from support.server import free_port

PART = MIN_PART_SIZE
PIECE = 64 * 1024
WAIT_S = 30.0


def pieces(total: int) -> Iterator[bytes]:
    """`total` bytes in 64 KiB pieces, each a fresh object with content that tells where it came from."""
    block = bytes(range(256)) * (PIECE // 256)
    for at in range(0, total, PIECE):
        size = min(PIECE, total - at)
        yield (at // PIECE).to_bytes(4, "big") + block[4:size] if size >= 4 else block[:size]


async def stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def content(store: S3BlobStore, key: str, start: int = 0) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start=start)])


@pytest.fixture
def prefix() -> str:
    return f"s3-{uuid.uuid4().hex}"


@pytest.fixture
async def s3_blobs(seaweed: SeaweedS3, prefix: str) -> AsyncIterator[S3BlobStore]:
    opened = seaweed.blob_store(prefix, part_size=PART, concurrency=2)
    await opened.open()
    yield opened
    await opened.close()


async def unfinished(seaweed: SeaweedS3, prefix: str) -> list[str]:
    """The keys of the multipart uploads under `prefix` that are neither completed nor aborted."""
    async with seaweed.client() as s3:
        listed = await s3.list_multipart_uploads(Bucket=seaweed.bucket, Prefix=f"{prefix}/")
    return sorted(upload.get("Key", "") for upload in listed.get("Uploads", []))


async def names(seaweed: SeaweedS3, prefix: str) -> list[str]:
    async with seaweed.client() as s3:
        listed = await s3.list_objects_v2(Bucket=seaweed.bucket, Prefix=f"{prefix}/")
    return sorted(item.get("Key", "") for item in listed.get("Contents", []))


# -- credentials and reachability ------------------------------------------------------------------


def other_store(
    seaweed: SeaweedS3,
    *,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> S3BlobStore:
    """A store on `seaweed` with one setting changed, trying each request once."""
    return S3BlobStore(
        bucket or seaweed.bucket,
        "p",
        endpoint_url=endpoint_url or seaweed.endpoint_url,
        region=seaweed.region,
        access_key_id=access_key_id or seaweed.access_key_id,
        secret_access_key=secret_access_key or seaweed.secret_access_key,
        max_attempts=1,
        connect_timeout_s=5,
    )


@pytest.mark.parametrize("wrong", ["secret_access_key", "access_key_id"])
async def test_wrong_credentials_are_refused_without_showing_the_secret(
    seaweed: SeaweedS3, wrong: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad_secret = "wrong-" + uuid.uuid4().hex
    if wrong == "secret_access_key":
        store = other_store(seaweed, secret_access_key=bad_secret)
    else:
        store = other_store(seaweed, access_key_id="WRONGKEY" + uuid.uuid4().hex[:12])
    try:
        for attempt in (
            store.open(),
            store.put("files/k", stream([b"x"])),
            store.exists("files/k"),
            content(store, "files/k"),
        ):
            with pytest.raises(BlobStoreUnavailable) as raised:
                await attempt
            message = str(raised.value)
            assert "refused access" in message
            assert seaweed.endpoint_url in message
            assert seaweed.bucket in message
            assert "files/k" not in message
            assert raised.value.__cause__ is None
            assert raised.value.__context__ is None or raised.value.__suppress_context__
            for secret in (bad_secret, seaweed.secret_access_key):
                assert secret not in message
                assert secret not in repr(raised.value)
    finally:
        await store.close()
    for secret in (bad_secret, seaweed.secret_access_key):
        assert secret not in caplog.text


async def test_an_unreachable_store_says_where_it_is(seaweed: SeaweedS3) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = other_store(seaweed, endpoint_url=endpoint)
    try:
        with pytest.raises(BlobStoreUnavailable, match="cannot be reached") as raised:
            await store.put("files/secret-name", stream([b"x"]))
        assert endpoint in str(raised.value)
        assert seaweed.bucket in str(raised.value)
        assert "secret-name" not in str(raised.value)
    finally:
        await store.close()


async def test_a_password_in_the_endpoint_url_is_never_shown(seaweed: SeaweedS3) -> None:
    store = other_store(seaweed, endpoint_url=f"http://someone:hunter2-pw@127.0.0.1:{free_port()}")
    try:
        assert "hunter2-pw" not in repr(store)
        with pytest.raises(BlobStoreUnavailable) as raised:
            await store.open()
        assert "hunter2-pw" not in str(raised.value)
        assert "127.0.0.1" in str(raised.value)
    finally:
        await store.close()


async def test_a_missing_bucket_shows_at_open(seaweed: SeaweedS3) -> None:
    store = other_store(seaweed, bucket="no-such-bucket")
    try:
        with pytest.raises(BlobStoreUnavailable, match="no-such-bucket"):
            await store.open()
    finally:
        await store.close()


async def test_the_secret_is_in_no_repr(seaweed: SeaweedS3, s3_blobs: S3BlobStore) -> None:
    await s3_blobs.put("files/k", stream([b"x"]))
    for shown in (repr(s3_blobs), str(s3_blobs), repr(vars(s3_blobs)), repr(s3_blobs.__dict__.values())):
        assert seaweed.secret_access_key not in shown
        assert seaweed.access_key_id not in shown
    assert seaweed.bucket in repr(s3_blobs)


def test_both_credentials_or_neither() -> None:
    with pytest.raises(ValueError, match="both"):
        S3BlobStore("b", "", endpoint_url=None, region=None, access_key_id="k", secret_access_key=None)


# -- keys ------------------------------------------------------------------------------------------


async def test_keys_live_under_the_prefix(seaweed: SeaweedS3, s3_blobs: S3BlobStore, prefix: str) -> None:
    await s3_blobs.put("files/a", stream([b"a"]))
    await s3_blobs.put("b", stream([b"b"]))
    assert await names(seaweed, prefix) == [f"{prefix}/b", f"{prefix}/files/a"]
    neighbour = seaweed.blob_store(f"{prefix}-other")
    try:
        assert not await neighbour.exists("files/a")
    finally:
        await neighbour.close()


# -- multipart uploads -----------------------------------------------------------------------------


async def test_a_large_blob_round_trips_through_multipart(
    seaweed: SeaweedS3, s3_blobs: S3BlobStore, prefix: str
) -> None:
    size = 40 * 1024 * 1024 + 12_345
    data = b"".join(pieces(size))
    assert await s3_blobs.put("files/big", stream(pieces(size))) == size
    async with seaweed.client() as s3:
        head = await s3.head_object(Bucket=seaweed.bucket, Key=f"{prefix}/files/big")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith(f"-{-(-size // PART)}")  # a multipart ETag: of 9 parts
    assert await content(s3_blobs, "files/big") == data
    middle = size // 2 + 7
    assert await content(s3_blobs, "files/big", start=middle) == data[middle:]
    assert await unfinished(seaweed, prefix) == []


async def test_a_put_holds_a_few_parts_not_the_whole_blob(s3_blobs: S3BlobStore) -> None:
    size = 60 * 1024 * 1024
    tracemalloc.start()
    try:
        assert await s3_blobs.put("files/big", stream(pieces(size))) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # concurrency 2: two parts in flight, one filling, and the copies the HTTP client makes of a part
    assert peak < 8 * PART < size


async def test_a_failing_stream_aborts_the_multipart_upload(
    seaweed: SeaweedS3, s3_blobs: S3BlobStore, prefix: str
) -> None:
    await s3_blobs.put("files/k", stream([b"original"]))

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in stream(pieces(3 * PART)):
            yield chunk
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await s3_blobs.put("files/k", failing())
    with pytest.raises(BlobTooLarge):
        await s3_blobs.put("files/k", stream(pieces(3 * PART)), max_bytes=2 * PART + 1)
    assert await unfinished(seaweed, prefix) == []
    assert await content(s3_blobs, "files/k") == b"original"


async def test_a_cancelled_multipart_put_is_aborted(
    seaweed: SeaweedS3, s3_blobs: S3BlobStore, prefix: str
) -> None:
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        async for chunk in stream(pieces(2 * PART)):
            yield chunk
        stalled.set()  # the put has begun the upload and sent both parts off, and waits for more
        await asyncio.Event().wait()
        yield b"never"

    task = asyncio.create_task(s3_blobs.put("files/k", stalling()))
    async with asyncio.timeout(WAIT_S):
        await stalled.wait()
    assert await unfinished(seaweed, prefix) == [f"{prefix}/files/k"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await s3_blobs.close()  # waits for the abort, which runs on even though the put was cancelled
    assert await unfinished(seaweed, prefix) == []
    assert not await s3_blobs.exists("files/k")


async def test_discard_unfinished_aborts_what_a_crash_left(
    seaweed: SeaweedS3, s3_blobs: S3BlobStore, prefix: str
) -> None:
    await s3_blobs.put("files/kept", stream([b"kept"]))
    async with seaweed.client() as s3:
        for key in (f"{prefix}/files/crashed", f"{prefix}/files/other", f"{prefix}-elsewhere/files/x"):
            started = await s3.create_multipart_upload(Bucket=seaweed.bucket, Key=key)
            await s3.upload_part(
                Bucket=seaweed.bucket, Key=key, UploadId=started["UploadId"], PartNumber=1, Body=b"y" * PART
            )
    assert await unfinished(seaweed, prefix) == [f"{prefix}/files/crashed", f"{prefix}/files/other"]
    assert await s3_blobs.discard_unfinished() == 2
    assert await unfinished(seaweed, prefix) == []
    assert await unfinished(seaweed, f"{prefix}-elsewhere") == [f"{prefix}-elsewhere/files/x"]  # not ours
    assert await content(s3_blobs, "files/kept") == b"kept"
    assert not await s3_blobs.exists("files/crashed")
    elsewhere = seaweed.blob_store(f"{prefix}-elsewhere")
    try:
        assert await elsewhere.discard_unfinished() == 1
    finally:
        await elsewhere.close()
