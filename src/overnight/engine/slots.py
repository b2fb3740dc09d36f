"""A backend's limits belong to the backend, not to a worker: each worker holds a share of its
`max_concurrency` as leased slots in the store (store.hold_slots), and its scheduler never has more
requests in flight than the slots it holds, nor a larger part of the rate limits.

The keeper asks for the worker's fair share whenever the scheduler's demand changes (its first batch
comes, its last one goes) and at each poll, which also renews the leases; while it holds more or
fewer slots than its share, every REBALANCE_S. Slots above the share go back as the requests using
them finish; a dead worker's slots come back when their lease runs out.
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
REBALANCE_S = 0.1  # how often to look again while this worker holds more or fewer slots than its share


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
        wanted_at = float("-inf")
        while True:
            scheduler.demand_changed.clear()
            now = self._clock.now()
            if scheduler.wants_slots:
                wanted_at = now
            # Between two shards the scheduler has no work for a moment: keep the share a poll longer
            # rather than give it all back and ask for it again.
            wants = now - wanted_at < self._interval
            interval = self._interval
            try:
                held, share = await self._hold(wants)
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
                if held != share and wants:  # slots to give back as requests end, or to get: soon
                    interval = min(interval, REBALANCE_S)
            await wait_event(scheduler.demand_changed, interval)

    async def _hold(self, wants: bool, in_use: int | None = None) -> tuple[int, int]:
        scheduler = self._scheduler
        # In use: what is in flight now, or may be by the time the store answers (the scheduler goes on
        # sending up to its cap meanwhile): a slot given back on a smaller count could be in use twice.
        return await self._store.hold_slots(
            scheduler.backend.name,
            self._worker,
            wants=wants,
            in_use=max(scheduler.in_flight, scheduler.cap) if in_use is None else in_use,
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
            await self._hold(False, in_use=0)
