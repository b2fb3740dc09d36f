"""Deleting an ended batch's results, which the stores do a chunk of rows at a time (so an API read waits
behind a short delete only): every row goes, over many chunks, and no other batch's row."""

from __future__ import annotations

from contract.test_store_contract import S, a_batch, a_row
from overnight.store.base import MetadataStore

ROWS = 1_201  # several of SQLite's chunks, and not a whole number of them


async def test_delete_results_removes_every_row_over_many_chunks(store: MetadataStore) -> None:
    await store.add_batch(a_batch("batch_big", status=S.IN_PROGRESS))
    await store.add_batch(a_batch("batch_kept", status=S.IN_PROGRESS))
    await store.record_results("batch_big", [a_row(line_no) for line_no in range(1, ROWS + 1)])
    await store.record_results("batch_kept", [a_row(1), a_row(ROWS)])
    await store.delete_results("batch_big")
    assert await store.finished_lines("batch_big") == set()
    assert await store.finished_lines("batch_kept") == {1, ROWS}
