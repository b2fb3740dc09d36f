"""A good neighbour on a shared model server: how many batch requests a `traffic = "background"` backend
may have in flight (docs/background-traffic.md).

Pure: no I/O and no asyncio; every decision takes the time as an argument.

* `BaseLatency` learns the server's unloaded latency per request *shape* (prompt size and output size,
  each in log2 buckets): a low quantile (BASE_QUANTILE) of the latencies over a window that ages, so it
  learns again when the server's speed changes. A quantile, not the minimum: answers of one shape vary
  (one writes more tokens than another, a host is busy a moment), and the fastest of thousands says
  little of what an answer takes when nothing queues.
* `NeighbourWindow` follows the server's occupancy where a load reading says how many requests it runs
  and queues (occupancy tracking): at each fresh reading it aims for its own requests out, plus the slots
  the reading shows free, less the server's queue, plus the configured headroom, and moves there with a
  time constant (`ServerSlots` learns the slot count). Without such a reading it is a delay-based limiter
  in the family of TCP Vegas, LEDBAT and Netflix's gradient limiter. An answer's queue delay is its
  latency over the base latency of its shape, filtered much as LEDBAT does: the same low quantile of the
  last `noise_filter` answers' delays (noise spreads them upward, a queue delays every answer). Once an
  epoch (a round trip, and at least EPOCH_ANSWERS answers per request the window allows) the epoch's mean
  delay is compared with the target (an epoch over it counts only once the next is over too, unless it
  is far over: noise flickers, a queue stays): far over it the window shrinks multiplicatively, the more
  the further over, over it it steps down, under it it steps up, and doubles instead until the first
  epoch over the target (TCP's slow start); it grows only while it is full. A reading that shows only
  the server's queue shrinks it once per reading while more than a few wait, holds it while a few wait,
  and lets the delay signal grow it while none waits (shrinking only when grossly over).
* A feed whose deadline is near and whose lines cannot finish at the current rate raises the floor to
  what it needs (a deadline override). The window never goes below 1.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

Shape = tuple[int, int]  # (log2 bucket of the body's bytes, log2 bucket of max tokens; 0: not given)

_MAX_TOKENS = re.compile(rb'"max(?:_completion)?_tokens"\s*:\s*(\d{1,9})')
BASE_EPOCH_S = 30.0  # the base latency is taken over the current and the previous epoch
BASE_QUANTILE = 0.1  # the base latency, and the filtered queue delay, are this quantile of their samples
_BUCKETS_PER_DOUBLING = 32  # the base latency's histogram: buckets about 2 % wide
EPOCH_ANSWERS = 4  # an epoch takes at least this many answers per request the window allows
TRACKING_S = 0.5  # load signal: the window follows the server's occupancy with this time constant
OVER_EPOCHS = 2  # delay signal: epochs in a row over the target before it gives back (unless far over)
CALM_STEPS = 2  # delay signal: the most steps one epoch grows the window by, after a calm spell
DELAY_DECREASE = 0.08  # delay signal: the window gives back this share per target it is over (at most 30 %)
LOAD_DELAY_FACTOR = 4  # with a fresh load reading, the delay signal shrinks the window only this far over
DEADLINE_SAFETY = 0.8  # a feed should finish within this share of the time its deadline leaves
EVERYTHING = 2**31  # the concurrency a feed needs when no time, or next to none, is left


def request_shape(body: bytes) -> Shape:
    """The bucket a request's latency is compared within: prompt bytes and asked output tokens."""
    match = _MAX_TOKENS.search(body)
    output = int(match.group(1)).bit_length() if match else 0
    return len(body).bit_length(), output


@dataclass
class _Latencies:
    """One shape's latencies over one epoch, in buckets about 2 % wide: how many in each, and the least."""

    counts: dict[int, int] = field(default_factory=dict)
    least: dict[int, float] = field(default_factory=dict)
    total: int = 0

    def add(self, seconds: float) -> None:
        bucket = math.floor(math.log2(max(seconds, 1e-9)) * _BUCKETS_PER_DOUBLING)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.least[bucket] = min(self.least.get(bucket, math.inf), seconds)
        self.total += 1


