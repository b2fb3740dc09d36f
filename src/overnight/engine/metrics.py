"""Engine metrics in Prometheus' text format, with no dependency: counters, gauges, one histogram."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] += amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {_number(value)}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, value: float, labels: Labels = ()) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                yield f"{self.name}_bucket{_labels((*labels, ('le', le)))} {running}"
            yield f"{self.name}_sum{_labels(labels)} {_number(self.sums[labels])}"
            yield f"{self.name}_count{_labels(labels)} {running}"


def gauge_lines(name: str, help_text: str, values: Iterable[tuple[Labels, float]]) -> Iterable[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} gauge"
    for labels, value in values:
        yield f"{name}{_labels(labels)} {_number(value)}"


@dataclass(frozen=True, slots=True)
class BackgroundFigures:
    """A background backend's controller as /metrics shows it (engine/neighbour.py)."""

    window: int  # batch requests it may have in flight
    base_latency_s: float | None  # the unloaded latency of the last answer's request shape
    queue_delay_s: float  # smoothed: latency over that base
    signal: str  # what drives the window: "load" (a fresh reading of the server) or "delay"
    overrides: int  # batches whose deadline raises the window now


_BACKGROUND_GAUGES: tuple[tuple[str, str, Callable[[BackgroundFigures], float | None]], ...] = (
    (
        "overnight_background_window",
        "Batch requests a background backend may have in flight.",
        lambda f: f.window,
    ),
    (
        "overnight_background_base_latency_seconds",
        "A background backend's learned unloaded latency, for the request shape it answered last.",
        lambda f: f.base_latency_s,
    ),
    (
        "overnight_background_queue_delay_seconds",
        "A background backend's smoothed queueing delay: latency over the base latency of its shape.",
        lambda f: f.queue_delay_s,
    ),
    (
        "overnight_background_deadline_overrides",
        "Batches whose deadline holds a background backend's window up now.",
        lambda f: f.overrides,
    ),
)


def background_lines(figures: Mapping[str, Callable[[], BackgroundFigures]]) -> Iterable[str]:
    now = {backend: read() for backend, read in sorted(figures.items())}
    for name, help_text, pick in _BACKGROUND_GAUGES:
        values = [((("backend", b),), v) for b, f in now.items() if (v := pick(f)) is not None]
        yield from gauge_lines(name, help_text, values)
    signals = [((("backend", b), ("signal", f.signal)), 1.0) for b, f in now.items()]
    yield from gauge_lines(
        "overnight_background_signal",
        "Which signal drives a background backend's window (load or delay).",
        signals,
    )


class EngineMetrics:
    """What the engine counts as it runs; gauges are read from their owners when scraped."""

    def __init__(self) -> None:
        self.requests = Counter(
            "overnight_upstream_requests_total", "Attempts sent to a backend, by backend and HTTP status."
        )
        self.outcomes = Counter(
            "overnight_request_results_total", "Requests finished, by backend and result (succeeded/failed)."
        )
        self.retries = Counter("overnight_upstream_retries_total", "Attempts scheduled again, by backend.")
        self.token_counts = Counter(
            "overnight_tokens_total", "Tokens reported by backends, by backend and direction (input/output)."
        )
        self.circuit_changes = Counter(
            "overnight_circuit_changes_total",
            "Circuit breaker openings and closings, by backend and the state it went to.",
        )
        self.latency = Histogram(
            "overnight_upstream_latency_seconds", "Time from sending an attempt to its answer, by backend."
        )
        self.deadline_overrides = Counter(
            "overnight_background_deadline_overrides_total",
            "Times a batch on a background backend took the concurrency its deadline needs, by backend.",
        )
        self.gauges: list[Callable[[], Iterable[str]]] = []
        self.background: dict[str, Callable[[], BackgroundFigures]] = {}  # by backend (traffic = background)

    def observe_attempt(self, backend: str, status: int, seconds: float) -> None:
        labels = (("backend", backend),)
        self.requests.inc((*labels, ("status", str(status))))
        self.latency.observe(seconds, labels)

    def finished(self, backend: str, succeeded: bool) -> None:
        self.outcomes.inc((("backend", backend), ("result", "succeeded" if succeeded else "failed")))

    def retried(self, backend: str) -> None:
        self.retries.inc((("backend", backend),))

    def circuit_changed(self, backend: str, state: str) -> None:
        self.circuit_changes.inc((("backend", backend), ("state", state)))

    def tokens(self, backend: str, input_tokens: int, output_tokens: int) -> None:
        if input_tokens:
            self.token_counts.inc((("backend", backend), ("direction", "input")), input_tokens)
        if output_tokens:
            self.token_counts.inc((("backend", backend), ("direction", "output")), output_tokens)

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.outcomes,
            self.retries,
            self.token_counts,
            self.circuit_changes,
            self.latency,
        ):
            lines.extend(metric.render())
        if self.background:  # only where a backend has traffic = "background"
            lines.extend(self.deadline_overrides.render())
            lines.extend(background_lines(self.background))
        for gauges in self.gauges:
            lines.extend(gauges())
        return "\n".join(lines) + "\n"
