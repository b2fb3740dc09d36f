"""SQL for a backend's slots (its max_concurrency, shared by every worker), on the store's thread."""

from __future__ import annotations

import sqlite3

from overnight.domain.limits import fair_share
from overnight.store.sqlite_tx import transaction


def hold_slots(
    conn: sqlite3.Connection,
    backend: str,
    worker: str,
    wants: bool,
    in_use: int,
    limit: int,
    now: int,
    lease_s: int,
) -> tuple[int, int]:
    with transaction(conn):
        if wants:
            conn.execute(
                "INSERT INTO backend_workers (backend, worker_id, seen_until) VALUES (?, ?, ?)"
                " ON CONFLICT (backend, worker_id) DO UPDATE SET seen_until = excluded.seen_until",
                (backend, worker, now + lease_s),
            )
        else:
            conn.execute("DELETE FROM backend_workers WHERE backend = ? AND worker_id = ?", (backend, worker))
        live = [
            w
            for (w,) in conn.execute(
                "SELECT worker_id FROM backend_workers WHERE backend = ? AND seen_until > ?", (backend, now)
            )
        ]
        target = fair_share(limit, live, worker) if wants else 0
        conn.execute(  # slots past the limit (it was lowered) go back
            "UPDATE backend_slots SET worker_id = NULL, lease_expires_at = NULL"
            " WHERE backend = ? AND worker_id = ? AND slot_no >= ?",
            (backend, worker, limit),
        )
        held = [
            n
            for (n,) in conn.execute(
                "SELECT slot_no FROM backend_slots WHERE backend = ? AND worker_id = ? ORDER BY slot_no",
                (backend, worker),
            )
        ]
        keep = max(target, min(len(held), in_use))  # a slot in use is given back only once it is free
        for slot_no in held[keep:]:
            conn.execute(
                "UPDATE backend_slots SET worker_id = NULL, lease_expires_at = NULL"
                " WHERE backend = ? AND slot_no = ?",
                (backend, slot_no),
            )
        conn.execute(
            "UPDATE backend_slots SET lease_expires_at = ? WHERE backend = ? AND worker_id = ?",
            (now + lease_s, backend, worker),
        )
        count = min(len(held), keep)
        if count < target:
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)"
                " INSERT INTO backend_slots (backend, slot_no) SELECT ?, i FROM n WHERE true"
                " ON CONFLICT (backend, slot_no) DO NOTHING",
                (limit, backend),
            )
            free = [
                n
                for (n,) in conn.execute(
                    "SELECT slot_no FROM backend_slots WHERE backend = ? AND slot_no < ?"
                    " AND (worker_id IS NULL OR lease_expires_at <= ?) ORDER BY slot_no LIMIT ?",
                    (backend, limit, now, target - count),
                )
            ]
            for slot_no in free:
                conn.execute(
                    "UPDATE backend_slots SET worker_id = ?, lease_expires_at = ?"
                    " WHERE backend = ? AND slot_no = ?",
                    (worker, now + lease_s, backend, slot_no),
                )
            count += len(free)
        return count, target


def release_all_slots(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE backend_slots SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL"
    )
    conn.execute("DELETE FROM backend_workers")
