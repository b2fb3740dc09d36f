"""The SQLite store's statistics: progress samples, error groups and backend reports (migration 0007).
Each function runs on the store's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from overnight.domain.models import BackendStatus, ErrorGroup, ResultRow
from overnight.domain.progress import Sample
from overnight.store import stats
from overnight.store.sqlite_tx import transaction

_ADD_GROUP = (
    "INSERT INTO batch_error_groups (batch_id, code, status, line_count, example_line, example)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id, code, status) DO UPDATE SET"
    " line_count = line_count + excluded.line_count,"
    " example = CASE WHEN excluded.example_line < example_line THEN excluded.example ELSE example END,"
    " example_line = min(example_line, excluded.example_line)"
)
_GROUPS = (
    "SELECT code, status, line_count, example FROM batch_error_groups WHERE batch_id = ?"
    " ORDER BY line_count DESC, code, status"
)
_ADD_SAMPLE = (
    "INSERT INTO batch_samples (batch_id, at, completed, failed) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (batch_id, at) DO UPDATE SET completed = excluded.completed, failed = excluded.failed"
)
_SAMPLES = "SELECT at, completed, failed FROM batch_samples WHERE batch_id = ? ORDER BY at"
_REPORT = (
    f"INSERT INTO backend_reports ({stats.BACKEND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (backend, worker_id) DO UPDATE SET reported_at = excluded.reported_at,"
    " window_size = excluded.window_size, concurrency_limit = excluded.concurrency_limit,"
    " in_flight = excluded.in_flight, breaker = excluded.breaker, attempts = excluded.attempts,"
    " failures = excluded.failures"
)
_FORGET_REPORTS = "DELETE FROM backend_reports WHERE reported_at < ?"
_REPORTS = (
    f"SELECT {stats.BACKEND_COLUMNS} FROM backend_reports WHERE reported_at >= ? ORDER BY backend, worker_id"
)


def add_error_groups(conn: sqlite3.Connection, batch_id: str, new_rows: Iterable[ResultRow]) -> None:
    """Count the new rows' errors into their groups: one statement per group, inside the caller's
    transaction (the one that inserts the rows)."""
    deltas = stats.error_deltas(new_rows)
    if deltas:
        conn.executemany(
            _ADD_GROUP,
            [(batch_id, d.code, d.status, d.count, d.example_line, d.example) for d in deltas],
        )


def error_groups(conn: sqlite3.Connection, batch_id: str) -> list[ErrorGroup]:
    return [stats.error_group(*row) for row in conn.execute(_GROUPS, (batch_id,))]


def record_progress(conn: sqlite3.Connection, batch_id: str, sample: Sample) -> None:
    conn.execute(_ADD_SAMPLE, (batch_id, sample.at, sample.completed, sample.failed))


def progress_samples(conn: sqlite3.Connection, batch_id: str) -> list[Sample]:
    return [stats.sample_from_row(row) for row in conn.execute(_SAMPLES, (batch_id,))]


def report_backends(conn: sqlite3.Connection, statuses: Sequence[BackendStatus]) -> None:
    reports = stats.latest_reports(statuses)
    with transaction(conn):
        conn.executemany(_REPORT, [stats.backend_values(report) for report in reports])
        newest = max(report.reported_at for report in reports)
        conn.execute(_FORGET_REPORTS, (newest - stats.REPORTS_KEPT_S,))


def backend_reports(conn: sqlite3.Connection, since: int) -> list[BackendStatus]:
    return [stats.backend_from_row(row) for row in conn.execute(_REPORTS, (since,))]
