"""The blob store on a local folder: one file per key, written to a temp file and renamed into place."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

from overnight.blobs.base import BlobTooLarge

TEMP_PREFIX = ".tmp-"
WRITE_BUFFER = 1 << 20  # gather small incoming chunks into writes of about this size


class LocalBlobStore:
    """BlobStore on a folder. Keys are `/`-separated relative paths such as `files/file-abc`.

    Disk work runs in worker threads so that large reads and writes never stall the event loop.
    """

    def __init__(self, root: Path) -> None:
        self._root = root

    async def open(self) -> None:
        """Nothing to start: every call opens what it needs."""

    async def close(self) -> None:
        """Nothing to release."""

    def _path(self, key: str) -> Path:
        """The file for `key`; rejects keys that could leave the root or collide with temp files."""
        parts = key.split("/")
        if any(not part or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
            raise ValueError(f"invalid blob key: {key!r}")
        return self._root.joinpath(*parts)

    async def put(self, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None) -> int:
        path = self._path(key)
        temp, temp_name = await asyncio.to_thread(_open_temp, path.parent)
        try:
            with temp:
                size = await _copy(chunks, temp, max_bytes)
                await asyncio.to_thread(_sync, temp)
            await asyncio.to_thread(_replace, temp_name, path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_discard, temp_name))
            raise
        return size

    async def read(self, key: str, chunk_size: int = 1 << 20, *, start: int = 0) -> AsyncIterator[bytes]:
        if start < 0:
            raise ValueError(f"negative start: {start}")
        try:
            source = await asyncio.to_thread(self._path(key).open, "rb")
        except IsADirectoryError:  # a folder of other keys, not a blob
            raise FileNotFoundError(f"no blob {key!r}") from None
        with source:
            if start:
                await asyncio.to_thread(source.seek, start)
            while chunk := await asyncio.to_thread(source.read, chunk_size):
                yield chunk

    async def compose(self, key: str, parts: Sequence[str]) -> int:
        target = self._path(key)
        present = [path for path in map(self._path, parts) if await asyncio.to_thread(path.is_file)]
        if len(present) == 1 and (size := (await asyncio.to_thread(present[0].stat)).st_size):
            await asyncio.to_thread(_replace, str(present[0]), target)  # a rename: no byte copied
            return size
        size = 0
        if present:
            size = await self.put(key, _concatenated(self, [str(p.relative_to(self._root)) for p in present]))
        for path in present:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        if size == 0:
            await self.delete(key)
        return size

    async def delete(self, key: str) -> None:
        with contextlib.suppress(IsADirectoryError):  # a folder of other keys: no blob to delete
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def discard_unfinished(self, started_before: float | None = None) -> int:
        return await asyncio.to_thread(_discard_temps, self._root, started_before)


async def _concatenated(blobs: LocalBlobStore, keys: Sequence[str]) -> AsyncIterator[bytes]:
    for key in keys:
        try:
            async for chunk in blobs.read(key):
                yield chunk
        except FileNotFoundError:
            continue


async def _copy(chunks: AsyncIterable[bytes], target: BinaryIO, max_bytes: int | None) -> int:
    """Write every chunk, failing as soon as more than `max_bytes` have arrived; the total size."""
    size = 0
    pending = bytearray()
    async for chunk in chunks:
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BlobTooLarge(max_bytes)
        pending += chunk
        if len(pending) >= WRITE_BUFFER:
            await asyncio.to_thread(target.write, pending)
            pending.clear()
    if pending:
        await asyncio.to_thread(target.write, pending)
    return size


def _open_temp(folder: Path) -> tuple[BinaryIO, str]:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    return os.fdopen(fd, "wb"), name


def _sync(temp: BinaryIO) -> None:
    temp.flush()
    os.fsync(temp.fileno())


def _replace(temp_name: str, path: Path) -> None:
    """Rename into place and make the rename itself durable."""
    os.replace(temp_name, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _discard_temps(root: Path, started_before: float | None) -> int:
    temps = list(root.rglob(f"{TEMP_PREFIX}*")) if root.is_dir() else []
    if started_before is not None:
        temps = [temp for temp in temps if _started(temp) < started_before]
    for temp in temps:
        _discard(str(temp))
    return len(temps)


def _started(temp: Path) -> float:
    try:
        return temp.stat().st_mtime  # a temp file is written to until its put ends: last write
    except FileNotFoundError:
        return float("inf")


def _discard(temp_name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp_name)
