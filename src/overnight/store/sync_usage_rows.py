"""What both stores share for the usage of synchronous requests (table `sync_usage`, migration 10)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from overnight.domain.models import Usage
from overnight.domain.sync import SyncUsage, Tier

COLUMNS = (
    "day",
    "project",
    "model",
    "tier",
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
)
SUMS = COLUMNS[4:]
_ADD = ", ".join(f"{name} = sync_usage.{name} + excluded.{name}" for name in SUMS)
UPSERT_TAIL = f" ON CONFLICT (day, project, model, tier) DO UPDATE SET {_ADD}"


def values(row: SyncUsage) -> tuple[Any, ...]:
    usage = row.usage
    return (
        row.day,
        row.project,
        row.model,
        str(row.tier),
        row.requests,
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
    )


def in_key_order(rows: Sequence[SyncUsage]) -> list[tuple[Any, ...]]:
    """The rows' values, sorted by key: concurrent writers then lock rows in one order (no deadlock)."""
    return sorted((values(row) for row in rows), key=lambda v: (v[0], v[1], v[2], v[3]))


def sync_usage(row: Iterable[Any]) -> SyncUsage:
    day, project, model, tier, requests, *tokens = row
    return SyncUsage(int(day), project, model, Tier(tier), int(requests), Usage(*(int(t) for t in tokens)))


def in_order(rows: Iterable[SyncUsage]) -> list[SyncUsage]:
    """Day, project, model, tier: the same order on every store, whatever the database's collation."""
    return sorted(rows, key=lambda row: (row.day, row.project, row.model, str(row.tier)))
