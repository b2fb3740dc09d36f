"""The one way the SQLite store writes several statements atomically, and its `?` lists."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction (BEGIN IMMEDIATE: the write lock from the start), rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def placeholders(count: int) -> str:
    """`?, ?, ...`: `count` parameters for an IN list or a VALUES row."""
    return ", ".join("?" * count)
