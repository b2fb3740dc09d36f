"""What the dashboard shows, worked out from domain values: durations and money in words, progress bars,
the counts-over-time chart, and the alerts that say what to do next. No web framework here, so the
rules are tested without a server."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass

from overnight.domain.lifecycle import CANCELLABLE, TERMINAL
from overnight.domain.models import Batch, BatchStatus, ErrorGroup
from overnight.domain.pricing import Cost
from overnight.domain.progress import BackendView, Progress, Sample

CHART_WIDTH, CHART_HEIGHT = 600, 160
FAILING_ERROR_RATE = 0.5  # a backend failing at least this share of its attempts is shown as in trouble
FAILING_MIN_ATTEMPTS = 5  # ...once it has made this many in the last minute (one failure is no outage)
EXAMPLE_MAX_CHARS = 2000


def duration(seconds: int | None) -> str:
    """`seconds` in words a person reads at a glance; None is "unknown" (never a guess)."""
    if seconds is None:
        return "unknown"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def rate(per_second: float | None) -> str:
    if per_second is None:
        return "unknown"
    if per_second >= 10:
        return f"{per_second:.0f} lines/s"
    if per_second >= 0.1:
        return f"{per_second:.1f} lines/s"
    return f"{per_second * 60:.1f} lines/min"


def usd(amount: float | None) -> str:
    """Dollars to the cent from $100, else to 4 decimals; an amount too small for those shows 2 significant
    digits (a few tokens' worth reads $0.000012, not $0.0000)."""
    if amount is None:
        return "unknown"
    if abs(amount) >= 100:
        return f"${amount:,.2f}"
    if 0 < abs(amount) < 0.0001:
        digits = min(12, 1 - math.floor(math.log10(abs(amount))))
        return f"${amount:.{digits}f}"
    return f"${amount:.4f}"


def when(timestamp: int | None) -> str:
    if timestamp is None:
        return ""
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def is_active(status: BatchStatus) -> bool:
    """Still moving: its page keeps updating itself."""
    return status not in TERMINAL


def can_cancel(status: BatchStatus) -> bool:
    return status in CANCELLABLE


@dataclass(frozen=True, slots=True)
class Bar:
    """A progress bar in SVG user units out of 100: the completed share, then the failed share."""

    completed: float
    failed: float


def bar(total: int, completed: int, failed: int) -> Bar:
    if total <= 0:
        return Bar(0.0, 0.0)
    done = min(completed, total) / total * 100
    return Bar(round(done, 2), round(min(failed, total - min(completed, total)) / total * 100, 2))


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the batch list."""

    id: str
    project: str
    status: str
    endpoint: str
    model: str
    total: int
    completed: int
    failed: int
    bar: Bar
    rate: str
    eta: str
    window_left: str
    created: str
    active: bool


def row(batch: Batch, progress: Progress | None) -> Row:
    """A batch as the list shows it; `progress` is None for a batch that has ended (its counts are final)."""
    counts = batch.request_counts
    total, completed, failed = counts.total, counts.completed, counts.failed
    status = batch.status
    if progress is not None:
        total, completed, failed, status = (
            progress.total,
            progress.completed,
            progress.failed,
            progress.status,
        )
    active = is_active(status)
    return Row(
        id=batch.id,
        project=batch.project,
        status=str(status),
        endpoint=batch.endpoint,
        model=batch.model or "",
        total=total,
        completed=completed,
        failed=failed,
        bar=bar(total, completed, failed),
        rate=rate(progress.rate_per_s) if progress is not None and active else "",
        eta=eta(progress) if progress is not None and active else "",
        window_left=duration(progress.window_left_s) if progress is not None and active else "",
        created=when(batch.created_at),
        active=active,
    )


def eta(progress: Progress) -> str:
    if progress.eta_s == 0 and progress.total and progress.completed + progress.failed >= progress.total:
        return "done"
    return duration(progress.eta_s)


@dataclass(frozen=True, slots=True)
class Chart:
    """Counts over time as SVG polylines (`x,y x,y ...`) in a CHART_WIDTH x CHART_HEIGHT box; the top is
    the batch's total."""

    completed: str
    failed: str
    span: str
    top: int
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT


def chart(samples: Sequence[Sample], total: int) -> Chart | None:
    """None until there are two samples to draw a line between."""
    if len(samples) < 2:
        return None
    start, end = samples[0].at, samples[-1].at
    span = max(end - start, 1)
    top = max(total, *(max(s.completed, s.failed) for s in samples), 1)

    def line(values: Sequence[int]) -> str:
        points = []
        for sample, value in zip(samples, values, strict=True):
            x = (sample.at - start) / span * CHART_WIDTH
            y = CHART_HEIGHT - min(value, top) / top * CHART_HEIGHT
            points.append(f"{x:.1f},{y:.1f}")
        return " ".join(points)

    return Chart(
        completed=line([s.completed for s in samples]),
        failed=line([s.failed for s in samples]),
        span=duration(end - start),
        top=top,
    )


@dataclass(frozen=True, slots=True)
class ErrorGroupView:
    code: str
    status: str
    count: int
    example: str


def error_groups(groups: Sequence[ErrorGroup]) -> list[ErrorGroupView]:
    """The groups, largest first, each with its example line as text (cut short when long)."""
    views = []
    for group in sorted(groups, key=lambda g: (-g.count, g.code, g.status or 0)):
        example = group.example.decode("utf-8", errors="replace").strip()
        if len(example) > EXAMPLE_MAX_CHARS:
            example = example[:EXAMPLE_MAX_CHARS] + " …"
        status = str(group.status) if group.status is not None else "no answer"
        views.append(ErrorGroupView(group.code, status, group.count, example))
    return views


def every_line_failed(progress: Progress) -> bool:
    """Each line has a result and none succeeded: the page points at the error file and the top group."""
    return progress.total > 0 and progress.completed == 0 and progress.failed >= progress.total


@dataclass(frozen=True, slots=True)
class CostView:
    """A batch's cost in words: amounts when its model has a price, else what is missing (never $0)."""

    priced: bool
    batch: str
    synchronous: str
    saved: str
    missing: str


def cost(value: Cost) -> CostView:
    if not value.priced or value.batch_usd is None or value.synchronous_usd is None:
        if value.model is None:
            missing = "No model known yet: the cost shows once the batch's first request has run."
        else:
            missing = f"No price configured for model {value.model}."
        return CostView(False, "", "", "", missing)
    return CostView(True, usd(value.batch_usd), usd(value.synchronous_usd), usd(value.saved_usd), "")


@dataclass(frozen=True, slots=True)
class BackendRow:
    name: str
    window: int
    limit: int
    in_flight: int
    breaker: str
    error_rate: str
    attempts: int
    failures: int
    trouble: str  # empty when healthy; else what is wrong, in words


def backend_row(view: BackendView) -> BackendRow:
    error_rate = "" if view.error_rate is None else f"{view.error_rate * 100:.0f} %"
    return BackendRow(
        name=view.backend,
        window=view.window,
        limit=view.limit,
        in_flight=view.in_flight,
        breaker=view.breaker,
        error_rate=error_rate or "no requests",
        attempts=view.attempts,
        failures=view.failures,
        trouble=trouble(view),
    )


def trouble(view: BackendView) -> str:
    """Why a backend looks down, or "" when it does not."""
    if view.breaker == "open":
        return "its circuit breaker is open: recent requests failed, so Overnight has stopped sending more"
    if view.breaker == "half_open":
        return "its circuit breaker is half open: Overnight is testing whether it answers again"
    failing = view.error_rate is not None and view.error_rate >= FAILING_ERROR_RATE
    if failing and view.attempts >= FAILING_MIN_ATTEMPTS:
        return f"{view.failures} of its last {view.attempts} requests failed"
    return ""
