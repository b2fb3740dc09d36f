"""What both stores share for a batch's statistics: error groups counted from result rows, and the
mapping of samples, groups and backend reports to and from their tables (migration 0007)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from overnight.domain.models import BackendStatus, ErrorGroup, ResultKind, ResultRow
from overnight.domain.progress import Sample

NO_ANSWER = 0  # the `status` column of a group whose lines got no answer (the key has no NULL)
UNKNOWN_CODE = "unknown"  # a failed row that did not say why (none the engine builds)
REPORTS_KEPT_S = 86400  # a worker's report of a backend is forgotten this long after its last one

BACKEND_COLUMNS = (
    "backend, worker_id, reported_at, window_size, concurrency_limit, in_flight, breaker, attempts, failures"
)


@dataclass(slots=True)
class GroupDelta:
    """What one group of newly recorded rows adds to its stored group."""

    code: str
    status: int  # NO_ANSWER for None
    count: int
    example_line: int
    example: bytes


def error_deltas(rows: Iterable[ResultRow]) -> list[GroupDelta]:
    """The error-file rows among `rows` (all new) grouped by code and upstream status, each group with
    its lowest line as the example, in key order (so concurrent writers lock groups in one order)."""
    groups: dict[tuple[str, int], GroupDelta] = {}
    for row in rows:
        if row.kind is ResultKind.SUCCEEDED:
            continue
        code = row.error_code or UNKNOWN_CODE
        status = NO_ANSWER if row.upstream_status is None else row.upstream_status
        group = groups.get((code, status))
        if group is None:
            groups[(code, status)] = GroupDelta(code, status, 1, row.line_no, row.line)
            continue
        group.count += 1
        if row.line_no < group.example_line:
            group.example_line, group.example = row.line_no, row.line
    return [groups[key] for key in sorted(groups)]


def has_errors(rows: Sequence[ResultRow]) -> bool:
    return any(row.kind is not ResultKind.SUCCEEDED for row in rows)


def error_group(code: str, status: int, count: int, example: bytes) -> ErrorGroup:
    return ErrorGroup(code, None if status == NO_ANSWER else status, count, bytes(example))


def sample_from_row(row: Iterable[Any]) -> Sample:
    at, completed, failed = row
    return Sample(int(at), int(completed), int(failed))


def backend_values(status: BackendStatus) -> tuple[object, ...]:
    """A report as the values of BACKEND_COLUMNS."""
    return (
        status.backend,
        status.worker,
        status.reported_at,
        status.window,
        status.limit,
        status.in_flight,
        status.breaker,
        status.attempts,
        status.failures,
    )


def backend_from_row(row: Iterable[Any]) -> BackendStatus:
    backend, worker, reported_at, window, limit, in_flight, breaker, attempts, failures = row
    return BackendStatus(
        backend,
        worker,
        int(reported_at),
        int(window),
        int(limit),
        int(in_flight),
        breaker,
        int(attempts),
        int(failures),
    )


def latest_reports(statuses: Iterable[BackendStatus]) -> list[BackendStatus]:
    """One report per backend and worker (the last given wins), in key order."""
    latest = {(status.backend, status.worker): status for status in statuses}
    return [latest[key] for key in sorted(latest)]
