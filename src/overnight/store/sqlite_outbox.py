"""SQL for the webhooks' outbox (events and their deliveries), run on the SQLite store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from overnight.domain.events import Delivery, Event
from overnight.store.sqlite_tx import transaction

_INSERT_EVENT = "INSERT INTO webhook_events (id, type, created_at, batch_id, project) VALUES (?, ?, ?, ?, ?)"
_INSERT_DELIVERY = "INSERT INTO webhook_deliveries (event_id, endpoint, next_attempt_at) VALUES (?, ?, ?)"
_OPEN = "delivered_at IS NULL AND gave_up_at IS NULL"


def with_event(conn: sqlite3.Connection, event: Event, change: Callable[[sqlite3.Connection], bool]) -> bool:
    """Run `change` (a status change) and, when it changed something (True), record `event` and its
    deliveries, all in one transaction: the event exists exactly when the change does."""
    with transaction(conn):
        if not change(conn):
            return False
        conn.execute(_INSERT_EVENT, (event.id, event.type, event.created_at, event.batch_id, event.project))
        conn.executemany(_INSERT_DELIVERY, [(event.id, name, event.created_at) for name in event.endpoints])
        return True


def claim_deliveries(
    conn: sqlite3.Connection, worker: str, now: int, lease_s: int, limit: int, endpoints: Sequence[str]
) -> list[Delivery]:
    """Lease up to `limit` due deliveries to these endpoints that no live lease holds, counting the
    attempt each is leased for."""
    if limit <= 0 or not endpoints:
        return []
    names = ", ".join("?" * len(endpoints))
    pick = (
        "SELECT d.event_id, d.endpoint, e.type, e.batch_id, e.created_at, d.attempts + 1"
        " FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id"
        " WHERE d.delivered_at IS NULL AND d.gave_up_at IS NULL AND d.next_attempt_at <= ?"
        f" AND d.endpoint IN ({names})"
        " AND (d.worker_id IS NULL OR d.lease_expires_at <= ?)"
        " ORDER BY d.next_attempt_at, d.event_id, d.endpoint LIMIT ?"
    )
    with transaction(conn):  # the pick and the lease in one write transaction
        due = [Delivery(*row) for row in conn.execute(pick, (now, *endpoints, now, limit))]
        conn.executemany(
            "UPDATE webhook_deliveries SET worker_id = ?, lease_expires_at = ?, attempts = ?"
            " WHERE event_id = ? AND endpoint = ?",
            [(worker, now + lease_s, d.attempts, d.event_id, d.endpoint) for d in due],
        )
    return due


def finish_delivery(conn: sqlite3.Connection, event_id: str, endpoint: str, now: int, status: int) -> bool:
    cursor = conn.execute(
        "UPDATE webhook_deliveries SET delivered_at = ?, last_status = ?, last_error = NULL,"
        f" worker_id = NULL, lease_expires_at = NULL WHERE event_id = ? AND endpoint = ? AND {_OPEN}",
        (now, status, event_id, endpoint),
    )
    return cursor.rowcount > 0


def retry_delivery(
    conn: sqlite3.Connection,
    event_id: str,
    endpoint: str,
    worker: str,
    now: int,
    retry_at: int | None,
    status: int | None,
    error: str,
) -> bool:
    cursor = conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = coalesce(?, next_attempt_at),"
        " gave_up_at = CASE WHEN ? IS NULL THEN ? END, last_status = ?, last_error = ?,"
        " worker_id = NULL, lease_expires_at = NULL WHERE event_id = ? AND endpoint = ? AND worker_id = ?"
        f" AND {_OPEN}",
        (retry_at, retry_at, now, status, error, event_id, endpoint, worker),
    )
    return cursor.rowcount > 0


def pending_deliveries(conn: sqlite3.Connection) -> int:
    count: int = conn.execute(f"SELECT count(*) FROM webhook_deliveries WHERE {_OPEN}").fetchone()[0]
    return count


def release_all_delivery_leases(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE webhook_deliveries SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL"
    )
