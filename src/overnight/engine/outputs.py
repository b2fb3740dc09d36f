"""Assembling a batch's output and error files from its recorded results, streamed."""

from __future__ import annotations

from collections.abc import Collection

from overnight.blobs.base import BlobStore
from overnight.domain import limits
from overnight.domain.ids import BATCH_PREFIX, FILE_PREFIX
from overnight.domain.models import Batch, FileObject, ResultKind
from overnight.services.files import blob_key
from overnight.store.base import MetadataStore

ERROR_KINDS = (ResultKind.FAILED, ResultKind.NOT_RUN)


def output_file_id(batch_id: str) -> str:
    """Stable per batch, so finalizing again after a crash rewrites the same file."""
    return f"{FILE_PREFIX}{batch_id.removeprefix(BATCH_PREFIX)}o"


def error_file_id(batch_id: str) -> str:
    return f"{FILE_PREFIX}{batch_id.removeprefix(BATCH_PREFIX)}e"


async def _publish(
    store: MetadataStore,
    blobs: BlobStore,
    batch: Batch,
    now: int,
    file_id: str,
    kinds: Collection[ResultKind],
    filename: str,
) -> str | None:
    key = blob_key(file_id)
    size = await blobs.put(key, store.result_lines(batch.id, kinds))
    if size == 0:
        await blobs.delete(key)
        return None
    ttl = batch.output_expires_after or limits.OUTPUT_FILE_DEFAULT_TTL_SECONDS
    await store.add_file(
        FileObject(
            id=file_id,
            project=batch.project,
            bytes=size,
            created_at=now,
            filename=filename,
            purpose="batch_output",
            expires_at=now + ttl,
        )
    )
    return file_id


async def publish_result_files(
    store: MetadataStore, blobs: BlobStore, batch: Batch, now: int
) -> tuple[str | None, str | None]:
    """Write the output and error files; returns their ids (None for a file that would be empty)."""
    output = await _publish(
        store,
        blobs,
        batch,
        now,
        output_file_id(batch.id),
        (ResultKind.SUCCEEDED,),
        f"{batch.id}_output.jsonl",
    )
    errors = await _publish(
        store, blobs, batch, now, error_file_id(batch.id), ERROR_KINDS, f"{batch.id}_error.jsonl"
    )
    return output, errors
