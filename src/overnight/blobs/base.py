"""The blob store interface. Every implementation passes tests/contract/test_blobs_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Protocol


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"blob larger than {limit} bytes")
        self.limit = limit


class BlobStoreUnavailable(ConnectionError):
    """The store cannot be reached or refuses this process (network, credentials, missing bucket, server
    errors). The message names the store (endpoint and bucket), never a key or a credential.
    `transient` when it may answer later (unreachable, server errors) rather than a setting being wrong."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class BlobStore(Protocol):
    async def open(self) -> None:
        """Start what the store needs (a client, its connections) and check that it answers; raises
        BlobStoreUnavailable if it does not. Call once before use."""
        ...

    async def close(self) -> None:
        """Release what open() started. The store may be opened again afterwards."""
        ...

    async def put(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        """Store the stream under `key` atomically and return its size. Raises BlobTooLarge, storing
        nothing, as soon as more than `max_bytes` arrive."""
        ...

    def read(self, key: str, chunk_size: int = 1 << 20, *, start: int = 0) -> AsyncIterator[bytes]:
        """The content from byte `start` to the end as a stream of chunks of at most `chunk_size` bytes
        (nothing when `start` is at or past the end). Raises FileNotFoundError, on iteration, if absent."""
        ...

    async def compose(self, key: str, parts: Sequence[str]) -> int:
        """Store the concatenation of the blobs `parts` (in order; absent ones count as empty) under
        `key` atomically, remove the parts, and return the size; with no content at all, store
        nothing. One part is moved, not copied, where the store can (a rename, a server-side copy)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; absent blobs are fine."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def discard_unfinished(self, started_before: float | None = None) -> int:
        """Remove what puts interrupted by a crash left behind, of those started before
        `started_before` (Unix seconds; None: all of them, only for a process that knows no put of its
        own or of another process is running); the number of pieces removed."""
        ...
