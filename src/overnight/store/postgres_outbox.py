"""The webhooks' outbox on PostgreSQL: its SQL, and the transaction that records an event with the status
change that makes it. Many workers claim at once: SKIP LOCKED gives each different deliveries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from overnight.domain.events import Delivery, Event

_OPEN = "delivered_at IS NULL AND gave_up_at IS NULL"

RECORD_EVENT = (
    "INSERT INTO webhook_events (id, type, created_at, batch_id, project) VALUES ($1, $2, $3, $4, $5)"
)
# $1 event, $2 endpoint names, $3 first attempt time.
ADD_DELIVERIES = (
    "INSERT INTO webhook_deliveries (event_id, endpoint, next_attempt_at)"
    " SELECT $1, name, $3 FROM unnest($2::text[]) AS name"
)
# $1 worker, $2 now, $3 lease seconds, $4 limit, $5 endpoint names. The leased row's attempts count the
# attempt it is leased for.
CLAIM_DELIVERIES = f"""
WITH due AS (
    SELECT event_id, endpoint FROM webhook_deliveries
    WHERE {_OPEN} AND next_attempt_at <= $2::bigint AND endpoint = ANY($5::text[])
      AND (worker_id IS NULL OR lease_expires_at <= $2::bigint)
    ORDER BY next_attempt_at, event_id, endpoint
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET worker_id = $1, lease_expires_at = $2::bigint + $3::bigint, attempts = d.attempts + 1
FROM due, webhook_events e
WHERE d.event_id = due.event_id AND d.endpoint = due.endpoint AND e.id = d.event_id
RETURNING d.event_id, d.endpoint, e.type, e.batch_id, e.created_at, d.attempts
"""
# $1 event, $2 endpoint, $3 now, $4 status: a 2xx counts whoever holds the lease now.
FINISH_DELIVERY = (
    "UPDATE webhook_deliveries SET delivered_at = $3, last_status = $4, last_error = NULL,"
    f" worker_id = NULL, lease_expires_at = NULL WHERE event_id = $1 AND endpoint = $2 AND {_OPEN}"
)
# $1 event, $2 endpoint, $3 worker, $4 now, $5 next attempt (NULL: give up), $6 status, $7 error.
RETRY_DELIVERY = (
    "UPDATE webhook_deliveries SET next_attempt_at = coalesce($5::bigint, next_attempt_at),"
    " gave_up_at = CASE WHEN $5::bigint IS NULL THEN $4::bigint END, last_status = $6, last_error = $7,"
    " worker_id = NULL, lease_expires_at = NULL"
    f" WHERE event_id = $1 AND endpoint = $2 AND worker_id = $3 AND {_OPEN}"
)
PENDING_DELIVERIES = f"SELECT count(*) FROM webhook_deliveries WHERE {_OPEN}"
RELEASE_ALL_DELIVERY_LEASES = (
    "UPDATE webhook_deliveries SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL"
)


def _changed(tag: str) -> int:
    """The row count of a command tag such as 'UPDATE 1' or 'INSERT 0 1'."""
    return int(tag.rsplit(" ", 1)[-1])


def with_event(event: Event, query: str, *args: Any) -> Callable[[asyncpg.Pool], Awaitable[bool]]:
    """A store call that runs `query` (a status change) and, when it changed a row, records `event` and its
    deliveries in the same transaction."""

    async def run(pool: asyncpg.Pool) -> bool:
        async with pool.acquire() as conn, conn.transaction():
            if _changed(await conn.execute(query, *args)) == 0:
                return False
            row = (event.id, event.type, event.created_at, event.batch_id, event.project)
            await conn.execute(RECORD_EVENT, *row)
            await conn.execute(ADD_DELIVERIES, event.id, list(event.endpoints), event.created_at)
            return True

    return run


def delivery_from_row(row: asyncpg.Record) -> Delivery:
    return Delivery(*row)
