"""Splitting a stream of bytes into numbered JSONL lines, without holding more than a chunk."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


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
