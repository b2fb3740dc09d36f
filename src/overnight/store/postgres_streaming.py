"""The PostgreSQL store's SQL for results while a batch runs and for idempotent creates (migration 0009).
`seq` numbers are taken in RECORD_RESULTS (postgres_sql.py), under the batch row's lock."""

from __future__ import annotations

from typing import Any

from overnight.domain.idempotency import KeyRecord

# $1 batch, $2 after this seq, $3 kinds, $4 limit, $5 skip.
RECORDED_RESULTS = (
    "SELECT seq, line FROM results WHERE batch_id = $1 AND seq > $2 AND kind = ANY($3::text[])"
    " ORDER BY seq LIMIT $4 OFFSET $5"
)
# Two statements, not one: after a race, the second reads what the winner committed (one statement
# would read its own snapshot, from before the winner's write).
SET_ORDER = (
    "UPDATE batches SET result_order = $2 WHERE id = $1 AND result_order IS NULL RETURNING result_order"
)
GET_ORDER = "SELECT result_order FROM batches WHERE id = $1"

_KEY_COLUMNS = "project, idempotency_key, fingerprint, object_id, created_at, completed_at"
# An insert that meets a racing one waits for it to commit, then does nothing: GET_KEY then reads it.
ADD_KEY = (
    f"INSERT INTO idempotency_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (project, idempotency_key) DO NOTHING"
)
GET_KEY = f"SELECT {_KEY_COLUMNS} FROM idempotency_keys WHERE project = $1 AND idempotency_key = $2"
KEY_DONE = (
    "UPDATE idempotency_keys SET completed_at = $4"
    " WHERE project = $1 AND idempotency_key = $2 AND object_id = $3 AND completed_at IS NULL"
)
FORGET_KEY = "DELETE FROM idempotency_keys WHERE project = $1 AND idempotency_key = $2 AND object_id = $3"
FORGET_OLD_KEYS = "DELETE FROM idempotency_keys WHERE created_at < $1"


def key_values(record: KeyRecord) -> tuple[Any, ...]:
    return (
        record.project,
        record.key,
        record.fingerprint,
        record.object_id,
        record.created_at,
        record.completed_at,
    )


def key_from_row(row: Any) -> KeyRecord:
    return KeyRecord(*row)
