"""SQL for the usage of synchronous requests on SQLite (on the store's thread)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from overnight.domain.sync import SyncUsage
from overnight.store.sqlite_tx import transaction
from overnight.store.sync_usage_rows import COLUMNS, UPSERT_TAIL, in_key_order, in_order, sync_usage

_PLACES = ", ".join("?" for _ in COLUMNS)
_ADD = f"INSERT INTO sync_usage ({', '.join(COLUMNS)}) VALUES ({_PLACES})" + UPSERT_TAIL
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM sync_usage WHERE day >= ? AND day < ?"


def add_sync_usage(conn: sqlite3.Connection, rows: Sequence[SyncUsage]) -> None:
    with transaction(conn):
        conn.executemany(_ADD, in_key_order(rows))


def sync_usage_by_day(conn: sqlite3.Connection, project: str | None, start: int, end: int) -> list[SyncUsage]:
    if project is None:
        found = conn.execute(_SELECT, (start, end))
    else:
        found = conn.execute(_SELECT + " AND project = ?", (start, end, project))
    return in_order(sync_usage(row) for row in found)
