"""Background responses: `POST /v1/responses` with `background: true`, then `GET /v1/responses/{id}`,
`POST /v1/responses/{id}/cancel` and `DELETE /v1/responses/{id}`, as OpenAI's background mode does them
(docs/background.md).

Each response is durable work of the engine: a one-line batch of its project (hidden from lists), so
it survives restarts and is retried, paced and shared out across workers like any batch line. What the
client sees at each step is worked out in domain/background.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec

from overnight.blobs.base import BlobStore
from overnight.domain import limits
from overnight.domain.background import (
    CANCELLED,
    MARKER,
    StoredResponse,
    batch_id_of_response,
    cancel_refusal,
    created_response,
    current_response,
    deleted_response,
    input_file_id,
    response_id_of_batch,
    upstream_body,
)
from overnight.domain.clock import Clock
from overnight.domain.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from overnight.domain.ids import IdGenerator, blob_key, error_file_id, output_file_id, part_key
from overnight.domain.lifecycle import TERMINAL
from overnight.domain.models import Batch, BatchStatus, FileObject
from overnight.domain.validation import BatchValidator
from overnight.services.batches import BatchesService
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.background")
ENDPOINT = "/v1/responses"
FINALIZING_WAIT_S = 10.0  # a cancel that meets a response being written waits this long for its end
_FINALIZING_POLL_S = 0.05
# A delete that meets an unfinished response cancels it and waits this long for the engine to end it (a
# run in flight is given up to 10 s to stop, engine/worker.py RUNS_END_S); past it the client tries again.
ENDING_WAIT_S = 30.0


def response_not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


class BackgroundResponses:
    """`window`: the completion window of each response's batch (past it, the response fails);
    `retention_s`: how long a response's files, and so its result, are kept."""

    def __init__(
        self,
        store: MetadataStore,
        blobs: BlobStore,
        batches: BatchesService,
        ids: IdGenerator,
        clock: Clock,
        serves: Callable[[str], bool],
        on_change: Callable[[], None],
        *,
        window: str = "24h",
        retention_s: int = limits.OUTPUT_FILE_DEFAULT_TTL_SECONDS,
        keeps_service_tier: Callable[[str], bool] = lambda model: False,
    ) -> None:
        window_s = limits.parse_window(window)
        if window_s is None:
            raise ValueError(f"not a completion window: {window!r}")
        self._store, self._blobs, self._batches = store, blobs, batches
        self._ids, self._clock = ids, clock
        self._serves, self._on_change = serves, on_change
        self._window, self._window_s, self._retention_s = window, window_s, retention_s
        self._keeps_service_tier = keeps_service_tier

    async def create(self, project: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store the response as a queued one-line batch and answer its Response (status `queued`)."""
        request = upstream_body(body)
        batch_id = self._ids.batch_id()
        response_id = response_id_of_batch(batch_id)
        sent = request
        if not self._keeps_service_tier(str(request.get("model"))):  # as synchronous requests (docs/sync.md)
            sent = {key: value for key, value in request.items() if key != "service_tier"}
        line = msgspec.json.encode(
            {"custom_id": response_id, "method": "POST", "url": ENDPOINT, "body": sent}
        )
        self._check(line)
        now = int(self._clock.now())
        created = created_response(response_id, request, now)
        batch = Batch(
            id=batch_id,
            project=project,
            endpoint=ENDPOINT,
            input_file_id=input_file_id(batch_id),
            completion_window=self._window,
            status=BatchStatus.VALIDATING,
            created_at=now,
            expires_at=now + self._window_s,
            metadata={MARKER: response_id},
            output_expires_after=self._retention_s,
        )
        input_file = FileObject(
            id=batch.input_file_id,
            project=project,
            bytes=len(line) + 1,
            created_at=now,
            filename=f"{response_id}.jsonl",
            purpose="batch",
            expires_at=now + self._retention_s,
        )
        hidden = (input_file.id, output_file_id(batch_id), error_file_id(batch_id))
        await self._store.begin_upload(input_file.id, now)  # content without a record is swept
        await self._blobs.put(blob_key(input_file.id), _chunks(line + b"\n"))
        await self._store.add_background_response(StoredResponse(batch, created), input_file, hidden)
        log.info(
            "background response queued id=%s project=%s model=%s", response_id, project, request.get("model")
        )
        self._on_change()
        return created

    def _check(self, line: bytes) -> None:
        """Refuse at once what its batch would fail for (an unknown model, a missing `input`)."""
        validator = BatchValidator(ENDPOINT, self._serves)
        validator.check_line(1, line)
        result = validator.finish()
        if result.ok:
            return
        error = result.errors[0]
        param = error.param.removeprefix("body.") if error.param else None
        if error.code == "model_not_found":
            model = result.model or ""
            raise NotFound(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        raise InvalidRequest(error.message, param=param, code=error.code)

    async def retrieve(self, project: str | None, response_id: str) -> dict[str, Any]:
        """The response, if it is the project's; `project` None: of any project (for an admin)."""
        stored = await self._stored(project, response_id)
        return current_response(stored, await self._result_line(stored.batch, response_id))

    async def cancel(self, project: str | None, response_id: str) -> dict[str, Any]:
        """Cancel a queued or in-progress response (again: the cancelled one), if it is the project's
        (`project` None: of any project); a finished one is refused as OpenAI refuses it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINALIZING_WAIT_S
        while True:
            stored = await self._stored(project, response_id)
            batch = stored.batch
            if batch.status is BatchStatus.FINALIZING and loop.time() < deadline:
                await asyncio.sleep(_FINALIZING_POLL_S)  # its result is being written: let it end
                continue
            response = current_response(stored, await self._result_line(batch, response_id))
            refusal = cancel_refusal(response["status"])
            if refusal is not None:
                raise InvalidRequest(refusal)
            if response["status"] == CANCELLED:
                return response
            try:
                await self._batches.cancel(batch.project, batch.id)
            except Conflict:  # it moved on meanwhile: look again
                continue
            log.info("background response cancelled id=%s project=%s", response_id, batch.project)
            return {**response, "status": CANCELLED}

    async def delete(self, project: str | None, response_id: str) -> dict[str, Any]:
        """Delete the response and all of it, if it is the project's (`project` None: of any project); one
        not ended yet is cancelled first, and deleted once the engine has stopped its work."""
        stored = await self._ended(project, response_id)
        batch = stored.batch
        gone = await self._result_gone(batch)  # past its retention (or a delete cut short): GET says 404
        for key in await self._content_keys(batch):
            await self._blobs.delete(key)  # content first: after a crash here, deleting it again ends it
        deleted = await self._store.delete_background_response(batch.id, project)
        if gone or not deleted:  # what is left is removed all the same; a delete at the same moment won
            raise response_not_found(response_id)
        log.info("background response deleted id=%s project=%s", response_id, batch.project)
        return deleted_response(response_id)

    async def _ended(self, project: str | None, response_id: str) -> StoredResponse:
        """The response once its batch has ended: a queued or in-progress one is cancelled, then waited
        for (at most ENDING_WAIT_S) until the engine has stopped running it and written its files."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ENDING_WAIT_S
        while True:
            stored = await self._stored(project, response_id)
            batch = stored.batch
            if batch.status in TERMINAL:
                return stored
            if loop.time() >= deadline:
                raise ServiceUnavailable(
                    f"Response '{response_id}' is still being cancelled; try deleting it again shortly.",
                    headers=(("retry-after", "2"),),
                )
            if batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS):
                try:
                    await self._batches.cancel(batch.project, batch.id)
                    log.info("background response cancelled to delete it id=%s", response_id)
                except Conflict:  # it moved on meanwhile: look again
                    continue
            await asyncio.sleep(_FINALIZING_POLL_S)  # finalizing or cancelling: the engine ends it

    async def _result_gone(self, batch: Batch) -> bool:
        file_id = batch.output_file_id or batch.error_file_id
        if batch.status is BatchStatus.CANCELLED or file_id is None:
            return False
        return not await self._blobs.exists(blob_key(file_id))

    async def _content_keys(self, batch: Batch) -> list[str]:
        """Every blob of the response: its input, output and error files, and the parts of its result
        files that a run finished after the batch ended (see engine/janitor.py)."""
        results = (output_file_id(batch.id), error_file_id(batch.id))
        keys = [blob_key(file_id) for file_id in (batch.input_file_id, *results)]
        for shard in await self._store.shards_of(batch.id):
            if shard.part is not None:
                keys += [part_key(file_id, shard.part) for file_id in results]
        return keys

    async def _stored(self, project: str | None, response_id: str) -> StoredResponse:
        batch_id = batch_id_of_response(response_id)
        stored = None if batch_id is None else await self._store.get_background_response(batch_id, project)
        if stored is None:
            raise response_not_found(response_id)
        return stored

    async def _result_line(self, batch: Batch, response_id: str) -> dict[str, Any] | None:
        """The ended batch's one output or error line; NotFound once its files are gone (retention)."""
        if batch.status not in TERMINAL or batch.status is BatchStatus.CANCELLED:
            return None
        file_id = batch.output_file_id or batch.error_file_id
        if file_id is None:
            return None
        try:
            content = b"".join([chunk async for chunk in self._blobs.read(blob_key(file_id))])
        except FileNotFoundError:
            raise response_not_found(response_id) from None
        line = msgspec.json.decode(content.splitlines()[0]) if content.strip() else None
        return line if isinstance(line, dict) else None


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data
