"""The blob store on S3 or any S3-compatible server, through aiobotocore.

A put streams: chunks gather into parts of `part_size` bytes, at most `concurrency` parts are in flight, so
memory stays a few parts whatever the blob's size (bench/blobs.py: about 40-55 MiB of peak RSS growth with
8 MiB parts, 2 in flight, counting the copies the HTTP client makes). A blob that fits in one part goes
up with a single PUT; a larger one as a multipart upload that is completed only once every byte has arrived,
and aborted on any failure, cancellation or BlobTooLarge, so an object appears whole or not at all and an
existing object under the key stays as it was. A read is one streamed GET, ranged when it starts past 0.

Errors of the client become FileNotFoundError (absent key) or BlobStoreUnavailable, whose message names the
endpoint and bucket, never a key or a credential. The credentials are held so that no repr shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from overnight.blobs.base import BlobStoreUnavailable, BlobTooLarge

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

MIB = 1 << 20
MIN_PART_SIZE = 5 * MIB  # S3's least size for every part but the last
MAX_PARTS = 10_000  # S3's most parts in one upload
DEFAULT_PART_SIZE = 8 * MIB
DEFAULT_REGION = "us-east-1"
REFUSED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}
)
ABSENT = frozenset({"NoSuchKey", "404", "NotFound"})


class _Secret:
    """A credential that no repr, str or log line shows."""

    __slots__ = ("value",)

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "None" if self.value is None else "'***'"

    __str__ = __repr__


class S3BlobStore:
    """BlobStore on `bucket`, every key under `prefix` (`prefix/files/file-abc`; an empty prefix: none).

    The client starts on first use; `open()` starts it at once and checks that the bucket answers, so a bad
    setting shows at startup. `close()` releases its connections; call it once done. Credentials given as
    None are left to the client library's own chain (instance role, shared config).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        region: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = 2,
        max_connections: int = 64,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid bucket name: {bucket!r}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if concurrency < 1 or max_connections < concurrency:
            raise ValueError("concurrency must be at least 1 and at most max_connections")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both the access key id and the secret access key, or neither")
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        if self._prefix:
            _check_parts(self._prefix.split("/"), "prefix")
        self._endpoint_url = endpoint_url
        self._region = region
        self._access_key_id = _Secret(access_key_id)
        self._secret_access_key = _Secret(secret_access_key)
        self._part_size = part_size
        self._concurrency = concurrency
        self._config = AioConfig(
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # a read holds its connection while its consumer streams: leave room for many at once
            max_pool_connections=max_connections,
            # only where the API requires them: many S3-compatible servers reject the newer default checksums
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._where = f"S3 store at {_shown(endpoint_url)}, bucket {bucket!r}"
        self._client: S3Client | None = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._starting = asyncio.Lock()
        self._cleanups: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (
            f"S3BlobStore(bucket={self._bucket!r}, prefix={self._prefix!r}, "
            f"endpoint_url={_shown(self._endpoint_url)!r}, region={self._region!r})"
        )

    # -- lifecycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the client and check that the bucket answers to these credentials."""
        s3 = await self._s3()
        try:
            with self._errors():
                await s3.head_bucket(Bucket=self._bucket)
        except _Absent:
            raise BlobStoreUnavailable(f"{self._where}: the bucket does not exist") from None

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if self._exit is not None:
            exit_stack, self._exit, self._client = self._exit, None, None
            await exit_stack.aclose()

    async def _s3(self) -> S3Client:
        if self._client is not None:
            return self._client
        async with self._starting:
            if self._client is None:
                exit_stack = contextlib.AsyncExitStack()
                creating = get_session().create_client(
                    "s3",
                    endpoint_url=self._endpoint_url,
                    region_name=self._region or DEFAULT_REGION,
                    aws_access_key_id=self._access_key_id.value,
                    aws_secret_access_key=self._secret_access_key.value,
                    config=self._config,
                )
                with self._errors():
                    self._client = await exit_stack.enter_async_context(creating)
                self._exit = exit_stack
            return self._client

    # -- the BlobStore protocol ------------------------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        name = self._name(key)
        s3 = await self._s3()
        upload: _Multipart | None = None
        pending: list[bytes] = []
        buffered = size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLarge(max_bytes)
                if not chunk:
                    continue
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= self._part_size:
                    if upload is None:
                        upload = await self._start_upload(s3, name)
                    part = b"".join(pending)
                    pending, buffered = [], 0
                    await upload.send(part)
                    del part
            body = b"".join(pending)
            pending = []
            if upload is None:
                with self._errors():
                    await s3.put_object(Bucket=self._bucket, Key=name, Body=body)
            else:
                if body:
                    await upload.send(body)
                await upload.finish()
        except BaseException:
            if upload is not None:
                await self._abort(upload)
            raise
        return size

    async def read(self, key: str, chunk_size: int = 1 << 20, *, start: int = 0) -> AsyncIterator[bytes]:
        name = self._name(key)
        if start < 0:
            raise ValueError(f"negative start: {start}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive: {chunk_size}")
        s3 = await self._s3()
        extra: dict[str, Any] = {"Range": f"bytes={start}-"} if start else {}
        try:
            with self._errors():
                answer = await s3.get_object(Bucket=self._bucket, Key=name, **extra)
        except _Absent:
            raise FileNotFoundError(f"no blob {key!r}") from None
        except _Unsatisfiable:
            return  # start is at or past the end
        async with answer["Body"] as body:
            while True:
                with self._errors():
                    chunk = await body.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    async def compose(self, key: str, parts: Sequence[str]) -> int:
        name = self._name(key)
        s3 = await self._s3()
        sizes = {part: await self._size(s3, part) for part in parts}
        present = [part for part, size in sizes.items() if size is not None]
        if len(present) == 1 and sizes[present[0]]:  # a server-side copy: no byte through this process
            with self._errors():
                await s3.copy_object(
                    Bucket=self._bucket,
                    Key=name,
                    CopySource={"Bucket": self._bucket, "Key": self._name(present[0])},
                )
            size = sizes[present[0]] or 0
        else:
            size = await self.put(key, self._concatenated(present)) if present else 0
        for part in present:
            await self.delete(part)
        if size == 0:
            await self.delete(key)
        return size

    async def _size(self, s3: S3Client, key: str) -> int | None:
        try:
            with self._errors():
                head = await s3.head_object(Bucket=self._bucket, Key=self._name(key))
        except _Absent:
            return None
        return int(head.get("ContentLength", 0))

    async def _concatenated(self, keys: Sequence[str]) -> AsyncIterator[bytes]:
        for key in keys:
            try:
                async for chunk in self.read(key):
                    yield chunk
            except FileNotFoundError:
                continue

    async def delete(self, key: str) -> None:
        name = self._name(key)
        s3 = await self._s3()
        with contextlib.suppress(_Absent), self._errors():
            await s3.delete_object(Bucket=self._bucket, Key=name)

    async def exists(self, key: str) -> bool:
        name = self._name(key)
        s3 = await self._s3()
        try:
            with self._errors():
                await s3.head_object(Bucket=self._bucket, Key=name)
        except _Absent:
            return False
        return True

    async def discard_unfinished(self, started_before: float | None = None) -> int:
        """Abort the multipart uploads under this store's prefix (those a crash left unfinished) that
        were started before `started_before` (Unix seconds; None: all)."""
        s3 = await self._s3()
        prefix = f"{self._prefix}/" if self._prefix else ""
        found: list[tuple[str, str]] = []
        with self._errors():
            pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=self._bucket, Prefix=prefix)
            async for page in pages:
                for upload in page.get("Uploads", []):
                    initiated = upload.get("Initiated")
                    old = started_before is None or (
                        initiated is not None and initiated.timestamp() < started_before
                    )
                    if "Key" in upload and "UploadId" in upload and old:
                        found.append((upload["Key"], upload["UploadId"]))
        for name, upload_id in found:
            with contextlib.suppress(_Absent), self._errors():
                await s3.abort_multipart_upload(Bucket=self._bucket, Key=name, UploadId=upload_id)
        return len(found)

    # -- helpers ---------------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        """The object's name for `key`; rejects the keys LocalBlobStore rejects."""
        _check_parts(key.split("/"), "key", key)
        return f"{self._prefix}/{key}" if self._prefix else key

    async def _start_upload(self, s3: S3Client, name: str) -> _Multipart:
        """A put cancelled while the server creates the upload leaves it empty (no parts, no object) for
        discard_unfinished; from here on the put aborts what it began."""
        with self._errors():
            started = await s3.create_multipart_upload(Bucket=self._bucket, Key=name)
        upload_id = started["UploadId"]
        return _Multipart(s3, self._bucket, name, upload_id, self._part_size, self._concurrency, self._errors)

    async def _abort(self, upload: _Multipart) -> None:
        """Abort the upload even if the caller is cancelled meanwhile (it then finishes in the background)."""
        task = asyncio.create_task(upload.abort())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn the client's errors into ours; an absent object or range into _Absent or _Unsatisfiable.
        Never chains the original: its text can hold object URLs and what the server echoed."""
        try:
            yield
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ABSENT or (status == 404 and code != "NoSuchBucket"):
                raise _Absent(f"{self._where}: not found ({code})") from None
            if code == "InvalidRange" or status == 416:
                raise _Unsatisfiable(f"{self._where}: range not satisfiable") from None
            if code in REFUSED or status == 403:
                message = f"{self._where} refused access ({code}): check the credentials and their rights"
                raise BlobStoreUnavailable(message) from None
            if code == "NoSuchBucket":
                raise BlobStoreUnavailable(f"{self._where}: the bucket does not exist") from None
            transient = not isinstance(status, int) or status >= 500 or status == 429
            message = f"{self._where} failed: {code or 'error'} (HTTP {status})"
            raise BlobStoreUnavailable(message, transient=transient) from None
        except NoCredentialsError:
            raise BlobStoreUnavailable(f"{self._where}: no credentials were given or found") from None
        except (BotoCoreError, aiohttp.ClientError) as error:
            kind = type(error).__name__
            raise BlobStoreUnavailable(f"{self._where} cannot be reached ({kind})", transient=True) from None


class _Absent(BlobStoreUnavailable):
    """The object (or upload) is not there; each caller says what that means for it."""


class _Unsatisfiable(BlobStoreUnavailable):
    """A range that starts at or past the end of the object."""


class _Multipart:
    """One multipart upload: parts numbered in order, at most `concurrency` in flight."""

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        name: str,
        upload_id: str,
        part_size: int,
        concurrency: int,
        errors: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._name = name
        self._upload_id = upload_id
        self._part_size = part_size
        self._concurrency = concurrency
        self._errors = errors
        self._in_flight: set[asyncio.Task[CompletedPartTypeDef]] = set()
        self._parts: list[CompletedPartTypeDef] = []
        self._number = 0

    async def send(self, body: bytes) -> None:
        while len(self._in_flight) >= self._concurrency:
            done, self._in_flight = await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
            self._collect(done)
        if self._number == MAX_PARTS:
            raise BlobTooLarge(MAX_PARTS * self._part_size)  # every part but the last holds >= part_size
        self._number += 1
        self._in_flight.add(asyncio.create_task(self._upload_part(self._number, body)))

    async def finish(self) -> None:
        if self._in_flight:
            done, _ = await asyncio.wait(self._in_flight)
            self._in_flight = set()
            self._collect(done)
        parts = sorted(self._parts, key=lambda part: part.get("PartNumber", 0))
        with self._errors():
            await self._s3.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._name,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )

    def _collect(self, done: set[asyncio.Task[CompletedPartTypeDef]]) -> None:
        """Record the finished parts; raise the first failure (having looked at every one)."""
        failures = [error for task in done if (error := task.exception()) is not None]
        if failures:
            raise failures[0]
        self._parts += [task.result() for task in done]

    async def abort(self) -> None:
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._in_flight = set()
        try:
            with contextlib.suppress(_Absent), self._errors():
                await self._s3.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._name, UploadId=self._upload_id
                )
        except BlobStoreUnavailable as error:
            log.warning("could not abort an unfinished upload (discard_unfinished will): %s", error)

    async def _upload_part(self, number: int, body: bytes) -> CompletedPartTypeDef:
        with self._errors():
            answer = await self._s3.upload_part(
                Bucket=self._bucket,
                Key=self._name,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            )
        return {"PartNumber": number, "ETag": answer["ETag"]}


def _shown(endpoint_url: str | None) -> str:
    """The endpoint without any user or password that its URL may carry."""
    if endpoint_url is None:
        return "AWS"
    parts = urlsplit(endpoint_url)
    if not parts.scheme:
        return endpoint_url.rsplit("@", 1)[-1]
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _check_parts(parts: list[str], what: str, whole: str | None = None) -> None:
    if any(not part or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
        raise ValueError(f"invalid blob {what}: {whole if whole is not None else '/'.join(parts)!r}")
