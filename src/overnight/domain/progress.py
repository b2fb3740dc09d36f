"""How far a batch has got: its counts over time, its rate and an honest ETA (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from overnight.domain.lifecycle import TERMINAL
from overnight.domain.models import BackendStatus, Batch, BatchStatus

SAMPLE_EVERY_S = 5.0  # the shortest interval between two samples of a batch
SAMPLES_PER_AGE = 50  # later, a sample every age/50 seconds: about 340 in a day
RATE_WINDOW_S = 120.0  # the rate is measured over this much of the recent past, at least
MIN_SPAN_S = 5  # two samples at least this far apart before a rate is believed
STALL_S = 30.0  # no line finished for this long (and for STALL_LINES lines' worth): the rate is unknown
STALL_LINES = 10


@dataclass(frozen=True, slots=True)
class Sample:
    """The batch's counts at one moment (unix seconds)."""

    at: int
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Progress:
    """A batch's progress as the dashboard and GET /v1/batches/{id}/progress show it.

    `rate_per_s` (lines finished per second) and `eta_s` are None while unknown (too little measured
    yet, or nothing moving); `eta_s` is 0 once every line has a result (or the batch has ended).
    `window_left_s` is what is left of the completion window: 0 once the batch has ended.
    """

    batch_id: str
    status: BatchStatus
    total: int
    completed: int
    failed: int
    rate_per_s: float | None
    eta_s: int | None
    window_left_s: int
    samples: tuple[Sample, ...]


def sample_interval(age_s: float) -> float:
    """How long the leader waits between two samples of a batch that has run `age_s` seconds: every
    few seconds at first, then a fixed share of its age, so a day-long batch keeps a few hundred."""
    return max(SAMPLE_EVERY_S, age_s / SAMPLES_PER_AGE)


def rate_window(age_s: float) -> float:
    """How far back the rate looks: the last two minutes, or three sampling intervals once they are
    longer, so the rate follows changes yet always has samples to go on."""
    return max(RATE_WINDOW_S, 3 * sample_interval(age_s))


def _done(sample: Sample) -> int:
    return sample.completed + sample.failed


def measured_rate(samples: Sequence[Sample], live: Sample, age_s: float) -> float | None:
    """Lines finished per second over the rate window, from the recorded samples (oldest first) and
    the counts now (`live`); None while too little is measured or nothing moves.

    Known only when two samples of the window lie `MIN_SPAN_S` apart with lines finished between
    them, and the counts have not stood still for longer than `STALL_S` or the time `STALL_LINES`
    lines take at that rate, whichever is longer.
    """
    now = live.at
    window = rate_window(age_s)
    recent = [sample for sample in samples if now - window <= sample.at]
    if len(recent) < 2:
        return None
    first, last = recent[0], recent[-1]
    if last.at - first.at < MIN_SPAN_S or _done(last) <= _done(first):
        return None
    if live.at > last.at and _done(live) >= _done(last):
        last = live
    rate = (_done(last) - _done(first)) / (last.at - first.at)
    still_since = next(point.at for point in (*recent, last) if _done(point) >= _done(last))
    if now - still_since > max(STALL_S, STALL_LINES / rate):
        return None
    return rate


def estimate(batch: Batch, samples: Sequence[Sample], now: int) -> Progress:
    """The batch's progress at `now` from its recorded samples (oldest first) and its live counts.

    The rate is measured only while the batch is in progress; the ETA is the lines left over that
    rate, rounded up (never 0 while lines are left), 0 once nothing is left to run (every line has a
    result, or the batch is finalizing or has ended), and None while unknown. The window left is 0 once
    the batch has ended: nothing of it is left to use.
    """
    counts = batch.request_counts
    ordered = tuple(sorted(samples, key=lambda sample: sample.at))
    remaining = max(0, counts.total - counts.completed - counts.failed)
    rate: float | None = None
    eta: int | None = None
    if batch.status is BatchStatus.IN_PROGRESS:
        age = max(0, now - (batch.in_progress_at or batch.created_at))
        rate = measured_rate(ordered, Sample(now, counts.completed, counts.failed), age)
        if counts.total > 0 and remaining == 0:
            eta = 0
        elif rate is not None:
            eta = max(1, math.ceil(remaining / rate))
    elif batch.status is BatchStatus.FINALIZING or batch.status in TERMINAL:
        eta = 0
    return Progress(
        batch_id=batch.id,
        status=batch.status,
        total=counts.total,
        completed=counts.completed,
        failed=counts.failed,
        rate_per_s=rate,
        eta_s=eta,
        window_left_s=0 if batch.status in TERMINAL else max(0, batch.expires_at - now),
        samples=ordered,
    )


BREAKER_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class BackendView:
    """A backend as the dashboard shows it: the workers' fresh reports of it put together.

    `window`, `in_flight`, `attempts` and `failures` are summed over the workers (each worker's window
    is its share of `limit`); `breaker` is the worst any worker sees; `error_rate` is failures over
    attempts in the last minute (None without attempts); `reported_at` the latest report.
    """

    backend: str
    workers: int
    window: int
    limit: int
    in_flight: int
    breaker: str
    attempts: int
    failures: int
    error_rate: float | None
    reported_at: int


def backend_views(reports: Sequence[BackendStatus]) -> list[BackendView]:
    """One view per backend named in `reports` (each worker's latest), by backend name."""
    by_backend: dict[str, list[BackendStatus]] = {}
    for report in reports:
        by_backend.setdefault(report.backend, []).append(report)
    views = []
    for backend in sorted(by_backend):
        group = by_backend[backend]
        attempts = sum(report.attempts for report in group)
        failures = sum(report.failures for report in group)
        views.append(
            BackendView(
                backend=backend,
                workers=len({report.worker for report in group}),
                window=sum(report.window for report in group),
                limit=max(report.limit for report in group),
                in_flight=sum(report.in_flight for report in group),
                breaker=max((report.breaker for report in group), key=lambda b: BREAKER_SEVERITY.get(b, 3)),
                attempts=attempts,
                failures=failures,
                error_rate=failures / attempts if attempts else None,
                reported_at=max(report.reported_at for report in group),
            )
        )
    return views
