"""The stock Batch API as the job uses it, over the official `openai` SDK, plus one extension that is used
only when the server shows it has it: Doubleword's partial file content.

Doubleword's convention (their control layer and `dw` CLI): `GET /v1/files/{id}/content` takes a line
offset (`?skip=N`; their docs also write `?offset=N`, so both are sent) and answers with `X-Incomplete:
true` while the batch may still add lines, and `X-Last-Line: M`, the offset to continue from. A stock
server sends neither header; then the file is read only once its batch has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx2
import openai
from openai import AsyncOpenAI
from openai.types import Batch

from overnight.domain.lines import split_line_groups
from overnight.domain.validation import is_blank

T = TypeVar("T")

SDK_RETRIES: Final = 5
GROUP_LINES: Final = 2000
GROUP_BYTES: Final = 8 << 20
PATIENCE_S: Final = 1800.0  # how long the job waits out a server that does not answer, then gives up
_BACKOFF_MAX_S: Final = 30.0
_TIMEOUT: Final = httpx2.Timeout(600.0, connect=30.0)
_NO_KEY: Final = "no-key"  # a local server without keys takes any


class ClientError(Exception):
    """The server refused a request for good (401, 404, a bad request): the job cannot go on."""


@dataclass(frozen=True, slots=True)
class Partial:
    """What one read of a file from an offset gave."""

    lines: int  # lines read, handed to the sink
    next_offset: int
    incomplete: bool  # the server may add more lines


def is_transient(error: BaseException) -> bool:
    """An error that waiting may cure: no answer, a timeout, 408, 409, 429 or 5xx."""
    if isinstance(error, openai.APIConnectionError):  # APITimeoutError too
        return True
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        return status in (408, 409, 429) or status >= 500
    return False


def describe(error: BaseException) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    return f"{type(error).__name__}: {error}"


class BatchApi:
    def __init__(self, base_url: str | None, api_key: str | None) -> None:
        try:
            self.sdk = AsyncOpenAI(
                base_url=base_url, api_key=api_key, max_retries=SDK_RETRIES, timeout=_TIMEOUT
            )
        except openai.OpenAIError:  # no key given nor in OPENAI_API_KEY: the server says if it needs one
            self.sdk = AsyncOpenAI(
                base_url=base_url, api_key=_NO_KEY, max_retries=SDK_RETRIES, timeout=_TIMEOUT
            )
        self.on_wait: Callable[[str], None] = lambda note: None

    @property
    def base_url(self) -> str:
        return str(self.sdk.base_url).rstrip("/")

    async def close(self) -> None:
        await self.sdk.close()

    async def patiently(self, what: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """`call()`, tried again after transient errors (past the SDK's own retries) for PATIENCE_S."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = 1.0
        while True:
            try:
                return await call()
            except openai.APIError as error:
                if not is_transient(error):
                    raise ClientError(f"{what}: {describe(error)}") from error
                if loop.time() - started > PATIENCE_S:
                    raise ClientError(
                        f"{what}: no answer for {PATIENCE_S:.0f} s: {describe(error)}"
                    ) from error
                self.on_wait(f"{what}: {describe(error)}; trying again in {delay:.0f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def upload(self, path: Path, filename: str, idempotency_key: str) -> str:
        async def call() -> str:
            with path.open("rb") as handle:  # streamed from disk, never read whole
                file = await self.sdk.files.create(
                    file=(filename, handle, "application/jsonl"),
                    purpose="batch",
                    extra_headers={"Idempotency-Key": idempotency_key},
                )
            return file.id

        return await self.patiently(f"uploading {filename}", call)

    async def create_batch(
        self, file_id: str, endpoint: str, window: str, metadata: dict[str, str], idempotency_key: str
    ) -> Batch:
        return await self.patiently(
            f"creating the batch of {file_id}",
            lambda: self.sdk.batches.create(
                input_file_id=file_id,
                endpoint=endpoint,  # type: ignore[arg-type]  # any endpoint the server takes
                completion_window=window,  # type: ignore[arg-type]
                metadata=metadata,
                extra_headers={"Idempotency-Key": idempotency_key},
            ),
        )

    async def retrieve(self, batch_id: str) -> Batch:
        return await self.patiently(f"reading batch {batch_id}", lambda: self.sdk.batches.retrieve(batch_id))

    async def cancel(self, batch_id: str) -> Batch:
        return await self.patiently(f"cancelling batch {batch_id}", lambda: self.sdk.batches.cancel(batch_id))

    async def find_batch(self, metadata: dict[str, str], since: float) -> Batch | None:
        """The newest batch created since `since` whose metadata holds all of `metadata`."""

        async def call() -> Batch | None:
            async for batch in self.sdk.batches.list(limit=100):
                if batch.created_at < since:
                    return None
                found = batch.metadata or {}
                if all(found.get(key) == value for key, value in metadata.items()):
                    return batch
            return None

        return await self.patiently("listing batches", call)

    async def partial_result_ids(self, batch_id: str) -> tuple[bool, str | None]:
        """(has the progress extension, the output file id it names for a running batch). A 404 or 400
        means no extension; a passing fault raises openai.APIError."""
        try:
            progress = await self.sdk.get(f"/batches/{batch_id}/progress", cast_to=object)
        except (openai.NotFoundError, openai.BadRequestError, openai.UnprocessableEntityError):
            return False, None
        partial = progress.get("partial_results") if isinstance(progress, dict) else None
        found = partial.get("output_file_id") if isinstance(partial, dict) else None
        return True, found if isinstance(found, str) and found else None

    async def lines(self, file_id: str) -> AsyncIterator[list[bytes]]:
        """The whole file's lines, a group at a time, streamed."""
        async with self.sdk.files.with_streaming_response.content(file_id) as response:
            async for lines in _groups(response.iter_bytes()):
                yield lines

    async def read_from(
        self, file_id: str, offset: int, sink: Callable[[list[bytes]], None]
    ) -> Partial | None:
        """The lines of a file from line `offset` on, handed to `sink` a group at a time, where the server
        has Doubleword's partial content; None (nothing read) where it has not. A 404 (not there yet)
        raises openai.NotFoundError."""
        query = {"skip": offset, "offset": offset} if offset else None
        async with self.sdk.files.with_streaming_response.content(file_id, extra_query=query) as response:
            incomplete = response.headers.get("x-incomplete")
            if incomplete is None:
                return None  # a stock server: leave its body unread
            read = 0
            async for lines in _groups(response.iter_bytes()):
                read += len(lines)
                sink(lines)
            last_line = response.headers.get("x-last-line")
        next_offset = offset + read
        if last_line is not None and last_line.isdigit() and int(last_line) != next_offset:
            raise OffsetMismatch(f"X-Last-Line {last_line} after reading {read} lines from {offset}")
        return Partial(read, next_offset, incomplete.strip().lower() == "true")


async def _groups(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The non-blank lines of a byte stream, in groups of about GROUP_LINES or GROUP_BYTES (one index
    commit each)."""
    pending: list[bytes] = []
    size = 0
    async for group in split_line_groups(chunks):
        for _, raw in group:
            if not is_blank(raw):
                pending.append(raw)
                size += len(raw)
        if len(pending) >= GROUP_LINES or size >= GROUP_BYTES:
            yield pending
            pending, size = [], 0
    if pending:
        yield pending


class OffsetMismatch(Exception):
    """The server's X-Last-Line disagrees with the lines it sent: it did not honour the offset."""
