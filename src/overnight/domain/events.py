"""Webhook events: what OpenAI sends when a batch ends, who subscribes to it, and its exact body.

A batch that reaches a terminal status makes one event (`Subscriptions.event_for`), recorded by the store
in the same transaction as the status change, with one delivery per subscribed endpoint (docs/webhooks.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from overnight.domain.background import is_background
from overnight.domain.models import Batch, BatchStatus

S = BatchStatus

# The types OpenAI sends for batches, by the terminal status that makes each.
EVENT_TYPES: dict[BatchStatus, str] = {
    S.COMPLETED: "batch.completed",
    S.FAILED: "batch.failed",
    S.CANCELLED: "batch.cancelled",
    S.EXPIRED: "batch.expired",
}
ALL_EVENT_TYPES = frozenset(EVENT_TYPES.values())


@dataclass(frozen=True, slots=True)
class Event:
    """A batch event to deliver: `endpoints` are the names of the subscriptions it goes to."""

    id: str
    type: str
    created_at: int
    batch_id: str
    project: str
    endpoints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event to one endpoint, as the store hands it to a sender: `attempts` counts this one."""

    event_id: str
    endpoint: str
    type: str
    batch_id: str
    created_at: int
    attempts: int


@dataclass
class Subscription:
    """A configured endpoint: where to send, which event types, of which project (None: every one)."""

    name: str
    url: str
    events: frozenset[str]
    project: str | None

    def wants(self, event_type: str, project: str) -> bool:
        return event_type in self.events and self.project in (None, project)


class Subscriptions:
    """Every configured endpoint, by name."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()) -> None:
        self._by_name = {subscription.name: subscription for subscription in subscriptions}

    def __bool__(self) -> bool:
        return bool(self._by_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def get(self, name: str) -> Subscription | None:
        return self._by_name.get(name)

    def event_for(self, batch: Batch, event_id: str, now: int) -> Event | None:
        """The event `batch` makes, when its status is terminal and some endpoint subscribes to it (a
        background response's batch makes none: nobody created a batch)."""
        event_type = EVENT_TYPES.get(batch.status)
        if event_type is None or is_background(batch):
            return None
        endpoints = tuple(name for name, sub in self._by_name.items() if sub.wants(event_type, batch.project))
        if not endpoints:
            return None
        return Event(event_id, event_type, now, batch.id, batch.project, endpoints)


def event_body(event_id: str, type: str, created_at: int, batch_id: str) -> bytes:
    """The exact JSON OpenAI sends, the same bytes on every attempt."""
    body = {
        "id": event_id,
        "object": "event",
        "type": type,
        "created_at": created_at,
        "data": {"id": batch_id},
    }
    return json.dumps(body, separators=(",", ":")).encode()
