"""SQL for usage and budgets on SQLite (on the store's thread): usage per day, project and model, and
the tokens a project's unfinished batches hold."""

from __future__ import annotations

import sqlite3

from overnight.domain.models import DailyUsage
from overnight.store.usage_rows import ENQUEUED_STATUSES, USAGE_COLUMNS, daily_usage, in_order

_USAGE_BY_DAY = f"SELECT {USAGE_COLUMNS} FROM batches WHERE created_at >= ? AND created_at < ?"
_GROUPS = " GROUP BY day, project, model"
_ENQUEUED_TOKENS = (
    "SELECT coalesce(sum(enqueued_tokens), 0) FROM batches"
    f" WHERE project = ? AND status IN ({', '.join('?' for _ in ENQUEUED_STATUSES)})"
)


def usage_by_day(conn: sqlite3.Connection, project: str | None, start: int, end: int) -> list[DailyUsage]:
    if project is None:
        rows = conn.execute(_USAGE_BY_DAY + _GROUPS, (start, end))
    else:
        rows = conn.execute(_USAGE_BY_DAY + " AND project = ?" + _GROUPS, (start, end, project))
    return in_order(daily_usage(row) for row in rows)


def enqueued_tokens(conn: sqlite3.Connection, project: str) -> int:
    total: int = conn.execute(_ENQUEUED_TOKENS, (project, *ENQUEUED_STATUSES)).fetchone()[0]
    return total
