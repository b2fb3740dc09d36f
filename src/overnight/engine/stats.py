"""What a worker records for the dashboard: its led batches' counts over time, and the state of each
backend it drives. Neither may disturb the engine: a store that does not answer costs a log line."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from overnight.domain.clock import Clock
from overnight.domain.models import BackendStatus, Batch
from overnight.domain.progress import Sample, sample_interval
from overnight.engine.scheduler import BackendScheduler
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.engine")

REPORT_EVERY_S = 2.0


class ProgressSampler:
    """Samples the counts of the batches this worker leads: one when a batch starts, then one every
    `sample_interval(age)` while it runs, and one at the end (`force`).

    While the counts stand still nothing is written (thousands of waiting batches would otherwise
    write a row each every few seconds); when they move again, the last still moment is written
    first, so the chart shows the flat stretch instead of a slope across it.
    """

    def __init__(self, store: MetadataStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._last: dict[str, Sample] = {}  # batch id -> the last sample written
        self._still: dict[str, Sample] = {}  # batch id -> the last sample not written: counts unchanged

    async def sample(self, batch: Batch, *, force: bool = False) -> None:
        """Record the batch's counts now if a sample is due (or `force`)."""
        now = int(self._clock.now())
        last = self._last.get(batch.id)
        age = now - (batch.in_progress_at or batch.created_at)
        if not force and last is not None and now - last.at < sample_interval(age):
            return
        counts = batch.request_counts
        sample = Sample(now, counts.completed, counts.failed)
        if (
            not force
            and last is not None
            and (last.completed, last.failed) == (sample.completed, sample.failed)
        ):
            self._still[batch.id] = sample
            return
        still = self._still.pop(batch.id, None)
        try:
            if still is not None:
                await self._store.record_progress(batch.id, still)
            await self._store.record_progress(batch.id, sample)
        except (ConnectionError, OSError) as exc:
            log.debug("no progress sample of batch %s: %s", batch.id, exc)
            return
        self._last[batch.id] = sample

    def forget(self, batch_id: str) -> None:
        self._last.pop(batch_id, None)
        self._still.pop(batch_id, None)


class BackendReporter:
    """Reports, every `every_s`, what each backend this worker drives looks like from here."""

    def __init__(
        self, store: MetadataStore, worker_id: str, clock: Clock, *, every_s: float = REPORT_EVERY_S
    ) -> None:
        self._store = store
        self._worker = worker_id
        self._clock = clock
        self._every_s = every_s
        self._last: float | None = None

    async def report(self, schedulers: Mapping[str, BackendScheduler]) -> None:
        """Report each backend's state when a report is due; a store that does not answer is skipped."""
        now = self._clock.now()
        if not schedulers or (self._last is not None and now - self._last < self._every_s):
            return
        self._last = now
        statuses = [backend_status(scheduler, self._worker, now) for scheduler in schedulers.values()]
        try:
            await self._store.report_backends(statuses)
        except (ConnectionError, OSError) as exc:
            log.debug("no backend report from worker %s: %s", self._worker, exc)


def backend_status(scheduler: BackendScheduler, worker: str, now: float) -> BackendStatus:
    """One backend as this worker sees it now."""
    attempts, failures = scheduler.recent.totals(now)
    return BackendStatus(
        backend=scheduler.backend.name,
        worker=worker,
        reported_at=int(now),
        window=min(scheduler.window.limit, scheduler.cap),
        limit=scheduler.backend.max_concurrency,
        in_flight=scheduler.in_flight,
        breaker=scheduler.breaker.state.value,
        attempts=attempts,
        failures=failures,
    )
