"""Values and the rows of the tables, shared by both stores (their migrations declare the same tables
column for column): which columns hold a batch, and how a row becomes a Batch, a Shard or a Page."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, TypeVar

from overnight.domain.lifecycle import STAMP
from overnight.domain.models import Batch, BatchError, BatchStatus, Page, RequestCounts, Shard, Usage

T = TypeVar("T")

STAMPS = tuple(STAMP.values())
# Columns that hold a Batch field as it is.
BATCH_PLAIN = (
    *("id", "project", "endpoint", "input_file_id", "completion_window", "created_at", "expires_at"),
    *("output_expires_after", "model", "output_file_id", "error_file_id", *STAMPS),
    "enqueued_tokens",  # set once, at create time
)
COUNTERS = ("completed", "failed", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")
BATCH_COLUMNS = (*BATCH_PLAIN, "status", "metadata", "errors", "total", *COUNTERS)
# What a transition may change: never the counters, which belong to record_results.
TRANSITION_COLUMNS = ("status", "model", "errors", "output_file_id", "error_file_id", "total", *STAMPS)


def batch_values(batch: Batch) -> dict[str, Any]:
    """The batch as {column: value}."""
    values: dict[str, Any] = {name: getattr(batch, name) for name in BATCH_PLAIN}
    values["status"] = batch.status.value
    values["metadata"] = None if batch.metadata is None else json.dumps(batch.metadata)
    values["errors"] = json.dumps([dataclasses.asdict(error) for error in batch.errors])
    values["total"] = batch.request_counts.total
    values["completed"] = batch.request_counts.completed
    values["failed"] = batch.request_counts.failed
    values.update(dataclasses.asdict(batch.usage))
    return values


def batch_from_row(row: Iterable[Any]) -> Batch:
    """A row of BATCH_COLUMNS, in that order, as a Batch."""
    values = dict(zip(BATCH_COLUMNS, row, strict=True))
    return Batch(
        **{name: values[name] for name in BATCH_PLAIN},
        status=BatchStatus(values["status"]),
        metadata=None if values["metadata"] is None else json.loads(values["metadata"]),
        errors=tuple(BatchError(**error) for error in json.loads(values["errors"])),
        request_counts=RequestCounts(values["total"], values["completed"], values["failed"]),
        usage=Usage(
            values["input_tokens"],
            values["output_tokens"],
            values["cached_tokens"],
            values["reasoning_tokens"],
        ),
    )


def shard_from_row(row: Iterable[Any]) -> Shard:
    """A row of batch_id, shard_no, first_line, end_line, start_offset, shard_count, done, part."""
    batch_id, shard_no, first, end, offset, count, done, part = row
    return Shard(batch_id, shard_no, first, end, offset, count, bool(done), part)


def page(items: list[T], limit: int) -> Page[T]:
    """Of `limit` + 1 rows read, the first `limit`, and whether there was one more."""
    return Page(items=items[:limit], has_more=len(items) > limit)
