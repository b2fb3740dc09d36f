"""The values the service keeps: files, batches and per-line results."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class FileObject:
    id: str
    project: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    status: str = "processed"


@dataclass(frozen=True, slots=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True, slots=True)
class BatchError:
    code: str
    message: str
    param: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    project: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    output_expires_after: int | None = None
    model: str | None = None
    errors: tuple[BatchError, ...] = ()
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    usage: Usage = field(default_factory=Usage)
    # input tokens estimated at create time, held against the project's budget until the batch ends
    # (0 where the project has no budget); never shown in the API's Batch object
    enqueued_tokens: int = 0


class ResultKind(enum.StrEnum):
    """Where a line lands and how it counts."""

    SUCCEEDED = "succeeded"  # output file; request_counts.completed
    FAILED = "failed"  # error file; request_counts.failed (the request ran and failed)
    NOT_RUN = "not_run"  # error file; not counted (batch_cancelled / batch_expired)

    @property
    def in_output_file(self) -> bool:
        return self is ResultKind.SUCCEEDED


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One finished input line: the exact bytes of its output/error file line, and what it cost.

    A line of the error file also says why, for its batch's error groups: `error_code` (its
    `error.code`, or the code in the upstream's answer) and `upstream_status` (the HTTP status the
    upstream answered; None when no answer came)."""

    line_no: int
    kind: ResultKind
    line: bytes
    usage: Usage = field(default_factory=Usage)
    error_code: str | None = None
    upstream_status: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """A batch's failed lines that share an error code and upstream status (None: no answer came), with
    how many there are and the error-file line of the first of them."""

    code: str
    status: int | None
    count: int
    example: bytes


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What one worker last reported of one backend (the dashboard sums the workers' reports)."""

    backend: str
    worker: str
    reported_at: int
    window: int  # requests it may have in flight now (the AIMD window, under max_concurrency)
    limit: int  # max_concurrency
    in_flight: int
    breaker: str  # "closed", "open" or "half_open"
    attempts: int  # answered or not, in the last minute
    failures: int  # of those, how many failed (5xx, 429, no answer)


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """The batches of one project and model created on one UTC day (`day`: its first second), counted,
    and their summed usage."""

    day: int
    project: str
    model: str | None
    batches: int
    usage: Usage


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: the items, and whether more come after the last."""

    items: list[T]
    has_more: bool


@dataclass(frozen=True, slots=True)
class Shard:
    """A range of a batch's input lines that one worker runs at a time, under a lease.

    Lines `first_line` (1-based) up to, not including, `end_line`; `start_offset` is the byte where
    `first_line` starts in the input file, so a worker reads only its range. `count` is how many shards
    the batch has. `part`, once done: the name of its result part files when they hold exactly its
    recorded rows (None: its lines are read from the recorded results).
    """

    batch_id: str
    shard_no: int
    first_line: int
    end_line: int
    start_offset: int
    count: int
    done: bool = False
    part: str | None = None
