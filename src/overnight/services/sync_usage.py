"""The usage of synchronous requests: added up in memory as requests end, written to the store in groups.

A write per request would put the store on every request's path; instead each answered request adds its
tokens to a sum per UTC day, project, model and tier, and every `interval_s` the sums go to the store in
one transaction (`add_sync_usage` adds them to what is there). A process killed with -9 loses at most
one interval's usage; a stopping one writes what it holds (`close`). A write that fails is kept and
goes with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from overnight.domain.clock import Clock
from overnight.domain.models import Usage
from overnight.domain.sync import SyncUsage, Tier
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.sync")
DAY_S = 86400
Key = tuple[int, str, str, Tier]  # day, project, model, tier


class SyncUsageRecorder:
    def __init__(self, store: MetadataStore, clock: Clock, *, interval_s: float) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval_s
        self._pending: dict[Key, tuple[int, Usage]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, project: str, model: str, tier: Tier, usage: Usage) -> None:
        """Count one answered request and its tokens, on today's UTC day."""
        key = (int(self._clock.now()) // DAY_S * DAY_S, project, model, tier)
        requests, total = self._pending.get(key, (0, Usage()))
        self._pending[key] = (requests + 1, total + usage)

    @property
    def pending(self) -> int:
        """Sums not written yet (for tests)."""
        return len(self._pending)

    async def flush(self) -> None:
        """Write the sums held now; on failure they are kept for the next flush, and the error raised."""
        if not self._pending:
            return
        taken, self._pending = self._pending, {}
        rows = [SyncUsage(*key, requests, usage) for key, (requests, usage) in taken.items()]
        try:
            await self._store.add_sync_usage(rows)
        except BaseException:
            for key, (requests, usage) in taken.items():
                more, extra = self._pending.get(key, (0, Usage()))
                self._pending[key] = (requests + more, usage + extra)
            raise

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sync usage")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("could not write the usage of synchronous requests (%s); trying again", exc)

    async def close(self) -> None:
        """Stop the periodic writes and write what is left."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        except Exception as exc:
            log.warning("lost the usage of %d group(s) of synchronous requests: %s", len(self._pending), exc)
