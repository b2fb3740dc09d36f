"""The batch lifecycle as data, and the one function that moves a batch between statuses."""

from __future__ import annotations

import dataclasses
from typing import Any

from overnight.domain.models import Batch, BatchStatus

S = BatchStatus

ALLOWED: dict[BatchStatus, frozenset[BatchStatus]] = {
    S.VALIDATING: frozenset({S.IN_PROGRESS, S.FAILED, S.CANCELLING, S.EXPIRED}),
    S.IN_PROGRESS: frozenset({S.FINALIZING, S.CANCELLING, S.EXPIRED}),
    S.FINALIZING: frozenset({S.COMPLETED, S.CANCELLING, S.EXPIRED}),
    S.CANCELLING: frozenset({S.CANCELLED}),
    S.FAILED: frozenset(),
    S.COMPLETED: frozenset(),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL = frozenset(status for status, targets in ALLOWED.items() if not targets)
CANCELLABLE = frozenset(status for status, targets in ALLOWED.items() if S.CANCELLING in targets)

STAMP: dict[BatchStatus, str] = {
    S.IN_PROGRESS: "in_progress_at",
    S.FAILED: "failed_at",
    S.FINALIZING: "finalizing_at",
    S.COMPLETED: "completed_at",
    S.EXPIRED: "expired_at",
    S.CANCELLING: "cancelling_at",
    S.CANCELLED: "cancelled_at",
}


class IllegalTransition(Exception):
    def __init__(self, current: BatchStatus, target: BatchStatus) -> None:
        super().__init__(f"a batch cannot move from {current} to {target}")
        self.current = current
        self.target = target


def can_move(current: BatchStatus, target: BatchStatus) -> bool:
    return target in ALLOWED[current]


def transition(batch: Batch, target: BatchStatus, now: int, **changes: Any) -> Batch:
    """The batch in `target` status with that status's `*_at` stamped and `changes` applied."""
    if not can_move(batch.status, target):
        raise IllegalTransition(batch.status, target)
    changes[STAMP[target]] = now
    return dataclasses.replace(batch, status=target, **changes)
