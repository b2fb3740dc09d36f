"""What both stores' list queries add so that background responses' batches and files stay out of
GET /v1/batches, GET /v1/files and the dashboard (migration 0011): one primary-key probe per row."""

from __future__ import annotations

import dataclasses
import json

from overnight.domain.background import StoredResponse
from overnight.domain.models import FileObject
from overnight.store.rows import BATCH_COLUMNS, batch_from_row

VISIBLE_BATCH = "NOT EXISTS (SELECT 1 FROM background_responses h WHERE h.batch_id = batches.id)"
VISIBLE_FILE = "NOT EXISTS (SELECT 1 FROM background_files h WHERE h.file_id = files.id)"

FILE_COLUMNS = tuple(field.name for field in dataclasses.fields(FileObject))
# The batch's columns, then the Response as created.
STORED_COLUMNS = (*BATCH_COLUMNS, "response")


def file_row(file: FileObject) -> tuple[object, ...]:
    return tuple(getattr(file, name) for name in FILE_COLUMNS)


def stored_from_row(row: tuple[object, ...]) -> StoredResponse:
    """A row of STORED_COLUMNS as a StoredResponse."""
    *batch, response = row
    assert isinstance(response, str)
    return StoredResponse(batch_from_row(batch), json.loads(response))
