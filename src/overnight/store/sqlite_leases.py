"""SQL for batch leases (one worker drives a batch at a time), run on the store's database thread."""

from __future__ import annotations

import sqlite3


def claim_batch(conn: sqlite3.Connection, batch_id: str, worker: str, now: int, lease_s: int) -> bool:
    cursor = conn.execute(
        "UPDATE batches SET worker_id = ?, lease_expires_at = ? WHERE id = ?"
        " AND (worker_id IS NULL OR worker_id = ? OR lease_expires_at <= ?)",
        (worker, now + lease_s, batch_id, worker, now),
    )
    return cursor.rowcount > 0


def release_batch(conn: sqlite3.Connection, batch_id: str, worker: str) -> None:
    conn.execute(
        "UPDATE batches SET worker_id = NULL, lease_expires_at = NULL WHERE id = ? AND worker_id = ?",
        (batch_id, worker),
    )


def release_all_leases(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE batches SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL")
