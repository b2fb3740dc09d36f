"""The MetadataStore contract, continued: the webhooks' outbox (every implementation, see conftest.py).

An event is recorded exactly when the status change that makes it is, its deliveries are leased to one
sender at a time, and each ends delivered or given up."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from contract.conftest import StoreFactory
from contract.test_store_contract import S, a_batch
from overnight.domain.events import Delivery, Event
from overnight.domain.lifecycle import transition
from overnight.domain.models import Batch
from overnight.store.base import MetadataStore

ENDPOINTS = ("hooks-a", "hooks-b")
ENDED_AT = 1_700_000_100


def an_event(event_id: str, batch: Batch, endpoints: tuple[str, ...] = ENDPOINTS) -> Event:
    kinds = {S.COMPLETED: "batch.completed", S.FAILED: "batch.failed", S.CANCELLED: "batch.cancelled"}
    return Event(event_id, kinds[batch.status], ENDED_AT, batch.id, batch.project, endpoints)


async def finalizing(store: MetadataStore, batch_id: str) -> Batch:
    batch = dataclasses.replace(a_batch(batch_id, status=S.IN_PROGRESS), in_progress_at=1_700_000_010)
    await store.add_batch(batch)
    moved = transition(batch, S.FINALIZING, 1_700_000_050)
    assert await store.transition_batch(moved, expected=(S.IN_PROGRESS,))
    return moved


async def complete(store: MetadataStore, batch_id: str, event_id: str) -> Event:
    """A batch completed with its event recorded: the event."""
    completed = transition(await finalizing(store, batch_id), S.COMPLETED, ENDED_AT)
    event = an_event(event_id, completed)
    assert await store.transition_batch(completed, expected=(S.FINALIZING,), event=event)
    return event


async def claim_all(store: MetadataStore, worker: str, now: int, lease_s: int = 30) -> list[Delivery]:
    return await store.claim_deliveries(worker, now, lease_s, limit=100, endpoints=ENDPOINTS)


async def test_an_event_is_recorded_with_the_status_change_that_makes_it(store: MetadataStore) -> None:
    assert await store.pending_deliveries() == 0
    await complete(store, "batch_1", "evt_1")
    stored = await store.get_batch("batch_1")
    assert stored is not None
    assert stored.status is S.COMPLETED
    assert await store.pending_deliveries() == 2
    assert (
        await store.claim_deliveries("w1", ENDED_AT - 1, 30, limit=10, endpoints=ENDPOINTS) == []
    )  # not due
    claimed = await claim_all(store, "w1", ENDED_AT)
    assert sorted(claimed, key=lambda d: d.endpoint) == [
        Delivery("evt_1", name, "batch.completed", "batch_1", ENDED_AT, attempts=1) for name in ENDPOINTS
    ]


async def test_no_event_when_the_compare_and_set_fails(store: MetadataStore) -> None:
    batch = await finalizing(store, "batch_1")
    completed = transition(batch, S.COMPLETED, ENDED_AT)
    assert not await store.transition_batch(
        completed, expected=(S.IN_PROGRESS,), event=an_event("evt_1", completed)
    )
    assert await store.pending_deliveries() == 0
    assert await claim_all(store, "w1", ENDED_AT + 10) == []
    assert await store.transition_batch(
        completed, expected=(S.FINALIZING,), event=an_event("evt_2", completed)
    )
    cancelled = transition(dataclasses.replace(batch, status=S.CANCELLING), S.CANCELLED, ENDED_AT)
    lost_race = an_event("evt_3", cancelled)
    assert not await store.transition_batch(cancelled, expected=(S.CANCELLING,), event=lost_race)
    assert {d.event_id for d in await claim_all(store, "w1", ENDED_AT + 10)} == {"evt_2"}


async def test_a_failing_event_write_undoes_the_status_change(store: MetadataStore) -> None:
    await complete(store, "batch_1", "evt_1")
    other = transition(await finalizing(store, "batch_2"), S.COMPLETED, ENDED_AT)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):  # the same event id again
        await store.transition_batch(other, expected=(S.FINALIZING,), event=an_event("evt_1", other))
    stored = await store.get_batch("batch_2")
    assert stored is not None
    assert stored.status is S.FINALIZING
    assert await store.pending_deliveries() == 2


async def test_a_batch_created_ended_comes_with_its_event(store: MetadataStore) -> None:
    failed = dataclasses.replace(a_batch("batch_1", status=S.FAILED), failed_at=ENDED_AT)
    await store.add_batch(failed, event=an_event("evt_1", failed, endpoints=("hooks-a",)))
    await store.add_batch(a_batch("batch_2"))  # without an event, as before
    assert (await store.get_batch("batch_1")) == failed
    claimed = await claim_all(store, "w1", ENDED_AT)
    assert [(d.event_id, d.endpoint, d.type, d.batch_id) for d in claimed] == [
        ("evt_1", "hooks-a", "batch.failed", "batch_1")
    ]


async def test_two_claimers_take_each_delivery_once(store: MetadataStore) -> None:
    for n in range(12):
        await complete(store, f"batch_{n:02d}", f"evt_{n:02d}")
    taken: list[list[Delivery]] = [[], []]

    async def claimer(index: int) -> None:
        while batch := await store.claim_deliveries(f"w{index}", ENDED_AT, 30, limit=3, endpoints=ENDPOINTS):
            taken[index].extend(batch)
            await asyncio.sleep(0)

    await asyncio.gather(claimer(0), claimer(1))
    keys = [(d.event_id, d.endpoint) for d in taken[0] + taken[1]]
    assert len(keys) == len(set(keys)) == 24
    assert await claim_all(store, "w2", ENDED_AT + 29) == []  # every one leased until ENDED_AT + 30


async def test_a_lease_that_runs_out_hands_the_delivery_to_another_worker(store: MetadataStore) -> None:
    await complete(store, "batch_1", "evt_1")
    t = ENDED_AT
    first = await store.claim_deliveries("w1", t + 200, 30, limit=1, endpoints=["hooks-a"])
    assert [(d.endpoint, d.attempts) for d in first] == [("hooks-a", 1)]
    assert await store.claim_deliveries("w2", t + 229, 30, limit=5, endpoints=["hooks-a"]) == []
    again = await store.claim_deliveries("w2", t + 230, 30, limit=5, endpoints=["hooks-a"])  # w1 died
    assert [(d.event_id, d.endpoint, d.attempts) for d in again] == [("evt_1", "hooks-a", 2)]
    # w1's late verdicts: a failure is no longer its to record, but a 2xx is a 2xx
    assert not await store.retry_delivery(
        first[0], "w1", t + 231, retry_at=t + 300, status=500, error="HTTP 500"
    )
    assert await store.finish_delivery(first[0], t + 232, 200)
    assert not await store.finish_delivery(again[0], t + 233, 200)  # already delivered
    assert not await store.retry_delivery(
        again[0], "w2", t + 233, retry_at=t + 300, status=None, error="timeout"
    )
    assert await store.pending_deliveries() == 1  # hooks-b's
    assert [d.endpoint for d in await claim_all(store, "w3", t + 10_000)] == ["hooks-b"]


async def test_a_failed_attempt_is_tried_again_when_it_is_due(store: MetadataStore) -> None:
    await complete(store, "batch_1", "evt_1")
    (delivery,) = await store.claim_deliveries("w1", ENDED_AT, 30, limit=5, endpoints=["hooks-b"])
    assert await store.retry_delivery(
        delivery, "w1", ENDED_AT + 1, retry_at=ENDED_AT + 60, status=503, error="HTTP 503"
    )
    assert await store.claim_deliveries("w1", ENDED_AT + 59, 30, limit=5, endpoints=["hooks-b"]) == []
    (retried,) = await store.claim_deliveries("w2", ENDED_AT + 60, 30, limit=5, endpoints=["hooks-b"])
    assert retried == dataclasses.replace(delivery, attempts=2)  # the same event, created_at and all
    assert await store.finish_delivery(retried, ENDED_AT + 61, 204)
    assert await store.claim_deliveries("w2", ENDED_AT + 10_000, 30, limit=5, endpoints=["hooks-b"]) == []
    assert await store.pending_deliveries() == 1  # hooks-a's, never claimed: hooks-a is not asked for


async def test_a_delivery_given_up_is_never_sent_again(store: MetadataStore) -> None:
    await complete(store, "batch_1", "evt_1")
    for delivery in await claim_all(store, "w1", ENDED_AT):
        assert await store.retry_delivery(
            delivery, "w1", ENDED_AT + 5, retry_at=None, status=None, error="refused"
        )
    assert await store.pending_deliveries() == 0
    assert await claim_all(store, "w1", ENDED_AT + 100_000) == []
    assert not await store.finish_delivery(delivery, ENDED_AT + 6, 200)


async def test_a_lone_server_takes_back_the_deliveries_it_held_before_a_crash(store: MetadataStore) -> None:
    await complete(store, "batch_1", "evt_1")
    assert len(await claim_all(store, "dead-worker", ENDED_AT, lease_s=3600)) == 2
    assert await claim_all(store, "w1", ENDED_AT + 1) == []
    await store.release_all_leases()
    assert {(d.endpoint, d.attempts) for d in await claim_all(store, "w1", ENDED_AT + 1)} == {
        ("hooks-a", 2),
        ("hooks-b", 2),
    }


async def test_events_outlive_the_process(store_factory: StoreFactory) -> None:
    first = store_factory()
    await first.open()
    try:
        await complete(first, "batch_1", "evt_1")
    finally:
        await first.close()
    second = store_factory()
    await second.open()
    try:
        assert {d.event_id for d in await claim_all(second, "w1", ENDED_AT)} == {"evt_1"}
        assert await second.pending_deliveries() == 2
    finally:
        await second.close()
