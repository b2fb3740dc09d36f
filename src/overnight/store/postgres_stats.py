"""The PostgreSQL store's statistics: progress samples, error groups and backend reports (migration
0007). The error groups are counted by record_results (postgres_sql.RECORD_RESULTS_COUNTING_ERRORS)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from overnight.domain.models import BackendStatus, ResultKind, ResultRow
from overnight.store import stats

ADD_SAMPLE = (
    "INSERT INTO batch_samples (batch_id, at, completed, failed) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (batch_id, at) DO UPDATE SET completed = excluded.completed, failed = excluded.failed"
)
SAMPLES = "SELECT at, completed, failed FROM batch_samples WHERE batch_id = $1 ORDER BY at"
ERROR_GROUPS = (
    "SELECT code, status, line_count, example FROM batch_error_groups WHERE batch_id = $1"
    " ORDER BY line_count DESC, code, status"
)
# One array per column of BACKEND_COLUMNS, one report per backend and worker.
REPORT_BACKENDS = f"""
INSERT INTO backend_reports ({stats.BACKEND_COLUMNS})
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::text[], $8::bigint[], $9::bigint[])
ON CONFLICT (backend, worker_id) DO UPDATE SET
    reported_at = excluded.reported_at, window_size = excluded.window_size,
    concurrency_limit = excluded.concurrency_limit, in_flight = excluded.in_flight,
    breaker = excluded.breaker, attempts = excluded.attempts, failures = excluded.failures
"""
FORGET_REPORTS = "DELETE FROM backend_reports WHERE reported_at < $1"
BACKEND_REPORTS = (
    f"SELECT {stats.BACKEND_COLUMNS} FROM backend_reports WHERE reported_at >= $1 ORDER BY backend, worker_id"
)


def error_columns(rows: Sequence[ResultRow]) -> list[list[object]] | None:
    """The error-file rows as three arrays (line_no, code, status) for RECORD_RESULTS_COUNTING_ERRORS,
    of the first row of each line as record_results inserts it; None when there is none."""
    if not stats.has_errors(rows):
        return None
    first: dict[int, ResultRow] = {}
    for row in rows:
        first.setdefault(row.line_no, row)
    failed = [row for row in first.values() if row.kind is not ResultKind.SUCCEEDED]
    if not failed:
        return None
    return [
        [row.line_no for row in failed],
        [row.error_code or stats.UNKNOWN_CODE for row in failed],
        [stats.NO_ANSWER if row.upstream_status is None else row.upstream_status for row in failed],
    ]


async def report_backends(pool: asyncpg.Pool, statuses: Sequence[BackendStatus]) -> None:
    reports = stats.latest_reports(statuses)
    rows = [stats.backend_values(report) for report in reports]
    columns = [list(column) for column in zip(*rows, strict=True)]
    newest = max(report.reported_at for report in reports)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(REPORT_BACKENDS, *columns)
        await conn.execute(FORGET_REPORTS, newest - stats.REPORTS_KEPT_S)
