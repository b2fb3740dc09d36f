"""Identifiers shaped like OpenAI's, sortable by creation time so cursors are cheap."""

from __future__ import annotations

import secrets

from overnight.domain.clock import Clock

FILE_PREFIX = "file-"
BATCH_PREFIX = "batch_"
REQUEST_PREFIX = "batch_req_"
EVENT_PREFIX = "evt_"
_RANDOM_HEX = 20
_RANDOM_LIMIT = 16**_RANDOM_HEX


class IdGenerator:
    """Makes ids whose suffix is 12 hex digits of milliseconds then 20 hex digits.

    Within one generator ids are strictly increasing, so sorting by id is sorting by creation.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0

    def _next_suffix(self) -> str:
        millis = int(self._clock.now() * 1000)
        candidate = (millis << (4 * _RANDOM_HEX)) | secrets.randbelow(_RANDOM_LIMIT // 2)
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return f"{candidate:032x}"

    def file_id(self) -> str:
        return FILE_PREFIX + self._next_suffix()

    def batch_id(self) -> str:
        return BATCH_PREFIX + self._next_suffix()

    def event_id(self) -> str:
        return EVENT_PREFIX + self._next_suffix()


def blob_key(file_id: str) -> str:
    """Where a file's content is kept in the blob store."""
    return f"files/{file_id}"


def part_key(file_id: str, part: str) -> str:
    """Where one shard's part of a result file is kept until the file is composed from its parts."""
    return f"files/{file_id}.{part}"


def output_file_id(batch_id: str) -> str:
    """A batch's output file: stable per batch, so finalizing again after a crash rewrites the same file."""
    return f"{FILE_PREFIX}{batch_id.removeprefix(BATCH_PREFIX)}o"


def error_file_id(batch_id: str) -> str:
    return f"{FILE_PREFIX}{batch_id.removeprefix(BATCH_PREFIX)}e"


def request_line_id(batch_id: str, line_no: int) -> str:
    """The `id` of an output/error line: stable for a (batch, line) so re-runs write the same id."""
    suffix = batch_id.removeprefix(BATCH_PREFIX)
    return f"{REQUEST_PREFIX}{suffix}{line_no:08x}"


_SUFFIX_CHARS = 32  # the hex digits after a prefix (see IdGenerator)
_HEX = frozenset("0123456789abcdef")


def result_file_batch(file_id: str) -> tuple[str, bool] | None:
    """(the batch, True for its output file or False for its error file) when `file_id` has the shape of
    a batch's result file id (see `output_file_id`); None for any other id."""
    suffix = file_id.removeprefix(FILE_PREFIX)
    if len(file_id) - len(suffix) != len(FILE_PREFIX) or len(suffix) != _SUFFIX_CHARS + 1:
        return None
    body, kind = suffix[:-1], suffix[-1]
    if kind not in "oe" or not _HEX.issuperset(body):
        return None
    return BATCH_PREFIX + body, kind == "o"


def request_line_no(batch_id: str, request_id: str) -> int | None:
    """The input line number a `request_line_id` of this batch names; None for any other id."""
    prefix = REQUEST_PREFIX + batch_id.removeprefix(BATCH_PREFIX)
    digits = request_id.removeprefix(prefix)
    if len(request_id) - len(digits) != len(prefix) or not digits or not _HEX.issuperset(digits):
        return None
    return int(digits, 16)
