"""A backend's limits belong to the backend, not to a worker: each worker holds a share of its
`max_concurrency` as leased slots in the store (store.hold_slots), and its scheduler never has more
requests in flight than the slots it holds, nor a larger part of the rate limits.

The keeper asks for the worker's fair share whenever the scheduler's demand changes (its first batch
comes, its last one goes) and at each poll, which also renews the leases. Slots above the share go
back as the requests using them finish; a dead worker's slots come back when their lease runs out.
A worker that cannot reach the store stops sending new requests until it can (its leases would run
out and its slots go to others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from overnight.domain.clock import Clock
from overnight.engine.scheduler import BackendScheduler
from overnight.engine.waiting import wait_event
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.engine")


class SlotKeeper:
    def __init__(
        self,
        store: MetadataStore,
        scheduler: BackendScheduler,
        worker_id: str,
        clock: Clock,
        *,
        lease_s: int,
        interval_s: float,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._worker = worker_id
        self._clock = clock
        self._lease_s = lease_s
        self._interval = interval_s
        scheduler.set_cap(0)  # nothing until the store grants it
        self._task = asyncio.create_task(self._keep(), name=f"slots {scheduler.backend.name}")

    async def _keep(self) -> None:
        scheduler = self._scheduler
        while True:
            scheduler.demand_changed.clear()
            try:
                held, share = await self._hold(scheduler.wants_slots)
            except Exception as exc:
                log.warning(
                    "backend %s: cannot renew this worker's slots (%s); sending nothing new until the store "
                    "answers",
                    scheduler.backend.name,
                    exc,
                )
                scheduler.set_cap(0)
            else:
                scheduler.set_cap(min(held, share))
            await wait_event(scheduler.demand_changed, self._interval)

    async def _hold(self, wants: bool) -> tuple[int, int]:
        scheduler = self._scheduler
        return await self._store.hold_slots(
            scheduler.backend.name,
            self._worker,
            wants=wants,
            in_use=scheduler.in_flight,
            limit=scheduler.backend.max_concurrency,
            now=int(self._clock.now()),
            lease_s=self._lease_s,
        )

    async def close(self) -> None:
        """Stop, and give every slot back (the requests in flight are over by now)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            await self._hold(False)
