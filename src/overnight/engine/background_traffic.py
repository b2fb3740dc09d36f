"""A `traffic = "background"` backend as its scheduler consults it (docs/background-traffic.md): the
controller of engine/neighbour.py fed with each batch answer's latency and the server's load reading,
its deadline overrides logged and counted, its figures on /metrics. Also vLLM's request `priority`,
which any backend may be configured to send with its batch lines."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from overnight.engine.metrics import BackgroundFigures, EngineMetrics
from overnight.engine.neighbour import (
    FeedNeed,
    LoadReading,
    NeighbourSettings,
    NeighbourWindow,
    request_shape,
)

log = logging.getLogger("overnight.engine")

DEADLINE_CHECK_S = 1.0  # how often the feeds' deadlines are looked at
_OBJECT_START = re.compile(rb"\s*\{")


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """How a backend shares its server: `background` or not, and the `priority` its batch lines carry."""

    background: bool = False
    target_queue_delay_s: float = 0.02
    priority: int | None = None
    occupancy_headroom: int = 0  # with a load signal: what it aims for over the server's slots


def with_priority(body: bytes, priority: int) -> bytes:
    """The request body with vLLM's `priority` field: the configured value, or the line's own when that
    is later (larger); a batch line never goes ahead of the online traffic the setting protects."""
    if b'"priority"' not in body:
        start = _OBJECT_START.match(body)
        if start is not None:
            rest = body[start.end() :].lstrip()
            comma = b"" if rest.startswith(b"}") else b","
            return b'{"priority":%d%s%s' % (priority, comma, rest)
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    own = data.get("priority")
    if isinstance(own, int) and not isinstance(own, bool) and own >= priority:
        return body
    data["priority"] = priority
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class BackgroundTraffic:
    """One background backend's window for batch lines, kept by engine/neighbour.py."""

    def __init__(
        self,
        backend: str,
        settings: TrafficSettings,
        maximum: int,
        metrics: EngineMetrics,
        load: Callable[[], LoadReading | None] = lambda: None,
    ) -> None:
        self.backend = backend
        self.window = NeighbourWindow(
            NeighbourSettings(settings.target_queue_delay_s, maximum, headroom=settings.occupancy_headroom)
        )
        self._metrics = metrics
        self._load = load
        self._checked_at = float("-inf")
        metrics.background[backend] = self.figures

    @property
    def limit(self) -> int:
        return self.window.limit

    def answered(self, body: bytes, status: int, seconds: float, now: float, in_flight: int) -> None:
        """Learn from a batch line's answer (only a success's latency says how loaded the server is)."""
        if 200 <= status < 300:
            shape = request_shape(body)
            self.window.answered(shape, seconds, now, in_flight=in_flight, load=self._load())

    def check_deadlines(self, needs: Callable[[], Iterable[FeedNeed]], now: float) -> None:
        """About once a second: raise the floor for feeds whose deadline needs it; log each override as
        it starts (WARNING) and ends (INFO), and count it."""
        if now - self._checked_at < DEADLINE_CHECK_S:
            return
        self._checked_at = now
        changes = self.window.plan_deadlines(needs(), now)
        for batch_id, required in changes.started:
            self._metrics.deadline_overrides.inc((("backend", self.backend),))
            log.warning(
                "backend %s (background): batch %s cannot finish by its deadline at the current rate; it "
                "takes %d request(s) in flight until it can",
                self.backend,
                batch_id,
                required,
            )
        for batch_id, required in changes.ended:
            log.info(
                "backend %s (background): batch %s no longer needs its deadline override (%d in flight)",
                self.backend,
                batch_id,
                required,
            )

    def figures(self) -> BackgroundFigures:
        window = self.window
        return BackgroundFigures(
            window=window.limit,
            base_latency_s=window.last_base_s,
            queue_delay_s=window.delay_s,
            signal=window.signal,
            overrides=len(window.overrides),
        )
