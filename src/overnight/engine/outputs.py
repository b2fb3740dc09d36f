"""A batch's output and error files: assembling them from the recorded results (streamed),
and registering them as File objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from overnight.blobs.base import BlobStore
from overnight.domain import limits
from overnight.domain.ids import blob_key, error_file_id, output_file_id, part_key
from overnight.domain.models import Batch, FileObject, ResultKind, Shard
from overnight.domain.partial import ResultOrder
from overnight.store.base import MetadataStore

OUTPUT_KINDS = (ResultKind.SUCCEEDED,)
ERROR_KINDS = (ResultKind.FAILED, ResultKind.NOT_RUN)
RECORDED_PAGE = 5000  # results read at a time when the files follow the recorded order


def _filename(file_id: str, batch: Batch) -> str:
    return f"{batch.id}_output.jsonl" if file_id == output_file_id(batch.id) else f"{batch.id}_error.jsonl"


async def register_result_files(
    store: MetadataStore, batch: Batch, now: int, sizes: Mapping[str, int]
) -> tuple[str | None, str | None]:
    """Add the File objects of a batch's written result files ({file id: size}); returns the ids of
    the output and error files, None for a file that was not written or is empty."""
    ttl = batch.output_expires_after or limits.OUTPUT_FILE_DEFAULT_TTL_SECONDS
    for file_id, size in sizes.items():
        if size:
            await store.add_file(
                FileObject(
                    id=file_id,
                    project=batch.project,
                    bytes=size,
                    created_at=now,
                    filename=_filename(file_id, batch),
                    purpose="batch_output",
                    expires_at=now + ttl,
                )
            )
    output_id, error_id = output_file_id(batch.id), error_file_id(batch.id)
    return (
        output_id if sizes.get(output_id) else None,
        error_id if sizes.get(error_id) else None,
    )


async def compose_result_files(
    store: MetadataStore, blobs: BlobStore, batch: Batch, now: int, shards: Sequence[Shard]
) -> tuple[str | None, str | None]:
    """Join the shards' parts into the output and error files and register them; a shard without
    parts (run again after a crash, or taken over), or whose part is gone (a finalization that a crash
    interrupted already moved it), contributes its recorded rows instead, so nothing funnels through
    this process but those. One shard's part is moved into place, not copied."""
    sizes: dict[str, int] = {}
    for file_id, kinds in ((output_file_id(batch.id), OUTPUT_KINDS), (error_file_id(batch.id), ERROR_KINDS)):
        parts = []
        for shard in shards:
            if shard.part is not None and await blobs.exists(part_key(file_id, shard.part)):
                parts.append(part_key(file_id, shard.part))
                continue
            rebuilt = part_key(file_id, f"{shard.shard_no}-store")
            lines = (shard.first_line, shard.end_line)
            await blobs.put(rebuilt, store.result_lines(batch.id, kinds, lines))
            parts.append(rebuilt)
        sizes[file_id] = await blobs.compose(blob_key(file_id), parts)
    return await register_result_files(store, batch, now, sizes)


async def publish_result_files(
    store: MetadataStore, blobs: BlobStore, batch: Batch, now: int
) -> tuple[str | None, str | None]:
    """Assemble the output and error files from the recorded results, in line order, and register
    them; returns their ids (None for a file that would be empty)."""
    sizes: dict[str, int] = {}
    for file_id, kinds in ((output_file_id(batch.id), OUTPUT_KINDS), (error_file_id(batch.id), ERROR_KINDS)):
        key = blob_key(file_id)
        sizes[file_id] = await blobs.put(key, store.result_lines(batch.id, kinds))
        if sizes[file_id] == 0:
            await blobs.delete(key)
    return await register_result_files(store, batch, now, sizes)


async def recorded_chunks(
    store: MetadataStore, batch_id: str, kinds: Sequence[ResultKind]
) -> AsyncIterator[bytes]:
    """The lines of the batch's results of these kinds in the order they were recorded (`seq`), a
    newline after each, in chunks of a page of results."""
    after = 0
    while page := await store.recorded_results(batch_id, kinds, after_seq=after, limit=RECORDED_PAGE):
        yield b"".join([line + b"\n" for _, line in page])
        if len(page) < RECORDED_PAGE:
            return
        after = page[-1][0]


async def publish_recorded_files(
    store: MetadataStore, blobs: BlobStore, batch: Batch, now: int
) -> tuple[str | None, str | None]:
    """`publish_result_files` in the order the results were recorded: the order a reader of the lines
    saw while the batch ran (docs/partial-results.md)."""
    sizes: dict[str, int] = {}
    for file_id, kinds in ((output_file_id(batch.id), OUTPUT_KINDS), (error_file_id(batch.id), ERROR_KINDS)):
        key = blob_key(file_id)
        sizes[file_id] = await blobs.put(key, recorded_chunks(store, batch.id, kinds))
        if sizes[file_id] == 0:
            await blobs.delete(key)
    return await register_result_files(store, batch, now, sizes)


async def write_result_files(
    store: MetadataStore, blobs: BlobStore, batch: Batch, now: int, shards: Sequence[Shard] | None
) -> tuple[str | None, str | None]:
    """Write and register the batch's result files; returns their ids. Their order is fixed here once
    and for all: the recorded order when someone read the lines while the batch ran; otherwise, with
    `shards` that are all done, their parts joined, else the recorded results in line order."""
    if await store.claim_result_order(batch.id, ResultOrder.FILES) is ResultOrder.RECORDED:
        return await publish_recorded_files(store, blobs, batch, now)
    if shards and all(shard.done for shard in shards):
        return await compose_result_files(store, blobs, batch, now, shards)
    return await publish_result_files(store, blobs, batch, now)
