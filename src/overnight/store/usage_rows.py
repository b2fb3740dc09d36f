"""What both stores share for usage and budgets: the UTC day of a batch, the statuses that hold
enqueued tokens, and how a usage row becomes a DailyUsage."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from overnight.domain.lifecycle import TERMINAL
from overnight.domain.models import BatchStatus, DailyUsage, Usage

DAY_S = 86400
# validating, in progress, finalizing and cancelling: a batch holds its tokens until it has ended
ENQUEUED_STATUSES = sorted(status.value for status in BatchStatus if status not in TERMINAL)
# the columns of a usage row: the first second of the UTC day of creation, then the sums
USAGE_COLUMNS = (
    f"(created_at / {DAY_S}) * {DAY_S} AS day, project, model, count(*), sum(input_tokens),"
    " sum(output_tokens), sum(cached_tokens), sum(reasoning_tokens)"
)


def daily_usage(row: Iterable[Any]) -> DailyUsage:
    """A row of (day, project, model, batches, input, output, cached, reasoning tokens)."""
    day, project, model, batches, *tokens = row
    return DailyUsage(int(day), project, model, int(batches), Usage(*(int(count) for count in tokens)))


def in_order(rows: Iterable[DailyUsage]) -> list[DailyUsage]:
    """Day, then project, then model (batches without a model last): the same order on every store,
    whatever the database's collation."""
    return sorted(rows, key=lambda row: (row.day, row.project, row.model is None, row.model or ""))
