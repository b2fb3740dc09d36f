"""The SQLite store's part of results while a batch runs and of idempotent creates (migration 0009).
Each function runs on the store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from overnight.domain.idempotency import KeyRecord

_TAKE_SEQS = "UPDATE batches SET result_seq = result_seq + ? WHERE id = ? RETURNING result_seq - ?"
_SET_ORDER = "UPDATE batches SET result_order = ? WHERE id = ? AND result_order IS NULL"
_GET_ORDER = "SELECT result_order FROM batches WHERE id = ?"
_KEY_COLUMNS = "project, idempotency_key, fingerprint, object_id, created_at, completed_at"
_ADD_KEY = (
    f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (project, idempotency_key) DO NOTHING"
)
_GET_KEY = f"SELECT {_KEY_COLUMNS} FROM idempotency_keys WHERE project = ? AND idempotency_key = ?"
_KEY_DONE = (
    "UPDATE idempotency_keys SET completed_at = ?"
    " WHERE project = ? AND idempotency_key = ? AND object_id = ? AND completed_at IS NULL"
)
_FORGET_KEY = "DELETE FROM idempotency_keys WHERE project = ? AND idempotency_key = ? AND object_id = ?"
_FORGET_OLD_KEYS = "DELETE FROM idempotency_keys WHERE created_at < ?"


def take_seqs(conn: sqlite3.Connection, batch_id: str, count: int) -> int:
    """Reserve `count` sequence numbers of the batch's results (inside the recording transaction);
    the last one before them."""
    row = conn.execute(_TAKE_SEQS, (count, batch_id, count)).fetchone()
    return 0 if row is None else int(row[0])


def recorded_results(
    conn: sqlite3.Connection, batch_id: str, kinds: Sequence[str], after_seq: int, skip: int, limit: int
) -> list[tuple[int, bytes]]:
    marks = ", ".join("?" * len(kinds))
    sql = (
        f"SELECT seq, line FROM results WHERE batch_id = ? AND seq > ? AND kind IN ({marks})"
        " ORDER BY seq LIMIT ? OFFSET ?"
    )
    rows = conn.execute(sql, (batch_id, after_seq, *kinds, max(limit, 0), max(skip, 0)))
    return [(seq, bytes(line)) for seq, line in rows]


def claim_result_order(conn: sqlite3.Connection, batch_id: str, order: str) -> str | None:
    conn.execute(_SET_ORDER, (order, batch_id))
    row = conn.execute(_GET_ORDER, (batch_id,)).fetchone()
    return None if row is None else row[0]


def remember_key(conn: sqlite3.Connection, record: KeyRecord) -> KeyRecord:
    values = (
        record.project,
        record.key,
        record.fingerprint,
        record.object_id,
        record.created_at,
        record.completed_at,
    )
    conn.execute(_ADD_KEY, values)
    found = get_key(conn, record.project, record.key)
    assert found is not None  # inserted, or already there; only this thread writes
    return found


def get_key(conn: sqlite3.Connection, project: str, key: str) -> KeyRecord | None:
    row = conn.execute(_GET_KEY, (project, key)).fetchone()
    return None if row is None else KeyRecord(*row)


def key_done(conn: sqlite3.Connection, project: str, key: str, object_id: str, now: int) -> None:
    conn.execute(_KEY_DONE, (now, project, key, object_id))


def forget_key(conn: sqlite3.Connection, project: str, key: str, object_id: str) -> bool:
    return conn.execute(_FORGET_KEY, (project, key, object_id)).rowcount > 0


def forget_keys_before(conn: sqlite3.Connection, created_before: int) -> int:
    return conn.execute(_FORGET_OLD_KEYS, (created_before,)).rowcount
