"""Synchronous requests on a backend's scheduler: the tickets of its priority lane (docs/sync.md).

A synchronous request (`POST /v1/chat/completions` and the rest, answered while the client waits)
asks the backend's scheduler for a *ticket* and waits until it is granted; a granted ticket holds one
of the scheduler's slots (the AIMD window, `max_concurrency`, this process's share of the global
slots, the rate limits, the circuit breaker) until the caller releases it. The caller sends the request
itself, because only it knows whether the answer is a stream.

* **Online** tickets are granted before any batch line, in arrival order, whenever the limits allow
  one more request: an online request waits at most for one request in flight to end, never behind
  queued batch lines.
* **Flex** tickets (`service_tier: "flex"`) run at batch priority: they queue with the batch feeds in
  earliest-deadline-first order (the scheduler's deadline minutes), a flex request's deadline being
  when it gives up waiting (now + `flex_timeout_s`).
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field


class Lane(enum.Enum):
    ONLINE = "online"
    FLEX = "flex"


class NoSlot(Exception):
    """No slot came in time: the breaker sends nothing now (online), or a flex request's wait ran out.
    `retry_in` is how long until trying again may help (seconds; None: unknown)."""

    def __init__(self, reason: str, retry_in: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


@dataclass(eq=False)
class Ticket:
    """One synchronous attempt's claim on a slot. Hashable by identity: the breaker counts it as a
    request of its own."""

    lane: Lane
    deadline: float  # flex: the clock time it stops waiting; online: infinity
    tokens: float  # its estimate, for the tokens-per-minute budget
    granted: asyncio.Future[None]
    sequence: int = 0  # the window's number for this attempt
    reported: bool = False  # its answer's head was accounted for
    released: bool = False


@dataclass
class TicketQueue:
    """The tickets waiting for a slot on one backend, and how many granted ones hold one."""

    online: list[Ticket] = field(default_factory=list)  # in arrival order
    flex: list[Ticket] = field(default_factory=list)  # by deadline, then arrival
    holding: int = 0

    @property
    def waiting(self) -> bool:
        return bool(self.online or self.flex)

    @property
    def busy(self) -> bool:
        """Tickets wait or hold slots: the scheduler wants its share of the backend."""
        return self.waiting or self.holding > 0

    def add(self, ticket: Ticket) -> None:
        if ticket.lane is Lane.ONLINE:
            self.online.append(ticket)
        else:
            bisect.insort_right(self.flex, ticket, key=lambda t: t.deadline)

    def remove(self, ticket: Ticket) -> None:
        queue = self.online if ticket.lane is Lane.ONLINE else self.flex
        if ticket in queue:
            queue.remove(ticket)

    def next(self, batch_deadline: float | None, bucket_s: int) -> Ticket | None:
        """The ticket to grant before the most urgent batch line (its feed's `batch_deadline`; None: no
        batch line is ready): every online one, and a flex one whose deadline falls in the same bucket
        of `bucket_s` seconds or an earlier one."""
        for queue in (self.online, self.flex):
            while queue and queue[0].granted.done():  # its waiter gave up: it left, or is leaving
                queue.pop(0)
        if self.online:
            return self.online[0]
        if self.flex:
            first = self.flex[0]
            if batch_deadline is None or first.deadline // bucket_s <= batch_deadline // bucket_s:
                return first
        return None

    def grant(self, ticket: Ticket) -> None:
        self.remove(ticket)
        self.holding += 1
        ticket.granted.set_result(None)

    def release(self) -> None:
        self.holding -= 1


def wait_limit(deadline: float, now: float) -> float | None:
    """Seconds a ticket may wait from `now` (None: without limit)."""
    return None if math.isinf(deadline) else max(0.0, deadline - now)


async def granted(
    ticket: Ticket, queue: TicketQueue, limit_s: float | None, release: Callable[[Ticket], None], backend: str
) -> Ticket:
    """Wait until the scheduler grants `ticket` (waiting in `queue`), for at most `limit_s`: NoSlot then.
    A waiter cancelled leaves the queue, or gives back the slot it was granted at that moment."""
    try:
        async with asyncio.timeout(limit_s):
            await asyncio.shield(ticket.granted)
    except BaseException as exc:
        if not ticket.granted.done():
            ticket.granted.cancel()
            queue.remove(ticket)
        elif not ticket.granted.cancelled():
            if not isinstance(exc, TimeoutError):
                release(ticket)  # granted just as its waiter was cancelled
                raise
            return ticket  # granted just as its time ran out
        if isinstance(exc, TimeoutError):
            raise NoSlot(f"no slot on backend {backend!r} in time") from None
        raise
    return ticket
