"""Writing one shard's part of a batch's output and error files while it runs, so that finishing the
batch costs a rename (one shard) or a join of the parts (several).

The store stays the one record of every result. The spool only copies rows the store has just recorded
for the first time, in the order they were recorded (OpenAI does not promise the input's order either).
Whenever it cannot be sure that it holds exactly the store's rows (the batch already had results when
this driver took it, the store already had one of the rows, a blob write failed), it gives up and the
files are assembled from the store at the end, as after a crash. A crash simply loses the spool: the
blob store discards unfinished blobs, and the restarted engine assembles the files from the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from overnight.blobs.base import BlobStore
from overnight.domain.ids import error_file_id, output_file_id, part_key
from overnight.domain.models import ResultRow
from overnight.engine.outputs import ERROR_KINDS, OUTPUT_KINDS
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.engine")

QUEUED_CHUNKS = 64  # chunks (one per group commit) waiting for the blob store before writers wait


class _LiveBlob:
    """One blob being written by the blob store from the chunks handed to `write`."""

    def __init__(self, blobs: BlobStore, key: str) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED_CHUNKS)
        self._put = asyncio.create_task(blobs.put(key, self._chunks()), name=f"spool {key}")

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def _enqueue(self, item: bytes | None) -> None:
        """Queue `item`; raises if the blob store's write ended (it failed) before taking it."""
        if not self._queue.full():
            self._queue.put_nowait(item)
        else:
            waiting = asyncio.ensure_future(self._queue.put(item))
            await asyncio.wait({waiting, self._put}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
        if self._put.done():
            if not self._put.cancelled():
                self._put.result()  # raises what the blob store raised
            raise RuntimeError("the spool's blob write ended before its last chunk")

    async def write(self, chunk: bytes) -> None:
        await self._enqueue(chunk)

    async def close(self) -> int:
        """Finish the blob; its size."""
        await self._enqueue(None)
        return await self._put

    def abort(self) -> None:
        """Stop writing; the blob store discards what was written."""
        self._put.cancel()

    async def aborted(self) -> None:
        """Wait until an aborted write has cleaned up."""
        await asyncio.wait({self._put})
        if not self._put.cancelled():
            self._put.exception()  # retrieved: the spool gave up and said why


class ResultSpool:
    """One shard's part of a batch's output and error files, written as its results are recorded.
    `part` names the part files (engine: the shard's number and a token of this run, so a worker that
    lost the shard never overwrites the parts of the one that took it over)."""

    def __init__(self, blobs: BlobStore, batch_id: str, part: str) -> None:
        self._blobs = blobs
        self._batch_id = batch_id
        self.part = part
        self._files: dict[str, _LiveBlob] = {}  # file id -> its blob; a file starts with its first row
        self.usable = True

    def _file(self, file_id: str) -> _LiveBlob:
        live = self._files.get(file_id)
        if live is None:
            live = self._files[file_id] = _LiveBlob(self._blobs, part_key(file_id, self.part))
        return live

    async def add(self, rows: Sequence[ResultRow], recorded: int) -> None:
        """Copy `rows`, of which the store has just recorded `recorded` as new; give up unless all were."""
        if not self.usable:
            return
        if recorded != len(rows):
            self.give_up("the store already had some of these results")
            return
        output = b"".join([row.line + b"\n" for row in rows if row.kind in OUTPUT_KINDS])
        errors = b"".join([row.line + b"\n" for row in rows if row.kind in ERROR_KINDS])
        try:
            if output:
                await self._file(output_file_id(self._batch_id)).write(output)
            if errors:
                await self._file(error_file_id(self._batch_id)).write(errors)
        except Exception as exc:
            self.give_up(f"writing a result file failed: {exc!r}")
        except BaseException:
            self.give_up("writing the result files was interrupted")
            raise

    async def finish(self) -> dict[str, int] | None:
        """Complete the files: {file id: size} for each file that has rows. None if the spool gave up,
        once what it wrote is gone."""
        if self.usable:
            try:
                return {file_id: await live.close() for file_id, live in self._files.items()}
            except Exception as exc:
                self.give_up(f"finishing a result file failed: {exc!r}")
        await self.discard()
        return None

    def give_up(self, why: str) -> None:
        if self.usable:
            log.info(
                "spool given up id=%s: %s; the files will be assembled from the store", self._batch_id, why
            )
        self._stop()

    async def discard(self) -> None:
        """Stop, and wait until what was written is gone."""
        self._stop()
        await asyncio.gather(*(live.aborted() for live in self._files.values()))

    def _stop(self) -> None:
        self.usable = False
        for live in self._files.values():
            live.abort()


async def record_results(
    store: MetadataStore, batch_id: str, rows: Sequence[ResultRow], spool: ResultSpool | None
) -> None:
    """Record `rows` in the store and, with a spool, copy those it recorded as new into the files. An
    interruption between the two makes the spool give up (the store finishes a write it started)."""
    try:
        recorded = await store.record_results(batch_id, rows)
        if spool is not None:
            await spool.add(rows, recorded)
    except BaseException:
        if spool is not None:
            spool.give_up("recording results was interrupted")
        raise
