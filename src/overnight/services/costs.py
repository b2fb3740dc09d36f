"""Costs: what batches cost, and what the same requests would have cost synchronously; and what the
synchronous requests cost, flex ones at batch prices (docs/costs.md)."""

from __future__ import annotations

import time

from overnight.domain.models import Batch
from overnight.domain.pricing import FLEX, SOURCES, SYNC, Cost, CostRow, PriceTable
from overnight.domain.sync import Tier
from overnight.store.base import MetadataStore

DAY_S = 86400
FAR_FUTURE = 2**62  # `end` None: up to now and beyond (batches are never created in the future)


def day_name(day_start: int) -> str:
    """`YYYY-MM-DD`, the UTC day that starts at `day_start`."""
    return time.strftime("%Y-%m-%d", time.gmtime(day_start))


class CostsService:
    def __init__(self, store: MetadataStore, prices: PriceTable) -> None:
        self._store = store
        self._prices = prices

    @property
    def prices(self) -> PriceTable:
        return self._prices

    def batch_cost(self, batch: Batch) -> Cost:
        """What the batch's usage so far cost (unpriced while its model is unknown or has no price)."""
        return self._prices.cost(batch.model, batch.usage)

    async def costs(self, project: str | None, start: int, end: int | None) -> list[CostRow]:
        """Usage and cost of the batches created in [start, end) and of the synchronous requests answered
        then, per UTC day, project, model and source (batch, sync, flex), in that order; `project` None:
        of every project."""
        end = FAR_FUTURE if end is None else end
        batches = await self._store.usage_by_day(project, start, end)
        # the days that start in the range, and the one it starts in
        synchronous = await self._store.sync_usage_by_day(project, start - start % DAY_S, end)
        rows = [
            CostRow(
                day=day_name(row.day),
                project=row.project,
                model=row.model,
                batches=row.batches,
                usage=row.usage,
                cost=self._prices.cost(row.model, row.usage),
            )
            for row in batches
        ]
        rows += [
            CostRow(
                day=day_name(row.day),
                project=row.project,
                model=row.model,
                batches=0,
                usage=row.usage,
                cost=self._prices.cost(row.model, row.usage),
                source=FLEX if row.tier is Tier.FLEX else SYNC,
                requests=row.requests,
            )
            for row in synchronous
        ]
        return sorted(rows, key=_row_order)


def _row_order(row: CostRow) -> tuple[str, str, bool, str, int]:
    return (row.day, row.project, row.model is None, row.model or "", SOURCES.index(row.source))
