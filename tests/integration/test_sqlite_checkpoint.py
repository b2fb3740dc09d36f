"""The SQLite store's write-ahead log is checkpointed by its own thread, not inside the store's commits
(store/sqlite_checkpoint.py): the store's connection only keeps a high backstop threshold, and a
checkpoint copies the whole log, after which the next write starts the log again."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from overnight.domain.models import FileObject
from overnight.store.sqlite import SqliteStore
from overnight.store.sqlite_checkpoint import BACKSTOP_PAGES, Checkpoint, WalCheckpointer


def _file(index: int) -> FileObject:
    return FileObject(f"file-{index:06d}", "p", 123, 1_700_000_000, f"f{index}.jsonl", "batch", None)


def test_the_store_leaves_checkpoints_to_its_checkpointer(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, int]:
        store = SqliteStore(tmp_path / "overnight.db")
        await store.open()
        try:
            for index in range(1500):  # well past SQLite's own 1,000-page threshold, were it kept
                await store.add_file(_file(index))
            wal = tmp_path / "overnight.db-wal"
            before = wal.stat().st_size
            checkpointer = WalCheckpointer(tmp_path / "overnight.db")
            await checkpointer.start()
            try:
                done = await checkpointer.checkpoint_now()
            finally:
                await checkpointer.stop()
            assert done.busy == 0
            assert done.checkpointed == done.log_frames > 0  # all of the log was copied
            await store.add_file(_file(99_999))  # starts the log again from its beginning
            after = (await checkpointer_frames(tmp_path / "overnight.db")).log_frames
            return before, done.log_frames, after
        finally:
            await store.close()

    before, frames, after = asyncio.run(scenario())
    assert before > 0
    assert after < frames  # the log was reset, not appended to


async def checkpointer_frames(path: Path) -> Checkpoint:
    checkpointer = WalCheckpointer(path)
    await checkpointer.start()
    try:
        return await checkpointer.checkpoint_now()
    finally:
        await checkpointer.stop()


def test_the_store_connection_keeps_only_a_backstop_threshold(tmp_path: Path) -> None:
    async def scenario() -> int:
        store = SqliteStore(tmp_path / "overnight.db")
        await store.open()
        try:
            return await store._call(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        finally:
            await store.close()

    assert asyncio.run(scenario()) == BACKSTOP_PAGES


def test_a_checkpointer_never_waits_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")

    async def scenario() -> None:
        checkpointer = WalCheckpointer(path)
        await checkpointer.start()
        try:
            await checkpointer.checkpoint_now()  # returns at once, whatever it could copy
        finally:
            await checkpointer.stop()

    asyncio.run(scenario())
    writer.execute("COMMIT")
    writer.close()
