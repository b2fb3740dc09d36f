"""SQL for background responses on SQLite (on the store's thread): a response's batch, input file and
Response as created, stored together, read back by the batch's id, and deleted with all of it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from overnight.domain.background import StoredResponse
from overnight.domain.models import FileObject
from overnight.store.background_sql import (
    DELETE_STEPS,
    ENDED,
    FILE_COLUMNS,
    STORED_COLUMNS,
    file_row,
    stored_from_row,
)
from overnight.store.rows import BATCH_COLUMNS, batch_values
from overnight.store.sqlite_tx import placeholders, transaction


def _marks(count: int) -> str:
    return ", ".join("?" * count)


_ADD_FILE = f"INSERT INTO files ({', '.join(FILE_COLUMNS)}) VALUES ({_marks(len(FILE_COLUMNS))})"
_END_UPLOAD = "DELETE FROM uploads WHERE file_id = ?"
_ADD_BATCH = f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({_marks(len(BATCH_COLUMNS))})"
_ADD_RESPONSE = "INSERT INTO background_responses (batch_id, response) VALUES (?, ?)"
_HIDE_FILE = "INSERT INTO background_files (file_id, batch_id) VALUES (?, ?) ON CONFLICT (file_id) DO NOTHING"
_GET = (
    f"SELECT {', '.join(STORED_COLUMNS)} FROM batches JOIN background_responses ON batch_id = id"
    " WHERE id = ? AND project = COALESCE(?, project)"  # a project of None: any project
)
_ENDED_RESPONSE = (
    "SELECT 1 FROM batches JOIN background_responses ON batch_id = id"
    f" WHERE id = ? AND project = COALESCE(?, project) AND status IN ({placeholders(len(ENDED))})"
)
_DELETE = tuple(step.format(id="?") for step in DELETE_STEPS)


def add_background_response(
    conn: sqlite3.Connection, stored: StoredResponse, input_file: FileObject, hidden_files: Sequence[str]
) -> None:
    batch = stored.batch
    values = batch_values(batch)
    with transaction(conn):
        conn.execute(_ADD_FILE, file_row(input_file))
        conn.execute(_END_UPLOAD, (input_file.id,))
        conn.execute(_ADD_BATCH, tuple(values[column] for column in BATCH_COLUMNS))
        conn.execute(_ADD_RESPONSE, (batch.id, json.dumps(stored.created)))
        conn.executemany(_HIDE_FILE, [(file_id, batch.id) for file_id in hidden_files])


def get_background_response(
    conn: sqlite3.Connection, batch_id: str, project: str | None
) -> StoredResponse | None:
    row = conn.execute(_GET, (batch_id, project)).fetchone()
    return None if row is None else stored_from_row(tuple(row))


def delete_background_response(conn: sqlite3.Connection, batch_id: str, project: str | None) -> bool:
    with transaction(conn):
        if conn.execute(_ENDED_RESPONSE, (batch_id, project, *ENDED)).fetchone() is None:
            return False
        for statement in _DELETE:
            conn.execute(statement, (batch_id,))
    return True
