"""SQL for the per-project limits on SQLite (on the store's thread): the bytes a project's files take,
and when its recent batches were created (docs/limits.md)."""

from __future__ import annotations

import sqlite3

from overnight.store.background_sql import VISIBLE_BATCH

_STORED_BYTES = (
    "SELECT coalesce(sum(bytes), 0) FROM files WHERE project = ? AND (expires_at IS NULL OR expires_at > ?)"
)
_NTH_LATEST_BATCH = (
    f"SELECT created_at FROM batches WHERE project = ? AND created_at >= ? AND {VISIBLE_BATCH}"
    " ORDER BY created_at DESC LIMIT 1 OFFSET ?"
)


def stored_bytes(conn: sqlite3.Connection, project: str, now: int) -> int:
    total: int = conn.execute(_STORED_BYTES, (project, now)).fetchone()[0]
    return total


def nth_latest_batch_created_at(conn: sqlite3.Connection, project: str, since: int, n: int) -> int | None:
    row = conn.execute(_NTH_LATEST_BATCH, (project, since, n - 1)).fetchone()
    return None if row is None else int(row[0])
