"""SQL for background responses on PostgreSQL ($n placeholders): a response's batch, input file and
Response as created, stored in one transaction, read back by the batch's id, and deleted with all of it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from overnight.domain.background import StoredResponse
from overnight.domain.models import FileObject
from overnight.store.background_sql import DELETE_STEPS, ENDED, FILE_COLUMNS, STORED_COLUMNS, file_row
from overnight.store.rows import BATCH_COLUMNS, batch_values


def _marks(count: int) -> str:
    return ", ".join(f"${n}" for n in range(1, count + 1))


_ADD_FILE = f"INSERT INTO files ({', '.join(FILE_COLUMNS)}) VALUES ({_marks(len(FILE_COLUMNS))})"
_END_UPLOAD = "DELETE FROM uploads WHERE file_id = $1"
_ADD_BATCH = f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({_marks(len(BATCH_COLUMNS))})"
_ADD_RESPONSE = "INSERT INTO background_responses (batch_id, response) VALUES ($1, $2)"
_HIDE_FILES = (
    "INSERT INTO background_files (file_id, batch_id) SELECT file_id, $2 FROM unnest($1::text[]) AS file_id"
    " ON CONFLICT (file_id) DO NOTHING"
)
GET = (
    f"SELECT {', '.join(STORED_COLUMNS)} FROM batches JOIN background_responses ON batch_id = id"
    " WHERE id = $1 AND project = COALESCE($2::text, project)"  # a project of None: any project
)
_ENDED_RESPONSE = (
    "SELECT 1 FROM batches JOIN background_responses ON batch_id = id"
    " WHERE id = $1 AND project = COALESCE($2::text, project) AND status = ANY($3::text[])"
    " FOR UPDATE OF batches"
)
_DELETE = tuple(step.format(id="$1") for step in DELETE_STEPS)


def add_background_response(
    stored: StoredResponse, input_file: FileObject, hidden_files: Sequence[str]
) -> Callable[[asyncpg.Pool], Awaitable[None]]:
    """The store call that writes them all in one transaction."""
    batch = stored.batch
    values = batch_values(batch)

    async def run(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_ADD_FILE, *file_row(input_file))
            await conn.execute(_END_UPLOAD, input_file.id)
            await conn.execute(_ADD_BATCH, *(values[column] for column in BATCH_COLUMNS))
            await conn.execute(_ADD_RESPONSE, batch.id, json.dumps(stored.created))
            await conn.execute(_HIDE_FILES, list(hidden_files), batch.id)

    return run


def delete_background_response(
    batch_id: str, project: str | None
) -> Callable[[asyncpg.Pool], Awaitable[bool]]:
    """The store call that deletes an ended response and all of it in one transaction."""

    async def run(pool: asyncpg.Pool) -> bool:
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_ENDED_RESPONSE, batch_id, project, ENDED) is None:
                return False
            for statement in _DELETE:
                await conn.execute(statement, batch_id)
        return True

    return run
