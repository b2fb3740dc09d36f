"""Checkpointing SQLite's write-ahead log away from the store's thread.

Left alone, SQLite checkpoints its log inside whichever commit takes it past `wal_autocheckpoint` pages
(1,000 by default): that commit, and every API read queued behind it on the store's one thread, waits for
the copy (up to ~40 ms while a batch writes its results: bench load). Here a second connection, on a thread
of its own, runs a PASSIVE checkpoint every `interval_s`: it copies what no reader still needs, never waits
for a lock and never holds up the store's thread; once all of the log is copied, the next write starts it
again from the beginning. The store's own connection keeps a high automatic threshold as a backstop
(BACKSTOP_PAGES), so the log stays bounded even if this one falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger("overnight.store")

BACKSTOP_PAGES = 20_000  # the store connection's own wal_autocheckpoint: about 80 MB of 4 KiB pages
INTERVAL_S = 1.0


class Checkpoint(NamedTuple):
    """What `PRAGMA wal_checkpoint(PASSIVE)` said: whether it was blocked, frames in the log, copied."""

    busy: int
    log_frames: int
    checkpointed: int


class WalCheckpointer:
    """One database file's background checkpoints; `start` after the schema exists, `stop` before close."""

    def __init__(self, path: Path, interval_s: float = INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overnight-sqlite-checkpoint")
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, self._connect)
        self._task = asyncio.create_task(self._run(), name="sqlite checkpoints")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 0")  # never wait: the next round tries again
        return conn

    async def checkpoint_now(self) -> Checkpoint:
        """One PASSIVE checkpoint, on this checkpointer's thread."""
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise RuntimeError("the checkpointer is not started")
        return await asyncio.get_running_loop().run_in_executor(executor, _passive_checkpoint, conn)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.checkpoint_now()
            except sqlite3.Error as exc:  # a locked or busy moment: the next round tries again
                log.debug("sqlite checkpoint skipped: %s", exc)

    async def stop(self) -> None:
        task, conn, executor = self._task, self._conn, self._executor
        self._task = self._conn = self._executor = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if conn is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)


def _passive_checkpoint(conn: sqlite3.Connection) -> Checkpoint:
    busy, log_frames, checkpointed = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return Checkpoint(busy, log_frames, checkpointed)
