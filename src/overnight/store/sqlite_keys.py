"""The SQLite store's API keys (migration 0012). Each function runs on the store's thread."""

from __future__ import annotations

import sqlite3

from overnight.domain.api_keys import StoredApiKey
from overnight.store.api_key_rows import COLUMNS, ORDER, SELECTED, key_from_row, key_values
from overnight.store.sqlite_tx import placeholders

_ADD = f"INSERT INTO api_keys ({SELECTED}) VALUES ({placeholders(len(COLUMNS))})"
_BY_HASH = f"SELECT {SELECTED} FROM api_keys WHERE secret_hash = ?"
_LIST = f"SELECT {SELECTED} FROM api_keys" + ORDER
_REVOKE = f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? RETURNING {SELECTED}"
_ANY = "SELECT EXISTS (SELECT 1 FROM api_keys)"


def add_api_key(conn: sqlite3.Connection, key: StoredApiKey) -> None:
    conn.execute(_ADD, key_values(key))


def api_key_by_hash(conn: sqlite3.Connection, secret_hash: str) -> StoredApiKey | None:
    row = conn.execute(_BY_HASH, (secret_hash,)).fetchone()
    return None if row is None else key_from_row(row)


def list_api_keys(conn: sqlite3.Connection) -> list[StoredApiKey]:
    return [key_from_row(row) for row in conn.execute(_LIST)]


def revoke_api_key(conn: sqlite3.Connection, key_id: str, now: int) -> StoredApiKey | None:
    row = conn.execute(_REVOKE, (now, key_id)).fetchone()
    return None if row is None else key_from_row(row)


def any_api_keys(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute(_ANY).fetchone()[0])
