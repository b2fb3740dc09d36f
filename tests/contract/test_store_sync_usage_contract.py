"""The store's usage of synchronous requests (add_sync_usage, sync_usage_by_day), on every implementation
(see conftest.py)."""

from __future__ import annotations

import asyncio

from contract.conftest import StoreFactory
from overnight.domain.models import Usage
from overnight.domain.sync import SyncUsage, Tier
from overnight.store.base import MetadataStore

DAY = 86400
MONDAY = 1_700_006_400  # 2023-11-15 00:00:00 UTC
A, B = "proj_a", "proj_b"
SOME = Usage(10, 5, 2, 1)


def row(
    project: str = A,
    model: str = "gpt-4o-mini",
    tier: Tier = Tier.DEFAULT,
    *,
    day: int = MONDAY,
    requests: int = 1,
    usage: Usage = SOME,
) -> SyncUsage:
    return SyncUsage(day, project, model, tier, requests, usage)


async def test_nothing_recorded_reads_nothing(store: MetadataStore) -> None:
    assert await store.sync_usage_by_day(None, 0, 2**62) == []
    await store.add_sync_usage([])
    assert await store.sync_usage_by_day(A, 0, 2**62) == []


async def test_rows_round_trip(store: MetadataStore) -> None:
    first = row(usage=Usage(input_tokens=100, output_tokens=20, cached_tokens=30, reasoning_tokens=4))
    await store.add_sync_usage([first])
    assert await store.sync_usage_by_day(None, MONDAY, MONDAY + DAY) == [first]


async def test_adding_the_same_key_adds_up(store: MetadataStore) -> None:
    await store.add_sync_usage([row(requests=2, usage=Usage(10, 5, 2, 1))])
    await store.add_sync_usage([row(requests=3, usage=Usage(1, 2, 0, 0))])
    assert await store.sync_usage_by_day(A, MONDAY, MONDAY + DAY) == [
        row(requests=5, usage=Usage(11, 7, 2, 1))
    ]


async def test_keys_are_day_project_model_and_tier_in_that_order(store: MetadataStore) -> None:
    rows = [
        row(B, "m-b", day=MONDAY + DAY),
        row(B, "m-a"),
        row(A, "m-b", Tier.FLEX),
        row(A, "m-b", Tier.DEFAULT),
        row(A, "m-a"),
    ]
    await store.add_sync_usage(rows)
    found = await store.sync_usage_by_day(None, MONDAY, MONDAY + 2 * DAY)
    assert [(r.day, r.project, r.model, r.tier) for r in found] == [
        (MONDAY, A, "m-a", Tier.DEFAULT),
        (MONDAY, A, "m-b", Tier.DEFAULT),
        (MONDAY, A, "m-b", Tier.FLEX),
        (MONDAY, B, "m-a", Tier.DEFAULT),
        (MONDAY + DAY, B, "m-b", Tier.DEFAULT),
    ]


async def test_reading_keeps_to_the_days_and_the_project(store: MetadataStore) -> None:
    await store.add_sync_usage([row(day=MONDAY - DAY), row(), row(B), row(day=MONDAY + DAY)])
    assert await store.sync_usage_by_day(A, MONDAY, MONDAY + DAY) == [row()]
    assert [r.project for r in await store.sync_usage_by_day(None, MONDAY, MONDAY + DAY)] == [A, B]


async def test_concurrent_writers_lose_nothing(store: MetadataStore) -> None:
    groups = [[row(A, "m-1"), row(A, "m-2"), row(B, "m-1")] for _ in range(8)]
    for group in groups[::2]:
        group.reverse()  # other writers hold the same keys in another order
    await asyncio.gather(*(store.add_sync_usage(group) for group in groups))
    found = await store.sync_usage_by_day(None, MONDAY, MONDAY + DAY)
    assert [(r.project, r.model, r.requests, r.usage.input_tokens) for r in found] == [
        (A, "m-1", 8, 80),
        (A, "m-2", 8, 80),
        (B, "m-1", 8, 80),
    ]


async def test_usage_survives_reopening(store_factory: StoreFactory) -> None:
    first = store_factory()
    await first.open()
    await first.add_sync_usage([row()])
    await first.close()
    second = store_factory()
    await second.open()
    try:
        assert await second.sync_usage_by_day(None, 0, 2**62) == [row()]
    finally:
        await second.close()
