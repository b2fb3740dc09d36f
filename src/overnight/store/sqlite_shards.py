"""SQL for shards (ranges of a running batch's lines, each leased by one worker), on the store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from overnight.domain.models import BatchStatus, Shard
from overnight.store.rows import shard_from_row
from overnight.store.sqlite_tx import transaction

_COLUMNS = "batch_id, shard_no, first_line, end_line, start_offset, shard_count, done, part"


def add_shards(conn: sqlite3.Connection, shards: Sequence[Shard]) -> None:
    with transaction(conn):
        conn.executemany(
            f"INSERT INTO shards ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 0, NULL)"
            " ON CONFLICT (batch_id, shard_no) DO NOTHING",
            [(s.batch_id, s.shard_no, s.first_line, s.end_line, s.start_offset, s.count) for s in shards],
        )


# The shard to claim: of a batch in progress, not done, free (or its lease ran out); earliest deadline
# (to the minute) first, then the project holding the fewest live shard leases, then creation order.
_CLAIMABLE = f"""
SELECT s.batch_id, s.shard_no FROM shards s JOIN batches b ON b.id = s.batch_id
WHERE s.done = 0 AND b.status = '{BatchStatus.IN_PROGRESS.value}' AND b.expires_at > :now
  AND (s.worker_id IS NULL OR s.lease_expires_at <= :now)
ORDER BY b.expires_at / 60,
  (SELECT count(*) FROM shards s2 JOIN batches b2 ON b2.id = s2.batch_id
   WHERE b2.project = b.project AND s2.done = 0 AND s2.worker_id IS NOT NULL AND s2.lease_expires_at > :now),
  s.batch_id, s.shard_no
LIMIT 1
"""


def claim_shard(conn: sqlite3.Connection, worker: str, now: int, lease_s: int) -> Shard | None:
    with transaction(conn):  # the pick and the claim in one write transaction
        found = conn.execute(_CLAIMABLE, {"now": now}).fetchone()
        row = None
        if found is not None:
            row = conn.execute(
                f"UPDATE shards SET worker_id = ?, lease_expires_at = ? WHERE batch_id = ? AND shard_no = ?"
                f" RETURNING {_COLUMNS}",
                (worker, now + lease_s, *found),
            ).fetchone()
    return None if row is None else shard_from_row(row)


def renew_shard(
    conn: sqlite3.Connection, batch_id: str, shard_no: int, worker: str, now: int, lease_s: int
) -> bool:
    cursor = conn.execute(
        "UPDATE shards SET lease_expires_at = ? WHERE batch_id = ? AND shard_no = ? AND worker_id = ?"
        " AND done = 0",
        (now + lease_s, batch_id, shard_no, worker),
    )
    return cursor.rowcount > 0


def finish_shard(
    conn: sqlite3.Connection, batch_id: str, shard_no: int, worker: str, part: str | None
) -> bool:
    cursor = conn.execute(
        "UPDATE shards SET done = 1, part = ?, worker_id = NULL, lease_expires_at = NULL"
        " WHERE batch_id = ? AND shard_no = ? AND worker_id = ? AND done = 0",
        (part, batch_id, shard_no, worker),
    )
    return cursor.rowcount > 0


def release_shard(conn: sqlite3.Connection, batch_id: str, shard_no: int, worker: str) -> None:
    conn.execute(
        "UPDATE shards SET worker_id = NULL, lease_expires_at = NULL"
        " WHERE batch_id = ? AND shard_no = ? AND worker_id = ?",
        (batch_id, shard_no, worker),
    )


def shards_of(conn: sqlite3.Connection, batch_id: str) -> list[Shard]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM shards WHERE batch_id = ? ORDER BY shard_no", (batch_id,))
    return [shard_from_row(row) for row in rows]


def release_all_shard_leases(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE shards SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL")
