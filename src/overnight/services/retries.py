"""Retrying what failed: a new batch made of the failed, expired or cancelled lines of an ended batch.

`POST /v1/batches/{id}/retry` (Doubleword's route, which `dw batches retry` calls) and
`POST /v1/batches/{id}/retry-requests`. Doubleword re-runs the lines inside the same batch; Overnight's
files are written once, so it makes a new batch instead, of the chosen lines of the original input, with
`metadata.retry_of` naming the original (docs/retries.md). The error file is read once to choose the
lines (a set of line numbers, at most one per input line), then the input is streamed and only those
lines are copied into the new input file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from overnight.blobs.base import BlobStore
from overnight.domain import limits
from overnight.domain.clock import Clock
from overnight.domain.errors import InvalidRequest, NotFound, batch_not_found
from overnight.domain.idempotency import json_fingerprint
from overnight.domain.ids import IdGenerator, blob_key, request_line_no
from overnight.domain.lifecycle import TERMINAL
from overnight.domain.lines import split_line_groups
from overnight.domain.models import Batch, FileObject
from overnight.domain.retries import RetrySelection, read_error_line
from overnight.services.batches import BatchesService
from overnight.services.idempotency import IdempotentCreates
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.retries")
RETRY_OF = "retry_of"  # the metadata key of a retry that names the batch it retries


def nothing_to_retry(batch: Batch) -> InvalidRequest:
    return InvalidRequest(
        f"Nothing to retry: batch {batch.id} has no failed, expired or cancelled lines that match.",
        code="nothing_to_retry",
    )


def input_gone(batch: Batch) -> NotFound:
    return NotFound(
        f"The input file {batch.input_file_id} of batch {batch.id} is no longer available (deleted or "
        "expired), so its lines cannot be sent again. Upload them again and create a new batch.",
        param="input_file_id",
        code="input_file_gone",
    )


class RetryService:
    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        ids: IdGenerator,
        clock: Clock,
        batches: BatchesService,
        idempotency: IdempotentCreates | None = None,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._ids = ids
        self._clock = clock
        self._batches = batches
        self._idempotency = idempotency or IdempotentCreates(store, clock)

    async def retry(
        self,
        project: str | None,
        batch_id: str,
        selection: RetrySelection,
        *,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        route: str = "retry",
    ) -> Batch:
        """The new batch of the lines of `batch_id`'s error file that `selection` chooses. `body` (the
        request as sent) and `route` make the key's fingerprint. `project` None: the batch may be of any
        project (for an admin); the retry is that project's work all the same, so its new input file,
        its batch and its Idempotency-Key belong to the batch's own project."""
        batch = await self._store.get_batch(batch_id, project)
        if batch is None:
            raise batch_not_found(batch_id)
        owner = batch.project
        if batch.status not in TERMINAL:
            raise InvalidRequest(
                f"Batch {batch_id} is {batch.status}; only a batch that has ended can be retried.",
                code="batch_not_ended",
            )
        input_file = await self._store.get_file(owner, batch.input_file_id)
        if input_file is None or not await self._blobs.exists(blob_key(batch.input_file_id)):
            raise input_gone(batch)
        lines = await self._chosen_lines(batch, selection)
        if not lines:
            raise nothing_to_retry(batch)
        if idempotency_key is None:
            return await self._create(owner, batch, lines, None)
        fingerprint = json_fingerprint(f"POST /v1/batches/{batch_id}/{route}", body or {})
        outcome = await self._idempotency.create(
            owner,
            idempotency_key,
            fingerprint,
            new_id=self._ids.batch_id,
            create=lambda new_id: self._create(owner, batch, lines, new_id),
            find=lambda found_id: self._store.get_batch(found_id, owner),
            gone=batch_not_found,
        )
        return outcome.value

    async def _chosen_lines(self, batch: Batch, selection: RetrySelection) -> set[int]:
        """The input line numbers of the error-file lines that `selection` chooses."""
        if batch.error_file_id is None:
            return set()
        chosen: set[int] = set()
        try:
            async for group in split_line_groups(self._blobs.read(blob_key(batch.error_file_id))):
                for _, raw in group:
                    line = read_error_line(raw)
                    if line is None or not selection.chooses(line):
                        continue
                    line_no = request_line_no(batch.id, line.request_id)
                    if line_no is not None:
                        chosen.add(line_no)
                await asyncio.sleep(0)
        except FileNotFoundError:  # the error file expired or was deleted
            return set()
        return chosen

    async def _create(self, project: str, batch: Batch, lines: set[int], batch_id: str | None) -> Batch:
        """Copy the chosen lines into a new input file, then create the batch of it."""
        input_file = await self._copy_lines(project, batch, lines)
        metadata = {**(batch.metadata or {}), RETRY_OF: batch.id}
        params: dict[str, Any] = {
            "input_file_id": input_file.id,
            "endpoint": batch.endpoint,
            "completion_window": batch.completion_window,
            "metadata": metadata,
        }
        if batch.output_expires_after is not None:
            params["output_expires_after"] = {"anchor": "created_at", "seconds": batch.output_expires_after}
        try:
            retried = await self._batches.create(project, params, batch_id=batch_id)
        except BaseException:
            await asyncio.shield(self._forget_file(project, input_file.id))
            raise
        log.info(
            "batch retried id=%s project=%s lines=%d retry_of=%s", retried.id, project, len(lines), batch.id
        )
        return retried

    async def _copy_lines(self, project: str, batch: Batch, lines: set[int]) -> FileObject:
        file_id = self._ids.file_id()
        now = int(self._clock.now())
        await self._store.begin_upload(file_id, now)
        try:
            size = await self._blobs.put(blob_key(file_id), self._lines_of(batch.input_file_id, lines))
            file = FileObject(
                id=file_id,
                project=project,
                bytes=size,
                created_at=now,
                filename=f"{batch.id}_retry.jsonl",
                purpose="batch",
                expires_at=now + limits.BATCH_FILE_DEFAULT_TTL_SECONDS,
            )
            await self._store.add_file(file)  # also ends the upload record
        except BaseException:
            await asyncio.shield(self._forget_file(project, file_id))
            raise
        return file

    async def _lines_of(self, input_file_id: str, lines: set[int]) -> AsyncIterator[bytes]:
        """The input lines numbered in `lines`, in input order, each with a newline."""
        async for group in split_line_groups(self._blobs.read(blob_key(input_file_id))):
            picked = [raw + b"\n" for line_no, raw in group if line_no in lines]
            if picked:
                yield b"".join(picked)

    async def _forget_file(self, project: str, file_id: str) -> None:
        await self._store.delete_file(project, file_id)
        await self._blobs.delete(blob_key(file_id))
        await self._store.end_upload(file_id)
