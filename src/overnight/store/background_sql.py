"""What both stores' list queries add so that background responses' batches and files stay out of
GET /v1/batches, GET /v1/files and the dashboard (migration 0011): one primary-key probe per row; and
the statements that delete a response, which both stores run."""

from __future__ import annotations

import dataclasses
import json

from overnight.domain.background import StoredResponse
from overnight.domain.lifecycle import TERMINAL
from overnight.domain.models import FileObject
from overnight.store.rows import BATCH_COLUMNS, batch_from_row

VISIBLE_BATCH = "NOT EXISTS (SELECT 1 FROM background_responses h WHERE h.batch_id = batches.id)"
VISIBLE_FILE = "NOT EXISTS (SELECT 1 FROM background_files h WHERE h.file_id = files.id)"

FILE_COLUMNS = tuple(field.name for field in dataclasses.fields(FileObject))
# The batch's columns, then the Response as created.
STORED_COLUMNS = (*BATCH_COLUMNS, "response")

# A response is deleted only once its batch has ended: nothing runs for it any more.
ENDED = sorted(status.value for status in TERMINAL)
_ITS_FILES = "SELECT file_id FROM background_files WHERE batch_id = {id}"
# Everything stored of a response, rows that refer to others first; each takes the batch's id as {id}.
DELETE_STEPS = (
    "DELETE FROM results WHERE batch_id = {id}",
    "DELETE FROM shards WHERE batch_id = {id}",
    "DELETE FROM batch_samples WHERE batch_id = {id}",
    "DELETE FROM batch_error_groups WHERE batch_id = {id}",
    f"DELETE FROM files WHERE id IN ({_ITS_FILES})",
    f"DELETE FROM uploads WHERE file_id IN ({_ITS_FILES})",
    "DELETE FROM background_files WHERE batch_id = {id}",
    "DELETE FROM background_responses WHERE batch_id = {id}",
    "DELETE FROM batches WHERE id = {id}",
)


def file_row(file: FileObject) -> tuple[object, ...]:
    return tuple(getattr(file, name) for name in FILE_COLUMNS)


def stored_from_row(row: tuple[object, ...]) -> StoredResponse:
    """A row of STORED_COLUMNS as a StoredResponse."""
    *batch, response = row
    assert isinstance(response, str)
    return StoredResponse(batch_from_row(batch), json.loads(response))
