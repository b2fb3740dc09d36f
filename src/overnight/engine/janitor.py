"""Removing what an ended batch no longer needs, shortly after it ended.

Once a batch's files are written, its recorded results are dead weight, and so is the content of an input
file the user deleted while the batch ran. Deleting 20,000 results keeps the store busy for about 0.1 s:
done the moment the batch ends, that competes with the client that has just seen `completed` and is
downloading the output. So the janitor waits `delay_s` first. A server that stops before it got to a batch
leaves the results behind; `sweep()` finds those batches when the engine starts.
"""

from __future__ import annotations

import asyncio
import logging

from overnight.blobs.base import BlobStore
from overnight.domain.ids import blob_key, error_file_id, output_file_id, part_key
from overnight.domain.lifecycle import TERMINAL
from overnight.domain.models import Batch
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.engine")

SWEEP_PAGE = 100


class Janitor:
    def __init__(self, store: MetadataStore, blobs: BlobStore, *, delay_s: float) -> None:
        self._store = store
        self._blobs = blobs
        self._delay_s = delay_s
        self._tasks: set[asyncio.Task[None]] = set()

    def batch_ended(self, batch: Batch) -> None:
        """Clean up after `batch` in `delay_s`, in the background."""
        self._track(asyncio.create_task(self._clean_later(batch), name=f"clean up {batch.id}"))

    def start_sweep(self) -> None:
        """`sweep()` in the background."""
        self._track(asyncio.create_task(self.sweep(), name="clean up after earlier runs"))

    async def _clean_later(self, batch: Batch) -> None:
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)
        await self.clean(batch)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def clean(self, batch: Batch) -> None:
        """Forget the batch's results; remove its input's content if the file was deleted meanwhile and
        no other live batch reads it."""
        await self._store.delete_results(batch.id)
        for shard in await self._store.shards_of(batch.id):  # parts a run finished after the batch ended
            if shard.part is not None:
                for file_id in (output_file_id(batch.id), error_file_id(batch.id)):
                    await self._blobs.delete(part_key(file_id, shard.part))
        input_id = batch.input_file_id
        deleted = await self._store.get_file(batch.project, input_id) is None
        if deleted and not await self._store.file_in_use(input_id):
            await self._blobs.delete(blob_key(input_id))

    async def sweep(self) -> None:
        """Clean up after every ended batch an earlier run left results of."""
        cleaned = 0
        while ids := await self._store.ended_batches_with_results(TERMINAL, SWEEP_PAGE):
            for batch_id in ids:
                batch = await self._store.get_batch(batch_id)
                if batch is None:
                    await self._store.delete_results(batch_id)
                else:
                    await self.clean(batch)
                cleaned += 1
        if cleaned:
            log.info("cleaned up after %d ended batch(es) an earlier run left results of", cleaned)

    async def settle(self) -> None:
        """Wait until every clean-up is done, delays included."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop the clean-ups, waiting or under way; `sweep()` finishes them next time."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
