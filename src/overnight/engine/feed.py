"""What the scheduler works on: one batch's lines for one backend (`Feed`), the requests read from
them (`Request`), and a backend's rate limits."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from overnight.backends.base import Attempt
from overnight.domain.models import ResultRow
from overnight.engine.prefix_queue import PrefixQueue

Sink = Callable[[ResultRow], None]
LineId = Callable[[int], str]


@dataclass(frozen=True, slots=True)
class RateLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(slots=True)
class Request:
    line_no: int
    custom_id: str
    body: bytes
    attempts: int = 0  # charged attempts (engine/retry.py)
    waits: int = 0  # failures not charged, while the backend looked down or could not be reached
    tokens: float = 0.0
    sequence: int = 0  # the window's number for the attempt in flight
    last: Attempt | None = None  # its last failed attempt
    waiting: bool = False  # queued again to wait for the backend, not for a backoff of its own


class ReadyQueue(deque[Request]):
    """A feed's requests to send, in the input's order; `full` once it holds `limit` (its reader waits).
    engine/prefix_queue.py's PrefixQueue offers the same operations in a prefix-cache-aware order."""

    def __init__(self, limit: int = 64) -> None:
        super().__init__()
        self.limit = limit

    @property
    def full(self) -> bool:
        return len(self) >= self.limit


@dataclass(eq=False)
class Feed:
    """One batch's lines for one backend."""

    batch_id: str
    project: str
    deadline: int
    endpoint: str
    lines: AsyncIterator[tuple[int, bytes]]
    line_id: LineId
    sink: Sink
    skip: Callable[[int], bool] = lambda _line_no: False
    ready: ReadyQueue | PrefixQueue = field(default_factory=ReadyQueue)  # PrefixQueue: prefix_ordering
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    retrying: int = 0  # its requests waiting for a retry's time
    last_failures: dict[int, Attempt] = field(default_factory=dict)  # set when it ends, by line number
    exhausted: bool = False
    stopped: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    order: int = 0
    lines_left: int | None = None  # its batch's lines without a result when it started (None: unknown)
    done: int = 0  # results it has given since

    @property
    def remaining(self) -> int | None:
        """Lines its batch still has to run, as far as this feed knows (a deadline override's need)."""
        return None if self.lines_left is None else max(0, self.lines_left - self.done)

    def check_finished(self) -> None:
        idle = not self.ready and not self.in_flight and not self.retrying
        if self.stopped or (self.exhausted and idle):
            self.finished.set()


def estimate_tokens(body: bytes) -> float:
    """A cheap upper-ish estimate of a request's tokens before it runs: ~4 bytes a token, plus room
    for the answer. Corrected from `usage` once the answer arrives."""
    return len(body) / 4 + 256
