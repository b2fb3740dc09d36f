"""Costs: what batches cost, and what the same requests would have cost synchronously (docs/costs.md)."""

from __future__ import annotations

import time

from overnight.domain.models import Batch
from overnight.domain.pricing import Cost, CostRow, PriceTable
from overnight.store.base import MetadataStore

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
        """Usage and cost of the batches created in [start, end), per UTC day, project and model, in that
        order; `project` None: of every project."""
        rows = await self._store.usage_by_day(project, start, FAR_FUTURE if end is None else end)
        return [
            CostRow(
                day=day_name(row.day),
                project=row.project,
                model=row.model,
                batches=row.batches,
                usage=row.usage,
                cost=self._prices.cost(row.model, row.usage),
            )
            for row in rows
        ]
