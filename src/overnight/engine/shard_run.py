"""Running one shard: its range of input lines through the backend's scheduler, its results recorded
(and spooled into its part files), until every line has a result or the run is stopped."""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from overnight.backends.base import Attempt
from overnight.blobs.base import BlobStore
from overnight.domain.ids import blob_key, request_line_id
from overnight.domain.lines import split_lines
from overnight.domain.models import Batch, Shard
from overnight.engine.feed import Feed
from overnight.engine.recorder import ResultRecorder
from overnight.engine.scheduler import BackendScheduler
from overnight.engine.spool import ResultSpool
from overnight.store.base import MetadataStore


@dataclass(frozen=True)
class ShardOutcome:
    finished: bool  # every line of the range has a result
    part: str | None  # the part files that hold exactly the shard's rows, when they do
    last_failures: dict[int, Attempt]  # of lines it left unfinished (stopped)


async def shard_lines(blobs: BlobStore, key: str, shard: Shard) -> AsyncIterator[tuple[int, bytes]]:
    """The shard's lines, numbered as in the whole file, read from where its first line starts."""
    async for number, raw in split_lines(blobs.read(key, start=shard.start_offset)):
        line_no = shard.first_line + number - 1
        if line_no >= shard.end_line:
            return
        yield line_no, raw


async def run_shard(
    store: MetadataStore,
    blobs: BlobStore,
    scheduler: BackendScheduler,
    batch: Batch,
    shard: Shard,
    stop: asyncio.Event,
    *,
    flush_interval_s: float,
    on_flush: Callable[[], None],
) -> ShardOutcome:
    """Run the lines of `shard` that have no result yet. It spools into part files only when it starts
    from none (so the parts hold exactly its rows); the part's name carries a token of this run."""
    done = await store.finished_lines(batch.id, (shard.first_line, shard.end_line))
    spool = None if done else ResultSpool(blobs, batch.id, f"{shard.shard_no}-{secrets.token_hex(4)}")
    try:
        async with ResultRecorder(
            store, batch.id, flush_interval_s, on_flush=on_flush, spool=spool
        ) as recorder:
            feed = Feed(
                batch_id=batch.id,
                project=batch.project,
                deadline=batch.expires_at,
                endpoint=batch.endpoint,
                lines=shard_lines(blobs, blob_key(batch.input_file_id), shard),
                line_id=functools.partial(request_line_id, batch.id),
                sink=recorder.add,
                skip=done.__contains__,
                lines_left=batch_lines_left(batch),
            )
            watcher = asyncio.create_task(_stop_when(stop, scheduler, feed))
            try:
                finished = await scheduler.run(feed)
            finally:
                watcher.cancel()
    except BaseException:
        if spool is not None:
            await asyncio.shield(spool.discard())
        raise
    if not finished:
        if spool is not None:
            await spool.discard()
        return ShardOutcome(False, None, feed.last_failures)
    sizes = await spool.finish() if spool is not None else None
    part = spool.part if spool is not None and sizes is not None else None
    return ShardOutcome(True, part, feed.last_failures)


def batch_lines_left(batch: Batch) -> int | None:
    """The batch's lines without a result as its record says (None before validation counted them)."""
    counts = batch.request_counts
    return max(0, counts.total - counts.completed - counts.failed) if counts.total else None


async def _stop_when(stop: asyncio.Event, scheduler: BackendScheduler, feed: Feed) -> None:
    await stop.wait()
    scheduler.stop(feed)