def _quantile(parts: tuple[_Latencies, ...], share: float) -> float | None:
    """The `share` quantile of the latencies in `parts` (the least latency of its bucket)."""
    total = sum(part.total for part in parts)
    if total == 0:
        return None
    rank = int(share * (total - 1))
    seen = 0
    for bucket in sorted({bucket for part in parts for bucket in part.counts}):
        seen += sum(part.counts.get(bucket, 0) for part in parts)
        if seen > rank:
            return min(part.least.get(bucket, math.inf) for part in parts)
    return None  # not reached: the buckets hold `total` latencies


def _low_quantile(values: Iterable[float]) -> float:
    """BASE_QUANTILE of a few values (the least of fewer than 1 / BASE_QUANTILE + 1)."""
    ordered = sorted(values)
    return ordered[int(BASE_QUANTILE * (len(ordered) - 1))]


@dataclass
class _Epochs:
    epoch: int
    current: _Latencies = field(default_factory=_Latencies)
    previous: _Latencies = field(default_factory=_Latencies)


@dataclass
class BaseLatency:
    """BASE_QUANTILE of the latencies seen per shape over the last one to two epochs of `epoch_s`."""

    epoch_s: float = BASE_EPOCH_S
    _shapes: dict[Shape, _Epochs] = field(default_factory=dict)

    def _rolled(self, shape: Shape, now: float) -> _Epochs | None:
        entry = self._shapes.get(shape)
        if entry is None:
            return None
        epoch = int(now // self.epoch_s)
        if epoch > entry.epoch:
            entry.previous = entry.current if epoch == entry.epoch + 1 else _Latencies()
            entry.current, entry.epoch = _Latencies(), epoch
        return entry

    def observe(self, shape: Shape, seconds: float, now: float) -> None:
        entry = self._rolled(shape, now)
        if entry is None:
            entry = self._shapes[shape] = _Epochs(int(now // self.epoch_s))
        entry.current.add(seconds)

    def base(self, shape: Shape, now: float) -> float | None:
        entry = self._rolled(shape, now)
        return None if entry is None else _quantile((entry.current, entry.previous), BASE_QUANTILE)


@dataclass(frozen=True, slots=True)
class LoadReading:
    """The server's load as last read (engine/load_signals.py); `number` tells one reading from the next.
    `running`: the requests it serves now, where it says (None: it shows only its queue)."""

    waiting: int
    number: int
    running: int | None = None


@dataclass
class ServerSlots:
    """The requests the server serves at once, learned as the most it was seen running over the last one
    to two epochs of `epoch_s` (it ages, so a server restarted smaller is learned again); `confirmed`
    once a reading showed a queue too (then what runs is all it can)."""

    epoch_s: float = BASE_EPOCH_S
    _epoch: int = -1
    _current: tuple[int, bool] = (0, False)  # (most seen running, a queue seen)
    _previous: tuple[int, bool] = (0, False)

    def observe(self, running: int, waiting: int, now: float) -> None:
        epoch = int(now // self.epoch_s)
        if epoch > self._epoch:
            self._previous = self._current if epoch == self._epoch + 1 else (0, False)
            self._current, self._epoch = (0, False), epoch
        most, queued = self._current
        self._current = (max(most, running), queued or waiting > 0)

    @property
    def count(self) -> int:
        return max(self._current[0], self._previous[0])

    @property
    def confirmed(self) -> bool:
        return self._current[1] or self._previous[1]


@dataclass(frozen=True, slots=True)
class NeighbourSettings:
    target_delay_s: float
    maximum: int  # the backend's max_concurrency
    minimum: int = 1
    decrease_factor: float = 0.7  # a queue the server reports, or a gross slowdown
    smoothing: float = 0.2  # weight of each new delay sample in the smoothed delay
    waiting_threshold: int = 2  # a reading without `running`: shrink while more than this many wait
    step: float = 1.0  # additive change per epoch
    noise_filter: int = 32  # a delay sample is BASE_QUANTILE of this many answers' delays
    headroom: int = 0  # load signal: requests it aims for at the server over its slots (< 0: kept free)
    follow_s: float = TRACKING_S  # load signal: the time constant it follows the readings with


@dataclass(frozen=True, slots=True)
class FeedNeed:
    """What the deadline override looks at for one feed."""

    batch_id: str
    deadline: float  # clock time
    remaining: int  # lines left to run


@dataclass
class DeadlineChanges:
    started: list[tuple[str, int]] = field(default_factory=list)  # (batch id, concurrency it needs)
    ended: list[tuple[str, int]] = field(default_factory=list)


class NeighbourWindow:
    """The batch requests a background backend may have in flight (see the module's text)."""

    def __init__(self, settings: NeighbourSettings, *, base: BaseLatency | None = None) -> None:
        self.settings = settings
        self.bases = base or BaseLatency()
        self.slots = ServerSlots()
        self.minimum = max(1, min(settings.minimum, settings.maximum))
        self.size = float(self.minimum)
        self.delay_s = 0.0  # smoothed queue delay
        self.latency_s: float | None = None  # smoothed latency (the round trip)
        self.last_base_s: float | None = None  # base latency of the last answer's shape
        self.signal = "delay"  # what drove the last decision: "delay" or "load"
        # Load signal: the part of what a reading shows free (or queued) this worker takes on (or gives
        # back): its share of the backend's slots across workers (engine/slots.py), so that workers that
        # read the same server do not each take all its free slots at once.
        self.share = 1.0
        self.overrides: dict[str, int] = {}  # batch id -> concurrency its deadline needs
        self._slow_start = True
        self._calm = 0  # delay signal: epochs in a row under the target
        self._over = 0  # and over it
        self._recent: deque[float] = deque(maxlen=settings.noise_filter)
        self._last_reading = -1
        self._tracked_at: float | None = None  # when the last reading with `running` was followed
        self._epoch_start = -math.inf  # an epoch lasts a round trip (the smoothed latency)
        self._epoch_delay = 0.0
        self._epoch_answers = 0
        self._epoch_used = False  # the window was full at some answer of the epoch

    @property
    def floor(self) -> int:
        return min(self.settings.maximum, max(self.minimum, *self.overrides.values(), 0))

    @property
    def limit(self) -> int:
        return min(self.settings.maximum, max(self.floor, int(self.size)))

    def answered(
        self, shape: Shape, seconds: float, now: float, *, in_flight: int, load: LoadReading | None = None
    ) -> None:
        """Learn from one successful answer that took `seconds`, with `in_flight` batch requests still out;
        `load`: a fresh reading of the server, if any."""
        self.bases.observe(shape, seconds, now)
        base = self.bases.base(shape, now)
        self.last_base_s = base
        self._recent.append(seconds - base if base is not None else 0.0)
        delay = max(0.0, _low_quantile(self._recent))  # noise spreads delays upward, a queue shifts them all
        weight = self.settings.smoothing
        self.delay_s += weight * (delay - self.delay_s)
        self.latency_s = (
            seconds if self.latency_s is None else self.latency_s + weight * (seconds - self.latency_s)
        )
        self.signal = "delay" if load is None else "load"
        fresh = load is not None and load.number != self._last_reading
        if load is not None:
            self._last_reading = load.number
        if load is not None and load.running is not None:
            if fresh:
                self._track(load, load.running, in_flight + 1, delay, now)
            return
        self._epoch_delay += delay
        self._epoch_answers += 1
        self._epoch_used = self._epoch_used or in_flight + 1 >= self.limit
        if load is not None and load.waiting > self.settings.waiting_threshold:
            if fresh:  # once per reading
                self._shrink(now)
            return
        if now - self._epoch_start >= self.latency_s and self._epoch_answers >= EPOCH_ANSWERS * self.limit:
            self._end_epoch(now, load)

    def _track(self, load: LoadReading, running: int, own: int, delay: float, now: float) -> None:
        """Occupancy tracking: what the server should hold of its own is its requests out at the reading,
        plus the slots the reading shows free, less the server's queue, plus the headroom; the window
        follows that with the time constant `follow_s` (the online load changes faster than batch
        requests end, so following each reading at once only adds noise). Until a reading has shown a
        queue, the slot count is not known: it probes half as many again as it has out (at least one, as
        TCP's slow start does, so a server of hundreds of slots is found in a few readings). A gross
        slowdown takes one back. With `share` < 1 (other workers read the same server) it takes on only
        its share of what the reading shows free or queued: each taking all of it would overshoot."""
        self.slots.observe(running, load.waiting, now)
        free = self.slots.count - running - load.waiting
        extra = self.settings.headroom if self.slots.confirmed else max(1, self.settings.headroom)
        if delay > LOAD_DELAY_FACTOR * self.settings.target_delay_s:
            extra = min(extra, 0) - 1
        wanted = own + self.share * (free + extra)
        if not self.slots.confirmed:
            wanted = max(wanted, own + max(1, own // 2))
        elapsed = math.inf if self._tracked_at is None else now - self._tracked_at
        self._tracked_at = now
        follows = self.slots.confirmed  # a probe (the slot count not known yet) goes at once
        follow = 1 - math.exp(-elapsed / self.settings.follow_s) if follows else 1.0
        size = self.size + follow * (wanted - self.size)
        self.size = max(float(self.minimum), min(float(self.settings.maximum), size))

    def _end_epoch(self, now: float, load: LoadReading | None) -> None:
        """Once a round trip: the epoch's mean queue delay against the target (Vegas: one step a round
        trip; a multiplicative one when far over)."""
        mean = self._epoch_delay / max(1, self._epoch_answers)
        target = self.settings.target_delay_s
        used = self._epoch_used
        self._epoch_start, self._epoch_delay, self._epoch_answers, self._epoch_used = now, 0.0, 0, False
        if load is not None:  # the server says how long its queue is: latency only for a gross slowdown
            if mean > LOAD_DELAY_FACTOR * target:
                self._shrink(now)
            elif load.waiting == 0 and used:  # a few waiting: hold
                self._grow()
            return
        over = mean > target
        self._calm, self._over = (0, self._over + 1) if over else (self._calm + 1, 0)
        if over and self._over < OVER_EPOCHS and mean <= LOAD_DELAY_FACTOR * target:
            return  # once over could be noise: a queue is still there next epoch
        if mean > 2 * target:  # LEDBAT: the further over, the more it gives back
            given_back = min(1 - self.settings.decrease_factor, DELAY_DECREASE * (mean / target - 1))
            self._shrink(now, 1 - given_back)
        elif over and self._slow_start:  # the slow start ends here, where it is
            self._slow_start = False
        elif over:
            self.size = max(float(self.minimum), self.size - self.settings.step)
        elif used:  # the longer nothing queued, the faster it probes again (every other epoch, a step more)
            self._grow(min(CALM_STEPS, 1 + self._calm // 2))

    def _grow(self, steps: int = 1) -> None:
        grown = self.size * 2 if self._slow_start else self.size + steps * self.settings.step
        self.size = min(float(self.settings.maximum), grown)

    def _shrink(self, now: float, factor: float | None = None) -> None:
        self._slow_start = False
        self._epoch_start, self._epoch_delay, self._epoch_answers = now, 0.0, 0
        kept = self.settings.decrease_factor if factor is None else factor
        self.size = max(float(self.minimum), self.size * kept)

    def plan_deadlines(self, needs: Iterable[FeedNeed], now: float) -> DeadlineChanges:
        """Raise the floor for the feeds that cannot finish by their deadline at the current rate; the
        overrides that start and end (each feed's own window at the current latency)."""
        wanted: dict[str, int] = {}
        if self.latency_s is not None:
            for need in needs:
                required = needed_concurrency(need.remaining, need.deadline - now, self.latency_s)
                if required > int(self.size):
                    wanted[need.batch_id] = max(
                        wanted.get(need.batch_id, 0), min(self.settings.maximum, required)
                    )
        changes = DeadlineChanges(
            started=[(b, r) for b, r in wanted.items() if b not in self.overrides],
            ended=[(b, r) for b, r in self.overrides.items() if b not in wanted],
        )
        self.overrides = wanted
        return changes


def needed_concurrency(remaining: int, seconds_left: float, latency_s: float) -> int:
    """Requests in flight that finish `remaining` lines of `latency_s` each within the safe share of
    `seconds_left` (Little's law); everything when no time is left."""
    if remaining <= 0:
        return 0
    usable = seconds_left * DEADLINE_SAFETY
    if usable <= 0:
        return EVERYTHING
    needed = remaining * latency_s / usable
    return EVERYTHING if not needed < EVERYTHING else math.ceil(needed)  # also when it overflows to inf
