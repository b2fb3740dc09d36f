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
