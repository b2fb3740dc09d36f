"""The blob store interface. Every implementation passes tests/contract/test_blobs_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"blob larger than {limit} bytes")
        self.limit = limit


class BlobStore(Protocol):
    async def put(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        """Store the stream under `key` atomically and return its size. Raises BlobTooLarge, storing
        nothing, as soon as more than `max_bytes` arrive."""
        ...

    def read(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The content as a stream of chunks. Raises FileNotFoundError if absent."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; absent blobs are fine."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def discard_unfinished(self) -> int:
        """Remove what puts interrupted by a crash left behind; the number of pieces removed. Only for a
        process that knows no put of its own or of another process is running."""
        ...


async def split_line_groups(chunks: AsyncIterable[bytes]) -> AsyncIterator[list[tuple[int, bytes]]]:
    """(1-based line number, line without its newline) for every line of a byte stream, a list per
    chunk: for a reader that handles lines faster than it could take them one `async for` step each."""
    line_no = 0
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        if complete:
            yield list(enumerate(complete, line_no + 1))
            line_no += len(complete)
    if pending:
        yield [(line_no + 1, pending)]


async def split_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline) for every line of a byte stream."""
    async for group in split_line_groups(chunks):
        for numbered in group:
            yield numbered


def read_lines(blobs: BlobStore, key: str) -> AsyncIterator[tuple[int, bytes]]:
    """Every line of a blob, streamed."""
    return split_lines(blobs.read(key))


def read_line_groups(blobs: BlobStore, key: str) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Every line of a blob, streamed a chunk's worth at a time (see `split_line_groups`)."""
    return split_line_groups(blobs.read(key))
