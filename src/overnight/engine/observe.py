"""What /metrics shows: the engine's counters plus gauges read from the store and the schedulers."""

from __future__ import annotations

from collections.abc import Mapping

from overnight.domain.models import BatchStatus
from overnight.engine.control import BreakerState
from overnight.engine.metrics import EngineMetrics, gauge_lines
from overnight.engine.scheduler import BackendScheduler
from overnight.store.base import MetadataStore

S = BatchStatus


async def render_metrics(
    metrics: EngineMetrics, store: MetadataStore, schedulers: Mapping[str, BackendScheduler]
) -> str:
    counts = await store.count_batches()
    running = await store.batches_in((S.IN_PROGRESS,))
    waiting = sum(
        b.request_counts.total - b.request_counts.completed - b.request_counts.failed for b in running
    )
    per_backend = sorted(schedulers.items())
    lines = [
        metrics.render().rstrip("\n"),
        *gauge_lines(
            "overnight_batches",
            "Batches by status.",
            [((("status", s.value),), counts.get(s, 0)) for s in S],
        ),
        *gauge_lines(
            "overnight_requests_waiting",
            "Requests of running batches without a result yet.",
            [((), waiting)],
        ),
        *gauge_lines(
            "overnight_upstream_in_flight",
            "Requests in flight, by backend.",
            [((("backend", name),), sched.in_flight) for name, sched in per_backend],
        ),
        *gauge_lines(
            "overnight_dispatch_queue",
            "Requests read and ready to send, by backend.",
            [((("backend", name),), sched.queued) for name, sched in per_backend],
        ),
        *gauge_lines(
            "overnight_concurrency_window",
            "Requests the adaptive window allows in flight, by backend.",
            [((("backend", name),), sched.window.limit) for name, sched in per_backend],
        ),
        *gauge_lines(
            "overnight_circuit_open",
            "1 while a backend's circuit breaker is not closed.",
            [
                ((("backend", name),), int(sched.breaker.state is not BreakerState.CLOSED))
                for name, sched in per_backend
            ],
        ),
        *gauge_lines(
            "overnight_backend_slots",
            "Requests this worker may have in flight to a backend: its share of the backend's "
            "max_concurrency across every worker, by backend.",
            [((("backend", name),), sched.cap) for name, sched in per_backend],
        ),
        *gauge_lines(
            "overnight_backend_waiting_batches",
            "Batches whose lines wait for a backend whose circuit breaker is not closed, by backend.",
            [((("backend", name),), len(sched.waiting_batches)) for name, sched in per_backend],
        ),
        *gauge_lines(
            "overnight_requests_waiting_for_backend",
            "Requests queued again to wait for a backend that looks down, by backend.",
            [((("backend", name),), sched.waiting_for_backend) for name, sched in per_backend],
        ),
    ]
    return "\n".join(lines) + "\n"
