"""The MetadataStore contract, continued: shards and a backend's slots, what many workers share
(every implementation, see conftest.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.test_store_contract import OTHER, K, S, a_batch, a_row, fresh
from overnight.domain.models import Shard
from overnight.store.base import MetadataStore

# -- shards ----------------------------------------------------------------------------------------


def shards_for(batch_id: str, count: int = 3, per_shard: int = 10) -> list[Shard]:
    return [
        Shard(batch_id, n, 1 + n * per_shard, 1 + (n + 1) * per_shard, n * 100, count) for n in range(count)
    ]


async def test_shards_are_stored_once_and_listed_in_order(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    planned = shards_for("batch_1")
    await store.add_shards(list(reversed(planned)))
    await store.add_shards(planned)  # planned again after a crash: no change, no error
    assert await store.shards_of("batch_1") == planned
    assert await store.shards_of("batch_2") == []


async def test_claims_take_each_shard_once_until_its_lease_runs_out(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    await store.add_shards(shards_for("batch_1", count=2))
    first = await store.claim_shard("w1", now=100, lease_s=30)
    second = await store.claim_shard("w2", now=100, lease_s=30)
    assert first is not None
    assert second is not None
    assert {first.shard_no, second.shard_no} == {0, 1}
    assert await store.claim_shard("w3", now=129, lease_s=30) is None  # both held
    assert await store.renew_shard("batch_1", first.shard_no, "w1", now=129, lease_s=30)  # to 159
    assert not await store.renew_shard("batch_1", first.shard_no, "w3", now=129, lease_s=30)
    taken = await store.claim_shard("w3", now=130, lease_s=30)  # w2's ran out at 130
    assert taken is not None
    assert taken.shard_no == second.shard_no
    assert not await store.renew_shard("batch_1", second.shard_no, "w2", now=131, lease_s=30)
    assert not await store.finish_shard("batch_1", second.shard_no, "w2", part="w2-p")  # not its holder
    assert await store.finish_shard("batch_1", second.shard_no, "w3", part="w3-p")
    assert not await store.renew_shard("batch_1", second.shard_no, "w3", now=131, lease_s=30)  # done
    assert await store.claim_shard("w4", now=200, lease_s=30) is not None  # w1's ran out: shard 0 again
    assert await store.claim_shard("w4", now=200, lease_s=30) is None  # a done shard is never claimed
    done = {shard.shard_no: (shard.done, shard.part) for shard in await store.shards_of("batch_1")}
    assert done == {first.shard_no: (False, None), second.shard_no: (True, "w3-p")}


async def test_only_shards_of_batches_in_progress_are_claimed(store: MetadataStore) -> None:
    for batch_id, status in (("batch_1", S.VALIDATING), ("batch_2", S.CANCELLING), ("batch_3", S.FINALIZING)):
        await store.add_batch(a_batch(batch_id, status=status))
        await store.add_shards(shards_for(batch_id, count=1))
    assert await store.claim_shard("w1", now=100, lease_s=30) is None
    await store.add_batch(a_batch("batch_4", status=S.IN_PROGRESS))  # expires at 1_700_086_400
    await store.add_shards(shards_for("batch_4", count=1))
    assert await store.claim_shard("w1", now=1_700_086_400, lease_s=30) is None  # its window ended
    assert await store.claim_shard("w1", now=1_700_086_399, lease_s=30) is not None


async def test_claims_go_by_deadline_then_to_the_project_holding_fewest(store: MetadataStore) -> None:
    late = dataclasses.replace(a_batch("batch_1", status=S.IN_PROGRESS), expires_at=1_700_200_000)
    alpha = dataclasses.replace(a_batch("batch_2", status=S.IN_PROGRESS), expires_at=1_700_086_400)
    beta = dataclasses.replace(a_batch("batch_3", OTHER, status=S.IN_PROGRESS), expires_at=1_700_086_410)
    for batch in (late, alpha, beta):
        await store.add_batch(batch)
        await store.add_shards(shards_for(batch.id, count=2))
    order = []
    for _ in range(6):
        shard = await store.claim_shard("w", now=100, lease_s=3600)
        assert shard is not None
        order.append(shard.batch_id)
    # alpha and beta share a deadline minute: they alternate; the later batch comes last
    assert order == ["batch_2", "batch_3", "batch_2", "batch_3", "batch_1", "batch_1"]


async def test_released_shard_leases_can_be_taken_at_once(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1", status=S.IN_PROGRESS))
    await store.add_shards(shards_for("batch_1", count=2))
    first = await store.claim_shard("w1", now=100, lease_s=30)
    assert first is not None
    await store.release_shard("batch_1", first.shard_no, "w2")  # not the holder: nothing happens
    await store.release_shard("batch_1", first.shard_no, "w1")
    again = await store.claim_shard("w2", now=101, lease_s=30)
    assert again is not None
    assert again.shard_no == first.shard_no
    assert await store.claim_shard("w3", now=101, lease_s=30) is not None
    await store.release_all_leases()
    assert await store.claim_shard("w4", now=101, lease_s=30) is not None


async def test_results_can_be_read_by_line_range(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_1"))
    await store.record_results("batch_1", [a_row(n) for n in range(1, 31)])
    assert await store.finished_lines("batch_1", (11, 21)) == set(range(11, 21))
    lines = b"".join([chunk async for chunk in store.result_lines("batch_1", [K.SUCCEEDED], (25, 40))])
    assert lines == b"".join(b'{"line":%d}\n' % n for n in range(25, 31))


# -- a backend's slots ---------------------------------------------------------------------------------


async def test_slots_are_shared_fairly_and_never_more_than_the_limit(store: MetadataStore) -> None:
    def hold(worker: str, now: int, wants: bool = True, in_use: int = 0) -> Awaitable[tuple[int, int]]:
        return store.hold_slots("up", worker, wants=wants, in_use=in_use, limit=16, now=now, lease_s=30)

    assert await hold("w1", 100) == (16, 16)  # alone: every slot
    assert await hold("w2", 100) == (0, 8)  # w1 still holds them all
    assert await hold("w3", 100) == (0, 5)
    assert await hold("w1", 101, in_use=10) == (10, 6)  # gives back only what is not in use
    assert await hold("w2", 101) == (5, 5)  # takes what is free, up to its share
    assert await hold("w1", 102, in_use=3) == (6, 6)  # down to its share once fewer are in use
    assert await hold("w3", 102) == (5, 5)
    assert await hold("w2", 103) == (5, 5)
    assert await hold("w3", 120) == (5, 5)  # w3 stays alive until 150
    # w1 dies: its slots come back once its lease runs out (102 + 30), and so does its share
    assert await hold("w2", 131) == (5, 5)
    assert await hold("w2", 133) == (8, 8)
    assert await hold("w3", 134) == (8, 8)
    assert await hold("w3", 135, wants=False) == (0, 0)  # done: everything goes back
    assert await hold("w2", 136) == (16, 16)


async def test_a_lone_restart_takes_back_every_slot_at_once(store: MetadataStore) -> None:
    # A single server killed holding every slot must not wait for their leases after its restart.
    assert await store.hold_slots("up", "dead", wants=True, in_use=16, limit=16, now=100, lease_s=30) == (
        16,
        16,
    )
    await store.release_all_leases()
    assert await store.hold_slots("up", "new", wants=True, in_use=0, limit=16, now=101, lease_s=30) == (
        16,
        16,
    )


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans(), st.integers(0, 16)), max_size=40
    )
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_held_slots_never_add_up_to_more_than_the_limit(
    store: MetadataStore, steps: list[tuple[str, bool, int]]
) -> None:
    backend = fresh("slots")
    held: dict[str, int] = {}
    for now, (worker, wants, in_use) in enumerate(steps, start=1):
        count, _share = await store.hold_slots(
            backend,
            worker,
            wants=wants,
            in_use=min(in_use, held.get(worker, 0)),
            limit=16,
            now=now,
            lease_s=1000,
        )
        held[worker] = count
        assert sum(held.values()) <= 16
