"""Progress: how far a batch has got (rate and ETA), its errors grouped, and the backends' state.
What GET /v1/batches/{id}/progress and the dashboard show."""

from __future__ import annotations

from overnight.domain.clock import Clock
from overnight.domain.errors import batch_not_found
from overnight.domain.models import Batch, ErrorGroup
from overnight.domain.progress import BackendView, Progress, backend_views, estimate
from overnight.store.base import MetadataStore

FRESH_S = 15  # a worker's report of a backend older than this is not shown (the worker may be gone)


class ProgressService:
    def __init__(self, store: MetadataStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def _batch(self, project: str | None, batch_id: str) -> Batch:
        """The batch, if `project` may see it (None: any project, for an admin)."""
        batch = await self._store.get_batch(batch_id, project)
        if batch is None:
            raise batch_not_found(batch_id)
        return batch

    async def progress(self, project: str | None, batch_id: str) -> Progress:
        """The batch's counts, rate, ETA, window left and samples; NotFound as for GET /v1/batches/{id}."""
        batch = await self._batch(project, batch_id)
        samples = await self._store.progress_samples(batch_id)
        return estimate(batch, samples, int(self._clock.now()))

    async def error_groups(self, project: str | None, batch_id: str) -> list[ErrorGroup]:
        """The batch's error-file lines grouped by code and upstream status, the biggest group first."""
        await self._batch(project, batch_id)
        return await self._store.error_groups(batch_id)

    async def backends(self) -> list[BackendView]:
        """Each backend some worker reported in the last FRESH_S seconds, by name."""
        since = int(self._clock.now()) - FRESH_S
        return backend_views(await self._store.backend_reports(since))
