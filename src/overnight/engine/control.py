"""Pure flow-control policies for one backend: a concurrency window, rate buckets, a circuit breaker.

No I/O and no asyncio here: every decision takes the current time as an argument, so tests drive
them with any clock they like.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class AimdWindow:
    """Additive increase, multiplicative decrease of the requests allowed in flight.

    Starts fully open (a healthy backend need not earn its window). Each success adds 1/size, about
    one slot per round trip. An overload halves it, but only once per window's worth of requests:
    refusals of requests that were already sent before the last decrease say nothing new (like
    TCP's recovery sequence), so one over-full window counts as one signal, however fast the
    refusals come back.
    """

    maximum: int
    minimum: int = 1
    decrease_factor: float = 0.5
    size: float = field(init=False)
    _sent: int = field(init=False, default=0)
    _recover: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.minimum = max(1, min(self.minimum, self.maximum))
        self.size = float(self.maximum)

    @property
    def limit(self) -> int:
        return max(self.minimum, int(self.size))

    def sent(self) -> int:
        """Number a request as it is sent; pass the number back to `record`."""
        self._sent += 1
        return self._sent

    def record(self, overloaded: bool, sequence: int) -> None:
        """Account for the answer to request number `sequence` (engine/retry.py says what is an
        overload)."""
        if not overloaded:
            self.size = min(float(self.maximum), self.size + 1.0 / self.size)
        elif sequence > self._recover:
            self.size = max(float(self.minimum), self.size * self.decrease_factor)
            self._recover = self._sent


@dataclass
class TokenBucket:
    """At most `burst + rate_per_s * T` units taken in any interval of T seconds.

    `take` may drive the level below zero (a debt), used when a cost is only known afterwards and
    the estimate was too low; `give_back` returns units when the estimate was too high.
    """

    rate_per_s: float
    burst: float
    level: float = field(init=False)
    _updated: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.level = self.burst

    @classmethod
    def per_minute(cls, per_minute: int, burst_seconds: float = 1.0) -> TokenBucket:
        rate = per_minute / 60.0
        return cls(rate_per_s=rate, burst=max(1.0, rate * burst_seconds))

    def _refill(self, now: float) -> None:
        if self._updated is not None and now > self._updated:
            self.level = min(self.burst, self.level + (now - self._updated) * self.rate_per_s)
        if self._updated is None or now > self._updated:
            self._updated = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 when it can be taken now)."""
        self._refill(now)
        needed = min(amount, self.burst) - self.level
        return 0.0 if needed <= 0 else needed / self.rate_per_s

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.burst, self.level + amount)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Stops sending to a backend that looks down, then probes it with one request at a time.

    Opens after failures that point to the backend (engine/retry.py: no answer, 502, 503, 504) from
    `threshold` different requests in a row, with no healthy answer between them: one request that
    keeps failing never opens it. While open nothing is sent; after `open_s` (doubling on each
    failed probe, up to `max_open_s`) one probe may go. Any healthy answer closes it at once.
    """

    threshold: int = 5
    open_s: float = 1.0
    max_open_s: float = 30.0
    state: BreakerState = field(init=False, default=BreakerState.CLOSED)
    _failing: set[Hashable] = field(init=False, default_factory=set)
    _opened_at: float = field(init=False, default=0.0)
    _current_open_s: float = field(init=False, default=0.0)
    _probing: bool = field(init=False, default=False)

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now (a half-open breaker admits one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self._opened_at >= self._current_open_s:
            self.state = BreakerState.HALF_OPEN
        return self.state is BreakerState.HALF_OPEN and not self._probing

    def retry_in(self, now: float) -> float:
        """Seconds until a probe may go (0 if one may go now or the breaker is closed)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        remaining = self._current_open_s - (now - self._opened_at)
        return max(0.0, min(self._current_open_s, remaining))

    def sent(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._probing = True

    def abandoned(self) -> None:
        """The probe in flight will never answer (its caller gave up): another may go."""
        self._probing = False

    @property
    def failures(self) -> int:
        """Different requests that failed in the current run of failures."""
        return len(self._failing)

    def record(self, down: bool, now: float, request: Hashable = None) -> None:
        """Account for an answer: `down` when it points to the backend; `request` names the request
        it answered (None: a request of its own)."""
        if not down:
            self.state = BreakerState.CLOSED
            self._failing.clear()
            self._probing = False
            self._current_open_s = 0.0
            return
        if self.state is BreakerState.HALF_OPEN:
            self._open(now, min(self.max_open_s, max(self.open_s, self._current_open_s * 2)))
        elif self.state is BreakerState.CLOSED:
            self._failing.add(object() if request is None else request)
            if len(self._failing) >= self.threshold:
                self._open(now, self.open_s)

    def _open(self, now: float, duration: float) -> None:
        self.state = BreakerState.OPEN
        self._failing.clear()
        self._opened_at = now
        self._current_open_s = duration
        self._probing = False
